"""``-gpus 0,1``: Darknet detector training on several devices, one process each (gloo on
the CPU here), checked against pjreddie Darknet's scheme computed by hand in one process:
two trainers on the two halves of each ``2 * batch`` batch with the learning rate doubled,
averaged (weights, biases, scales; ``seen`` advanced) every 4 iterations as ``sync_nets``
does, and again before every save."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from assets import need_module

torch = need_module("torch")

from caffe_surgeon.cli.main import main  # noqa: E402
from caffe_surgeon.cli.vai_p_darknet import main as vai_p_darknet  # noqa: E402
from caffe_surgeon.darknet.reader import read_darknet  # noqa: E402
from caffe_surgeon.errors import ModelError  # noqa: E402
from caffe_surgeon.training.darknet_data import DetectionTrainData  # noqa: E402
from caffe_surgeon.training.darknet_devices import (DeviceSet, counted_batches,  # noqa: E402
                                                    train_detector_on_devices)
from caffe_surgeon.training.darknet_finetune import DetectorRun, train_detector  # noqa: E402
from caffe_surgeon.training.darknet_trainer import DarknetTrainer  # noqa: E402
from test_darknet_finetune_command import detection_set  # noqa: E402

SEED, SAVE_EVERY, LAST = 3, 8, 16
TWO_CPUS = DeviceSet((0, 1), "gloo")


def multi_run(tmp, folder, max_batches, resume=False):
    data, cfg, weights = tmp / "set.data", tmp / "tiny.cfg", tmp / "tiny.weights"
    run = DetectorRun(data, tmp / folder, "tiny", seed=SEED, resume=resume,
                      max_batches=max_batches, save_every=SAVE_EVERY)
    return train_detector_on_devices(read_darknet(cfg, weights), run, TWO_CPUS)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted two-process run to iteration LAST, with its log."""
    tmp = tmp_path_factory.mktemp("multi")
    detection_set(tmp)
    return tmp, multi_run(tmp, "straight", LAST)


def sync_nets(nets, interval):
    """network.c sync_nets, by hand: seen += interval*(n-1)*batch on every net, then each
    learned array = (0 + a_0 + ... + a_{n-1}) * (float)(1./n), summed in float32 in order.
    Returns whether the nets had drifted apart (so the average did something)."""
    seen = nets[0].seen + interval * (len(nets) - 1) * nets[0].settings.batch
    drifted = False
    for t in nets:
        t.seen = seen
    for key in nets[0].sgd.params:
        arrays = [t.sgd.params[key][0].detach().numpy().copy() for t in nets]
        drifted |= any(not np.array_equal(arrays[0], a) for a in arrays[1:])
        base = np.zeros_like(arrays[0])
        for a in arrays:
            base = base + a
        base = base * np.float32(1. / len(nets))
        for t in nets:
            with torch.no_grad():
                t.sgd.params[key][0].copy_(torch.from_numpy(base))
    return drifted


def darknet_scheme(tmp, max_batches, world=2, interval=4):
    """detector.c's loop with train_networks, in one process: net 0 after the final sync."""
    cfg, weights = tmp / "tiny.cfg", tmp / "tiny.weights"
    nets = []
    for _ in range(world):
        graph = read_darknet(cfg, weights)
        graph.meta["max_batches"] = max_batches
        t = DarknetTrainer(graph)
        t.seen = 0
        lr = np.float32(t.settings.learning_rate) * np.float32(world)  # learning_rate *= ngpus
        t.settings = dataclasses.replace(t.settings, learning_rate=float(lr))
        nets.append(t)
    b = nets[0].settings.batch
    data = DetectionTrainData(tmp / "set.data", read_darknet(cfg), seed=SEED, batch_size=b * world,
                              max_batches=max_batches, workers=0)
    k, drifts, printed = 0, [], []
    while nets[0].iteration < max_batches:
        images, truths = data.batch(k)
        k += 1
        for r, t in enumerate(nets):  # get_data_part(d, r, n)
            t.train(images[r * b:(r + 1) * b], truths[r * b:(r + 1) * b])
        if nets[0].iteration % interval == 0:
            drifts.append(sync_nets(nets, interval))
        printed.append(nets[0].iteration)
        if nets[0].iteration % SAVE_EVERY == 0:
            sync_nets(nets, 0)
    sync_nets(nets, 0)
    return nets[0], drifts, printed


def test_two_processes_give_darknets_scheme_computed_by_hand_byte_for_byte(straight, tmp_path):
    tmp, final = straight
    net0, drifts, printed = darknet_scheme(tmp, LAST)
    assert drifts == [True] * len(drifts) and len(drifts) == 2  # the averages did something
    assert printed == [1, 2, 3, 8, 9, 10, 11, 16]  # sync_nets counts the other device's images
    net0.save_weights(tmp_path / "by_hand.weights")
    assert final.read_bytes() == (tmp_path / "by_hand.weights").read_bytes()
    assert read_darknet(tmp / "tiny.cfg", final).origin.header.seen == LAST * 4
    assert (tmp / "straight" / "tiny.backup").is_file()


def test_a_rerun_writes_the_same_bytes(straight):
    tmp, final = straight
    again = multi_run(tmp, "again", LAST)
    assert again.read_bytes() == final.read_bytes()
    for name in ("tiny.backup", "tiny.snapshot.npz", "tiny.snapshot.rank1.npz"):
        assert (tmp / "again" / name).read_bytes() == (tmp / "straight" / name).read_bytes(), name


