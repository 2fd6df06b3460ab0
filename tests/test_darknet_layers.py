"""The Darknet forward layers against slow twins: darknet's C loops and activations, transcribed.

Every forward function with non-trivial index arithmetic or vectorisation is
checked against ``darknet_reference.py`` (darknet's C loops transcribed), and
every activation against a scalar transcription of ``activations.h``; the
batch-norm flavours and the sections the engine refuses are checked here too.
Whole networks against OpenCV, libdarknet and the darknet binary:
``test_darknet_engine.py``.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs

import darknet_reference as ref
from assets import DARKNET_SHARE

from caffe_surgeon.engine import Executor
from caffe_surgeon.images import darknet_image as image
from caffe_surgeon.engine.darknet_activations import ACTIVATIONS
from caffe_surgeon.engine.ops import RunContext, op_for
from caffe_surgeon.errors import ModelError
from caffe_surgeon.graph import Layer
from caffe_surgeon.layers.registry import REGISTRY
from darknet_io import read_darknet

F32 = np.float32
DEBIAN = DARKNET_SHARE
rng = np.random.default_rng(0)


def rand(*shape, lo_=-1.0, hi=1.0):
    return rng.uniform(lo_, hi, shape).astype(F32)


def make(type_, bottoms=("data",), **params):
    return Layer(f"{type_}_0", type_, list(bottoms), [f"{type_}_0"], params)


def out_shape(layer, *shapes):
    return REGISTRY[("darknet", layer.type)].infer(layer, list(shapes))[0]


def op(layer, *inputs, bn="pjreddie", **ctx_attrs):
    ctx = RunContext(darknet_bn=bn)
    for k, v in ctx_attrs.items():
        setattr(ctx, k, v)
    return op_for("darknet", layer)(layer, list(inputs), ctx)[0]


# =========================================================== 1. slow twins
@pytest.mark.parametrize("size, stride, padding, sx, sy, hw", [
    (2, 2, None, None, None, (8, 10)), (2, 1, None, None, None, (7, 7)),   # yolov3-tiny's stride 1
    (3, 2, None, None, None, (9, 8)), (5, 1, None, None, None, (6, 6)),    # SPP
    (3, 2, 0, None, None, (9, 9)), (4, 3, 2, None, None, (10, 11)),
    (3, 1, None, 2, 1, (7, 9)), (1, 1, None, None, None, (3, 4))])
def test_maxpool_and_local_avgpool_match_darknet_loops(size, stride, padding, sx, sy, hw):
    params = {k: v for k, v in dict(size=size, stride=stride, padding=padding, stride_x=sx,
                                    stride_y=sy).items() if v is not None}
    x = rand(2, 3, *hw)
    pad = padding if padding is not None else size - 1
    for type_, twin in (("maxpool", ref.forward_maxpool), ("local_avgpool", ref.forward_local_avgpool)):
        layer = make(type_, **params)
        _, _, oh, ow = out_shape(layer, x.shape)
        want = twin(x, size, sx or stride, sy or stride, pad, oh, ow)
        np.testing.assert_allclose(op(layer, x), want, rtol=1e-6, atol=1e-7, err_msg=type_)


def test_maxpool_depth_matches_alexeyab_loop():
    x = rand(2, 7, 3, 4)
    layer = make("maxpool", maxpool_depth=1, out_channels=3)
    np.testing.assert_array_equal(op(layer, x), ref.maxpool_depth(x, 3))


@pytest.mark.parametrize("type_, stride, reverse, flatten, shape", [
    ("reorg", 2, 0, 0, (2, 8, 4, 6)), ("reorg", 2, 1, 0, (2, 8, 3, 5)),
    ("reorg", 3, 0, 0, (1, 9, 6, 3)), ("reorg", 2, 0, 1, (2, 4, 4, 6)),
    ("reorg", 2, 1, 1, (1, 8, 2, 3)),
    ("reorg3d", 2, 0, 0, (2, 3, 4, 6)), ("reorg3d", 2, 1, 0, (2, 16, 2, 3))])
def test_reorg_matches_reorg_cpu(type_, stride, reverse, flatten, shape):
    x = rand(*shape)
    layer = make(type_, stride=stride, reverse=reverse, flatten=flatten)
    target = out_shape(layer, x.shape)
    n, c, h, w = shape
    if flatten:
        want = ref.flatten(x, w * h, c, n, not reverse)
    elif type_ == "reorg":  # pjreddie: reorg_cpu over the input geometry
        want = ref.reorg_cpu(x, w, h, c, n, stride, reverse)
    else:  # AlexeyAB reorg3d: over the output geometry
        want = ref.reorg_cpu(x, target[3], target[2], target[1], n, stride, reverse)
    np.testing.assert_array_equal(op(layer, x), want.reshape(target))


def test_reorg_extra_appends_zeros():
    x = rand(1, 1, 3, 3)
    y = op(make("reorg", stride=1, extra=1), x)
    assert y.shape == (1, 10, 1, 1) and y[0, 9, 0, 0] == 0
    np.testing.assert_array_equal(y[0, :9, 0, 0], x.reshape(-1))


@pytest.mark.parametrize("prev, add, alpha, beta", [
    ((2, 4, 6, 6), (2, 4, 6, 6), 1, 1), ((2, 6, 5, 5), (2, 4, 5, 5), 1, 1),   # fewer channels
    ((1, 3, 5, 5), (1, 6, 5, 5), 1, 1),                                          # more channels
    ((2, 4, 3, 3), (2, 5, 6, 6), 1, 1),                                          # stride 2 (resnets)
    ((1, 4, 8, 8), (1, 3, 4, 4), 1, 1),                                          # sample 2
    ((1, 4, 7, 7), (1, 4, 3, 3), 1, 1),                                          # 7/3: sample 2
    ((1, 2, 4, 4), (1, 2, 4, 4), 0.5, -2.0)])
def test_shortcut_pjreddie_matches_shortcut_cpu(prev, add, alpha, beta):
    a, b = rand(*prev), rand(*add)
    layer = make("shortcut", bottoms=("p", "f"), alpha=alpha, beta=beta, activation="linear")
    got = op(layer, a, b)
    want = ref.shortcut_cpu(prev[0], add[3], add[2], add[1], b, prev[3], prev[2], prev[1],
                            alpha, beta, a.copy())
    np.testing.assert_allclose(got, want.reshape(prev), rtol=1e-6, atol=1e-6)


def test_shortcut_rejects_what_darknet_asserts():
    layer = make("shortcut", bottoms=("p", "f"))
    with pytest.raises(ModelError, match="width and height ratios"):
        op(layer, rand(1, 2, 4, 8), rand(1, 2, 4, 4))


@pytest.mark.parametrize("weights_type", ["none", "per_feature", "per_channel"])
@pytest.mark.parametrize("norm", ["none", "relu", "softmax"])
def test_shortcut_alexeyab_matches_multilayer_cpu(weights_type, norm):
    prev, adds = rand(2, 4, 3, 3), [rand(2, 3, 3, 3), rand(2, 6, 3, 3)]
    layer = make("shortcut", bottoms=("p", "f1", "f2"), weights_type=weights_type,
                 weights_normalization=norm)
    shapes = REGISTRY[("darknet", "shortcut")].weight_shapes(layer, [prev.shape] + [a.shape for a in adds])
    layer.weights = {k: rand(*s, lo_=-1.5, hi=1.5) for k, s in shapes.items()}
    got = op(layer, prev, *adds, bn="alexeyab")
    wflat = layer.weights["weights"].reshape(-1) if shapes else None
    code = {"none": 0, "relu": 1, "softmax": 2}[norm] if shapes else 0
    want = ref.shortcut_multilayer_cpu(prev.size, prev[0].size, 2, 2, [a[0].size for a in adds],
                                       adds, prev, wflat, wflat.size if shapes else 0, code)
    np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-5, atol=1e-6)


def test_shortcut_flavours_differ_only_for_spatial_mismatch():
    layer = make("shortcut", bottoms=("p", "f"))
    a, b = rand(1, 4, 4, 4), rand(1, 6, 4, 4)
    np.testing.assert_array_equal(op(layer, a, b), op(layer, a, b, bn="alexeyab"))
    c = rand(1, 4, 8, 8)
    assert not np.allclose(op(layer, a, c), op(layer, a, c, darknet_flavour="alexeyab"))


@pytest.mark.parametrize("stride, scale, shape", [
    (2, 1, (1, 3, 4, 5)), (3, 0.5, (2, 2, 3, 2)), (-2, 1, (1, 3, 6, 8)),
    (-2, 2.0, (2, 2, 7, 9)), (-3, 1, (2, 1, 7, 6))])
def test_upsample_matches_upsample_cpu(stride, scale, shape):
    x = rand(*shape)
    layer = make("upsample", stride=stride, scale=scale)
    target = out_shape(layer, x.shape)
    n, c, h, w = shape
    if stride > 0:
        want = np.zeros(target, F32)
        ref.upsample_cpu(x, w, h, c, n, stride, 1, scale, want)
    else:  # reverse: upsample_cpu backwards accumulates into the small output
        want = np.zeros(target, F32)
        ref.upsample_cpu(want, target[3], target[2], c, n, -stride, 0, scale, x.copy())
    np.testing.assert_allclose(op(layer, x), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("src, dst", [((3, 5, 7), (11, 4)), ((3, 9, 6), (3, 13)),
                                      ((1, 1, 5), (4, 3)), ((3, 4, 4), (1, 1)), ((3, 7, 1), (2, 5))])
def test_resize_image_is_darknets_bit_for_bit(src, dst):
    im = rand(*src, lo_=0, hi=1)
    np.testing.assert_array_equal(image.resize_image(im, *dst), ref.resize_image(im, *dst))


def test_letterbox_centres_on_grey():
    im = rand(3, 6, 10, lo_=0, hi=1)
    out = image.letterbox_image(im, 8, 8)  # 10x6 -> 8x4, rows 2..5
    np.testing.assert_array_equal(out[:, 2:6], ref.resize_image(im, 8, 4))
    assert (out[:, :2] == F32(.5)).all() and (out[:, 6:] == F32(.5)).all()


@pytest.mark.parametrize("size, stride, pad", [(3, 1, 1), (3, 2, 0), (1, 1, 0), (2, 1, 0)])
def test_local_matches_im2col_gemm_loops(size, stride, pad):
    x = rand(2, 3, 6, 5)
    layer = make("local", size=size, stride=stride, pad=pad, filters=4, activation="linear")
    shapes = REGISTRY[("darknet", "local")].weight_shapes(layer, [x.shape])
    layer.weights = {k: rand(*s) for k, s in shapes.items()}
    _, n, oh, ow = out_shape(layer, x.shape)
    want = ref.forward_local(x, layer.weights["weights"], layer.weights["biases"], n, size,
                             stride, pad, oh, ow)
    np.testing.assert_allclose(op(layer, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size, stride, padding, bn", [(4, 2, 1, 0), (3, 1, 1, 1), (2, 2, 0, 0), (3, 2, 0, 1)])
def test_deconvolutional_matches_gemm_col2im_loops(size, stride, padding, bn):
    x = rand(2, 3, 4, 5)
    layer = make("deconvolutional", size=size, stride=stride, padding=padding, filters=4,
                 batch_normalize=bn, activation="linear")
    shapes = REGISTRY[("darknet", "deconvolutional")].weight_shapes(layer, [x.shape])
    layer.weights = {k: rand(*s, lo_=0.5, hi=1.5) for k, s in shapes.items()}
    want = ref.forward_deconvolutional(x, layer.weights["weights"], 4, size, stride, padding)
    w = {k: v.astype(np.float64).reshape(1, -1, 1, 1) for k, v in layer.weights.items() if v.ndim == 1}
    if bn:
        want = (want - w["rolling_mean"]) / (np.sqrt(w["rolling_variance"]) + 1e-6) * w["scales"]
    want = want + w["biases"]
    np.testing.assert_allclose(op(layer, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [5, 3, 4])
def test_lrn_matches_darknets_running_sum(size):
    x = rand(2, 9, 3, 2)
    layer = make("normalization", size=size, alpha=0.2, beta=0.75, kappa=2)
    np.testing.assert_allclose(op(layer, x), ref.forward_normalization(x, size, 0.2, 0.75, 2),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("params", [dict(), dict(scale_x_y=1.05), dict(scale_x_y=2.0, new_coords=1)])
def test_yolo_forward_matches_entry_index_loops(params):
    x = rand(2, 3 * 7, 4, 5, lo_=-4, hi=4)
    layer = make("yolo", classes=2, mask=[0, 1, 2], num=6, **params)
    want = ref.forward_yolo(x, 3, 2, params.get("scale_x_y", 1.0), params.get("new_coords", 0))
    np.testing.assert_allclose(op(layer, x), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("params", [dict(), dict(scale_x_y=1.05), dict(scale_x_y=2.0, new_coords=1)])
def test_yolo_values_of_some_cells_are_the_layers_bits_there(params):
    """An evaluator activates only the (cell, anchor) rows above its threshold, and the
    objectness on its own: the same bits as the layer's output at those places."""
    from caffe_surgeon.detection.darknet_boxes import yolo_cells
    from caffe_surgeon.engine.darknet_ops import yolo_objectness, yolo_values
    x = rand(2, 3 * 7, 4, 5, lo_=-4, hi=4)
    layer = make("yolo", classes=2, mask=[0, 1, 2], num=6, **params)
    full = op(layer, x)
    for j in range(2):
        raw, out = yolo_cells(layer, x[j]), yolo_cells(layer, full[j])
        obj = yolo_objectness(layer, np.ascontiguousarray(raw[:, :, 4]))
        assert np.array_equal(obj.view(np.uint32), np.ascontiguousarray(out[:, :, 4]).view(np.uint32))
        cell, n = np.nonzero(obj > np.float32(0.3))
        assert 0 < len(cell) < obj.size
        rows = yolo_values(layer, raw[cell, n], 1)
        assert np.array_equal(rows.view(np.uint32), out[cell, n].view(np.uint32))


