"""Label-free Darknet finetuning (``caffe-surgeon finetune CFG W --data LIST --teacher CFG W``):
the truths are the teacher's detections. Checked on a net whose output is set by hand, so the
expected pseudo-labels are computed here from the YOLO formulas, not by our decoder."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from assets import FIXTURES, need_module

from caffe_surgeon.darknet.reader import read_darknet
from caffe_surgeon.darknet.writer import write_darknet
from caffe_surgeon.engine import Executor
from caffe_surgeon.errors import ModelError
from caffe_surgeon.images.darknet_image import load_image
from caffe_surgeon.training.darknet_pseudo import PseudoLabelledData, Teacher, pseudo_rows

#: 8x8 input, 2x2 max pool -> a 4x4 grid, a 1x1 conv whose 7 outputs (x, y, w, h, objectness,
#: class 0, class 1 of the one anchor, 6x2 pixels) are linear in the pixel's R, G, B
CFG = """[net]
batch=2
subdivisions=1
width=8
height=8
channels=3
momentum=0.9
decay=0.0005
learning_rate={lr}
max_batches=100
policy=constant

[maxpool]
size=2
stride=2

[convolutional]
size=1
stride=1
pad=0
filters={filters}
activation=linear

[yolo]
mask=0
anchors=6,2
classes={classes}
num=1
jitter=0
ignore_thresh=.7
truth_thresh=1
random=0
"""
ANCHOR_W, ANCHOR_H = 6 / 8, 2 / 8


def controlled_net(folder: Path, name="teacher", classes=2, lr=.001, weights=None):
    """The cfg and weights above: objectness = 20 R - 10, class c = 20 x channel (c + 1) - 10,
    x/y/w/h offsets 0 (``weights``: other conv weights, for a student)."""
    cfg = folder / f"{name}.cfg"
    cfg.write_text(CFG.format(classes=classes, lr=lr, filters=5 + classes))
    graph = read_darknet(cfg)
    conv = graph.layers[1]
    w = np.zeros((5 + classes, 3, 1, 1), np.float32)
    b = np.zeros(5 + classes, np.float32)
    w[4, 0], b[4] = 20, -10
    for c in range(classes):
        w[5 + c, (c + 1) % 3], b[5 + c] = 20, -10
    conv.weights = {"biases": b, "weights": w if weights is None else weights}
    out = folder / f"{name}.weights"
    write_darknet(graph, None, out)
    return cfg, out


def scene(path: Path, cells: dict) -> Path:
    """An 8x8 black PNG with 2x2 blocks of colour: {(row, col) of the 4x4 grid: (r, g, b)}."""
    from PIL import Image
    pixels = np.zeros((8, 8, 3), np.uint8)
    for (row, col), rgb in cells.items():
        pixels[2 * row:2 * row + 2, 2 * col:2 * col + 2] = np.asarray(rgb) * 255
    Image.fromarray(pixels).save(path)
    return path


def test_pseudo_labels_are_the_teachers_detections_computed_by_hand(tmp_path):
    cfg, weights = controlled_net(tmp_path)
    # cell (1, 2): red + green = class 0; cell (3, 0): white = classes 0 and 1, its box
    # (x 0.125, width 0.75) sticking out on the left and clipped as a label line would be
    image = scene(tmp_path / "a.png", {(1, 2): (1, 1, 0), (3, 0): (1, 1, 1)})
    graph = read_darknet(cfg, weights)
    rows = pseudo_rows(graph, Executor(graph), load_image(image, channels=3))
    x, y = (2 + .5) / 4, (1 + .5) / 4
    left, right = 0., (0 + .5) / 4 + ANCHOR_W / 2
    expected = [(0, x, y, ANCHOR_W, ANCHOR_H),
                *[(c, (left + right) / 2, 3.5 / 4, right - left, ANCHOR_H) for c in (0, 1)]]
    assert rows.dtype == np.float32 and rows.shape == (3, 5)
    np.testing.assert_allclose(sorted(map(tuple, rows)), sorted(expected), atol=1e-6)
    # a red cell alone: objectness without any class above the threshold: no truth
    lone = scene(tmp_path / "b.png", {(0, 0): (1, 0, 0)})
    assert pseudo_rows(graph, Executor(graph), load_image(lone, channels=3)).shape == (0, 5)


def image_list(folder: Path, count=4) -> Path:
    rng = np.random.default_rng(3)
    paths = []
    for i in range(count):
        cells = {(int(rng.integers(4)), int(rng.integers(4))): (1, int(rng.integers(2)), 1)
                 for _ in range(2)}
        paths.append(scene(folder / f"im{i}.png", cells))
    listing = folder / "unlabelled.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    return listing


def test_the_loader_is_deterministic_and_the_cache_is_reused(tmp_path, monkeypatch):
    cfg, weights = controlled_net(tmp_path)
    listing = image_list(tmp_path)
    teacher = Teacher(cfg, weights)
    cache = tmp_path / "pseudo.npz"
    first = PseudoLabelledData(listing, cfg, teacher, cache=cache, workers=0)
    assert not (tmp_path / "labels").exists() and cache.is_file()
    assert sum(len(b) for b in first.boxes) >= 4
    again = PseudoLabelledData(listing, cfg, teacher, workers=0)  # recomputed, no cache
    for a, b in zip(first.boxes, again.boxes):
        assert a.tobytes() == b.tobytes()
    for k in (0, 5):
        assert all(x.tobytes() == y.tobytes() for x, y in zip(first.batch(k), again.batch(k)))
    # the boxes reach the truths: every batch image holds as many rows as its picks have boxes
    assert first.batch(0)[1][..., 2].any()

    def no_teacher_run(*a, **k):
        raise AssertionError("the teacher ran although the cache holds its detections")
    monkeypatch.setattr("caffe_surgeon.training.darknet_pseudo.pseudo_rows", no_teacher_run)
    cached = PseudoLabelledData(listing, cfg, teacher, cache=cache, workers=0)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first.boxes, cached.boxes))
    with pytest.raises(AssertionError):  # another threshold: the cache does not apply
        PseudoLabelledData(listing, cfg, Teacher(cfg, weights, thresh=.5), cache=cache, workers=0)


def test_refusals_are_one_line_model_errors(tmp_path):
    cfg, weights = controlled_net(tmp_path)
    three_cfg, three_weights = controlled_net(tmp_path, "three", classes=3)
    listing = image_list(tmp_path)
    with pytest.raises(ModelError, match="classes=3.*classes=2"):
        PseudoLabelledData(listing, cfg, Teacher(three_cfg, three_weights))
    two_heads = FIXTURES / "darknet" / "train" / "yolov3_tiny_shaped"
    with pytest.raises(ModelError, match="2 detector heads, the student 1"):
        PseudoLabelledData(listing, cfg, Teacher(two_heads.with_suffix(".cfg"),
                                                 two_heads.with_suffix(".weights")))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ModelError, match="image list is empty") as e:
        PseudoLabelledData(empty, cfg, Teacher(cfg, weights))
    assert str(empty) in str(e.value)
    with pytest.raises(ModelError, match="does not exist"):
        PseudoLabelledData(tmp_path / "nothing.txt", cfg, Teacher(cfg, weights))
    with pytest.raises(ModelError, match=r"thresh must be a number in \[0, 1\)"):
        Teacher(cfg, weights, thresh=1.5)
    with pytest.raises(ModelError, match="teacher's file does not exist"):
        Teacher(cfg, tmp_path / "missing.weights")


def test_the_trainer_learns_the_pseudo_labels_with_falling_loss(tmp_path):
    need_module("torch")
    from caffe_surgeon.training.darknet_trainer import DarknetTrainer
    cfg, weights = controlled_net(tmp_path)
    start = np.random.default_rng(0).normal(0, .1, (7, 3, 1, 1)).astype(np.float32)
    student_cfg, student_weights = controlled_net(tmp_path, "student", lr=.1, weights=start)
    data = PseudoLabelledData(image_list(tmp_path), student_cfg, Teacher(cfg, weights),
                              augment=False, workers=0)
    trainer = DarknetTrainer(read_darknet(student_cfg, student_weights))
    images, truths = data.batch(0)
    losses = [trainer.train(images, truths) for _ in range(30)]
    assert losses[-1] < .5 * losses[0], losses


def test_caffe_surgeon_finetune_with_a_teacher_trains_on_an_unlabelled_list(tmp_path, capsys):
    need_module("torch")
    from caffe_surgeon.cli.main import main
    cfg, weights = controlled_net(tmp_path)
    student_cfg, student_weights = controlled_net(tmp_path, "student", lr=.01)
    listing = image_list(tmp_path)
    out = tmp_path / "out"
    assert main(["finetune", str(student_cfg), str(student_weights), "--data", str(listing),
                 "--teacher", str(cfg), str(weights), "-o", str(out), "--max-iter", "2"]) == 0
    assert "4 training images" in capsys.readouterr().out
    assert (out / "student_final.weights").is_file()
    with np.load(out / "student.pseudo_labels.npz") as z:
        teacher = read_darknet(cfg, weights)
        expected = [pseudo_rows(teacher, Executor(teacher), load_image(p.strip(), channels=3))
                    for p in listing.read_text().splitlines()]
        assert z["counts"].tolist() == [len(e) for e in expected]
        assert z["rows"].tobytes() == np.concatenate(expected).tobytes()
    # three teacher files, a classes mismatch: one line each, nothing trained
    three_cfg, three_weights = controlled_net(tmp_path, "three", classes=3)
    for teacher_args, message in (([str(cfg), str(weights), str(weights)], "CFG WEIGHTS"),
                                  ([str(three_cfg), str(three_weights)], "classes=3")):
        bad = tmp_path / "bad"
        code = main(["finetune", str(student_cfg), str(student_weights), "--data", str(listing),
                     "--teacher", *teacher_args, "-o", str(bad), "--max-iter", "1"])
        err = capsys.readouterr().err
        assert code != 0 and message in err and "Traceback" not in err
        assert not (bad / "student_final.weights").exists()


def test_vai_p_darknet_finetune_teacher_uses_modelcfg_and_the_given_weights(tmp_path, capsys,
                                                                            monkeypatch):
    need_module("torch")
    from caffe_surgeon.cli.vai_p_darknet import main as vai_p_darknet
    cfg, weights = controlled_net(tmp_path)
    student_cfg, student_weights = controlled_net(tmp_path, "student", lr=.01)
    listing = image_list(tmp_path)
    data = tmp_path / "set.data"
    data.write_text(f"classes=2\ntrain={listing}\n")  # no labels/ anywhere
    pruning = tmp_path / "pruning.cfg"
    pruning.write_text(f"[pruning]\nworkspace={tmp_path / 'ws'}\ndatacfg={data}\nmodelcfg={cfg}\n"
                       f"prunedcfg={student_cfg}\nprune_out_weights={student_weights}\n")
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(tmp_path / "labels", ignore_errors=True)
    assert vai_p_darknet(["pruner", "finetune", str(pruning), "-max_batches", "2",
                          "-teacher", str(weights)]) == 0
    assert (tmp_path / "ws" / "backup" / "student_final.weights").is_file()
    assert (tmp_path / "ws" / "backup" / "student.pseudo_labels.npz").is_file()
