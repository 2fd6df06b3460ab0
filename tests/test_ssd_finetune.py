"""End to end: a tiny SSD train_val (AnnotatedData with the fork's whole TRAIN
augmentation, MultiBoxLoss) trains with ``caffe-surgeon finetune``, its loss falls, its TEST
net's detection mAP (DetectionOutput + DetectionEvaluate on held-out images) rises, and the
caffemodel it writes runs in OpenCV with the outputs of our engine."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from assets import need_module
from ssd_lmdb import BODY, DEPLOY_INPUT, squares, train_val_with_test, write_lmdb

SOLVER = """base_lr: 0.01
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.0005
max_iter: 40
display: 5
snapshot: 40
type: "SGD"
random_seed: 1
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    need_module("torch")
    need_module("lmdb")
    from caffe_surgeon.cli.main import main
    d = tmp_path_factory.mktemp("ssd_finetune")
    write_lmdb(d / "train_lmdb", squares(16))
    write_lmdb(d / "test_lmdb", squares(8, seed=1))
    (d / "train_val.prototxt").write_text(train_val_with_test(str(d / "train_lmdb"),
                                                              str(d / "test_lmdb")))
    (d / "solver.prototxt").write_text(SOLVER)
    assert main(["init", str(d / "train_val.prototxt"), "-o", str(d / "init.caffemodel")]) == 0
    assert main(["finetune", str(d / "train_val.prototxt"), str(d / "init.caffemodel"),
                 "--solver", str(d / "solver.prototxt"), "-o", str(d / "out")]) == 0
    return d


def test_tiny_ssd_loss_falls_over_forty_iterations(trained):
    with open(trained / "out" / "finetune_log.csv") as f:
        losses = [float(r["value"]) for r in csv.DictReader(f)
                  if r["phase"] == "train" and r["name"] == "loss"]
    assert len(losses) == 8 and all(np.isfinite(losses))
    # augmented batches make single values noisy: the last three against the first
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses


def test_detection_map_on_held_out_images_rises_with_training(trained):
    import caffe_surgeon as cs
    from caffe_surgeon.evaluation.spec import build_evaluator
    scores = []
    for weights in ("init.caffemodel", "out/_iter_40.caffemodel"):
        model = cs.load(str(trained / "train_val.prototxt"), str(trained / weights),
                        phase="TEST")
        ev = build_evaluator({"kind": "caffe", "acc_name": "detection_eval", "test_iter": 2,
                              "base_dir": str(trained)}, model)
        scores.append(float(ev.evaluate(model)))
    # measured: 0.01 from the initial weights, 0.29 after 40 iterations
    assert scores[0] < 0.05 and scores[1] > 0.15, scores


def test_the_trained_caffemodel_runs_in_opencv_as_in_our_engine(trained):
    cv2 = need_module("cv2")
    import caffe_surgeon as cs
    from caffe_surgeon.engine.executor import forward
    deploy = trained / "deploy.prototxt"
    deploy.write_text(DEPLOY_INPUT + BODY)
    weights = trained / "out" / "_iter_40.caffemodel"
    x = np.random.default_rng(0).normal(0, 1, (1, 3, 32, 32)).astype(np.float32)
    outputs = ["mbox_loc", "mbox_conf", "mbox_priorbox"]
    ours = forward(cs.load(str(deploy), str(weights)), {"data": x}, outputs=outputs)
    net = cv2.dnn.readNetFromCaffe(str(deploy), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(x, "data")
    theirs = dict(zip(outputs, net.forward(outputs)))
    for name in outputs:
        a, b = np.asarray(ours[name]).reshape(-1), np.asarray(theirs[name]).reshape(-1)
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
    # the snapshot holds trained weights, not the initial ones
    first = [np.asarray(next(l for l in cs.load(str(deploy), str(w)).layers
                             if l.name == "conv1").weights["weight"])
             for w in (trained / "init.caffemodel", weights)]
    assert not np.array_equal(*first)
