"""ONNX export of Caffe layer types (standard operators, opset 13 and later).

Each function mirrors the NumPy engine's forward of the same type (``engine/caffe_ops.py``
and its siblings), so onnxruntime on the exported graph gives the engine's outputs. Where
Caffe's arithmetic is not an ONNX operator's, it is spelled out:

* Pooling: Caffe sizes the output with ceil (unless told floor) and drops a last window that
  would start in the padding; ONNX pads must then be explicit and may differ per side. The
  end pad is ``(out - 1) * stride + kernel - (size + pad)``; a negative one (floor rounding
  or the dropped window) crops the input first. AVE divides by the window clipped to the
  padded input (``size + pad``), never by the extra ceil area: the padding Caffe counts is
  added as zeros by a Pad node and AveragePool excludes only its own extra pads.
* BatchNorm keeps Caffe's running statistics as a BatchNormalization node (its
  ``scale_factor`` divided out; the Xilinx form's scale and bias as the node's own).
* Nearest resizes use Gather with the engine's source indices (exact); bilinear ones combine
  the engine's own taps with Gather/Mul/Add, so no ONNX Resize rounding mode is relied on.
* Reorg is a fixed permutation of each image's values: a Gather whose indices come from
  running the engine's index arithmetic (``onnx_gather.permutation``).
"""
from __future__ import annotations

import numpy as np

from ..layers.caffe_geometry import (canonical_axis, conv_geometry, crop_windows, interp_window,
                                     join_axis, permute_order, pool_geometry, reorg_stride,
                                     slice_bounds, sub, upsample_factors)
from ..layers.registry import spec_for
from . import onnx_gather as gather
from .onnx_table import drop, export

F32 = np.float32


def _emit(b, layer, op, inputs, i=0, **attrs):
    """One node computing top ``i`` of ``layer``, named after the layer."""
    return b.node(op, inputs, [b.write(layer.tops[i])], **attrs)


# ---------------------------------------------------------------- sources and sinks
@export("caffe", "Input", "Data", "ImageData", "WindowData", "AnnotatedData", "HDF5Data",
        "MemoryData", "Python")
def data_source(b, layer):
    """Each top becomes a graph input (batch dynamic); a top only losses read is left out."""
    if layer.bottoms:
        raise b.refusal("a Python layer with bottoms computes in its own code; only a Python "
                        "data source (no bottoms) exports, as a graph input")
    for i, top in enumerate(layer.tops):
        b.add_input(top, b.out_shape(i))


@export("caffe", "DummyData")
def dummy_data(b, layer):
    fillers = sub(layer, "dummy_data_param").get("data_filler", [])
    for i, top in enumerate(layer.tops):
        f = fillers[i] if i < len(fillers) else (fillers[0] if fillers else {})
        if f.get("type", "constant") != "constant":
            raise b.refusal(f"filler '{f.get('type')}' is random; only constant fillers export")
        value = np.full(b.out_shape(i), f.get("value", 0.0), F32)
        b.node("Identity", [b.const(value, "fill")], [b.write(top)])


# losses and metrics (training and evaluation only) and sinks: not part of a deployed net
drop("caffe", "Accuracy", "SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss",
     "DetectionEvaluate", "Silence", "ContrastiveLoss", "HingeLoss", "InfogainLoss", "L1Loss",
     "MultiBoxLoss", "MultinomialLogisticLoss", "SmoothL1Loss")


# ---------------------------------------------------------------- weighted
def conv_weights(b, layer):
    """(weight, bias or None) of a convolution (``--fold-bn`` folds before export)."""
    return layer.weights["weight"], layer.weights.get("bias")


def _conv(b, layer, transposed: bool):
    kernel, stride, pad, dilation = conv_geometry(sub(layer, "convolution_param"))
    w, bias = conv_weights(b, layer)
    wname = b.const(w, "weight")
    for i, x in enumerate(b.inputs()):
        group = spec_for("caffe", layer).group(layer, b.in_shape(i)[1])
        ins = [x, wname] + ([b.const(bias, "bias")] if bias is not None else [])
        _emit(b, layer, "ConvTranspose" if transposed else "Conv", ins, i,
              kernel_shape=list(kernel), strides=list(stride), dilations=list(dilation),
              pads=[pad[0], pad[1], pad[0], pad[1]], group=group)