@pytest.mark.parametrize("softmax, background", [(1, 0), (0, 0), (1, 1)])
def test_region_forward_matches_loops(softmax, background):
    x = rand(2, 2 * 8, 3, 4, lo_=-4, hi=4)
    layer = make("region", classes=3, coords=4, num=2, softmax=softmax, background=background)
    np.testing.assert_allclose(op(layer, x), ref.forward_region(x, 2, 3, 4, softmax, background),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("noadjust", [0, 1])
def test_crop_is_a_centre_crop_rescaled_to_minus_one_one(noadjust):
    x = rand(2, 3, 9, 8)
    layer = make("crop", crop_height=5, crop_width=4, noadjust=noadjust)
    np.testing.assert_array_equal(op(layer, x), ref.forward_crop(x, 5, 4, noadjust))


def test_softmax_groups_and_temperature():
    x = rand(2, 6, 1, 1, lo_=-3, hi=3)
    y = op(make("softmax", groups=2, temperature=3), x)
    for b in range(2):
        for g in range(2):
            want = ref.softmax(x[b].reshape(-1)[g * 3:(g + 1) * 3].astype(np.float64), 3, 3.0, 1)
            np.testing.assert_allclose(y[b].reshape(-1)[g * 3:(g + 1) * 3], want, rtol=1e-6)


def test_detection_softmax_per_cell():
    x = rand(1, 2 * 2 * (3 + 2 * 5), 1, 1)
    y = op(make("detection", side=2, num=2, classes=3, coords=4, softmax=1), x)
    for cell in range(4):
        want = ref.softmax(x.reshape(-1)[cell * 3:cell * 3 + 3].astype(np.float64), 3, 1.0, 1)
        np.testing.assert_allclose(y.reshape(-1)[cell * 3:cell * 3 + 3], want, rtol=1e-6)
    np.testing.assert_array_equal(y.reshape(-1)[12:], x.reshape(-1)[12:])


def _f(v):  # C float rounding
    return float(F32(v))


#: scalar transcriptions of activations.h (pjreddie) / activations.c (AlexeyAB)
C_ACTIVATIONS = {
    "linear": lambda x: x,
    "logistic": lambda x: 1. / (1. + math.exp(-x)) if x > -700 else 0.0,
    "loggy": lambda x: 2. / (1. + math.exp(-x)) - 1 if x > -700 else -1.0,
    "relu": lambda x: x * (x > 0),
    "relu6": lambda x: min(max(x, 0), 6),
    "elu": lambda x: (x >= 0) * x + (x < 0) * (math.exp(x) - 1),
    "selu": lambda x: (x >= 0) * 1.0507 * x + (x < 0) * 1.0507 * 1.6732 * (math.exp(x) - 1),
    "gelu": lambda x: 0.5 * x * (1 + math.tanh(0.797885 * x + 0.035677 * x ** 3)),
    "relie": lambda x: x if x > 0 else .01 * x,
    "ramp": lambda x: x * (x > 0) + .1 * x,
    "leaky": lambda x: x if x > 0 else .1 * x,
    "revleaky": lambda x: x if x > 0 else .1 * x,
    "tanh": lambda x: math.tanh(x),
    "plse": lambda x: .01 * (x + 4) if x < -4 else (.01 * (x - 4) + 1 if x > 4 else .125 * x + .5),
    "stair": lambda x: (math.floor(x / 2.) if int(math.floor(x)) % 2 == 0
                        else (x - math.floor(x)) + math.floor(x / 2.)),
    "hardtan": lambda x: -1 if x < -1 else (1 if x > 1 else x),
    "lhtan": lambda x: .001 * x if x < 0 else (.001 * (x - 1) + 1 if x > 1 else x),
    "swish": lambda x: x * (1. / (1. + math.exp(-x)) if x > -700 else 0.0),
    "mish": lambda x: x * math.tanh(x if x > 20 else (math.exp(x) if x < -20 else math.log(math.exp(x) + 1))),
    "hard_mish": lambda x: x if x > 0 else (x * x / 2 + x if x > -2 else 0),
}


@pytest.mark.parametrize("name", sorted(C_ACTIVATIONS))
def test_activation_matches_activations_h(name):
    grid = np.concatenate([np.linspace(-30, 30, 1201), [-20.5, -20, -4, -2, -1, -.5, 0, .5, 1, 1.5,
                                                        2, 2.5, 3, 4, 6, 6.5, 20, 20.5]]).astype(F32)
    got = ACTIVATIONS[name](grid.reshape(1, 1, 1, -1)).reshape(-1)
    want = np.array([_f(C_ACTIVATIONS[name](float(v))) for v in grid], F32)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6, err_msg=name)


