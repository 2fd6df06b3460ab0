"""``prune -reconstruct N``: least-squares refit on training images, on the trained fixture.

Checked against independent runtimes: OpenCV runs the deploy prototxt with the
written sparse.caffemodel, the Debian darknet binary runs the transformed
Darknet twin; both must give the top-1 the summary printed.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

import caffe_surgeon as cs
from assets import darknet_binary, need_module, needs
from test_workflow import CONFIG, DATASET, FIX, PRUNING_INI, run_in

pytestmark = needs((DATASET / "t10k-images-idx3-ubyte.gz").exists(),
                   "Debian package dataset-fashion-mnist not installed")
COUNT, CALIB = 300, 64


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from tools.fashion_mnist import write_image_folder
    from tools.make_fashion_data import make_fashion_data
    d = tmp_path_factory.mktemp("reconstruct")
    make_fashion_data(d, COUNT)
    write_image_folder(d, "train", CALIB)  # train/, train_list.txt, train_darknet.txt
    for name in ("fashion_train_val.prototxt", "fashion.caffemodel", "fashion.cfg",
                 "fashion.weights", "fashion.names"):
        shutil.copy(FIX / name, d / name)
    (d / "fashion.data").write_text("classes=10\ntrain=train_darknet.txt\nvalid=t10k_valid.txt\n"
                                    "labels=fashion.names\nnames=fashion.names\ntop=5\n")
    (d / "config.prototxt").write_text(CONFIG)
    (d / "pruning.cfg").write_text(PRUNING_INI)
    from caffe_surgeon.cli import vai_p_caffe, vai_p_darknet
    assert run_in(d, vai_p_caffe.main, ["ana", "-config", "config.prototxt", "-no_progress"]) == 0
    assert run_in(d, vai_p_darknet.main, ["pruner", "ana", "pruning.cfg", "fashion.weights",
                                          "-no_progress"]) == 0
    return d


def summary(out: str) -> dict:
    rows = {}
    for line in out.splitlines():
        m = re.match(r"\| (\w+)\s+\| (\S+).*?\| (\S+).*?\| (\S+)", line)
        if m and m.group(1) != "Item":
            rows[m.group(1)] = m.group(3)
    return rows


def caffe_prune(work, capsys, *extra) -> dict:
    from caffe_surgeon.cli.vai_p_caffe import main
    capsys.readouterr()
    assert run_in(work, main, ["prune", "-config", "config.prototxt", *extra]) == 0
    out = capsys.readouterr().out
    rdir = work / "ws" / "regular_rate_0.5"
    return {"out": out, "acc": float(summary(out)["Accuracy"]), "ops": summary(out)["Operations"],
            "sparse": (rdir / "sparse.caffemodel").read_bytes(),
            "final": (rdir / "final.prototxt").read_text()}


def test_caffe_reconstruct_recovers_accuracy_and_opencv_agrees(work, capsys):
    plain = caffe_prune(work, capsys)
    refit = caffe_prune(work, capsys, "-reconstruct", str(CALIB))
    print(f"Caffe rate 0.5 on {COUNT} t10k images: top-1 {plain['acc']:.4f} plain, "
          f"{refit['acc']:.4f} reconstructed on {CALIB} training images")
    assert refit["ops"] == plain["ops"] and refit["final"] == plain["final"]
    assert refit["acc"] >= plain["acc"] + 0.05, (plain["acc"], refit["acc"])
    assert f"on {CALIB} training images from train_list.txt" in refit["out"]
    assert "refitted 6 layer(s)" in refit["out"]  # every conv that lost inputs; fc has too few rows
    again = caffe_prune(work, capsys, "-reconstruct", str(CALIB))
    assert again["sparse"] == refit["sparse"]  # deterministic, byte for byte

    # OpenCV: the original deploy prototxt with the written sparse weights
    cv2 = need_module("cv2")
    from tools.fashion_mnist import read_idx
    images, labels = read_idx("t10k")
    x = images[:COUNT, None].astype(np.float32) / np.float32(255)
    (work / "sparse.caffemodel").write_bytes(refit["sparse"])
    net = cv2.dnn.readNetFromCaffe(str(FIX / "fashion_deploy.prototxt"),
                                   str(work / "sparse.caffemodel"))
    net.setInput(x)
    top1 = float((net.forward().reshape(COUNT, -1).argmax(1) == labels[:COUNT]).mean())
    assert abs(top1 - refit["acc"]) <= 1 / COUNT, (top1, refit["acc"])


def test_darknet_reconstruct_and_the_darknet_binary_agrees(work, capsys):
    from caffe_surgeon.cli.vai_p_darknet import main
    capsys.readouterr()
    assert run_in(work, main, ["pruner", "prune", "pruning.cfg", "fashion.weights"]) == 0
    plain = float(summary(capsys.readouterr().out)["Accuracy"])
    assert run_in(work, main, ["pruner", "prune", "pruning.cfg", "fashion.weights",
                               "-reconstruct", str(CALIB)]) == 0
    out = capsys.readouterr().out
    refit = float(summary(out)["Accuracy"])
    assert f"on {CALIB} training images from train_darknet.txt" in out
    assert refit >= plain + 0.05, (plain, refit)
    assert run_in(work, main, ["pruner", "transform", "pruning.cfg", "dws/weights.prune"]) == 0
    t = cs.load(work / "dws" / "model-transform.cfg", work / "dws" / "model-transform.weights")
    assert cs.stat(t).total.ops == cs.stat(cs.load(work / "dws" / "fashion-prune.cfg")).total.ops
    darknet = str(darknet_binary())
    proc = subprocess.run([darknet, "classifier", "valid", "fashion.data", "dws/model-transform.cfg",
                           "dws/model-transform.weights"], cwd=work, capture_output=True,
                          text=True, timeout=600)
    m = re.findall(r"top 1: ([0-9.]+)", proc.stdout + proc.stderr)
    assert m, proc.stderr[-2000:]
    assert abs(float(m[-1]) - refit) <= 1 / COUNT, (m[-1], refit)


def test_reconstruct_refuses_missing_training_data_before_writing(work, capsys, tmp_path):
    from caffe_surgeon.cli import vai_p_caffe, vai_p_darknet
    d = tmp_path / "w"
    shutil.copytree(work, d, ignore=shutil.ignore_patterns("train", "train_list.txt", "dws*"))
    shutil.rmtree(d / "ws" / "regular_rate_0.5", ignore_errors=True)
    assert run_in(d, vai_p_caffe.main, ["prune", "-config", "config.prototxt",
                                        "-reconstruct", "8"]) == 2
    err = capsys.readouterr().err
    assert "TRAIN-phase data layer" in err and "train_list.txt" in err, err
    assert not (d / "ws" / "regular_rate_0.5").exists()  # nothing written
    assert run_in(d, vai_p_caffe.main, ["prune", "-config", "config.prototxt",
                                        "-reconstruct", "0"]) == 2
    assert "number of calibration images >= 1, got 0" in capsys.readouterr().err

    (d / "fashion.data").write_text("classes=10\nvalid=t10k_valid.txt\nlabels=fashion.names\n"
                                    "names=fashion.names\n")
    shutil.copytree(work / "dws", d / "dws")
    before = (d / "dws" / "weights.prune").read_bytes() if (d / "dws" / "weights.prune").exists() \
        else None
    assert run_in(d, vai_p_darknet.main, ["pruner", "prune", "pruning.cfg", "fashion.weights",
                                          "-reconstruct", "8"]) == 2
    err = capsys.readouterr().err
    assert "no 'train=' line" in err and "fashion.data" in err, err
    after = (d / "dws" / "weights.prune").read_bytes() if (d / "dws" / "weights.prune").exists() \
        else None
    assert after == before


def test_refit_keeps_the_sparse_model_and_its_transform_in_step(work):
    """The evaluated dense model is transform(sparse): the written file gives what was measured."""
    from caffe_surgeon.pruning import analyse, apply, node_keep
    from caffe_surgeon.pruning.reconstruct import reconstruct
    from caffe_surgeon.workflow.ana import AnaResult
    from caffe_surgeon.evaluation.spec import build_evaluator, load_eval_graph
    from caffe_surgeon.workflow.calibration import calibration_images
    from caffe_surgeon.workflow.prune_rate import prune_to_rate
    spec = {"kind": "caffe", "acc_name": "top-1", "test_iter": 6, "base_dir": str(work)}
    files = [str(work / "fashion_train_val.prototxt"), str(work / "fashion.caffemodel")]
    g = load_eval_graph("caffe", files, spec)
    ev = build_evaluator(spec, g)
    import os
    old = os.getcwd()
    os.chdir(work)
    try:
        calib = calibration_images("caffe", files, spec, CALIB, g, ev)
    finally:
        os.chdir(old)
    assert calib.count == CALIB and calib.feed["data"].shape == (CALIB, 1, 28, 28)
    ana = AnaResult.load(work / "ws" / ".ana.regular")
    out = prune_to_rate(g, ana, 0.5, evaluator=ev, input_shapes=ev.input_shapes,
                        calib=calib.feed)
    # the file written is what was measured: the sparse model itself scores the same
    assert out.summary.acc_compressed == pytest.approx(ev.evaluate(out.sparse), abs=1e-6)
    # and an independent route, refitting the dense model directly, agrees to rounding
    a0 = analyse(g, input_shapes=ev.input_shapes)
    direct = apply(g, out.plan, "dense", analysis=a0, keep_layout=True, calib=calib.feed)
    for la, lb in zip(out.dense.layers, direct.layers):
        assert la.weights.keys() == lb.weights.keys()
        for k in la.weights:
            assert la.weights[k].shape == lb.weights[k].shape, (la.name, k)
            assert np.allclose(la.weights[k], lb.weights[k], rtol=1e-4, atol=1e-5), (la.name, k)
    assert abs(ev.evaluate(direct) - out.summary.acc_compressed) <= 1 / 300
    # the refit changed the consumers: the plain pruned model differs from it
    a = analyse(g, input_shapes=ev.input_shapes)
    plain = apply(g, out.plan, "sparse", analysis=a, keep_layout=True)
    changed = [l.name for l, p in zip(out.sparse.layers, plain.layers)
               if any(not np.array_equal(l.weights[k], p.weights[k]) for k in l.weights)]
    assert set(out.refitted) <= set(changed) and out.refitted
    assert reconstruct(g, plain, a, node_keep(a, out.plan), calib.feed, create=False) == \
        out.refitted


def _train_val_with(work, train_layer: str, name: str) -> str:
    """The fixture's train_val with its TRAIN-phase data layer replaced."""
    text = (work / "fashion_train_val.prototxt").read_text()
    start = text.index("layer {")
    end = text.index("layer {", text.index("include { phase: TRAIN }"))
    assert "phase: TRAIN" in text[start:end]
    (work / name).write_text(text[:start] + train_layer + "\n" + text[end:])
    return str(work / name)


