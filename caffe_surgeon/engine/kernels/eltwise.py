"""Elementwise passes that end in per-channel stages: the sum of two arrays, or a copy.

A residual block ends with ``Eltwise SUM`` then ``ReLU``: as NumPy it is an add into
one input and a ReLU pass, two sweeps over an activation larger than the cache
(ResNet-50, batch 1: 3.4 ms, 4% of the pass). Here each (image, channel) row is summed
and run through the fused stages (:mod:`.epilogue`) while it is in L1 or L2. ``a[i] + b[i]`` is the float32 addition ``out = a.copy(); out += b``
does, and the stages are the epilogue's own, so the result is bit-for-bit the layers'
one by one. The same holds for :func:`stages_into` (a standalone BatchNorm: ``x * a``
then ``+ c`` into a new array, one pass instead of two: the first run of stages reads
``x``).
Slow twin: ``a + b`` (or ``x``) followed by :func:`reference.epilogue`.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from . import parallel
from .epilogue import RELU, Epilogue, _stages_row, _stages_row_from

#: values from which a sum is shared among threads, below parallel.MIN_PARALLEL_ELEMENTS:
#: at 2 threads MobileNet v2's 24 x 56 x 56 join took 0.035 ms against 0.054 on one, its
#: 32 x 28 x 28 one 0.015 against 0.020 (a memory-bound pass: each core brings its own
#: bandwidth)
MIN_PARALLEL_SUM = 25_000


def _sum2(a, b, codes, vecs, params, relu_only, out):
    N, C, P = a.shape
    z = np.float32(0.0)
    for t in nb.prange(N * C):
        n = t // C
        o = t % C
        ra = a[n, o]
        rb = b[n, o]
        row = out[n, o]
        if relu_only:  # ResNet's join: the epilogue's RELU (np.maximum: -0.0 -> +0.0) inline
            for p in range(P):
                v = ra[p] + rb[p]
                row[p] = z if v <= z else v
            continue
        # the whole row, then the stages on it while it is in L1/L2: a loop over
        # range(p0, p1) of pieces did not vectorise (0.29 against 0.038 ms, 64 x 75 x 75)
        for p in range(P):
            row[p] = ra[p] + rb[p]
        _stages_row(row, o, codes, vecs, params)


SUM2_K = parallel.dual(_sum2)


def sum2(a: np.ndarray, b: np.ndarray, ep: Epilogue | None = None,
         out: np.ndarray | None = None) -> np.ndarray:
    """``a + b`` (float32, same shape (N, C, ...)), then ``ep``'s stages; into ``out``
    (which may be ``a`` or ``b``, but that runs unvectorised) or a new array."""
    n, c = a.shape[0], a.shape[1]
    ep = ep if ep is not None else Epilogue(c)
    if ep.channels != c:
        raise ValueError(f"epilogue for {ep.channels} channels applied to {c}")
    a3 = np.ascontiguousarray(a, np.float32).reshape(n, c, -1)
    b3 = np.ascontiguousarray(b, np.float32).reshape(n, c, -1)
    res = np.empty(a.shape, np.float32) if out is None else out
    relu_only = len(ep.stages) == 1 and ep.stages[0][0] == RELU
    parallel.pick(SUM2_K, a3.size, MIN_PARALLEL_SUM)(a3, b3, *ep.arrays(), relu_only,
                                                     res.reshape(n, c, -1))
    return res


def _stages_copy(x, codes, vecs, params, out):
    N, C, P = x.shape
    for t in nb.prange(N * C):
        n = t // C
        o = t % C
        _stages_row_from(x[n, o], out[n, o], o, codes, vecs, params)


STAGES_COPY_K = parallel.dual(_stages_copy)


def stages_into(x: np.ndarray, ep: Epilogue) -> np.ndarray:
    """A new float32 array: ``x`` (N, C, ...) after ``ep``'s stages (``x`` is not written)."""
    n, c = x.shape[0], x.shape[1]
    if ep.channels != c:
        raise ValueError(f"epilogue for {ep.channels} channels applied to {c}")
    x3 = np.ascontiguousarray(x, np.float32).reshape(n, c, -1)
    res = np.empty(x.shape, np.float32)
    parallel.pick(STAGES_COPY_K, x3.size)(x3, *ep.arrays(), res.reshape(n, c, -1))
    return res