@export("caffe", "Convolution", "ConvolutionDepthwise", "DepthwiseConvolution", "ConvolutionFixed")
def convolution(b, layer):
    _conv(b, layer, transposed=False)


@export("caffe", "Deconvolution")
def deconvolution(b, layer):
    _conv(b, layer, transposed=True)


@export("caffe", "InnerProduct", "InnerProductFixed")
def inner_product(b, layer):
    p = sub(layer, "inner_product_param")
    (x,) = b.inputs()
    axis = canonical_axis(int(p.get("axis", 1)), len(b.in_shape()))
    flat = b.node("Flatten", [x], axis=axis)
    ins = [flat, b.const(layer.weights["weight"], "weight")]
    if "bias" in layer.weights:
        ins.append(b.const(layer.weights["bias"], "bias"))
    trans = 0 if p.get("transpose", False) else 1
    if axis == 1:
        _emit(b, layer, "Gemm", ins, transB=trans)
    else:
        y = b.node("Gemm", ins, transB=trans)
        _emit(b, layer, "Reshape", [y, b.ints(b.dynamic_shape())])


def _per_axis(b, array, axis, ndim):
    """``array`` shaped to broadcast from ``axis`` of an ``ndim``-D blob (Caffe's Scale/Bias)."""
    a = np.asarray(array, F32)
    shape = [1] * ndim
    shape[axis:axis + a.ndim] = a.shape
    return a.reshape(shape)


def _channel_vector(b, array, ndim):
    return b.const(_per_axis(b, np.asarray(array, F32).reshape(-1), 1, ndim), "per_channel")


@export("caffe", "BatchNorm")
def batch_norm(b, layer):
    eps = float(sub(layer, "batch_norm_param").get("eps", 1e-5))
    w = layer.weights
    if "scale_factor" in w:
        s = float(w["scale_factor"][0])
        f = 0.0 if s == 0 else 1.0 / s
        mean, var = w["mean"].astype(np.float64) * f, w["variance"].astype(np.float64) * f
        gamma, beta = np.ones_like(mean), np.zeros_like(mean)
    else:  # caffe-xilinx: the affine part built in
        mean, var = w["mean"].astype(np.float64), w["variance"].astype(np.float64)
        gamma, beta = w["scale"].astype(np.float64), w["bias"].astype(np.float64)
    (x,) = b.inputs()
    arrays = [b.const(a.reshape(-1), n) for a, n in ((gamma, "scale"), (beta, "bias"),
                                                      (mean, "mean"), (var, "var"))]
    _emit(b, layer, "BatchNormalization", [x] + arrays, epsilon=eps)


@export("caffe", "Scale")
def scale(b, layer):
    p = sub(layer, "scale_param")
    ins = b.inputs()
    nd = len(b.in_shape())
    axis = canonical_axis(int(p.get("axis", 1)), nd)
    if len(ins) > 1:
        s_shape = b.in_shape(1)
        target = [1] * nd
        target[axis:axis + len(s_shape)] = [-1 if k == 0 and axis == 0 else d
                                            for k, d in enumerate(s_shape)]
        s = b.node("Reshape", [ins[1], b.ints(target)])
    else:
        s = b.const(_per_axis(b, layer.weights["scale"], axis, nd), "scale")
    if "bias" not in layer.weights:
        return _emit(b, layer, "Mul", [ins[0], s])
    y = b.node("Mul", [ins[0], s])
    _emit(b, layer, "Add", [y, b.const(_per_axis(b, layer.weights["bias"], axis, nd), "bias")])


@export("caffe", "Bias")
def bias(b, layer):
    p = sub(layer, "bias_param")
    ins = b.inputs()
    nd = len(b.in_shape())
    axis = canonical_axis(int(p.get("axis", 1)), nd)
    if len(ins) > 1:
        target = [1] * nd
        target[axis:axis + len(b.in_shape(1))] = b.in_shape(1)
        other = b.node("Reshape", [ins[1], b.ints(target)])
    else:
        other = b.const(_per_axis(b, layer.weights["bias"], axis, nd), "bias")
    _emit(b, layer, "Add", [ins[0], other])


@export("caffe", "PReLU")
def prelu(b, layer):
    slope = layer.weights["slope"].reshape(-1)
    nd = len(b.in_shape())
    a = _channel_vector(b, slope, nd) if slope.size > 1 else b.const(slope.reshape(1), "slope")
    _emit(b, layer, "PRelu", [b.inputs()[0], a])