def test_normalize_channels_activations():
    x = rand(2, 4, 3, 3, lo_=-2, hi=2)
    pos = np.maximum(x, 0).astype(np.float64)
    np.testing.assert_allclose(ACTIVATIONS["normalize_channels"](x),
                               np.where(x > 0, pos / (1e-4 + pos.sum(1, keepdims=True)), 0), rtol=1e-6)
    e = np.exp(x.astype(np.float64) - x.max(1, keepdims=True))
    np.testing.assert_allclose(ACTIVATIONS["normalize_channels_softmax_maxval"](x),
                               e / (1e-4 + e.sum(1, keepdims=True)), rtol=1e-6)


def test_all_activations_in_shipped_cfgs_are_known():
    names = set()
    for root in (DEBIAN / "cfg", Path(__file__).resolve().parents[2] / "shared" / "zoo" / "darknet"):
        for cfg in root.rglob("*.cfg"):
            names |= set(re.findall(r"^\s*activation\s*=\s*(\w+)", cfg.read_text(errors="replace"), re.M))
    assert names and names <= set(ACTIVATIONS), names - set(ACTIVATIONS)


def test_unknown_activation_is_an_error_not_relu():
    with pytest.raises(ModelError, match="unknown activation 'leakyy'.*silently use relu"):
        op(make("activation", activation="leakyy"), rand(1, 1, 2, 2))


