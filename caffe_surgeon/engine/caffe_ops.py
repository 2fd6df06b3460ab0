"""Forward functions of Caffe layer types (inference semantics of BVLC Caffe and its forks)."""
from __future__ import annotations

import copy

import numpy as np

from ..errors import ModelError
from ..layers.caffe_geometry import (canonical_axis, conv_geometry, crop_windows, join_axis,
                                     permute_order, pool_geometry, pool_out, slice_bounds, sub,
                                     upsample_factors)
from ..layers.registry import spec_for
from .kernels import channelwise
from .kernels.conv import conv2d, deconv2d, winograd_weights
from .kernels.eltwise import stages_into, sum2 as eltwise_sum2
from .kernels.epilogue import Epilogue
from .kernels.epilogue import apply as apply_epilogue
from .kernels.pooling import avgpool, maxpool
from .ops import op

F32 = np.float32


def _out(ctx, x, i=0):
    """A buffer for an elementwise result: the input itself when it is dead after this layer."""
    return x if ctx.donated(i) and x.flags.writeable else np.empty_like(x)


# ---------------------------------------------------------------- sources
@op("caffe", "Input", "Data", "ImageData", "WindowData", "AnnotatedData", "HDF5Data", "MemoryData", "Python")
def data_source(layer, inputs, ctx):
    feeds = getattr(ctx, "feeds", {})
    missing = [t for t in layer.tops if t not in feeds]
    if missing:
        raise ModelError(f"{layer.type} layer: no value fed for {', '.join(repr(t) for t in missing)} "
                         f"(feed it by its top name)")
    return [feeds[t] for t in layer.tops]


@op("caffe", "DummyData")
def dummy_data(layer, inputs, ctx):
    shapes = spec_for("caffe", layer).infer(layer, [])
    fillers = sub(layer, "dummy_data_param").get("data_filler", [])
    out = []
    for i, shape in enumerate(shapes):
        f = fillers[i] if i < len(fillers) else (fillers[0] if fillers else {})
        if f.get("type", "constant") != "constant":
            raise ModelError(f"DummyData filler '{f.get('type')}' is random; only constant fillers are reproducible")
        out.append(np.full(shape, f.get("value", 0.0), F32))
    return out


# ---------------------------------------------------------------- weighted
def _conv_args(layer, x):
    kernel, stride, pad, dilation = conv_geometry(sub(layer, "convolution_param"))
    return stride, pad, dilation, spec_for("caffe", layer).group(layer, x.shape[1])


def _cached_conv_args(layer, x, ctx):
    """:func:`_conv_args`, decoded once per layer while its params (compared with a copy of
    them, on every call) and input channels stay the same: decoding cost 15-20 us a call,
    a tenth of a small layer."""
    key = ("conv_args", layer.name)
    hit = ctx.cache.get(key)
    if hit is not None and hit[0] is layer and hit[1] == x.shape[1] and hit[2] == layer.params:
        return hit[3]
    args = _conv_args(layer, x)
    ctx.cache[key] = (layer, x.shape[1], copy.deepcopy(layer.params), args)
    return args


@op("caffe", "Convolution", "ConvolutionDepthwise", "DepthwiseConvolution", "ConvolutionFixed")
def convolution(layer, inputs, ctx):
    w = layer.weights["weight"]
    b = layer.weights.get("bias")
    outs = []
    for i, x in enumerate(inputs):
        stride, pad, dilation, group = _cached_conv_args(layer, x, ctx)
        u = winograd_weights(ctx.cache, ("winograd", layer.name), w, stride, dilation, group)
        outs.append(conv2d(x, w, b, stride, pad, dilation, group, epilogue=ctx.epilogue, winograd_u=u,
                           plans=ctx.cache, plan_key=("conv_plan", layer.name, i)))
    return outs