# ---------------------------------------------------------------- activations
@export("caffe", "ReLU")
def relu(b, layer):
    slope = float(sub(layer, "relu_param").get("negative_slope", 0.0))
    (x,) = b.inputs()
    if slope == 0.0:
        return _emit(b, layer, "Relu", [x])
    _emit(b, layer, "LeakyRelu", [x], alpha=slope)


def _clip(b, layer, x, lo, hi):
    ins = [x, b.const(np.array(lo, F32), "min") if lo is not None else "",
           b.const(np.array(hi, F32), "max") if hi is not None else ""]
    while ins[-1] == "":
        ins.pop()
    _emit(b, layer, "Clip", ins)


@export("caffe", "ReLU6")
def relu6(b, layer):
    _clip(b, layer, b.inputs()[0], 0.0, 6.0)


@export("caffe", "Clip")
def clip(b, layer):
    p = sub(layer, "clip_param")
    _clip(b, layer, b.inputs()[0], p.get("min"), p.get("max"))


@export("caffe", "ELU")
def elu(b, layer):
    _emit(b, layer, "Elu", b.inputs(), alpha=float(sub(layer, "elu_param").get("alpha", 1.0)))


@export("caffe", "Sigmoid")
def sigmoid(b, layer):
    _emit(b, layer, "Sigmoid", b.inputs())


@export("caffe", "TanH")
def tanh(b, layer):
    _emit(b, layer, "Tanh", b.inputs())


@export("caffe", "AbsVal")
def absval(b, layer):
    _emit(b, layer, "Abs", b.inputs())


@export("caffe", "BNLL")
def bnll(b, layer):
    _emit(b, layer, "Softplus", b.inputs())


@export("caffe", "Swish")
def swish(b, layer):
    (x,) = b.inputs()
    beta = float(sub(layer, "swish_param").get("beta", 1.0))
    bx = x if beta == 1.0 else b.node("Mul", [x, b.const(np.array(beta, F32), "beta")])
    _emit(b, layer, "Mul", [x, b.node("Sigmoid", [bx])])


@export("caffe", "Mish")
def mish(b, layer):
    (x,) = b.inputs()
    _emit(b, layer, "Mul", [x, b.node("Tanh", [b.node("Softplus", [x])])])


def _affine(b, x, scale, shift):
    """``scale * x + shift`` with the no-op parts left out."""
    if scale != 1.0:
        x = b.node("Mul", [x, b.const(np.array(scale, F32), "scale")])
    if shift != 0.0:
        x = b.node("Add", [x, b.const(np.array(shift, F32), "shift")])
    return x


@export("caffe", "Power")
def power(b, layer):
    p = sub(layer, "power_param")
    y = _affine(b, b.inputs()[0], float(p.get("scale", 1.0)), float(p.get("shift", 0.0)))
    pw = float(p.get("power", 1.0))
    if pw == 1.0:
        return _emit(b, layer, "Identity", [y])
    _emit(b, layer, "Pow", [y, b.const(np.array(pw, F32), "power")])


@export("caffe", "Exp")
def exp(b, layer):
    p = sub(layer, "exp_param")
    base = float(p.get("base", -1.0))
    inner = _affine(b, b.inputs()[0], float(p.get("scale", 1.0)), float(p.get("shift", 0.0)))
    if base != -1.0:  # base^y = exp(y ln base)
        inner = b.node("Mul", [inner, b.const(np.array(np.log(base), F32), "ln_base")])
    _emit(b, layer, "Exp", [inner])


@export("caffe", "Log")
def log(b, layer):
    p = sub(layer, "log_param")
    base = float(p.get("base", -1.0))
    inner = _affine(b, b.inputs()[0], float(p.get("scale", 1.0)), float(p.get("shift", 0.0)))
    if base == -1.0:
        return _emit(b, layer, "Log", [inner])
    y = b.node("Log", [inner])
    _emit(b, layer, "Div", [y, b.const(np.array(np.log(base), F32), "ln_base")])


@export("caffe", "Threshold")
def threshold(b, layer):
    t = float(sub(layer, "threshold_param").get("threshold", 0.0))
    gt = b.node("Greater", [b.inputs()[0], b.const(np.array(t, F32), "threshold")])
    _emit(b, layer, "Cast", [gt], to=1)