@pytest.mark.parametrize("flavour", ["pjreddie", "alexeyab"])
def test_batchnorm_flavours(flavour):
    x = rand(1, 3, 2, 2)
    layer = make("convolutional", filters=2, size=1, batch_normalize=1, activation="linear")
    layer.weights = {"biases": rand(2), "scales": rand(2), "rolling_mean": rand(2),
                     "rolling_variance": np.array([1e-6, 0.7], F32), "weights": rand(2, 3, 1, 1)}
    w = {k: v.astype(np.float64) for k, v in layer.weights.items()}
    conv = np.einsum("oc,nchw->nohw", w["weights"][:, :, 0, 0], x).transpose(1, 0, 2, 3)
    conv = conv - w["rolling_mean"][:, None, None, None]
    var = w["rolling_variance"][:, None, None, None]
    norm = conv / (np.sqrt(var) + 1e-6) if flavour == "pjreddie" else conv / np.sqrt(var + 1e-5)
    want = (norm * w["scales"][:, None, None, None] + w["biases"][:, None, None, None]).transpose(1, 0, 2, 3)
    np.testing.assert_allclose(op(layer, x, bn=flavour), want, rtol=1e-5, atol=1e-5)


def test_refused_sections_say_why(tmp_path):
    cfg = tmp_path / "rnn.cfg"
    cfg.write_text("[net]\ninputs=4\n[rnn]\noutput=3\n")
    g = cs.init(read_darknet(cfg), seed=0)
    with pytest.raises(ModelError, match=r"rnn_0.*\[rnn\] has no forward.*hidden state"):
        Executor(g).run({"data": np.zeros((1, 4, 1, 1), F32)})
    for layer, why in ((make("region", tree="data/9k.tree", num=1, classes=1), "softmax tree"),
                       (make("softmax", tree="data/9k.tree"), "hierarchical softmax"),
                       (make("convolutional", xnor=1, filters=1), "xnor")):
        with pytest.raises(ModelError, match=why):
            op(layer, rand(1, 6, 2, 2))
