"""Direct depthwise convolution: one filter per channel, where im2col + GEMM wastes its time."""
from __future__ import annotations

import numba as nb
import numpy as np

from . import epilogue as epi
from . import depthwise_3x3, parallel
from .depthwise_planes import depthwise_planes


def _depthwise(x, w, mult, sh, sw, ph, pw, dh, dw, oh, ow, out):
    # One output row at a time, tap by tap: the inner loop runs along the row over the output
    # pixels whose input pixel is inside the map (bounds worked out once per tap, not tested
    # per pixel), so that it vectorises. Each output still sums its taps in the same order
    # (i, then j), skipping the same padded ones, as the per-pixel loop did: same bits.
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    for t in nb.prange(N * O):
        n = t // O
        o = t % O
        c = o // mult
        for y in range(oh):
            row = out[n, o, y]
            row[:] = np.float32(0.0)
            for i in range(kh):
                iy = y * sh - ph + i * dh
                if iy < 0 or iy >= H:
                    continue
                src = x[n, c, iy]
                for j in range(kw):
                    off = j * dw - pw
                    # first and one-past-last output columns with 0 <= xo*sw + off < W
                    lo = 0 if off >= 0 else (-off + sw - 1) // sw
                    hi = min(ow, (W - 1 - off) // sw + 1) if W - 1 - off >= 0 else 0
                    wv = w[o, 0, i, j]
                    # unsigned indices: no negative-index wrap-around test per element, which
                    # would keep the loop from vectorising
                    # (a negative off wraps modulo 2**64, and xo*sw + off is still the right index)
                    uoff = np.uint64(off)
                    for xo in range(np.uint64(lo), np.uint64(hi)):
                        row[xo] += src[xo * np.uint64(sw) + uoff] * wv


DEPTHWISE_K = parallel.dual(_depthwise)


def _depthwise_nhwc(x, w, sh, sw, ph, pw, dh, dw, oh, ow, out):
    # x (N, H, W, C), w (kh, kw, C), out (N, oh, ow, C): the inner loop runs along the
    # channels, so that it vectorises however small the map or large the stride. A tile is
    # one output row, so that a single image keeps every thread busy. Taps in the same order
    # (i, then j, padded ones skipped) as the kernel above: the two agree bit for bit.
    N, H, W, C = x.shape
    kh, kw, _ = w.shape
    for t in nb.prange(N * oh):
        n = t // oh
        y = t % oh
        for xo in range(ow):
            acc = out[n, y, xo]
            acc[:] = np.float32(0.0)
            for i in range(kh):
                iy = y * sh - ph + i * dh
                if iy < 0 or iy >= H:
                    continue
                for j in range(kw):
                    ix = xo * sw - pw + j * dw
                    if ix < 0 or ix >= W:
                        continue
                    src = x[n, iy, ix]
                    wk = w[i, j]
                    for c in range(np.uint64(C)):
                        acc[c] += src[c] * wk[c]


DEPTHWISE_NHWC_K = parallel.dual(_depthwise_nhwc)

#: output widths up to this (or any stride > 1) take the channels-last kernel: along a short
#: or strided row the row kernel cannot vectorise, and the two transposes cost less than that
NHWC_MAX_WIDTH = 56
#: output maps from this many pixels take the plane kernel (:mod:`.depthwise_planes`);
#: below it its per-plane costs (fill, copy-out, short rows) outweigh the channels-last
#: kernel's two transposes (measured on MobileNet v2: 14x14 even, 7x7 2x slower)
PLANES_MIN_PIXELS = 14 * 14


def depthwise_conv(x, w, stride, pad, dilation, out_hw, ep: epi.Epilogue | None = None) -> np.ndarray:
    """x (N, C, H, W), w (C*m, 1, kh, kw) -> (N, C*m, oh, ow), with the epilogue ``ep``
    (bias first, if any) applied: fused per plane where the plane kernels run."""
    if depthwise_3x3.applies(w.shape, stride, pad, dilation):
        out = depthwise_3x3.depthwise_3x3(np.ascontiguousarray(x, np.float32), w, stride,
                                          (ep or epi.Epilogue(w.shape[0])).arrays())
        if out is not None:
            return out
    if out_hw[0] * out_hw[1] >= PLANES_MIN_PIXELS:
        out = depthwise_planes(np.ascontiguousarray(x, np.float32), w, stride, pad, dilation, out_hw,
                               (ep or epi.Epilogue(w.shape[0])).arrays())
        if out is not None:
            return out
    return epi.apply(depthwise_unfused(x, w, stride, pad, dilation, out_hw), ep)


def depthwise_unfused(x, w, stride, pad, dilation, out_hw) -> np.ndarray:
    """The tap-skipping kernels (row or channels-last), no epilogue: small maps, non-finite
    weights, and the bit-for-bit yardstick of the plane kernel's tests."""
    macs = x.shape[0] * w.shape[0] * out_hw[0] * out_hw[1] * w.shape[2] * w.shape[3]
    if w.shape[0] == x.shape[1] and (out_hw[1] <= NHWC_MAX_WIDTH or stride[1] > 1):
        xt = np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1))
        wt = np.ascontiguousarray(np.asarray(w[:, 0], np.float32).transpose(1, 2, 0))
        out = np.empty((x.shape[0], out_hw[0], out_hw[1], w.shape[0]), np.float32)
        kernel = parallel.pick(DEPTHWISE_NHWC_K, macs, parallel.MIN_PARALLEL_MACS)
        kernel(xt, wt, stride[0], stride[1], pad[0], pad[1], dilation[0], dilation[1],
               out_hw[0], out_hw[1], out)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
    out = np.empty((x.shape[0], w.shape[0], out_hw[0], out_hw[1]), np.float32)
    kernel = parallel.pick(DEPTHWISE_K, macs, parallel.MIN_PARALLEL_MACS)
    kernel(np.ascontiguousarray(x, np.float32), np.ascontiguousarray(w, np.float32),
           w.shape[0] // x.shape[1], stride[0], stride[1], pad[0], pad[1], dilation[0], dilation[1],
           out_hw[0], out_hw[1], out)
    return out
