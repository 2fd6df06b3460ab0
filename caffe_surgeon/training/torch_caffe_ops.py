"""Torch forwards of Caffe's data, weighted, normalisation and activation layers.

Each follows the BVLC (or fork) ``*_layer.cpp`` in TRAIN and TEST phase; autograd gives
Caffe's backward wherever Caffe's is the true derivative (it is for every type here; see
the notes where a choice at a kink matters). TEST-phase outputs equal the NumPy engine's
(``engine/caffe_ops.py``) within float32 rounding, which ``tests/test_torch_eval.py`` checks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ModelError
from ..layers.caffe_geometry import canonical_axis, conv_geometry, sub
from ..layers.registry import spec_for
from .torch_ops import op, op_for

# ---------------------------------------------------------------- sources


@op("caffe", "Input", "Data", "ImageData", "WindowData", "AnnotatedData", "HDF5Data",
    "MemoryData", "Python")
def data_source(layer, inputs, ctx):
    missing = [t for t in layer.tops if t not in ctx.feeds]
    if missing:
        raise ModelError(f"{layer.type} layer: no value fed for "
                         f"{', '.join(repr(t) for t in missing)} (feed it by its top name)")
    return [ctx.feeds[t] for t in layer.tops]


# ---------------------------------------------------------------- weighted
def _conv_args(layer, x):
    _, stride, pad, dilation = conv_geometry(sub(layer, "convolution_param"))
    return stride, pad, dilation, spec_for("caffe", layer).group(layer, x.shape[1])


@op("caffe", "Convolution", "ConvolutionDepthwise", "DepthwiseConvolution", "ConvolutionFixed")
def convolution(layer, inputs, ctx):
    w, b = ctx.arrays["weight"], ctx.arrays.get("bias")
    outs = []
    for x in inputs:  # Caffe convolves every bottom with the same filters
        stride, pad, dilation, group = _conv_args(layer, x)
        outs.append(F.conv2d(x, w, b, stride, pad, dilation, group))
    return outs


@op("caffe", "Deconvolution")
def deconvolution(layer, inputs, ctx):
    # Caffe's deconvolution weight is (C_in, num_output / group, kh, kw): torch's layout
    w, b = ctx.arrays["weight"], ctx.arrays.get("bias")
    outs = []
    for x in inputs:
        stride, pad, dilation, group = _conv_args(layer, x)
        outs.append(F.conv_transpose2d(x, w, b, stride, pad, 0, group, dilation))
    return outs


@op("caffe", "InnerProduct", "InnerProductFixed")
def inner_product(layer, inputs, ctx):
    p = sub(layer, "inner_product_param")
    x = inputs[0]
    axis = canonical_axis(int(p.get("axis", 1)), x.ndim)
    x2 = x.reshape(math.prod(x.shape[:axis]), -1)
    w = ctx.arrays["weight"]
    y = x2 @ w if p.get("transpose", False) else x2 @ w.t()
    if "bias" in ctx.arrays:
        y = y + ctx.arrays["bias"]
    return [y.reshape(tuple(x.shape[:axis]) + (y.shape[1],))]


def _per_channel(v, x, axis=1):
    shape = [1] * x.ndim
    shape[axis:axis + v.ndim] = v.shape
    return v.reshape(shape)


# ---------------------------------------------------------------- BatchNorm
def _bn_stored(layer, arrays):
    """The stored statistics as the NumPy engine reads them (``caffe_ops.bn_affine``): BVLC's
    divided by the factor blob (0 -> 0); caffe-xilinx's undivided."""
    mean, var = arrays["mean"], arrays["variance"]
    if "scale_factor" in arrays:
        s = arrays["scale_factor"][0]
        f = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
        return mean * f, var * f
    return mean, var


#: caffe-xilinx batch_norm_layer.hpp: variance clipping starts after this many TRAIN passes
XILINX_CLIP_START = 200
XILINX_CLIP_CONST = 4.0


def _scale_after_bn(layer, next_layer, arrays, next_arrays):
    """The fused forward of a BVLC BatchNorm and the Scale (with bias, one factor per channel)
    that follows it in place, Caffe's usual pair; None for other pairs."""
    p = sub(next_layer, "scale_param")
    # the follower is a Scale when this table trains it with the Scale forward below
    if op_for("caffe", next_layer).forward is not scale or len(next_layer.bottoms) != 1 or \
            "scale" in arrays or \
            not {"scale", "bias"} <= set(next_arrays) or \
            int(p.get("axis", 1)) != 1 or int(p.get("num_axes", 1)) != 1:
        return None
    return _bn_scale