@op("caffe", "Deconvolution")
def deconvolution(layer, inputs, ctx):
    w = layer.weights["weight"]
    b = layer.weights.get("bias")
    return [deconv2d(x, w, b, *_conv_args(layer, x)) for x in inputs]


@op("caffe", "InnerProduct", "InnerProductFixed")
def inner_product(layer, inputs, ctx):
    p = sub(layer, "inner_product_param")
    x = inputs[0]
    axis = canonical_axis(int(p.get("axis", 1)), x.ndim)
    m = int(np.prod(x.shape[:axis]))
    w = layer.weights["weight"]
    x2 = x.reshape(m, -1)
    y = x2 @ w if p.get("transpose", False) else x2 @ w.T
    if "bias" in layer.weights:
        y += layer.weights["bias"]
    return [y.reshape(x.shape[:axis] + (y.shape[1],))]


def _channel_shape(x, axis=1, count=None):
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis] if count is None else count
    return shape


def bn_affine(layer, ctx):
    """(a, c) float32 with BatchNorm(x) == x * a + c per channel, cached while the weights stay."""
    eps = float(sub(layer, "batch_norm_param").get("eps", 1e-5))
    w = layer.weights
    arrays = tuple(w.values())
    prepared = ctx.cache.get(layer.name)
    if prepared is not None and prepared[0] == eps and len(prepared[1]) == len(arrays) \
            and all(a is b for a, b in zip(prepared[1], arrays)):
        return prepared[2], prepared[3]
    if "scale_factor" in w:
        s = float(w["scale_factor"][0])
        f = 0.0 if s == 0 else 1.0 / s
        mean, var = w["mean"].astype(np.float64) * f, w["variance"].astype(np.float64) * f
        gamma, beta = 1.0, 0.0
    else:  # caffe-xilinx: affine part built in
        mean, var = w["mean"].astype(np.float64), w["variance"].astype(np.float64)
        gamma, beta = w["scale"].astype(np.float64), w["bias"].astype(np.float64)
    inv = gamma / np.sqrt(var + eps)
    a = np.ascontiguousarray(inv, F32).reshape(-1)
    c = np.ascontiguousarray(beta - mean * inv, F32).reshape(-1)
    ctx.cache[layer.name] = (eps, arrays, a, c)
    return a, c


@op("caffe", "BatchNorm")
def batch_norm(layer, inputs, ctx):
    x = inputs[0]
    a, c = bn_affine(layer, ctx)
    if x.ndim > 1 and x.dtype == F32:
        # x * a + c and the fused followers, in one pass (same float32 steps)
        ep = _bn_epilogue(layer, ctx, a, c, x.shape[1])
        ep = ep if ctx.epilogue is None else Epilogue(ep.channels).extend(ep).extend(ctx.epilogue)
        if ctx.donated(0) and x.flags.c_contiguous and x.flags.writeable:
            return [apply_epilogue(x, ep)]
        return [stages_into(x, ep)]
    shape = _channel_shape(x) if x.ndim > 1 else [-1]
    out = _out(ctx, x)
    np.multiply(x, a.reshape(shape), out=out)
    if ctx.epilogue is not None:  # the following in-place layers, fused (see fusion.py)
        return [apply_epilogue(out, Epilogue(x.shape[1]).add(c).extend(ctx.epilogue))]
    out += c.reshape(shape)
    return [out]


def _bn_epilogue(layer, ctx, a, c, channels):
    """Epilogue(channels).mul(a).add(c), kept while ``a`` and ``c`` are the cached ones."""
    hit = ctx.cache.get(("bn_epilogue", layer.name))
    if hit is None or hit[0] is not a or hit[1] is not c or hit[2].channels != channels:
        hit = ctx.cache[("bn_epilogue", layer.name)] = (a, c, Epilogue(channels).mul(a).add(c))
    return hit[2]


def _axis_blob_shape(x, blob, axis):
    shape = [1] * x.ndim
    shape[axis:axis + blob.ndim] = blob.shape
    return shape


