"""``caffe-surgeon finetune CFG WEIGHTS --data D -o DIR`` and ``vai_p_darknet pruner
finetune``: darknet detector train's loop, files and log lines over the trainer and the
data loader, on a tiny generated detection set; a resumed run continues bit for bit."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from assets import FIXTURES, need_module

torch = need_module("torch")

from caffe_surgeon.cli.main import main  # noqa: E402
from caffe_surgeon.cli.vai_p_darknet import main as vai_p_darknet  # noqa: E402
from caffe_surgeon.darknet.reader import read_darknet  # noqa: E402
from caffe_surgeon.training.darknet_finetune import DetectorRun, train_detector  # noqa: E402

TRAIN = FIXTURES / "darknet" / "train"


def detection_set(root: Path, images=6, seed=0) -> tuple[Path, Path, Path]:
    """PNG images of random pixels with 1-3 boxes of classes 0-1, their label files, a list,
    a .data (backup=root/backup) and the tiny cfg (fixed size) with its weights."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    lines = []
    for i in range(images):
        pixels = (rng.random((40 + 8 * i, 56, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"im{i}.png")
        rows = [f"{rng.integers(0, 2)} {rng.uniform(.2, .8):.4f} {rng.uniform(.2, .8):.4f} "
                f"{rng.uniform(.1, .5):.4f} {rng.uniform(.1, .5):.4f}"
                for _ in range(rng.integers(1, 4))]
        (root / "labels" / f"im{i}.txt").write_text("\n".join(rows) + "\n")
        lines.append(str(root / "images" / f"im{i}.png"))
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    data = root / "set.data"
    data.write_text(f"classes=2\ntrain={root / 'train.txt'}\nbackup={root / 'backup'}\n")
    cfg = root / "tiny.cfg"
    cfg.write_text((TRAIN / "yolov3_tiny_shaped.cfg").read_text().replace("random=1", "random=0"))
    weights = root / "tiny.weights"
    shutil.copy(TRAIN / "yolov3_tiny_shaped.weights", weights)
    return data, cfg, weights


def test_caffe_surgeon_finetune_trains_a_cfg_as_darknet_detector_train(tmp_path, capsys):
    data, cfg, weights = detection_set(tmp_path)
    out = tmp_path / "out"
    assert main(["finetune", str(cfg), str(weights), "--data", str(data), "-o", str(out),
                 "--max-iter", "3"]) == 0
    log = capsys.readouterr().out
    lines = [line for line in log.splitlines() if " avg, " in line]
    assert [line.split(":")[0] for line in lines] == ["1", "2", "3"]
    assert lines[-1].endswith("12 images") and " rate, " in lines[-1]
    final = read_darknet(cfg, out / "tiny_final.weights")
    assert final.origin.header.seen == 12  # -clear, then 3 x batch 4
    start = read_darknet(cfg, weights)
    changed = [l.name for l, s in zip(final.layers, start.layers)
               if l.weights and not np.array_equal(l.weights["weights"], s.weights["weights"])]
    assert len(changed) == sum(1 for l in start.layers if l.weights)


def test_vai_p_darknet_finetune_trains_prunedcfg_into_the_data_files_backup(tmp_path, capsys,
                                                                            monkeypatch):
    data, cfg, weights = detection_set(tmp_path)
    pruning = tmp_path / "pruning.cfg"
    pruning.write_text(f"[pruning]\nworkspace={tmp_path / 'ws'}\ndatacfg={data}\nmodelcfg={cfg}\n"
                       f"prunedcfg={cfg}\nprune_out_weights={weights}\n")
    monkeypatch.chdir(tmp_path)
    assert vai_p_darknet(["pruner", "finetune", str(pruning), "-max_batches", "2"]) == 0
    assert (tmp_path / "backup" / "tiny_final.weights").is_file()
    assert "tiny_final.weights" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA's refusal")
def test_several_gpus_without_cuda_or_the_cpu_stand_in_are_refused_in_one_line(tmp_path, capsys):
    data, cfg, weights = detection_set(tmp_path)
    code = main(["finetune", str(cfg), str(weights), "--data", str(data), "-o",
                 str(tmp_path / "o"), "-gpus", "0,1"])
    err = capsys.readouterr().err
    assert code == 2 and "--dist-backend gloo" in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_a_resumed_run_ends_with_the_same_bytes_as_an_uninterrupted_one(tmp_path):
    data, cfg, weights = detection_set(tmp_path)

    def run(folder, max_batches, resume=False):
        return train_detector(read_darknet(cfg, weights),
                              DetectorRun(data, tmp_path / folder, "tiny", seed=3,
                                          resume=resume, max_batches=max_batches, save_every=2),
                              log=lambda line: None)

    straight = run("a", 4)
    run("b", 2)
    resumed = run("b", 4, resume=True)
    assert straight.read_bytes() == resumed.read_bytes()
    assert (tmp_path / "a" / "tiny.backup").is_file()  # every save_every iterations


def test_resume_without_a_snapshot_is_a_clear_error(tmp_path, capsys):
    data, cfg, weights = detection_set(tmp_path)
    code = main(["finetune", str(cfg), str(weights), "--data", str(data), "-o",
                 str(tmp_path / "o"), "-resume", "yes"])
    err = capsys.readouterr().err
    assert code == 2 and "nothing to resume" in err, err


def test_darknet_finetune_without_data_says_what_is_missing(tmp_path, capsys):
    _, cfg, weights = detection_set(tmp_path)
    assert main(["finetune", str(cfg), str(weights), "-o", str(tmp_path / "o")]) == 2
    assert "a Darknet model trains on a .data file: add --data" in capsys.readouterr().err


def test_vai_p_darknet_finetune_makes_prunes_sparse_weights_dense_for_prunedcfg(
        tmp_path, capsys, monkeypatch):
    """``prune`` writes prune_out_weights in modelcfg's shapes (removed filters zeroed):
    finetune trains their dense form, whose weights then fit prunedcfg."""
    from caffe_surgeon.darknet.writer import write_darknet
    from caffe_surgeon.pruning import analyse, apply, make_plan
    data, cfg, weights = detection_set(tmp_path)
    graph = read_darknet(cfg, weights)
    plan = make_plan(analyse(graph), ratio=0.5)
    pruned_cfg, sparse = tmp_path / "ws" / "tiny-prune.cfg", tmp_path / "ws" / "weights.prune"
    pruned_cfg.parent.mkdir()
    write_darknet(apply(graph, plan, "dense"), pruned_cfg, None)
    write_darknet(apply(graph, plan, "sparse"), None, sparse)
    pruning = tmp_path / "pruning.cfg"
    pruning.write_text(f"[pruning]\nworkspace={tmp_path / 'ws'}\ndatacfg={data}\nmodelcfg={cfg}\n"
                       f"prunedcfg={pruned_cfg}\nprune_out_weights={sparse}\n")
    monkeypatch.chdir(tmp_path)
    assert vai_p_darknet(["pruner", "finetune", str(pruning), "-max_batches", "1"]) == 0
    assert "is the sparse form prune writes" in capsys.readouterr().err
    final = read_darknet(pruned_cfg, tmp_path / "backup" / "tiny-prune_final.weights")
    assert final.origin.header.seen == 4
