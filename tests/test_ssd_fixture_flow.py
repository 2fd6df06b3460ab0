"""The flow users run on the SSD fixture (``fixtures/detection/ssd-fashion_config.prototxt``):
``vai_p_caffe ana``, ``prune`` at 0.5, ``finetune``, ``transform``, and what it needs of the
pruning core: a pruned snapshot written from the TRAIN net, whose MultiBoxLoss has no
forward outside the trainer."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs
from assets import fashion_data, need_module
from caffe_surgeon.caffe.reader import read_caffe
from caffe_surgeon.pruning.groups import analyse
from caffe_surgeon.pruning.plan import make_plan
from caffe_surgeon.pruning.surgery import apply

DETECTION = Path(__file__).resolve().parents[1] / "fixtures" / "detection"
TRAIN_VAL = DETECTION / "ssd-fashion_train_val.prototxt"
WEIGHTS = DETECTION / "ssd-fashion.caffemodel"


def test_a_sparse_model_of_the_train_net_is_the_test_nets_despite_its_multibox_loss():
    # folding removed channels' constants runs the net's layers up to the consumers;
    # the TRAIN net (what finetune snapshots) ends in MultiBoxLoss, which has no forward
    sparse = {}
    for phase in ("TRAIN", "TEST"):
        graph = cs.load(TRAIN_VAL, WEIGHTS, phase=phase)
        a = analyse(graph)
        plan = make_plan(a, ratios={"conv2": 0.5, "conv5": 0.5})
        sparse[phase] = {l.name: l.weights for l in apply(graph, plan, "sparse", analysis=a,
                                                          keep_layout=True).layers}
    assert "mbox_loss" in sparse["TRAIN"] and "mbox_loss" not in sparse["TEST"]
    conv2 = sparse["TRAIN"]["conv2"]["weight"]
    assert int((np.abs(conv2).sum(axis=(1, 2, 3)) == 0).sum()) == 16  # half of 32 removed
    for name, arrays in sparse["TEST"].items():
        for key, arr in arrays.items():
            np.testing.assert_array_equal(sparse["TRAIN"][name][key], arr, err_msg=name)


@pytest.mark.slow
def test_the_vai_p_flow_runs_on_the_ssd_fixture_and_its_result_runs_in_opencv(tmp_path):
    """ana (one ratio, 2 test batches), prune 0.5, finetune 2 iterations, transform: the
    dense model has half the operations and OpenCV gives the detections of our engine."""
    fashion_data()
    need_module("lmdb")
    need_module("torch")
    cv2 = need_module("cv2")
    from caffe_surgeon.cli.vai_p_caffe import main
    from tools.make_detection_fixture import make_detection_fixture
    make_detection_fixture(tmp_path / "set", train=4, test=20)
    work = tmp_path / "work"
    work.mkdir()
    for name in ("ssd-fashion_train_val.prototxt", "ssd-fashion_deploy.prototxt",
                 "ssd-fashion.caffemodel", "ssd-fashion_finetune_solver.prototxt"):
        shutil.copy(DETECTION / name, work / name)
    for name in ("train_lmdb", "test_lmdb", "labelmap.prototxt", "test_name_size.txt"):
        (work / name).symlink_to(tmp_path / "set" / name)
    config = (DETECTION / "ssd-fashion_config.prototxt").read_text()
    config = config.replace("test_iter: 10 ", "test_iter: 2 ") + "ratios: 0.5\n"
    (work / "config.prototxt").write_text(config)
    import os
    old = os.getcwd()
    os.chdir(work)
    try:
        for args in (["ana", "-config", "config.prototxt", "-no_progress"],
                     ["prune", "-config", "config.prototxt"],
                     ["finetune", "-config", "config.prototxt", "-max_iter", "2"],
                     ["transform", "-model", "ssd-fashion_deploy.prototxt", "-weights",
                      "ws/regular_rate_0.5/snapshots/_iter_2.caffemodel", "-output",
                      "dense.caffemodel"]):
            assert main(args) == 0, args
    finally:
        os.chdir(old)
    dense = cs.load(work / "dense.prototxt", work / "dense.caffemodel")
    full = cs.stat(cs.load(work / "ssd-fashion_deploy.prototxt", WEIGHTS)).total.ops
    assert 0.49 <= 1 - cs.stat(dense).total.ops / full <= 0.52
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 160, 160)).astype(np.float32)
    from caffe_surgeon.engine import Executor
    mine = np.asarray(Executor(dense).run({"data": x})["detection_out"]).reshape(-1, 7)
    net = cv2.dnn.readNetFromCaffe(str(work / "dense.prototxt"), str(work / "dense.caffemodel"))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(x, "data")
    theirs = np.asarray(net.forward("detection_out")).reshape(-1, 7)
    order = lambda r: r[np.lexsort((-r[:, 2], r[:, 1], r[:, 0]))]  # noqa: E731
    assert mine.shape == theirs.shape and len(mine) > 2
    np.testing.assert_allclose(order(mine), order(theirs), atol=1e-4)
    assert read_caffe(work / "dense.prototxt").layers  # the written definition re-reads