@op("caffe", "Scale")
def scale(layer, inputs, ctx):
    p = sub(layer, "scale_param")
    x = inputs[0]
    axis = canonical_axis(int(p.get("axis", 1)), x.ndim)
    s = inputs[1] if len(inputs) > 1 else layer.weights["scale"]
    out = _out(ctx, x)
    np.multiply(x, s.reshape(_axis_blob_shape(x, s, axis)), out=out)
    if ctx.epilogue is not None:  # only for a per-channel Scale (see epilogue_of)
        ep = Epilogue(x.shape[1])
        if "bias" in layer.weights:
            ep.add(layer.weights["bias"])
        return [apply_epilogue(out, ep.extend(ctx.epilogue))]
    if "bias" in layer.weights:
        b = layer.weights["bias"]
        out += b.reshape(_axis_blob_shape(x, b, axis))
    return [out]


@op("caffe", "Bias")
def bias(layer, inputs, ctx):
    p = sub(layer, "bias_param")
    x = inputs[0]
    axis = canonical_axis(int(p.get("axis", 1)), x.ndim)
    b = inputs[1] if len(inputs) > 1 else layer.weights["bias"]
    out = _out(ctx, x)
    np.add(x, b.reshape(_axis_blob_shape(x, b, axis)), out=out)
    return [out]


@op("caffe", "PReLU")
def prelu(layer, inputs, ctx):
    x = inputs[0]
    slope = layer.weights["slope"]
    a = slope.reshape(_channel_shape(x, 1, slope.size)) if slope.size > 1 else slope[0]
    return [np.where(x > 0, x, x * a).astype(F32)]


# ---------------------------------------------------------------- activations
@op("caffe", "ReLU")
def relu(layer, inputs, ctx):
    x = inputs[0]
    slope = float(sub(layer, "relu_param").get("negative_slope", 0.0))
    out = _out(ctx, x)
    if slope == 0.0:
        np.maximum(x, 0, out=out)
    else:
        np.multiply(x, np.where(x > 0, F32(1), F32(slope)), out=out)
    return [out]


@op("caffe", "ReLU6")
def relu6(layer, inputs, ctx):
    x = inputs[0]
    return [np.clip(x, 0, 6, out=_out(ctx, x))]


@op("caffe", "Clip")
def clip(layer, inputs, ctx):
    p = sub(layer, "clip_param")
    x = inputs[0]
    return [np.clip(x, p.get("min", -np.inf), p.get("max", np.inf), out=_out(ctx, x)).astype(F32, copy=False)]


@op("caffe", "ELU")
def elu(layer, inputs, ctx):
    x = inputs[0]
    alpha = F32(sub(layer, "elu_param").get("alpha", 1.0))
    return [np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))).astype(F32)]


@op("caffe", "Sigmoid")
def sigmoid(layer, inputs, ctx):
    x = inputs[0]
    return [(0.5 * np.tanh(0.5 * x) + 0.5).astype(F32)]


@op("caffe", "TanH")
def tanh(layer, inputs, ctx):
    return [np.tanh(inputs[0]).astype(F32)]


@op("caffe", "AbsVal")
def absval(layer, inputs, ctx):
    return [np.abs(inputs[0])]


@op("caffe", "BNLL")
def bnll(layer, inputs, ctx):
    x = inputs[0]
    return [np.logaddexp(0, x).astype(F32)]


@op("caffe", "Swish")
def swish(layer, inputs, ctx):
    x = inputs[0]
    beta = F32(sub(layer, "swish_param").get("beta", 1.0))
    return [(x * (0.5 * np.tanh(0.5 * beta * x) + 0.5)).astype(F32)]


@op("caffe", "Mish")
def mish(layer, inputs, ctx):
    x = inputs[0].astype(np.float64)
    return [(x * np.tanh(np.logaddexp(0, x))).astype(F32)]


