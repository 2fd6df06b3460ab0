"""Layers that only move values: nearest upsampling.

``np.repeat`` twice (rows, then columns) goes through a full-size temporary on one
thread (yolov3-tiny's upsample: 0.66 ms at batch 8). Here each output row is written
once, on Numba's threads for large layers. Values are copied (with a scale, multiplied
by it in float32 as ``y * scale`` does), so the results are the same bits. (A channel
concatenation in parallel was measured too: no faster than ``np.concatenate``.)
Slow twin: ``np.repeat``.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from . import parallel


def _upsample_nearest(x, s, scale, scaled, out):
    N, C, H, W = x.shape
    for t in nb.prange(N * C * H):
        n = t // (C * H)
        c = (t // H) % C
        i = t % H
        src = x[n, c, i]
        first = out[n, c, i * s]
        for j in range(W):
            v = src[j] * scale if scaled else src[j]
            for k in range(s):
                first[j * s + k] = v
        for r in range(1, s):
            row = out[n, c, i * s + r]
            for j in range(W * s):
                row[j] = first[j]


UPSAMPLE_NEAREST_K = parallel.dual(_upsample_nearest)


def upsample_nearest(x: np.ndarray, stride: int, scale: float = 1.0) -> np.ndarray:
    """Each value of ``x`` (N, C, H, W) float32 as a ``stride`` x ``stride`` block, times
    ``scale`` (a float32 multiply, skipped for 1 as the NumPy op did)."""
    x = np.ascontiguousarray(x, np.float32)
    n, c, h, w = x.shape
    out = np.empty((n, c, h * stride, w * stride), np.float32)
    if out.size:
        parallel.pick(UPSAMPLE_NEAREST_K, out.size)(x, stride, np.float32(scale), scale != 1, out)
    return out
