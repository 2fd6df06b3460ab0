"""fixtures/detection: the small YOLO and SSD definitions for the Fashion-MNIST detection set.

Definitions only (no trained weights yet): each is checked with synthetic weights to
load, infer shapes and run in our engine like OpenCV (and libdarknet for the YOLO),
and to read the generated set through its own data path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs
import libdarknet_oracle as lo
from assets import fashion_data, need_module, needs
from caffe_surgeon.caffe.reader import read_caffe
from caffe_surgeon.engine import Executor
from caffe_surgeon.layers.registry import infer_shapes
from caffe_surgeon.training.darknet_data import DetectionTrainData
from darknet_io import read_darknet
from tools.make_detection_fixture import make_detection_fixture

NETS = Path(__file__).resolve().parents[1] / "fixtures" / "detection"
YOLO = NETS / "yolo-fashion-tiny.cfg"
SSD_DEPLOY = NETS / "ssd-fashion_deploy.prototxt"
SSD_TRAIN_VAL = NETS / "ssd-fashion_train_val.prototxt"
PRIORS = (20 * 20 + 10 * 10 + 5 * 5) * 4  # three sources, 4 priors per cell


@pytest.fixture(scope="module")
def fixture_set(tmp_path_factory):
    fashion_data()
    need_module("lmdb")
    out = tmp_path_factory.mktemp("detnets") / "set"
    make_detection_fixture(out, train=8, test=8, size=160, seed=1)
    return out


def test_the_yolo_cfg_has_two_heads_for_ten_classes_on_160_inputs():
    graph = read_darknet(YOLO)
    shapes = infer_shapes(graph)
    heads = [l for l in graph.layers if "mask" in l.params]
    assert [shapes.outputs[l.name][0] for l in heads] == [(1, 45, 5, 5), (1, 45, 10, 10)]
    assert graph.inputs["data"] == (1, 3, 160, 160)


def test_the_yolo_cfg_runs_in_our_engine_as_in_opencv(tmp_path):
    need_module("cv2")
    from oracle_darknet import check_against_opencv
    errors = check_against_opencv(YOLO, tmp_path)
    assert {"out:yolo_16", "out:yolo_23"} <= set(errors)
    assert max(errors.values()) <= 1e-4


@needs(lo.available(), "libdarknet not installed (Debian package darknet)")
def test_the_yolo_cfg_runs_in_our_engine_as_in_libdarknet(tmp_path):
    from oracle_darknet import check_against_libdarknet
    errors = check_against_libdarknet(YOLO, tmp_path)
    assert "output" in errors and len(errors) >= 20
    assert max(errors.values()) <= 1e-4


def test_the_yolo_cfg_trains_on_the_generated_set(fixture_set):
    data = DetectionTrainData(fixture_set / "fashion_detection.data", YOLO, base_dir=fixture_set,
                              workers=0, batch_size=4)
    assert data.settings.classes == 10 and not data.settings.multiscale
    images, truths = data.batch(0)
    assert images.shape == (4, 3, 160, 160) and truths.shape == (4, 90, 5)
    assert ((truths[:, :, 2] > 0).sum(axis=1) >= 1).all()


def test_the_ssd_deploy_runs_in_our_engine_as_in_opencv(tmp_path):
    cv2 = need_module("cv2")
    graph = cs.init(cs.load(SSD_DEPLOY), seed=0)
    cs.save(graph, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    graph = cs.load(tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 160, 160)).astype(np.float32)
    names = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox", "detection_out"]
    ours = Executor(graph).run({"data": x}, outputs=names)
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "m.prototxt"), str(tmp_path / "m.caffemodel"))
    net.setInput(x)
    theirs = dict(zip(names, net.forward(names)))
    for name in names[:3]:
        want = theirs[name].reshape(-1)
        err = np.abs(ours[name].reshape(-1) - want).max()
        assert err <= 1e-4 * np.abs(want).max(), name
    assert ours["mbox_priorbox"].shape == (1, 2, PRIORS * 4)
    # detections: the same rows, in one canonical order (OpenCV orders by score)
    canon = lambda a: np.asarray(sorted(map(tuple, np.round(a.reshape(-1, 7)[a.reshape(-1, 7)[:, 2] > 0], 4).tolist())))  # noqa: E731
    got, want = canon(ours["detection_out"]), canon(theirs["detection_out"])
    assert len(want) > 0 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-4)


@pytest.mark.parametrize("phase, batch", [("TRAIN", 16), ("TEST", 10)])
def test_the_ssd_train_val_infers_its_multibox_shapes(phase, batch):
    graph = read_caffe(SSD_TRAIN_VAL, phase=phase)
    shapes = infer_shapes(graph)
    assert shapes.blobs["data"] == (batch, 3, 160, 160)
    assert shapes.blobs["mbox_loc"] == (batch, PRIORS * 4)
    assert shapes.blobs["mbox_conf"] == (batch, PRIORS * 11)
    assert shapes.blobs["mbox_priorbox"] == (1, 2, PRIORS * 4)
    types = {l.type for l in graph.layers}
    assert ("MultiBoxLoss" in types) == (phase == "TRAIN")
    assert ("DetectionEvaluate" in types) == (phase == "TEST")


def test_the_ssd_test_net_evaluates_on_the_generated_lmdb(fixture_set, tmp_path):
    from caffe_surgeon.evaluation.spec import build_evaluator, load_eval_graph
    graph = cs.init(read_caffe(SSD_TRAIN_VAL, phase="TEST"), seed=0)
    cs.save(graph, tmp_path / "tv.prototxt", tmp_path / "tv.caffemodel")
    spec = {"kind": "caffe", "acc_name": "detection_eval", "test_iter": 1,
            "base_dir": str(fixture_set)}
    g = load_eval_graph("caffe", [str(SSD_TRAIN_VAL), str(tmp_path / "tv.caffemodel")], spec)
    ev = build_evaluator(spec, g)
    score = ev.evaluate(g)
    assert 0 <= score <= 1
    # the label blob holds the set's boxes: SSD label = class + 1, normalised corners
    labels = ev.feeds[0]["label"].reshape(-1, 8)
    lines = (fixture_set / "test.txt").read_text().splitlines()
    for item, record in enumerate(ev.record_order[0]):
        rows = np.loadtxt(fixture_set / lines[record].replace("images", "labels", 1)
                          .replace(".png", ".txt"), ndmin=2)
        mine = labels[labels[:, 0] == item]
        want = sorted((c + 1, x - w / 2, y - h / 2, x + w / 2, y + h / 2) for c, x, y, w, h in rows)
        got = sorted(map(tuple, mine[:, [1, 3, 4, 5, 6]].tolist()))
        np.testing.assert_allclose(got, want, atol=2e-6)


def test_the_yolo_cfg_evaluates_on_the_generated_test_list(fixture_set):
    """Our `detector valid` side reads the set's valid list and labels (test.txt)."""
    from caffe_surgeon.evaluation.darknet_eval import DarknetDetectorEvaluator
    graph = cs.init(read_darknet(YOLO), seed=0)
    ev = DarknetDetectorEvaluator(fixture_set / "fashion_detection.data", graph,
                                  base_dir=fixture_set, batch_size=4)
    lines = (fixture_set / "test.txt").read_text().splitlines()
    assert len(ev.truths) == len(lines) == 8
    for truth, line in zip(ev.truths, lines):
        rows = np.loadtxt(fixture_set / line.replace("images", "labels", 1).replace(".png", ".txt"),
                          ndmin=2)
        want = np.stack([rows[:, 0], rows[:, 1] - rows[:, 3] / 2, rows[:, 2] - rows[:, 4] / 2,
                         rows[:, 1] + rows[:, 3] / 2, rows[:, 2] + rows[:, 4] / 2], 1)
        np.testing.assert_allclose(truth, want, atol=1e-9)
    assert 0 <= ev.evaluate(graph) <= 1
    assert ev.names() == [n.strip() for n in (fixture_set / "fashion.names").read_text().split()]