@op("caffe", "Power")
def power(layer, inputs, ctx):
    p = sub(layer, "power_param")
    x = inputs[0]
    y = F32(p.get("shift", 0.0)) + F32(p.get("scale", 1.0)) * x
    pw = float(p.get("power", 1.0))
    return [(y if pw == 1.0 else np.power(y, F32(pw))).astype(F32)]


@op("caffe", "Exp")
def exp(layer, inputs, ctx):
    p = sub(layer, "exp_param")
    base = float(p.get("base", -1.0))
    inner = float(p.get("scale", 1.0)) * inputs[0] + float(p.get("shift", 0.0))
    y = np.exp(inner) if base == -1.0 else np.power(base, inner)
    return [y.astype(F32)]


@op("caffe", "Log")
def log(layer, inputs, ctx):
    p = sub(layer, "log_param")
    base = float(p.get("base", -1.0))
    inner = float(p.get("scale", 1.0)) * inputs[0] + float(p.get("shift", 0.0))
    y = np.log(inner) if base == -1.0 else np.log(inner) / np.log(base)
    return [y.astype(F32)]


@op("caffe", "Threshold")
def threshold(layer, inputs, ctx):
    t = float(sub(layer, "threshold_param").get("threshold", 0.0))
    return [(inputs[0] > t).astype(F32)]


@op("caffe", "Dropout", "FixedNeuron", "Split")
def identity(layer, inputs, ctx):
    # Dropout is the identity at test time (Caffe scales during training);
    # FixedNeuron is treated as float passthrough (no fixed-point simulation);
    # Split gives every top the same value.
    return [inputs[0]] * max(1, len(layer.tops))


# ---------------------------------------------------------------- structure
@op("caffe", "Pooling")
def pooling(layer, inputs, ctx):
    p = sub(layer, "pooling_param")
    x = inputs[0]
    mode = p.get("pool", "MAX")
    k, s, pd, (oh, ow) = pool_geometry(p, x.shape[2], x.shape[3])
    if mode == "MAX":
        return [maxpool(x, k, s, pd, (oh, ow))]
    if mode == "AVE":
        return [avgpool(x, k, s, pd, (oh, ow), divide_by_padded=True)]
    raise ModelError(f"pooling method {mode} is training-only (STOCHASTIC) or unknown")


@op("caffe", "Eltwise")
def eltwise(layer, inputs, ctx):
    p = sub(layer, "eltwise_param")
    operation = p.get("operation", "SUM")
    for i, x in enumerate(inputs[1:], 1):
        if x.shape != inputs[0].shape:
            raise ModelError(f"Eltwise input {i} has shape {x.shape}, input 0 has {inputs[0].shape}")
    coeff = p.get("coeff", [])
    ep = ctx.epilogue  # the ReLU after it, fused (see fusion.py)
    if operation == "SUM" and not coeff and len(inputs) == 2 and inputs[0].ndim >= 2:
        # a residual join: the sum and the fused ReLU (if any) in one pass, into a new
        # array even when an input dies here (LLVM cannot vectorise a loop whose output
        # may overlap its inputs: in place was 2x slower on 7 x 7 maps)
        return [eltwise_sum2(inputs[0], inputs[1], ep)]
    out = inputs[0].copy() if not ctx.donated(0) else np.ascontiguousarray(inputs[0])
    if operation == "SUM":
        if coeff and len(coeff) != len(inputs):
            raise ModelError(f"Eltwise has {len(coeff)} coefficients for {len(inputs)} inputs")
        if coeff:
            out *= F32(coeff[0])
            for c, x in zip(coeff[1:], inputs[1:]):
                out += F32(c) * x
        else:
            for x in inputs[1:]:
                out += x
    elif operation == "PROD":
        for x in inputs[1:]:
            out *= x
    elif operation == "MAX":
        for x in inputs[1:]:
            np.maximum(out, x, out=out)
    else:
        raise ModelError(f"unknown Eltwise operation {operation}")
    if ep is not None:
        apply_epilogue(out, ep)
    return [out]


