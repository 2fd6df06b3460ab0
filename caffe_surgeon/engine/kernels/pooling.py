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


@nb.njit(cache=True, nogil=True, parallel=True)
def _maxpool(x, kh, kw, sh, sw, ph, pw, oh, ow, out):
    N, C, H, W = x.shape
    for t in nb.prange(N * C):
        n = t // C
        c = t % C
        for y in range(oh):
            hs = y * sh - ph
            he = min(hs + kh, H)
            hs = max(hs, 0)
            for xo in range(ow):
                ws = xo * sw - pw
                we = min(ws + kw, W)
                ws = max(ws, 0)
                m = -np.inf
                for i in range(hs, he):
                    for j in range(ws, we):
                        v = x[n, c, i, j]
                        if v > m:
                            m = v
                out[n, c, y, xo] = m if hs < he and ws < we else np.float32(-3.4028235e38)


@nb.njit(cache=True, nogil=True, parallel=True)
def _avgpool(x, kh, kw, sh, sw, ph, pw, oh, ow, padded, out):
    N, C, H, W = x.shape
    for t in nb.prange(N * C):
        n = t // C
        c = t % C
        for y in range(oh):
            hs0 = y * sh - ph
            he0 = min(hs0 + kh, H + ph)
            hs = max(hs0, 0)
            he = min(he0, H)
            for xo in range(ow):
                ws0 = xo * sw - pw
                we0 = min(ws0 + kw, W + pw)
                ws = max(ws0, 0)
                we = min(we0, W)
                acc = np.float32(0.0)
                for i in range(hs, he):
                    for j in range(ws, we):
                        acc += x[n, c, i, j]
                if padded:
                    size = (he0 - hs0) * (we0 - ws0)
                else:
                    size = (he - hs) * (we - ws)
                out[n, c, y, xo] = acc / size if size > 0 else np.float32(0.0)


def maxpool(x, kernel, stride, pad, out_hw) -> np.ndarray:
    out = np.empty(x.shape[:2] + tuple(out_hw), np.float32)
    _maxpool(np.ascontiguousarray(x, np.float32), kernel[0], kernel[1], stride[0], stride[1],
             pad[0], pad[1], out_hw[0], out_hw[1], out)
    return out


def avgpool(x, kernel, stride, pad, out_hw, divide_by_padded: bool = True) -> np.ndarray:
    out = np.empty(x.shape[:2] + tuple(out_hw), np.float32)
    _avgpool(np.ascontiguousarray(x, np.float32), kernel[0], kernel[1], stride[0], stride[1],
             pad[0], pad[1], out_hw[0], out_hw[1], divide_by_padded, out)
    return out
