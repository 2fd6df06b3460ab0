"""Torch forwards of the Caffe fork layers that resample or rearrange space: Interp,
DeephiResize, Reorg.

Their taps and index maps are the NumPy engine's own (``engine/caffe_resize_ops.py``,
``engine/darknet_ops.py``), computed once per shape and applied here as gathers and
weighted sums, so the two backends cannot drift apart and the gradient flows to every
source pixel with the weight it contributed.
"""
from __future__ import annotations

import math

import torch

from ..engine.caffe_resize_ops import _cv_linear_axis, _cv_nearest_axis, bilinear, interp_axis
from ..engine.darknet_ops import _reorg_index
from ..errors import ModelError
from ..layers.caffe_geometry import interp_window, reorg_stride, sub
from ..layers.registry import spec_for
from .torch_ops import op


def _out_hw(layer, x):
    return spec_for("caffe", layer).infer(layer, [tuple(x.shape)])[0][2:]


def _taps(ctx, key, make, device):
    """(index, index, weight, weight) tensors for one axis, cached per layer and size."""
    hit = ctx.cache.get(key)
    if hit is None or hit[0].device != device:
        i0, i1, w0, w1 = make()
        hit = ctx.cache[key] = tuple(torch.as_tensor(a, device=device) for a in (i0, i1, w0, w1))
    return hit


@op("caffe", "Interp")
def interp(layer, inputs, ctx):
    x = inputs[0]
    h, w = x.shape[2:]
    rows, cols = interp_window(layer, h, w)
    oh, ow = _out_hw(layer, x)
    src = x[:, :, rows, cols]
    ih, iw = src.shape[2:]
    if (ih, iw) == (oh, ow):
        return [src.contiguous()]
    hk = _taps(ctx, (layer.name, "h", ih, oh), lambda: interp_axis(ih, oh), x.device)
    wk = _taps(ctx, (layer.name, "w", iw, ow), lambda: interp_axis(iw, ow), x.device)
    return [bilinear(src, hk, wk)]


@op("caffe", "DeephiResize")
def deephi_resize(layer, inputs, ctx):
    x = inputs[0]
    h, w = x.shape[2:]
    oh, ow = _out_hw(layer, x)
    mode = sub(layer, "deephi_resize_param").get("resize_type", "NEAREST")
    if mode in ("NEAREST", 1):
        hi = torch.as_tensor(_cv_nearest_axis(h, oh), device=x.device)
        wi = torch.as_tensor(_cv_nearest_axis(w, ow), device=x.device)
        return [x[:, :, hi][..., wi]]
    if mode not in ("BILINEAR", 0):
        raise ModelError(f"DeephiResize resize_type {mode!r} is neither BILINEAR nor NEAREST")
    if (h, w) == (oh, ow):
        return [x]
    # OpenCV's horizontal pass runs along our height axis (the plane is transposed)
    i0, i1, a0, a1 = _taps(ctx, (layer.name, "h", h, oh), lambda: _cv_linear_axis(h, oh), x.device)
    rows = a0[:, None] * x[:, :, i0, :] + a1[:, None] * x[:, :, i1, :]
    j0, j1, b0, b1 = _taps(ctx, (layer.name, "w", w, ow), lambda: _cv_linear_axis(w, ow), x.device)
    return [b0 * rows[..., j0] + b1 * rows[..., j1]]


@op("caffe", "Reorg")
def reorg(layer, inputs, ctx):
    """darknet's ``reorg_cpu`` index arithmetic as a scatter (forward) or gather (reverse)."""
    p = sub(layer, "reorg_param")
    stride = reorg_stride(p)
    x = inputs[0]
    n, c, h, w = x.shape
    out_shape = spec_for("caffe", layer).infer(layer, [tuple(x.shape)])[0]
    key = (layer.name, "reorg", w, h, c, stride, x.device)
    idx = ctx.cache.get(key)
    if idx is None:
        idx = ctx.cache[key] = tuple(torch.as_tensor(a, device=x.device)
                                     for a in _reorg_index(w, h, c, stride))
    in_index, out_index = idx
    src = x.reshape(n, -1)
    out = src.new_zeros((n, math.prod(out_shape[1:])))
    if p.get("reverse", False):  # Caffe's reorg_layer passes reverse as reorg_cpu's forward
        out = out.index_copy(1, out_index, src[:, in_index])
    else:
        out = out.index_copy(1, in_index, src[:, out_index])
    return [out.reshape((n,) + tuple(out_shape[1:]))]