@op("caffe", "Concat")
def concat(layer, inputs, ctx):
    return [np.concatenate(inputs, axis=join_axis(layer, inputs[0].ndim))]


@op("caffe", "Slice")
def slice_(layer, inputs, ctx):
    x = inputs[0]
    axis, bounds = slice_bounds(layer, x.shape)
    lead = (slice(None),) * axis
    return [np.ascontiguousarray(x[lead + (slice(a, b),)]) for a, b in zip(bounds, bounds[1:])]


@op("caffe", "Flatten", "Reshape")
def reshape(layer, inputs, ctx):
    """A view in the shape the layer's spec infers, worked out once per layer and input
    shape while its params stay the same (inferring it cost 20 us a call: res10's 13
    Flatten layers took a quarter of a millisecond a pass)."""
    x = inputs[0]
    key = ("reshape", layer.name)
    hit = ctx.cache.get(key)
    if hit is not None and hit[0] is layer and hit[1] == x.shape and hit[2] == layer.params:
        return [x.reshape(hit[3])]
    shape = spec_for("caffe", layer).infer(layer, [x.shape])[0]
    ctx.cache[key] = (layer, x.shape, copy.deepcopy(layer.params), shape)
    return [x.reshape(shape)]


@op("caffe", "Permute")
def permute(layer, inputs, ctx):
    x = inputs[0]
    return [np.ascontiguousarray(x.transpose(permute_order(layer, x.ndim)))]


@op("caffe", "Softmax")
def softmax(layer, inputs, ctx):
    x = inputs[0]
    axis = canonical_axis(int(sub(layer, "softmax_param").get("axis", 1)), x.ndim)
    return [channelwise.softmax(x, axis)]


@op("caffe", "LRN")
def lrn(layer, inputs, ctx):
    p = sub(layer, "lrn_param")
    x = inputs[0].astype(np.float64)
    n = int(p.get("local_size", 5))
    alpha, beta, k = float(p.get("alpha", 1.0)), float(p.get("beta", 0.75)), float(p.get("k", 1.0))
    sq = x * x
    if p.get("norm_region", "ACROSS_CHANNELS") == "ACROSS_CHANNELS":
        pre = (n - 1) // 2
        padded = np.pad(sq, ((0, 0), (pre, n - 1 - pre), (0, 0), (0, 0)))
        c = np.cumsum(padded, axis=1)
        c = np.concatenate([np.zeros_like(c[:, :1]), c], axis=1)
        window = c[:, n:] - c[:, :-n]
        scale = k + alpha / n * window
    else:  # WITHIN_CHANNEL: Caffe pools x^2 with AVE (padding counted) and uses shift 1
        pad = (n - 1) // 2
        h, w = x.shape[2:]
        avg = avgpool(sq.astype(F32), (n, n), (1, 1), (pad, pad),
                      (pool_out(h, n, 1, pad, True), pool_out(w, n, 1, pad, True)))
        scale = 1.0 + alpha * avg.astype(np.float64)
    return [(x * scale ** -beta).astype(F32)]


@op("caffe", "Crop")
def crop(layer, inputs, ctx):
    x, ref = inputs
    idx = [slice(None)] * x.ndim
    for a, off, size in crop_windows(layer, x.shape, ref.shape):
        idx[a] = slice(off, off + size)
    return [np.ascontiguousarray(x[tuple(idx)])]


@op("caffe", "Upsample")
def upsample(layer, inputs, ctx):
    x = inputs[0]
    fh, fw = upsample_factors(x.shape, spec_for("caffe", layer).infer(layer, [x.shape])[0])
    return [np.ascontiguousarray(np.repeat(np.repeat(x, fh, axis=2), fw, axis=3))]