def test_calibration_from_an_lmdb_train_layer_and_a_wrong_crop(work):
    """LMDB Data layers feed calibration too (first records, key order, TEST transform), and
    TRAIN images that do not fit the evaluated net are refused with both shapes."""
    from caffe_surgeon.errors import ModelError
    from caffe_surgeon.workflow.calibration import calibration_images
    from caffe_surgeon.evaluation.spec import build_evaluator, load_eval_graph
    from tools.fashion_mnist import read_idx
    spec = {"kind": "caffe", "acc_name": "top-1", "test_iter": 6, "base_dir": str(work)}
    files = [str(work / "fashion_train_val.prototxt"), str(work / "fashion.caffemodel")]
    g = load_eval_graph("caffe", files, spec)
    ev = build_evaluator(spec, g)
    lmdb_layer = ('layer { name: "data" type: "Data" top: "data" top: "label" '
                  'include { phase: TRAIN }\n  transform_param { scale: 0.00392156862745098 '
                  'mirror: true }\n  data_param { source: "t10k_lmdb" backend: LMDB '
                  'batch_size: 64 } }')
    proto = _train_val_with(work, lmdb_layer, "lmdb_train_val.prototxt")
    calib = calibration_images("caffe", [proto, files[1]], spec, 10, g, ev)
    images, _ = read_idx("t10k")
    want = images[:10, None].astype(np.float32) * np.float32(0.00392156862745098)
    assert np.array_equal(calib.feed["data"], want)  # no mirror, key order
    assert calib.feed["label"].shape == (10,) and "t10k_lmdb" in calib.source

    cropped = lmdb_layer.replace("mirror: true", "crop_size: 24")
    proto = _train_val_with(work, cropped, "crop_train_val.prototxt")
    with pytest.raises(ModelError, match=r"\(1, 24, 24\).*'data' takes \(1, 28, 28\)"):
        calibration_images("caffe", [proto, files[1]], spec, 10, g, ev)