def _bn_scale(layer, next_layer, inputs, ctx, next_arrays):
    return [_normalise(layer, inputs[0], ctx, next_arrays["scale"], next_arrays["bias"])]


@op("caffe", "BatchNorm", statistics=("mean", "variance", "scale_factor", "counter"),
    fuse=_scale_after_bn)
def batch_norm(layer, inputs, ctx):
    """BVLC ``batch_norm_layer.cpp``, and caffe-xilinx's 5-blob form with its own scale and bias.

    TEST (eval): the stored statistics, as the NumPy engine reads them. TRAIN: batch
    statistics (biased variance) unless ``use_global_stats: true``, and the stored blobs are
    updated in place as each fork does (``maf`` = ``moving_average_fraction``, 0.999):

    BVLC [mean, variance, scale_factor] (sums the engine divides by the factor)::

        factor <- factor * maf + 1;  mean <- maf * mean + batch_mean
        variance <- maf * variance + m / (m - 1) * batch_variance   (m = count / channels)

    caffe-xilinx [scale, bias, mean, variance, counter] (averages, stored undivided): its
    pass counter (kept in the ``counter`` blob so a resumed run continues it) counts TRAIN
    passes up to 201; the first pass copies the batch statistics, later ones keep
    ``(1 - maf) * batch + maf * stored``; after 200 passes the batch variance is clipped to
    ``[stored / 4, 4 * (mean |stored| + stored)]`` before it normalises and is averaged in.
    """
    arrays = ctx.arrays
    if "scale" in arrays and "bias" in arrays:  # caffe-xilinx: affine part built in
        return [_normalise(layer, inputs[0], ctx, arrays["scale"], arrays["bias"])]
    return [_normalise(layer, inputs[0], ctx)]


def _normalise(layer, x, ctx, weight=None, bias=None):
    """BatchNorm of ``x`` (statistics updated in TRAIN), then ``* weight + bias`` per channel
    when given; torch's fused kernel wherever it computes Caffe's formula."""
    p = sub(layer, "batch_norm_param")
    eps = float(p.get("eps", 1e-5))
    arrays = ctx.arrays
    # Caffe: use_global_stats defaults to (phase == TEST); eval always reads the stored
    # statistics, as the NumPy engine does
    global_stats = not ctx.training or bool(p.get("use_global_stats", False))
    axes = [0] + list(range(2, x.ndim))
    if global_stats:  # (x - mean) / sqrt(var + eps)
        mean, var = _bn_stored(layer, arrays)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
    m = x.numel() // x.shape[1]  # values per channel
    maf = float(p.get("moving_average_fraction", 0.999))
    if "scale_factor" in arrays and m > 1:
        # BVLC: normalised by the batch's biased variance, as torch's training batch_norm is;
        # the stored sums are updated from the same statistics
        with torch.no_grad():
            var, mean = torch.var_mean(x, dim=axes, correction=0)
            arrays["scale_factor"].mul_(maf).add_(1.0)
            arrays["mean"].mul_(maf).add_(mean)
            arrays["variance"].mul_(maf).add_(var * (m / (m - 1)))
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    mean = x.mean(dim=axes)
    var = ((x - _per_channel(mean, x)) ** 2).mean(dim=axes)  # biased, as Caffe normalises
    if "scale_factor" in arrays:  # one value per channel: torch's kernel refuses it
        with torch.no_grad():
            arrays["scale_factor"].mul_(maf).add_(1.0)
            arrays["mean"].mul_(maf).add_(mean.detach())
            arrays["variance"].mul_(maf).add_(var.detach())
    else:
        var = _xilinx_update(arrays, mean, var, maf)
    y = (x - _per_channel(mean, x)) / _per_channel(torch.sqrt(var + eps), x)
    return y if weight is None else y * _per_channel(weight, x) + _per_channel(bias, x)


