"""Torch forwards of Caffe's pooling, joining, reshaping and normalising-across-space layers.

Output sizes come from the layer's spec (``layers/caffe/``), never from torch's own rules:
Caffe's pooling rounds up and drops a window that starts in the padding, and its average
divides by the window clipped to the padded input, neither of which torch's ``ceil_mode``
and ``count_include_pad`` reproduce in every case.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError
from ..layers.caffe_geometry import (canonical_axis, crop_windows, join_axis, permute_order,
                                     pool_geometry, pool_out, slice_bounds, sub, upsample_factors)
from ..layers.registry import spec_for
from .torch_ops import op


# ---------------------------------------------------------------- pooling
def _pool_geometry(p, x):
    return pool_geometry(p, x.shape[2], x.shape[3])


def _padded(x, k, s, pd, out, value):
    """``x`` padded so that windows ``0 .. out-1`` (stride ``s``) all fit, ``pd`` before."""
    extra = [max(0, (out[i] - 1) * s[i] + k[i] - x.shape[2 + i] - pd[i]) for i in range(2)]
    if not any(extra) and not any(pd):  # the common case: no copy of the input
        return x
    return F.pad(x, (pd[1], extra[1], pd[0], extra[0]), value=value)


def _window_sizes(n, k, s, p, out):
    """Caffe's AVE divisor along one axis: the window clipped to the padded input."""
    start = np.arange(out) * s - p
    return (np.minimum(start + k, n + p) - start).astype(np.float32)


def avg_pool_caffe(x, k, s, pd, out):
    """Caffe's AVE pooling (sum over the window inside the input / the window size clipped
    to the padded input), differentiable."""
    total = F.avg_pool2d(_padded(x, k, s, pd, out, 0.0), k, s, divisor_override=1)
    total = total[:, :, :out[0], :out[1]]
    div = np.outer(_window_sizes(x.shape[2], k[0], s[0], pd[0], out[0]),
                   _window_sizes(x.shape[3], k[1], s[1], pd[1], out[1]))
    return total / torch.as_tensor(div, dtype=x.dtype, device=x.device)


def _pool_check(layer) -> str:
    mode = sub(layer, "pooling_param").get("pool", "MAX")
    return "" if mode in ("MAX", "AVE") else \
        f"pooling method {mode} is not implemented (STOCHASTIC samples at TRAIN; MAX and AVE run)"


@op("caffe", "Pooling", check=_pool_check)
def pooling(layer, inputs, ctx):
    p = sub(layer, "pooling_param")
    x = inputs[0]
    k, s, pd, out = _pool_geometry(p, x)
    if p.get("pool", "MAX") == "MAX":  # the padding never wins a max, as in Caffe
        y = F.max_pool2d(_padded(x, k, s, pd, out, float("-inf")), k, s)
        return [y[:, :, :out[0], :out[1]]]
    return [avg_pool_caffe(x, k, s, pd, out)]


# ---------------------------------------------------------------- joins and splits
@op("caffe", "Eltwise")
def eltwise(layer, inputs, ctx):
    p = sub(layer, "eltwise_param")
    operation = p.get("operation", "SUM")
    for i, x in enumerate(inputs[1:], 1):
        if x.shape != inputs[0].shape:
            raise ModelError(f"Eltwise input {i} has shape {tuple(x.shape)}, input 0 has "
                             f"{tuple(inputs[0].shape)}")
    if operation == "SUM":
        coeff = p.get("coeff", [])
        if coeff and len(coeff) != len(inputs):
            raise ModelError(f"Eltwise has {len(coeff)} coefficients for {len(inputs)} inputs")
        out = inputs[0] * float(coeff[0]) if coeff else inputs[0]
        for i, x in enumerate(inputs[1:], 1):
            out = out + (x * float(coeff[i]) if coeff else x)
        return [out]
    if operation == "PROD":
        out = inputs[0]
        for x in inputs[1:]:
            out = out * x
        return [out]
    if operation == "MAX":  # the gradient goes to the first input holding the max, as Caffe's mask
        return [torch.stack(inputs).max(dim=0).values]
    raise ModelError(f"unknown Eltwise operation {operation}")