def test_carried_activations_refit_exactly_as_recomputed_ones(work):
    """reconstruct carries each chunk's pruned values from consumer to consumer; with no
    room to carry them it recomputes from the input: the refitted weights are the same bits."""
    from caffe_surgeon.pruning import analyse, apply, make_plan, node_keep
    from caffe_surgeon.pruning.reconstruct import reconstruct
    from tools.fashion_mnist import read_idx
    g = cs.load(FIX / "fashion_deploy.prototxt", FIX / "fashion.caffemodel")
    a = analyse(g)
    plan = make_plan(a, ratio=0.4, divisor=2)
    images, _ = read_idx("train")
    calib = {"data": images[:20, None].astype(np.float32) / np.float32(255)}  # 3 chunks
    fits = []
    # none carried, about one chunk's values (some chunks carried, some recomputed), all
    for budget in (0, 300_000, 1 << 30):
        pruned = apply(g, plan, "dense", analysis=a)
        names = reconstruct(g, pruned, a, node_keep(a, plan), calib, cache_bytes=budget)
        fits.append((names, pruned))
    assert fits[0][0] == fits[1][0] == fits[2][0] and len(fits[0][0]) == 6
    for other in fits[1:]:
        for la, lb in zip(fits[0][1].layers, other[1].layers):
            for k in la.weights:
                assert np.array_equal(la.weights[k], lb.weights[k]), (la.name, k)