def _xilinx_update(arrays, mean, var, maf):
    """caffe-xilinx's TRAIN pass on its stored statistics; returns the variance it normalises
    with (clipped once the pass counter is past ``XILINX_CLIP_START``)."""
    counter, stored_mean, stored_var = arrays["counter"], arrays["mean"], arrays["variance"]
    with torch.no_grad():
        if counter[0] <= XILINX_CLIP_START:
            counter.add_(1.0)
        passes = float(counter[0])
        if passes > XILINX_CLIP_START:
            upper = XILINX_CLIP_CONST * (stored_var.abs().sum() / stored_var.numel() + stored_var)
            lower = stored_var / XILINX_CLIP_CONST
    if passes > XILINX_CLIP_START:
        var = torch.maximum(torch.minimum(var, upper), lower)
    with torch.no_grad():
        if passes > 1:
            stored_mean.mul_(maf).add_(mean.detach() * (1.0 - maf))
            stored_var.mul_(maf).add_(var.detach() * (1.0 - maf))
        else:
            stored_mean.copy_(mean.detach())
            stored_var.copy_(var.detach())
    return var


def _operand(layer, inputs, ctx, message: str, blob: str):
    """(x, the per-axis operand, its axis) of Scale / Bias: a second bottom or the stored blob."""
    x = inputs[0]
    axis = canonical_axis(int(sub(layer, message).get("axis", 1)), x.ndim)
    return x, (inputs[1] if len(inputs) > 1 else ctx.arrays[blob]), axis


@op("caffe", "Scale")
def scale(layer, inputs, ctx):
    x, s, axis = _operand(layer, inputs, ctx, "scale_param", "scale")
    if "bias" in ctx.arrays:  # one kernel: bias + x * s
        return [torch.addcmul(_per_channel(ctx.arrays["bias"], x, axis), x, _per_channel(s, x, axis))]
    return [x * _per_channel(s, x, axis)]


@op("caffe", "Bias")
def bias(layer, inputs, ctx):
    x, b, axis = _operand(layer, inputs, ctx, "bias_param", "bias")
    return [x + _per_channel(b, x, axis)]


@op("caffe", "PReLU")
def prelu(layer, inputs, ctx):
    x, slope = inputs[0], ctx.arrays["slope"]
    a = _per_channel(slope, x) if slope.numel() > 1 else slope[0]
    return [torch.where(x > 0, x, x * a)]


@op("caffe", "Normalize")
def normalize(layer, inputs, ctx):
    """SSD ``normalize_layer.cpp``: x / sqrt(sum x^2 + eps) over the image (``across_spatial``)
    or over the channels of each position, times the learned scale (one, or one per channel)."""
    p = sub(layer, "norm_param")
    eps = float(p.get("eps", 1e-10))
    x = inputs[0]
    if p.get("across_spatial", True):
        norm = torch.sqrt((x * x).reshape(x.shape[0], -1).sum(dim=1) + eps)
        norm = norm.reshape((-1,) + (1,) * (x.ndim - 1))
    else:
        norm = torch.sqrt((x * x).sum(dim=1, keepdim=True) + eps)
    s = ctx.arrays["scale"]
    return [x / norm * (_per_channel(s, x) if s.numel() > 1 else s[0])]


@op("caffe", "MVN")
def mvn(layer, inputs, ctx):
    """BVLC ``mvn_layer.cpp``: subtract the mean per image (``across_channels``) or per image
    and channel; with ``normalize_variance`` divide by sqrt(biased variance) + eps."""
    p = sub(layer, "mvn_param")
    x = inputs[0]
    rows = x.shape[0] if p.get("across_channels", False) else x.shape[0] * x.shape[1]
    flat = x.reshape(rows, -1)
    y = flat - flat.mean(dim=1, keepdim=True)
    if p.get("normalize_variance", True):
        y = y / (torch.sqrt((y * y).mean(dim=1, keepdim=True)) + float(p.get("eps", 1e-9)))
    return [y.reshape(x.shape)]


# ---------------------------------------------------------------- activations
@op("caffe", "ReLU")
def relu(layer, inputs, ctx):
    x = inputs[0]
    slope = float(sub(layer, "relu_param").get("negative_slope", 0.0))
    # Caffe's backward: slope where x <= 0 (where() gives the same at x == 0)
    return [F.relu(x) if slope == 0.0 else torch.where(x > 0, x, x * slope)]


@op("caffe", "ReLU6")
def relu6(layer, inputs, ctx):
    return [torch.clamp(inputs[0], 0.0, 6.0)]


@op("caffe", "Clip")
def clip(layer, inputs, ctx):
    p = sub(layer, "clip_param")
    return [torch.clamp(inputs[0], p.get("min"), p.get("max"))]


@op("caffe", "ELU")
def elu(layer, inputs, ctx):
    x = inputs[0]
    alpha = float(sub(layer, "elu_param").get("alpha", 1.0))
    return [torch.where(x > 0, x, alpha * torch.expm1(torch.clamp(x, max=0.0)))]