@export("caffe", "GELU")
def gelu(b, layer):
    coeff = float(F32(sub(layer, "gelu_param").get("coeff", 1.0)))
    (x,) = b.inputs()
    k = 0.7978845608  # the forks' literal, as the engine
    x3 = b.node("Mul", [b.node("Mul", [x, x]), x])
    inner = b.node("Add", [b.node("Mul", [x, b.const(np.array(k, F32), "k")]),
                           b.node("Mul", [x3, b.const(np.array(k * 0.044715, F32), "k3")])])
    t = b.node("Add", [b.node("Tanh", [inner]), b.const(np.array(1.0, F32), "one")])
    _emit(b, layer, "Mul", [b.node("Mul", [x, t]), b.const(np.array(0.5 * coeff, F32), "half")])


@export("caffe", "HardSigmoid")
def hard_sigmoid(b, layer):
    p = sub(layer, "hard_sigmoid_param") or sub(layer, "hardsigmoid_param")
    _emit(b, layer, "HardSigmoid", b.inputs(), alpha=float(p.get("alpha", 0.2)),
          beta=float(p.get("beta", 0.5)))


@export("caffe", "Dropout", "FixedNeuron", "Split")
def identity(b, layer):
    # test-time identity; FixedNeuron as float passthrough (as the engine)
    (x,) = b.inputs()[:1]
    for top in layer.tops:
        b.node("Identity", [x], [b.write(top)])


# ---------------------------------------------------------------- pooling
def max_pool(b, x, k, s, pads):
    """MaxPool with pads (begin h, begin w, end h, end w); ONNX wants each pad below the
    kernel, so a window wholly in the padding (Caffe and darknet give it -FLT_MAX, their
    starting value) gets real -FLT_MAX padding instead."""
    if all(p < kk for p, kk in zip(pads, list(k) * 2)):
        return b.node("MaxPool", [x], kernel_shape=list(k), strides=list(s), pads=list(pads))
    low = b.const(np.array(-np.finfo(F32).max, F32), "lowest")
    x = b.node("Pad", [x, b.ints([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]), low])
    return b.node("MaxPool", [x], kernel_shape=list(k), strides=list(s))


def pooled(b, x, in_hw, k, s, pd, out_hw, mode):
    """Caffe pooling of value ``x`` (N, C, H, W) with explicit per-side pads (see the module
    docstring). ``mode``: "MAX" or "AVE" (divisor clipped to the padded input)."""
    ends = [(o - 1) * st + kk - (size + p) for o, st, kk, size, p in zip(out_hw, s, k, in_hw, pd)]
    if min(ends) < 0:  # the last rows/columns take part in no window: crop them
        keep = [size + min(e, 0) for size, e in zip(in_hw, ends)]
        x = b.node("Slice", [x, b.ints([0, 0]), b.ints(keep), b.ints([2, 3])])
        ends = [max(e, 0) for e in ends]
        in_hw = keep
    if mode == "MAX":
        return max_pool(b, x, k, s, [pd[0], pd[1], ends[0], ends[1]])
    if any(e >= kk for e, kk in zip(ends, k)):
        raise b.refusal(f"its last {'row' if ends[0] >= k[0] else 'column'} of windows lies wholly "
                        "outside the input (an average over nothing)")
    real = [min(p, e) for p, e in zip(pd, ends)]  # end padding inside Caffe's divisor
    if any(pd) or any(real):  # Caffe counts this padding in the divisor: make it real zeros
        x = b.node("Pad", [x, b.ints([0, 0, pd[0], pd[1], 0, 0, real[0], real[1]])])
    extra = [e - r for e, r in zip(ends, real)]
    return b.node("AveragePool", [x], kernel_shape=list(k), strides=list(s),
                  pads=[0, 0, extra[0], extra[1]], count_include_pad=0)


@export("caffe", "Pooling")
def pooling(b, layer):
    p = sub(layer, "pooling_param")
    mode = p.get("pool", "MAX")
    if mode not in ("MAX", "AVE"):
        raise b.refusal(f"pooling method {mode} is training-only (STOCHASTIC) or unknown")
    _, _, h, w = b.in_shape()
    k, s, pd, out_hw = pool_geometry(p, h, w)
    y = pooled(b, b.inputs()[0], (h, w), k, s, pd, out_hw, mode)
    _emit(b, layer, "Identity", [y])


