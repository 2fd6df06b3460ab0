"""Reductions across one axis of a (outer, C, inner) array: softmax and L2 normalisation.

NumPy does these with several full-size temporaries and reductions over a
strided axis, which for an SSD head (a few thousand positions, 2 classes) costs
more than the convolution before it. One pass per outer index here, the
running values kept in a row of ``inner`` accumulators (contiguous, vectorised).
Slow twins: ``reference.softmax`` and ``reference.l2_normalize``.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from . import parallel


@nb.njit(cache=True, nogil=True, inline="always")
def _softmax_row(x, out):
    # the (A, C, B) loop below with B == 1, its float32 steps in the same order
    m = x[0]
    for c in range(1, x.shape[0]):
        v = x[c]
        m = v if (v > m or v != v) else m
    s = np.float32(0.0)
    for c in range(x.shape[0]):
        e = np.exp(x[c] - m)
        out[c] = e
        s += e
    for c in range(x.shape[0]):
        out[c] = out[c] / s


def _softmax(x, out):
    # x, out (A, C, B) float32: softmax over axis 1, in float32 like the NumPy expression
    # e = exp(x - max); e / sum(e)
    A, C, B = x.shape
    if B == 1:  # softmax along contiguous rows (SSD's per-prior class scores): no row buffers
        for a in nb.prange(A):
            _softmax_row(x[a, :, 0], out[a, :, 0])
        return
    for a in nb.prange(A):
        m = np.empty(B, np.float32)
        s = np.zeros(B, np.float32)
        for b in range(B):
            m[b] = x[a, 0, b]
        for c in range(1, C):
            for b in range(B):
                v = x[a, c, b]
                # np.maximum: NaN wins
                m[b] = v if (v > m[b] or v != v) else m[b]
        for c in range(C):
            for b in range(B):
                e = np.exp(x[a, c, b] - m[b])
                out[a, c, b] = e
                s[b] += e
        for c in range(C):
            for b in range(B):
                out[a, c, b] = out[a, c, b] / s[b]


SOFTMAX_K = parallel.dual(_softmax)


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Softmax of float32 ``x`` over ``axis``."""
    shape = x.shape
    a = int(np.prod(shape[:axis], dtype=np.int64))
    b = int(np.prod(shape[axis + 1:], dtype=np.int64))
    x3 = np.ascontiguousarray(x, np.float32).reshape(a, shape[axis], b)
    out = np.empty_like(x3)
    if x3.size:
        parallel.pick(SOFTMAX_K, x3.size)(x3, out)
    return out.reshape(shape)


def _l2norm_channels(x, eps, scale, out):
    # x, out (N, C, P); per position: x / sqrt(sum_c x^2 + eps) * scale[c], in float64
    N, C, P = x.shape
    for n in nb.prange(N):
        acc = np.zeros(P, np.float64)
        for c in range(C):
            for p in range(P):
                v = np.float64(x[n, c, p])
                acc[p] += v * v
        for p in range(P):
            acc[p] = np.sqrt(acc[p] + eps)
        for c in range(C):
            sc = scale[c]
            for p in range(P):
                out[n, c, p] = np.float32(np.float64(x[n, c, p]) / acc[p] * sc)


L2NORM_CHANNELS_K = parallel.dual(_l2norm_channels)


def l2_normalize_channels(x: np.ndarray, eps: float, scale: np.ndarray) -> np.ndarray:
    """SSD ``Normalize`` with ``across_spatial: false``: each position's channel vector divided by
    its L2 norm (sqrt(sum x^2 + eps)), times ``scale`` (one value, or one per channel)."""
    n, c = x.shape[:2]
    x3 = np.ascontiguousarray(x, np.float32).reshape(n, c, -1)
    sc = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (c,)).copy()
    out = np.empty_like(x3)
    parallel.pick(L2NORM_CHANNELS_K, x3.size)(x3, float(eps), sc, out)
    return out.reshape(x.shape)