@op("caffe", "ArgMax")
def argmax(layer, inputs, ctx):
    p = sub(layer, "argmax_param")
    x = inputs[0]
    k = int(p.get("top_k", 1))
    if "axis" in p:
        axis = canonical_axis(int(p["axis"]), x.ndim)
        idx = np.argsort(-x, axis=axis, kind="stable").take(range(k), axis=axis)
        if p.get("out_max_val", False):
            return [np.take_along_axis(x, idx, axis=axis).astype(F32)]
        return [idx.astype(F32)]
    flat = x.reshape(x.shape[0], -1)
    idx = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    if p.get("out_max_val", False):
        vals = np.take_along_axis(flat, idx, axis=1)
        return [np.stack([idx.astype(F32), vals], axis=1)]
    return [idx.astype(F32)[:, None, :]]


@op("caffe", "Silence")
def silence(layer, inputs, ctx):
    return []


# ---------------------------------------------------------------- metrics and losses
@op("caffe", "Accuracy")
def accuracy(layer, inputs, ctx):
    p = sub(layer, "accuracy_param")
    scores, labels = inputs[0], inputs[1].reshape(-1).astype(np.int64)
    axis = canonical_axis(int(p.get("axis", 1)), scores.ndim)
    k = int(p.get("top_k", 1))
    s = np.moveaxis(scores, axis, -1).reshape(-1, scores.shape[axis])
    if s.shape[0] != labels.size:
        raise ModelError(f"Accuracy got {s.shape[0]} predictions and {labels.size} labels")
    keep = labels != int(p["ignore_label"]) if "ignore_label" in p else np.ones(labels.size, bool)
    s, labels = s[keep], labels[keep]
    # Caffe counts a hit when fewer than k classes score strictly higher than the label.
    higher = (s > s[np.arange(labels.size), labels][:, None]).sum(axis=1)
    hit = higher < k
    out = [np.array(hit.mean() if labels.size else 0.0, F32)]
    if len(layer.tops) > 1:
        per = np.zeros(scores.shape[axis], F32)
        for c in range(per.size):
            m = labels == c
            per[c] = hit[m].mean() if m.any() else 0.0
        out.append(per)
    return out


@op("caffe", "SoftmaxWithLoss")
def softmax_loss(layer, inputs, ctx):
    scores, labels = inputs[0], inputs[1].reshape(-1).astype(np.int64)
    axis = canonical_axis(int(sub(layer, "softmax_param").get("axis", 1)), scores.ndim)
    s = np.moveaxis(scores, axis, -1).reshape(-1, scores.shape[axis]).astype(np.float64)
    s -= s.max(axis=1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    lp = sub(layer, "loss_param")
    keep = labels != int(lp["ignore_label"]) if "ignore_label" in lp else np.ones(labels.size, bool)
    picked = -logp[np.arange(labels.size)[keep], labels[keep]]
    norm = lp.get("normalization", "VALID")
    denom = {"VALID": keep.sum(), "FULL": labels.size, "BATCH_SIZE": scores.shape[0], "NONE": 1}[norm]
    out = [np.array(picked.sum() / max(denom, 1), F32)]
    if len(layer.tops) > 1:
        out.append(np.exp(logp).reshape(np.moveaxis(scores, axis, -1).shape).astype(F32))
    return out


@op("caffe", "EuclideanLoss")
def euclidean_loss(layer, inputs, ctx):
    a, b = inputs
    d = (a - b.reshape(a.shape)).astype(np.float64)
    return [np.array((d * d).sum() / a.shape[0] / 2.0, F32)]


@op("caffe", "SigmoidCrossEntropyLoss")
def sigmoid_ce_loss(layer, inputs, ctx):
    x, t = inputs[0].astype(np.float64), inputs[1].reshape(inputs[0].shape).astype(np.float64)
    loss = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    return [np.array(loss.sum() / x.shape[0], F32)]