@op("caffe", "Sigmoid")
def sigmoid(layer, inputs, ctx):
    return [torch.sigmoid(inputs[0])]


@op("caffe", "TanH")
def tanh(layer, inputs, ctx):
    return [torch.tanh(inputs[0])]


@op("caffe", "AbsVal")
def absval(layer, inputs, ctx):
    return [torch.abs(inputs[0])]


@op("caffe", "BNLL")
def bnll(layer, inputs, ctx):
    return [torch.logaddexp(torch.zeros_like(inputs[0]), inputs[0])]


@op("caffe", "Swish")
def swish(layer, inputs, ctx):
    x = inputs[0]
    return [x * torch.sigmoid(float(sub(layer, "swish_param").get("beta", 1.0)) * x)]


@op("caffe", "Mish")
def mish(layer, inputs, ctx):
    x = inputs[0]
    return [x * torch.tanh(F.softplus(x))]


@op("caffe", "GELU")
def gelu(layer, inputs, ctx):
    """The forks' tanh form with ``gelu_param.coeff`` (see ``engine/caffe_activation_ops``)."""
    x = inputs[0]
    coeff = float(sub(layer, "gelu_param").get("coeff", 1.0))
    c = 0.7978845608
    return [coeff * 0.5 * x * (1 + torch.tanh(c * x + c * 0.044715 * x * x * x))]


@op("caffe", "HardSigmoid")
def hard_sigmoid(layer, inputs, ctx):
    p = sub(layer, "hard_sigmoid_param") or sub(layer, "hardsigmoid_param")
    return [torch.clamp(float(p.get("alpha", 0.2)) * inputs[0] + float(p.get("beta", 0.5)),
                        0.0, 1.0)]


@op("caffe", "Power")
def power(layer, inputs, ctx):
    p = sub(layer, "power_param")
    y = float(p.get("shift", 0.0)) + float(p.get("scale", 1.0)) * inputs[0]
    pw = float(p.get("power", 1.0))
    return [y if pw == 1.0 else torch.pow(y, pw)]


def _base_log(base: float) -> float:
    return float(torch.log(torch.tensor(base, dtype=torch.float64)))


@op("caffe", "Exp")
def exp(layer, inputs, ctx):
    p = sub(layer, "exp_param")
    base = float(p.get("base", -1.0))
    inner = float(p.get("scale", 1.0)) * inputs[0] + float(p.get("shift", 0.0))
    return [torch.exp(inner if base == -1.0 else inner * _base_log(base))]


@op("caffe", "Log")
def log(layer, inputs, ctx):
    p = sub(layer, "log_param")
    base = float(p.get("base", -1.0))
    y = torch.log(float(p.get("scale", 1.0)) * inputs[0] + float(p.get("shift", 0.0)))
    return [y if base == -1.0 else y / _base_log(base)]


@op("caffe", "Threshold")
def threshold(layer, inputs, ctx):
    t = float(sub(layer, "threshold_param").get("threshold", 0.0))
    return [(inputs[0] > t).to(inputs[0].dtype)]  # a step: no gradient, as in Caffe


def _dropout_check(layer) -> str:
    ratio = float(sub(layer, "dropout_param").get("dropout_ratio", 0.5))
    return "" if 0.0 <= ratio < 1.0 else f"dropout_ratio {ratio} is outside [0, 1)"


@op("caffe", "Dropout", check=_dropout_check)
def dropout(layer, inputs, ctx):
    """BVLC ``dropout_layer.cpp``: TRAIN keeps each value with probability 1 - ratio and
    scales the kept ones by 1 / (1 - ratio); TEST is the identity. The Fast R-CNN fork's
    ``scale_train: false`` moves the scaling to TEST (x (1 - ratio)) and TRAIN does not scale."""
    p = sub(layer, "dropout_param")
    ratio = float(p.get("dropout_ratio", 0.5))
    scale_train = bool(p.get("scale_train", True))
    x = inputs[0]
    if not ctx.training:
        return [x if scale_train else x * (1.0 - ratio)]
    keep = (torch.rand_like(x) >= ratio).to(x.dtype)
    return [x * keep * (1.0 / (1.0 - ratio) if scale_train else 1.0)]


@op("caffe", "FixedNeuron", "Split")
def identity(layer, inputs, ctx):
    # FixedNeuron is float passthrough (as in the engine); Split gives every top the value
    # and autograd sums the tops' gradients, as Caffe's SplitLayer::Backward does.
    return [inputs[0]] * max(1, len(layer.tops))