def test_a_stopped_run_resumed_on_both_devices_ends_with_the_uninterrupted_bytes(straight):
    tmp, final = straight
    multi_run(tmp, "stopped", 9)  # stops one iteration after the save at 8
    resumed = multi_run(tmp, "stopped", LAST, resume=True)
    assert resumed.read_bytes() == final.read_bytes()


def test_vai_p_darknet_finetune_on_two_cpu_processes_logs_as_darknet_prints(tmp_path, capfd,
                                                                          monkeypatch):
    """Issue 16's command: ``vai_p_darknet pruner finetune pruning.cfg -gpus 0,1``."""
    data, cfg, weights = detection_set(tmp_path)
    pruning = tmp_path / "pruning.cfg"
    pruning.write_text(f"[pruning]\nworkspace={tmp_path / 'ws'}\ndatacfg={data}\nmodelcfg={cfg}\n"
                       f"prunedcfg={cfg}\nprune_out_weights={weights}\n")
    monkeypatch.chdir(tmp_path)
    assert vai_p_darknet(["pruner", "finetune", str(pruning), "-gpus", "0,1", "-dist_backend",
                          "gloo", "-max_batches", "5"]) == 0
    lines = [line for line in capfd.readouterr().out.splitlines() if " avg, " in line]
    assert [line.split(":")[0] for line in lines] == ["1", "2", "3", "8"]
    assert lines[-1].endswith(" 64 images")  # i * batch * ngpus
    assert read_darknet(cfg, tmp_path / "backup" / "tiny_final.weights").origin.header.seen == 32
    assert counted_batches(4, 2) == 8 and counted_batches(5, 2) == 9 and counted_batches(3, 3) == 3


def test_resuming_on_another_number_of_devices_or_out_of_step_is_refused(straight, tmp_path):
    tmp, _ = straight
    shutil.copytree(tmp / "straight", tmp_path / "b")
    run = DetectorRun(tmp / "set.data", tmp_path / "b", "tiny", resume=True, max_batches=20)
    with pytest.raises(ModelError, match="written by a run on 2 devices"):
        train_detector(read_darknet(tmp / "tiny.cfg", tmp / "tiny.weights"), run,
                       log=lambda line: None)
    rank1 = tmp_path / "b" / "tiny.snapshot.rank1.npz"
    with np.load(rank1) as z:  # device 1 saved at the next save point, device 0 did not
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta["seen"] += SAVE_EVERY * 4
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(rank1, **arrays)
    # 8 loops of the straight run: 16 iterations, seen 64
    with pytest.raises(ModelError, match=r"out of step .* \[\(8, 64\), \(8, 96\)\]"):
        train_detector_on_devices(read_darknet(tmp / "tiny.cfg", tmp / "tiny.weights"), run,
                                  TWO_CPUS)
    rank1.unlink()
    with pytest.raises(ModelError, match="nothing to resume for device 1"):
        train_detector_on_devices(read_darknet(tmp / "tiny.cfg", tmp / "tiny.weights"), run,
                                  TWO_CPUS)


def cli(tmp_path, *extra):
    data, cfg, weights = tmp_path / "set.data", tmp_path / "tiny.cfg", tmp_path / "tiny.weights"
    return main(["finetune", str(cfg), str(weights), "--data", str(data), "-o",
                 str(tmp_path / "o"), "--max-iter", "1", *extra])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusals of a machine without CUDA")
@pytest.mark.parametrize("extra,said", [
    (("-gpus", "0,1"), "no CUDA device; add --dist-backend gloo"),
    (("-gpus", "0,1", "--dist-backend", "nccl"), "nccl needs CUDA devices"),
    (("-gpus", ",".join(map(str, range((os.cpu_count() or 1) + 1))), "--dist-backend", "gloo"),
     "CPU stand-in processes but this machine has"),
    (("-gpus", "0,1", "--dist-backend", "mpi"), "choose one of nccl, gloo"),
    (("-gpus", "0,0", "--dist-backend", "gloo"), "lists a device twice"),
])
def test_device_lists_this_machine_cannot_honour_are_refused_before_any_file(tmp_path, capsys,
                                                                            extra, said):
    detection_set(tmp_path)
    assert cli(tmp_path, *extra) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's device count")
def test_ids_beyond_the_cuda_devices_are_refused(tmp_path, capsys):
    detection_set(tmp_path)
    assert cli(tmp_path, "-gpus", f"0,{torch.cuda.device_count()}") == 2
    assert "do not exist" in capsys.readouterr().err


def test_the_caffe_finetune_refuses_dist_backend(tmp_path, capsys):
    (tmp_path / "net.prototxt").write_text("name: 'x'\n")
    assert main(["finetune", str(tmp_path / "net.prototxt"), str(tmp_path / "w.caffemodel"),
                 "-o", str(tmp_path / "o"), "--dist-backend", "gloo"]) == 2
    assert "--dist-backend is for Darknet training" in capsys.readouterr().err


def test_one_gpus_id_picks_that_device_or_the_cpu():
    from caffe_surgeon.training.darknet_devices import single_device
    assert single_device(None) == "cpu" and single_device("") == "cpu"
    assert single_device("1") == ("cuda:1" if torch.cuda.is_available() else "cpu")
    for bad in ("x", "0,1", "-1"):
        with pytest.raises(ModelError, match=f"-gpus {bad}: give device numbers"):
            single_device(bad)