# ---------------------------------------------------------------- joins and shapes
@export("caffe", "Eltwise")
def eltwise(b, layer):
    p = sub(layer, "eltwise_param")
    operation = p.get("operation", "SUM")
    ins = b.inputs()
    if operation == "SUM":
        coeff = p.get("coeff", [])
        if coeff:
            if len(coeff) != len(ins):
                raise b.refusal(f"{len(coeff)} coefficients for {len(ins)} inputs")
            ins = [x if float(c) == 1.0 else b.node("Mul", [x, b.const(np.array(c, F32), "coeff")])
                   for x, c in zip(ins, coeff)]
        return _emit(b, layer, "Sum", ins)
    if operation in ("PROD", "MAX"):
        if operation == "MAX":
            return _emit(b, layer, "Max", ins)
        y = ins[0]
        for x in ins[1:-1]:
            y = b.node("Mul", [y, x])
        return _emit(b, layer, "Mul", [y, ins[-1]]) if len(ins) > 1 else _emit(b, layer, "Identity", [y])
    raise b.refusal(f"unknown Eltwise operation {operation}")


@export("caffe", "Concat")
def concat(b, layer):
    _emit(b, layer, "Concat", b.inputs(), axis=join_axis(layer, len(b.in_shape())))


@export("caffe", "Slice")
def slice_(b, layer):
    axis, bounds = slice_bounds(layer, b.in_shape())
    (x,) = b.inputs()
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        _emit(b, layer, "Slice", [x, b.ints([lo]), b.ints([hi]), b.ints([axis])], i)


@export("caffe", "Flatten", "Reshape")
def reshape(b, layer):
    _emit(b, layer, "Reshape", [b.inputs()[0], b.ints(b.dynamic_shape())])


@export("caffe", "Permute")
def permute(b, layer):
    _emit(b, layer, "Transpose", b.inputs(), perm=permute_order(layer, len(b.in_shape())))


@export("caffe", "Softmax")
def softmax(b, layer):
    axis = canonical_axis(int(sub(layer, "softmax_param").get("axis", 1)), len(b.in_shape()))
    _emit(b, layer, "Softmax", b.inputs(), axis=axis)


@export("caffe", "LRN")
def lrn(b, layer):
    p = sub(layer, "lrn_param")
    n = int(p.get("local_size", 5))
    alpha, beta, k = float(p.get("alpha", 1.0)), float(p.get("beta", 0.75)), float(p.get("k", 1.0))
    (x,) = b.inputs()
    if p.get("norm_region", "ACROSS_CHANNELS") == "ACROSS_CHANNELS":
        return _emit(b, layer, "LRN", [x], size=n, alpha=alpha, beta=beta, bias=k)
    # WITHIN_CHANNEL: Caffe averages x^2 over an n x n window (padding counted), shift 1
    pad = (n - 1) // 2
    _, _, h, w = b.in_shape()
    _, _, _, out_hw = pool_geometry({"kernel_size": [n], "pad": [pad]}, h, w)
    avg = pooled(b, b.node("Mul", [x, x]), (h, w), (n, n), (1, 1), (pad, pad), out_hw, "AVE")
    scale = _affine(b, avg, alpha, 1.0)
    _emit(b, layer, "Mul", [x, b.node("Pow", [scale, b.const(np.array(-beta, F32), "neg_beta")])])


@export("caffe", "Crop")
def crop(b, layer):
    x = b.inputs()[0]
    starts, ends, axes = [], [], []
    for a, off, size in crop_windows(layer, b.in_shape(0), b.in_shape(1)):
        starts.append(off), ends.append(off + size), axes.append(a)
    _emit(b, layer, "Slice", [x, b.ints(starts), b.ints(ends), b.ints(axes)])


@export("caffe", "Upsample")
def upsample(b, layer):
    if len(layer.bottoms) > 1:
        raise b.refusal("SegNet's two-input Upsample (unpooling by the pooling mask) is not run "
                        "by the engine in that form")
    fh, fw = upsample_factors(b.in_shape(), b.out_shape())
    _emit(b, layer, "Identity", [gather.repeat_hw(b, b.inputs()[0], fh, fw)])