def test_a_layer_with_nowhere_to_put_an_offset_is_refitted_for_the_folded_one(tmp_path):
    """keep_layout without a bias or a BatchNorm after the consumer: its offset cannot move,
    so its weights are fitted with the offset fixed at the folded one."""
    from caffe_surgeon.engine import Executor
    from caffe_surgeon.pruning import analyse, apply, make_plan, node_keep
    from caffe_surgeon.pruning import reconstruct as rc
    text = ('name: "n" input: "data" input_shape { dim: 1 dim: 3 dim: 12 dim: 12 }\n'
            'layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param '
            '{ num_output: 16 kernel_size: 3 pad: 1 } }\n'
            'layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }\n'
            'layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param '
            '{ num_output: 8 kernel_size: 3 pad: 1 bias_term: false } }\n')
    (tmp_path / "n.prototxt").write_text(text)
    g = cs.init(cs.load(tmp_path / "n.prototxt"), seed=3)
    a = analyse(g)
    plan = make_plan(a, ratio=0.5, divisor=2)
    x = np.random.default_rng(0).standard_normal((64, 3, 12, 12)).astype(np.float32)
    want = Executor(g).run({"data": x}, ["c2"])["c2"]

    def error(model):
        return float(np.abs(Executor(model).run({"data": x}, ["c2"])["c2"] - want).mean())

    folded = apply(g, plan, "sparse", analysis=a, keep_layout=True)
    fitted = apply(g, plan, "sparse", analysis=a, keep_layout=True)
    assert rc.offset_target(fitted, a, g.index("c2"), False) is None
    assert rc.reconstruct(g, fitted, a, node_keep(a, plan), {"data": x}, create=False) == ["c2"]
    e_fold, e_fit = error(folded), error(fitted)
    print(f"c2 output error: folded {e_fold:.4f}, refitted with the offset fixed {e_fit:.4f}")
    assert e_fit < 0.8 * e_fold