@op("caffe", "Concat")
def concat(layer, inputs, ctx):
    return [torch.cat(inputs, dim=join_axis(layer, inputs[0].ndim))]


@op("caffe", "Slice")
def slice_(layer, inputs, ctx):
    axis, bounds = slice_bounds(layer, tuple(inputs[0].shape))
    return list(torch.split(inputs[0], [b - a for a, b in zip(bounds, bounds[1:])], dim=axis))


@op("caffe", "Flatten", "Reshape")
def reshape(layer, inputs, ctx):
    shape = spec_for("caffe", layer).infer(layer, [tuple(inputs[0].shape)])[0]
    return [inputs[0].reshape(shape)]


@op("caffe", "Permute")
def permute(layer, inputs, ctx):
    x = inputs[0]
    return [x.permute(permute_order(layer, x.ndim)).contiguous()]


@op("caffe", "Crop")
def crop(layer, inputs, ctx):
    x, ref = inputs
    for a, off, size in crop_windows(layer, tuple(x.shape), tuple(ref.shape)):
        x = x.narrow(a, off, size)
    return [x]


@op("caffe", "Tile")
def tile(layer, inputs, ctx):
    p = sub(layer, "tile_param")
    x = inputs[0]
    tiles = int(p.get("tiles", 1))
    if tiles < 1:
        raise ModelError(f"Tile needs tiles >= 1, got {tiles}")
    reps = [1] * x.ndim
    reps[canonical_axis(int(p.get("axis", 1)), x.ndim)] = tiles
    return [x.repeat(reps)]


@op("caffe", "Upsample")
def upsample(layer, inputs, ctx):
    x = inputs[0]
    fh, fw = upsample_factors(x.shape, spec_for("caffe", layer).infer(layer, [tuple(x.shape)])[0])
    return [x.repeat_interleave(fh, dim=2).repeat_interleave(fw, dim=3)]


@op("caffe", "Silence")
def silence(layer, inputs, ctx):
    return []


# ---------------------------------------------------------------- softmax, LRN
@op("caffe", "Softmax")
def softmax(layer, inputs, ctx):
    x = inputs[0]
    return [F.softmax(x, dim=canonical_axis(int(sub(layer, "softmax_param").get("axis", 1)), x.ndim))]


@op("caffe", "LRN")
def lrn(layer, inputs, ctx):
    """BVLC ``lrn_layer.cpp``: x * (k + alpha / n * sum of x^2 over n neighbouring channels)^-beta
    (ACROSS_CHANNELS), or x * (1 + alpha * AVE-pooled x^2)^-beta over an n x n window
    (WITHIN_CHANNEL, through Caffe's AVE pooling with its padding rule)."""
    p = sub(layer, "lrn_param")
    x = inputs[0]
    n = int(p.get("local_size", 5))
    alpha, beta, k = float(p.get("alpha", 1.0)), float(p.get("beta", 0.75)), float(p.get("k", 1.0))
    sq = x * x
    if p.get("norm_region", "ACROSS_CHANNELS") == "ACROSS_CHANNELS":
        pre = (n - 1) // 2
        b, c = x.shape[:2]
        col = F.pad(sq.reshape(b, 1, c, -1), (0, 0, pre, n - 1 - pre))
        window = F.avg_pool2d(col, (n, 1), 1, divisor_override=1).reshape(x.shape)
        scale = k + alpha / n * window
    else:
        pad = (n - 1) // 2
        out = (pool_out(x.shape[2], n, 1, pad, True), pool_out(x.shape[3], n, 1, pad, True))
        scale = 1.0 + alpha * avg_pool_caffe(sq, (n, n), (1, 1), (pad, pad), out)
    return [x * scale ** -beta]
