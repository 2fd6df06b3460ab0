"""Forwards of the Caffe fork layers that resample or rearrange space: Interp, DeephiResize,
Reorg, Tile. Output sizes always come from the layer's spec (``layers/caffe.py``).

* ``Interp`` (DeepLab v2 / PSPNet ``interp_layer.cpp``): ``caffe_cpu_interp2`` over the
  input cropped by ``-pad_beg``/``-pad_end`` (the fork allows only pads <= 0):
  bilinear with the corners aligned, ``r = (in - 1) / (out - 1)`` in float, source
  ``i = (int)(r * o)``, the upper neighbour clamped at the last row/column. An equal
  size is a plain copy. Computed in float32 in Caffe's order of operations.
* ``DeephiResize`` (caffe-xilinx ``deephi_resize_layer.cpp``, CPU path): OpenCV's
  ``cv::resize`` of every channel plane, ``INTER_NEAREST`` (the default ``resize_type``)
  or ``INTER_LINEAR`` (``BILINEAR``: half-pixel centres, edges clamped). The layer
  hands OpenCV the plane transposed, so the height axis is OpenCV's horizontal pass.
* ``Reorg`` (the YOLOv2 Caffe ports' ``reorg_layer.cpp``): ``reorg_cpu`` over the input
  geometry with ``forward = reverse``: darknet's ``[reorg]`` exactly, so it shares
  the Darknet engine's index arithmetic.
* ``Tile`` (BVLC ``tile_layer.cpp``): the blob from ``axis`` on, repeated ``tiles`` times.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ModelError
from ..layers.caffe_geometry import canonical_axis, interp_window, reorg_stride, sub
from ..layers.registry import REGISTRY
from .darknet_ops import _reorg_cpu
from .ops import op

F32 = np.float32


def _out_shape(layer, inputs):
    return REGISTRY[("caffe", layer.type)].infer(layer, [x.shape for x in inputs])[0]


# ---------------------------------------------------------------- Interp
def interp_axis(n_in: int, n_out: int):
    """``caffe_cpu_interp2`` along one axis: (lower index, upper index, lower weight,
    upper weight), float32 weights exactly as the C code rounds them."""
    r = F32(n_in - 1) / F32(n_out - 1) if n_out > 1 else F32(0)
    pos = r * np.arange(n_out, dtype=F32)
    lo = pos.astype(np.int64)                      # (int) truncation; pos >= 0
    hi = lo + (lo < n_in - 1)
    w1 = (pos - lo.astype(F32)).astype(F32)
    return lo, hi, F32(1) - w1, w1


@op("caffe", "Interp")
def interp(layer, inputs, ctx):
    x = inputs[0]
    _, _, h, w = x.shape
    rows, cols = interp_window(layer, h, w)
    _, _, oh, ow = _out_shape(layer, inputs)
    src = x[:, :, rows, cols]
    ih, iw = src.shape[2:]
    if (ih, iw) == (oh, ow):
        return [np.ascontiguousarray(src, dtype=F32)]
    return [bilinear(src, interp_axis(ih, oh), interp_axis(iw, ow)).astype(F32, copy=False)]


def bilinear(src, h_taps, w_taps):
    """Combine the four neighbours with per-axis taps (lower, upper, lower weight, upper weight)
    in ``caffe_cpu_interp2``'s order: h0 * (w0 * p[0] + w1 * p[w1p]) + h1 * (w0 * p[h1p*W] +
    w1 * p[h1p*W + w1p]). Generic over arrays: the trainer applies it to tensors."""
    hl, hh, h0, h1 = h_taps
    wl, wh, w0, w1 = w_taps
    top, bot = src[:, :, hl, :], src[:, :, hh, :]
    a = w0 * top[..., wl] + w1 * top[..., wh]
    b = w0 * bot[..., wl] + w1 * bot[..., wh]
    return h0[:, None] * a + h1[:, None] * b


# ---------------------------------------------------------------- DeephiResize
def _cv_linear_axis(n_in: int, n_out: int):
    """cv::resize INTER_LINEAR taps along one axis: (index 0, index 1, weight 0, weight 1)."""
    scale = 1.0 / (n_out / n_in)
    f = ((np.arange(n_out) + 0.5) * scale - 0.5).astype(F32)
    s = np.floor(f).astype(np.int64)
    frac = (f - s.astype(F32)).astype(F32)
    edge = (s < 0) | (s >= n_in - 1)
    frac[edge] = 0
    i0 = np.clip(s, 0, n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), F32(1) - frac, frac


def _cv_nearest_axis(n_in: int, n_out: int):
    """cv::resize INTER_NEAREST source index along one axis: floor(o * (1 / (out / in)))."""
    ifx = 1.0 / (n_out / n_in)
    return np.minimum(np.floor(np.arange(n_out) * ifx).astype(np.int64), n_in - 1)


@op("caffe", "DeephiResize")
def deephi_resize(layer, inputs, ctx):
    x = inputs[0]
    _, _, h, w = x.shape
    _, _, oh, ow = _out_shape(layer, inputs)
    mode = sub(layer, "deephi_resize_param").get("resize_type", "NEAREST")
    if mode in ("NEAREST", 1):
        return [np.ascontiguousarray(x[:, :, _cv_nearest_axis(h, oh)][..., _cv_nearest_axis(w, ow)])]
    if mode not in ("BILINEAR", 0):
        raise ModelError(f"DeephiResize resize_type {mode!r} is neither BILINEAR nor NEAREST")
    if (h, w) == (oh, ow):
        return [x.astype(F32, copy=True)]
    # OpenCV's horizontal pass runs along our height axis (the plane is transposed), then
    # the vertical pass along our width axis.
    i0, i1, a0, a1 = _cv_linear_axis(h, oh)
    rows = a0[:, None] * x[:, :, i0, :] + a1[:, None] * x[:, :, i1, :]
    j0, j1, b0, b1 = _cv_linear_axis(w, ow)
    return [(b0 * rows[..., j0] + b1 * rows[..., j1]).astype(F32, copy=False)]


# ---------------------------------------------------------------- Reorg, Tile
@op("caffe", "Reorg")
def reorg(layer, inputs, ctx):
    p = sub(layer, "reorg_param")
    stride = reorg_stride(p)
    x = inputs[0]
    n, c, h, w = x.shape
    return [_reorg_cpu(x, w, h, c, stride, bool(p.get("reverse", False)),
                       _out_shape(layer, inputs), ctx)]


@op("caffe", "Tile")
def tile(layer, inputs, ctx):
    p = sub(layer, "tile_param")
    x = inputs[0]
    reps = [1] * x.ndim
    reps[canonical_axis(int(p.get("axis", 1)), x.ndim)] = int(p.get("tiles", 1))
    if math.prod(reps) < 1:
        raise ModelError(f"Tile needs tiles >= 1, got {p.get('tiles')}")
    return [np.tile(x, reps)]
