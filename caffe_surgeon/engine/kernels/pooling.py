"""Max and average pooling with explicit window geometry.

The callers decide the framework's rounding and padding: Caffe pads
symmetrically and rounds up, Darknet pads ``padding // 2`` before and rounds
down; both ignore window positions outside the image for MAX. Caffe's AVE
divides by the window clipped to the padded image (so padding counts as
zeros), which ``divide_by_padded`` selects; otherwise only valid cells count.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from . import parallel


@nb.njit(cache=True, nogil=True, inline="always")
def _max_window(src, hs, he, ws, we):
    # the window's max over rows hs..he-1, columns ws..we-1 in row-major order; ``>`` from
    # -inf skips NaN; an empty window (all padding) gives -FLT_MAX
    if hs >= he or ws >= we:
        return np.float32(-3.4028235e38)
    m = np.float32(-np.inf)
    for i in range(hs, he):
        for j in range(ws, we):
            v = src[i, j]
            m = v if v > m else m
    return m


# Interior rows of the common windows, with the column stride a literal and the indices
# plain ``range`` counters from 0 (Numba then drops its negative-index wraparound): LLVM
# turns the stride-2 reads into even/odd lane shuffles and vectorises along the output
# row, 3x faster than the generic window loop. ``r*`` start at the first window's column,
# ``d`` at its output. The comparisons keep _max_window's order (row by row, left to
# right), so NaN and ties between 0.0 and -0.0 resolve as there.
@nb.njit(cache=True, nogil=True, inline="always")
def _max2(r0, r1, j):
    m = np.float32(-np.inf)
    v = r0[j]
    m = v if v > m else m
    v = r0[j + 1]
    m = v if v > m else m
    v = r1[j]
    m = v if v > m else m
    v = r1[j + 1]
    return v if v > m else m


@nb.njit(cache=True, nogil=True, inline="always")
def _max3_row(m, r, j):
    v = r[j]
    m = v if v > m else m
    v = r[j + 1]
    m = v if v > m else m
    v = r[j + 2]
    return v if v > m else m


@nb.njit(cache=True, nogil=True, inline="always")
def _max3(r0, r1, r2, j):
    return _max3_row(_max3_row(_max3_row(np.float32(-np.inf), r0, j), r1, j), r2, j)


@nb.njit(cache=True, nogil=True)
def _max2_row_s2(r0, r1, d, n):
    for k in range(n):
        d[k] = _max2(r0, r1, 2 * k)


@nb.njit(cache=True, nogil=True)
def _max2_row_s1(r0, r1, d, n):
    for k in range(n):
        d[k] = _max2(r0, r1, k)


@nb.njit(cache=True, nogil=True)
def _max3_row_s2(r0, r1, r2, d, n):
    for k in range(n):
        d[k] = _max3(r0, r1, r2, 2 * k)


@nb.njit(cache=True, nogil=True)
def _max3_row_s1(r0, r1, r2, d, n):
    for k in range(n):
        d[k] = _max3(r0, r1, r2, k)


def _maxpool(x, kh, kw, sh, sw, ph, pw, oh, ow, out):
    N, C, H, W = x.shape
    # output positions whose window lies inside the image: no clipping there, and the
    # common 2x2 / 3x3 windows are unrolled so that LLVM vectorises along the row
    y_lo = min((ph + sh - 1) // sh, oh)
    y_hi = max(min((H + ph - kh) // sh + 1, oh), y_lo) if H + ph - kh >= 0 else y_lo
    x_lo = min((pw + sw - 1) // sw, ow)
    x_hi = max(min((W + pw - kw) // sw + 1, ow), x_lo) if W + pw - kw >= 0 else x_lo
    # 2x2 stride 1 with output rows as long as the input's (Darknet's size 2 stride 1 on
    # 13 x 13): the interior rows as one flat run, too short to vectorise row by row; the
    # last column's values are wrong there (the window wraps) and are redone below
    flat = kh == 2 and kw == 2 and sh == 1 and sw == 1 and ow == W and x_lo == 0 and y_hi > y_lo
    for plane in nb.prange(N * C):
        src = x[plane // C, plane % C]
        dst = out[plane // C, plane % C]
        if flat:
            fs = src.reshape(H * W)
            q0 = y_lo * W - ph * W - pw
            _max2_row_s1(fs[q0:], fs[q0 + W:], dst.reshape(oh * ow)[y_lo * ow:], (y_hi - y_lo - 1) * ow + x_hi)
        for y in range(oh):
            hs = y * sh - ph
            if y < y_lo or y >= y_hi:
                for xo in range(ow):
                    ws = xo * sw - pw
                    dst[y, xo] = _max_window(src, max(hs, 0), min(hs + kh, H), max(ws, 0), min(ws + kw, W))
                continue
            for xo in range(x_lo):
                ws = xo * sw - pw
                dst[y, xo] = _max_window(src, hs, hs + kh, max(ws, 0), min(ws + kw, W))
            j0 = x_lo * sw - pw  # the first interior window's column
            n = x_hi - x_lo
            if flat:
                pass
            elif kh == 2 and kw == 2 and sw == 2:
                _max2_row_s2(src[hs, j0:], src[hs + 1, j0:], dst[y, x_lo:], n)
            elif kh == 2 and kw == 2 and sw == 1:
                _max2_row_s1(src[hs, j0:], src[hs + 1, j0:], dst[y, x_lo:], n)
            elif kh == 3 and kw == 3 and sw == 2:
                _max3_row_s2(src[hs, j0:], src[hs + 1, j0:], src[hs + 2, j0:], dst[y, x_lo:], n)
            elif kh == 3 and kw == 3 and sw == 1:
                _max3_row_s1(src[hs, j0:], src[hs + 1, j0:], src[hs + 2, j0:], dst[y, x_lo:], n)
            else:
                for xo in range(x_lo, x_hi):
                    ws = xo * sw - pw
                    dst[y, xo] = _max_window(src, hs, hs + kh, ws, ws + kw)
            for xo in range(x_hi, ow):
                ws = xo * sw - pw
                dst[y, xo] = _max_window(src, hs, hs + kh, max(ws, 0), min(ws + kw, W))


MAXPOOL_K = parallel.dual(_maxpool)


@nb.njit(cache=True, nogil=True, inline="always")
def _window(o, s, p, k, size):
    """Output o's window along one axis: (start, end) within the padded map (Caffe's
    divisor), then within the map."""
    s0 = o * s - p
    e0 = min(s0 + k, size + p)
    return s0, e0, max(s0, 0), min(e0, size)


def _avgpool(x, kh, kw, sh, sw, ph, pw, oh, ow, padded, out):
    N, C, H, W = x.shape
    if kh * kw >= WIDE_WINDOW:
        xp = x.reshape(N * C, H, W)
        op = out.reshape(N * C, oh, ow)
        for g in nb.prange((N * C + PLANES - 1) // PLANES):
            _avgpool_planes(xp, g * PLANES, kh, kw, sh, sw, ph, pw, oh, ow, padded, op)
        return
    for t in nb.prange(N * C):
        n = t // C
        c = t % C
        for y in range(oh):
            hs0, he0, hs, he = _window(y, sh, ph, kh, H)
            for xo in range(ow):
                ws0, we0, ws, we = _window(xo, sw, pw, kw, W)
                acc = np.float32(0.0)
                for i in range(hs, he):
                    for j in range(ws, we):
                        acc += x[n, c, i, j]
                size = (he0 - hs0) * (we0 - ws0) if padded else (he - hs) * (we - ws)
                out[n, c, y, xo] = acc / size if size > 0 else np.float32(0.0)


AVGPOOL_K = parallel.dual(_avgpool)


#: windows from this many taps sum PLANES planes side by side (a global pool of 7x7 is one
#: chain of 49 dependent adds per plane: latency-bound, 2.6 ns a value, one at a time)
WIDE_WINDOW, PLANES = 16, 8


@nb.njit(cache=True, nogil=True)
def _avgpool_planes(x, p0, kh, kw, sh, sw, ph, pw, oh, ow, padded, out):
    # planes p0.. of x (planes, H, W), PLANES side by side: each output's sum in _avgpool's
    # order from +0.0 (a missing plane of the last group repeats the last one, unstored)
    T, H, W = x.shape
    n = min(PLANES, T - p0)
    acc = np.empty(PLANES, np.float32)
    for y in range(oh):
        hs0, he0, hs, he = _window(y, sh, ph, kh, H)
        for xo in range(ow):
            ws0, we0, ws, we = _window(xo, sw, pw, kw, W)
            for lane in range(PLANES):
                acc[lane] = np.float32(0.0)
            for i in range(hs, he):
                for j in range(ws, we):
                    for lane in range(PLANES):
                        acc[lane] += x[p0 + min(lane, n - 1), i, j]
            size = (he0 - hs0) * (we0 - ws0) if padded else (he - hs) * (we - ws)
            for lane in range(n):
                out[p0 + lane, y, xo] = acc[lane] / size if size > 0 else np.float32(0.0)


def maxpool(x, kernel, stride, pad, out_hw) -> np.ndarray:
    out = np.empty(x.shape[:2] + tuple(out_hw), np.float32)
    run = parallel.pick(MAXPOOL_K, out.size * kernel[0] * kernel[1])
    run(np.ascontiguousarray(x, np.float32), kernel[0], kernel[1], stride[0], stride[1],
        pad[0], pad[1], out_hw[0], out_hw[1], out)
    return out


def avgpool(x, kernel, stride, pad, out_hw, divide_by_padded: bool = True) -> np.ndarray:
    out = np.empty(x.shape[:2] + tuple(out_hw), np.float32)
    run = parallel.pick(AVGPOOL_K, out.size * kernel[0] * kernel[1])
    run(np.ascontiguousarray(x, np.float32), kernel[0], kernel[1], stride[0], stride[1],
        pad[0], pad[1], out_hw[0], out_hw[1], divide_by_padded, out)
    return out
