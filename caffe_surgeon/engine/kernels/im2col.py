"""im2col / col2im for convolution and deconvolution as a matrix product.

Layout: for an input (C, H, W) the column matrix is (C*kh*kw, oh*ow), the row
order (c, i, j) matching Caffe's and Darknet's weight layout (O, C, kh, kw),
so ``W.reshape(O, -1) @ cols`` is the convolution. :func:`im2col_batch` lays
several images side by side, (C*kh*kw, N*oh*ow), for one GEMM over the batch.
"""
from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True, inline="always")
def _im2col_channel(x, c, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out):
    # out[(c*kh + i)*kw + j, n, y*ow + xo] = x[n, c, y*sh - ph + i*dh, xo*sw - pw + j*dw] or 0.
    # The columns whose input lies inside the row, [lo, hi), are copied between views that
    # start at the first copied element (indices from 0 up, which Numba need not test for
    # negative wrap-around), the padding on either side zero-filled: a bounds test per
    # element does not vectorise on AVX2 (yolov3-tiny's 16 -> 32 layer: 4.7 ms against 1.3).
    # A tile of output rows is had by shifting ph.
    N, C, H, W = x.shape
    if sh == 1 and sw == 1 and ow == W:
        _im2col_channel_shifted(x, c, kh, kw, ph, pw, dh, dw, oh, ow, out)
        return
    for i in range(kh):
        for j in range(kw):
            row = (c * kh + i) * kw + j
            off = j * dw - pw  # ix = xo*sw + off
            lo = min(ow, max(0, -(off // sw)))
            hi = min(ow, max(lo, (W - off + sw - 1) // sw))
            for n in range(N):
                for y in range(oh):
                    iy = y * sh - ph + i * dh
                    base = y * ow
                    if iy < 0 or iy >= H:
                        for xo in range(ow):
                            out[row, n, base + xo] = 0.0
                        continue
                    for xo in range(lo):
                        out[row, n, base + xo] = 0.0
                    for xo in range(hi, ow):
                        out[row, n, base + xo] = 0.0
                    src = x[n, c, iy, lo * sw + off:]
                    dst = out[row, n, base + lo:base + hi]
                    if sw == 1:
                        for k in range(hi - lo):
                            dst[k] = src[k]
                    elif sw == 2:
                        for k in range(hi - lo):
                            dst[k] = src[2 * k]
                    else:
                        for k in range(hi - lo):
                            dst[k] = src[k * sw]


@nb.njit(cache=True, nogil=True, inline="always")
def _im2col_channel_shifted(x, c, kh, kw, ph, pw, dh, dw, oh, ow, out):
    # Stride 1 with output rows as wide as the input's: each column-matrix row is the plane
    # shifted by whole rows and columns, so all of its values that lie inside the plane are
    # one run of the flat plane, copied at once; then the columns the shift wrapped across
    # rows, and the rows outside the plane, are zeroed. Small maps (7x7, 14x14) spent 3-5x
    # the copy's time on per-row bookkeeping.
    N, C, H, W = x.shape
    for i in range(kh):
        dy = i * dh - ph  # iy = y + dy
        y0 = min(oh, max(0, -dy))
        y1 = max(y0, min(oh, H - dy))
        for j in range(kw):
            row = (c * kh + i) * kw + j
            off = j * dw - pw  # ix = xo + off
            lo = min(ow, max(0, -off))
            hi = max(lo, min(ow, W - off))
            for n in range(N):
                dst = out[row, n]
                if y1 == y0 or hi == lo:
                    dst[:] = 0.0
                    continue
                for p in range(y0 * ow):
                    dst[p] = 0.0
                for p in range(y1 * ow, oh * ow):
                    dst[p] = 0.0
                first, last = y0 * ow + lo, (y1 - 1) * ow + hi
                src = x[n, c].reshape(H * W)[first + dy * W + off:]
                run = dst[first:last]
                for p in range(last - first):
                    run[p] = src[p]
                for y in range(y0, y1):
                    for xo in range(lo):
                        dst[y * ow + xo] = 0.0
                    for xo in range(hi, ow):
                        dst[y * ow + xo] = 0.0


@nb.njit(cache=True, nogil=True)
def _im2col_batch(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out):
    for c in range(x.shape[1]):
        _im2col_channel(x, c, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out)


@nb.njit(cache=True, nogil=True, parallel=True)
def _im2col_par(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out):
    for c in nb.prange(x.shape[1]):
        _im2col_channel(x, c, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out)


def im2col_batch(x: np.ndarray, kernel, stride, pad, dilation, out_hw, out: np.ndarray | None = None,
                 parallel: bool = False) -> np.ndarray:
    """(N, C, H, W) -> (C*kh*kw, N*oh*ow) float32 (``out`` C-contiguous if given);
    ``parallel`` spreads the channels over Numba's threads."""
    kh, kw = kernel
    oh, ow = out_hw
    if out is None:
        out = np.empty((x.shape[1] * kh * kw, x.shape[0] * oh * ow), np.float32)
    n = x.shape[0]
    run = _im2col_par if parallel else _im2col_batch
    run(np.ascontiguousarray(x, np.float32), kh, kw, stride[0], stride[1], pad[0], pad[1],
        dilation[0], dilation[1], oh, ow, out.reshape(out.shape[0], n, oh * ow))
    return out


def im2col(x: np.ndarray, kernel, stride, pad, dilation, out_hw, out: np.ndarray | None = None) -> np.ndarray:
    """(C, H, W) -> (C*kh*kw, oh*ow) float32."""
    return im2col_batch(x[None], kernel, stride, pad, dilation, out_hw, out)


@nb.njit(cache=True, nogil=True)
def _col2im(cols, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out):
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for y in range(oh):
                    iy = y * sh - ph + i * dh
                    if iy < 0 or iy >= H:
                        continue
                    base = y * ow
                    for xo in range(ow):
                        ix = xo * sw - pw + j * dw
                        if 0 <= ix < W:
                            out[c, iy, ix] += cols[row, base + xo]


def col2im(cols: np.ndarray, shape, kernel, stride, pad, dilation, in_hw) -> np.ndarray:
    """Scatter-add (C*kh*kw, ih*iw) columns back into an image of ``shape`` (C, H, W)."""
    out = np.zeros(shape, np.float32)
    _col2im(np.ascontiguousarray(cols, np.float32), shape[0], shape[1], shape[2], kernel[0], kernel[1],
            stride[0], stride[1], pad[0], pad[1], dilation[0], dilation[1], in_hw[0], in_hw[1], out)
    return out