@export("caffe", "Interp")
def interp(b, layer):
    from ..engine.caffe_resize_ops import interp_axis
    _, _, h, w = b.in_shape()
    rows, cols = interp_window(layer, h, w)
    _, _, oh, ow = b.out_shape()
    x = b.inputs()[0]
    ih, iw = len(range(h)[rows]), len(range(w)[cols])
    if (ih, iw) != (h, w):
        x = b.node("Slice", [x, b.ints([rows.start, cols.start]),
                             b.ints([rows.start + ih, cols.start + iw]), b.ints([2, 3])])
    if (ih, iw) == (oh, ow):
        return _emit(b, layer, "Identity", [x])
    _emit(b, layer, "Identity", [gather.bilinear(b, x, interp_axis(ih, oh), interp_axis(iw, ow))])


@export("caffe", "DeephiResize")
def deephi_resize(b, layer):
    from ..engine.caffe_resize_ops import _cv_linear_axis, _cv_nearest_axis
    _, _, h, w = b.in_shape()
    _, _, oh, ow = b.out_shape()
    mode = sub(layer, "deephi_resize_param").get("resize_type", "NEAREST")
    x = b.inputs()[0]
    if mode in ("NEAREST", 1):
        y = b.node("Gather", [x, b.ints(_cv_nearest_axis(h, oh), "rows")], axis=2)
        return _emit(b, layer, "Gather", [y, b.ints(_cv_nearest_axis(w, ow), "cols")], axis=3)
    if mode not in ("BILINEAR", 0):
        raise b.refusal(f"resize_type {mode!r} is neither BILINEAR nor NEAREST")
    if (h, w) == (oh, ow):
        return _emit(b, layer, "Identity", [x])
    _emit(b, layer, "Identity", [gather.bilinear(b, x, _cv_linear_axis(h, oh), _cv_linear_axis(w, ow))])


@export("caffe", "Reorg")
def reorg(b, layer):
    reorg_stride(sub(layer, "reorg_param"))  # the same check as the engine
    _emit(b, layer, "Identity", [gather.permutation(b, layer, b.inputs()[0])])


@export("caffe", "Tile")
def tile(b, layer):
    p = sub(layer, "tile_param")
    nd = len(b.in_shape())
    reps = [1] * nd
    reps[canonical_axis(int(p.get("axis", 1)), nd)] = int(p.get("tiles", 1))
    if min(reps) < 1:
        raise b.refusal(f"Tile needs tiles >= 1, got {p.get('tiles')}")
    _emit(b, layer, "Tile", [b.inputs()[0], b.ints(reps, "repeats")])


@export("caffe", "MVN")
def mvn(b, layer):
    p = sub(layer, "mvn_param")
    (x,) = b.inputs()
    shape = b.in_shape()
    axes = list(range(1, len(shape))) if p.get("across_channels", False) else list(range(2, len(shape)))
    if not axes:  # (N, C): each value its own group
        axes = [1] if p.get("across_channels", False) else []
    if not axes:
        return _emit(b, layer, "Sub", [x, x])
    mean = b.reduce("ReduceMean", x, axes)
    y = b.node("Sub", [x, mean])
    if not p.get("normalize_variance", True):
        return _emit(b, layer, "Identity", [y])
    std = b.node("Sqrt", [b.reduce("ReduceMean", b.node("Mul", [y, y]), axes)])
    eps = b.const(np.array(float(p.get("eps", 1e-9)), F32), "eps")
    _emit(b, layer, "Div", [y, b.node("Add", [std, eps])])


@export("caffe", "ArgMax")
def argmax(b, layer):
    p = sub(layer, "argmax_param")
    k = int(p.get("top_k", 1))
    (x,) = b.inputs()
    want_values = bool(p.get("out_max_val", False))
    if "axis" in p:
        axis = canonical_axis(int(p["axis"]), len(b.in_shape()))
        vals, idx = b.node("TopK", [x, b.ints([k], "k")], 2, axis=axis)
        if want_values:
            return _emit(b, layer, "Identity", [vals])
        return _emit(b, layer, "Cast", [idx], to=1)
    flat = b.node("Flatten", [x], axis=1)
    vals, idx = b.node("TopK", [flat, b.ints([k], "k")], 2, axis=1)
    fidx = b.node("Cast", [idx], to=1)
    if want_values:
        return _emit(b, layer, "Concat", [b.node("Unsqueeze", [fidx, b.ints([1], "axis")]),
                                          b.node("Unsqueeze", [vals, b.ints([1], "axis")])], axis=1)
    _emit(b, layer, "Unsqueeze", [fidx, b.ints([1], "axis")])

