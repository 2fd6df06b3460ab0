"""Per-channel epilogues applied to a layer's output while it is still hot in cache.

An :class:`Epilogue` is a list of float32 stages over channel axis 1 that the
unfused layers would apply one array pass at a time (conv bias, BatchNorm,
Scale, Bias, ReLU / leaky / clip). :func:`apply` runs all of them in one pass,
stage by stage on each channel row in the *same float32 operations in the same
order*, so the result is bit-for-bit what the separate layers give (Numba
compiles without fast-math, so no multiply-add is contracted into an FMA).

Stage codes:

- ``MUL``  v = v * vec[o]
- ``ADD``  v = v + vec[o]
- ``RELU`` v = +0.0 if v <= 0 else v (``np.maximum(v, 0)``: -0.0 becomes +0.0, NaN kept)
- ``LEAKY`` v = v if v > 0 else v * slope (darknet ``leaky``, Caffe ``negative_slope``)
- ``CLIP`` v = min(max(v, lo), hi) (``np.clip``, NaN kept)
"""
from __future__ import annotations

import numba as nb
import numpy as np

from . import parallel

MUL, ADD, RELU, LEAKY, CLIP = 0, 1, 2, 3, 4
F32 = np.float32


class Epilogue:
    """A sequence of per-channel stages for ``channels`` channels."""

    __slots__ = ("channels", "stages", "_arrays")

    def __init__(self, channels: int):
        self.channels = channels
        self.stages: list = []  # (code, vec or None, p0, p1)
        self._arrays = None

    def __len__(self):
        return len(self.stages)

    def mul(self, vec):
        self.stages.append((MUL, _vec(vec, self.channels), 0.0, 0.0))
        self._arrays = None
        return self

    def add(self, vec):
        self.stages.append((ADD, _vec(vec, self.channels), 0.0, 0.0))
        self._arrays = None
        return self

    def relu(self):
        self.stages.append((RELU, None, 0.0, 0.0))
        self._arrays = None
        return self

    def leaky(self, slope):
        self.stages.append((LEAKY, None, float(F32(slope)), 0.0))
        self._arrays = None
        return self

    def clip(self, lo, hi):
        self.stages.append((CLIP, None, float(F32(lo)), float(F32(hi))))
        self._arrays = None
        return self

    def extend(self, other: "Epilogue"):
        self.stages.extend(other.stages)
        self._arrays = None
        return self

    def arrays(self):
        """(codes int64 (S,), vecs float32 (S, C), params float32 (S, 2)) for the kernels."""
        if self._arrays is not None:
            return self._arrays
        s = len(self.stages)
        codes = np.array([st[0] for st in self.stages], np.int64)
        vecs = np.zeros((max(s, 1), self.channels), F32)
        params = np.zeros((max(s, 1), 2), F32)
        for k, (_, vec, p0, p1) in enumerate(self.stages):
            if vec is not None:
                vecs[k] = vec
            params[k] = (p0, p1)
        self._arrays = (codes, vecs, params)
        return self._arrays


def _vec(v, channels):
    v = np.asarray(v, F32).reshape(-1)
    if v.size == 1 and channels != 1:
        v = np.full(channels, v[0], F32)
    if v.size != channels:
        raise ValueError(f"per-channel vector of {v.size} values for {channels} channels")
    return v


@nb.njit(cache=True, nogil=True, inline="always")
def _stages_row(row, o, codes, vecs, params):
    """The stages in place on ``row`` (channel ``o``)."""
    _stages(row, row, o, codes, vecs, params, False)


@nb.njit(cache=True, nogil=True, inline="always")
def _stages_row_from(src, row, o, codes, vecs, params):
    """``row`` = ``src`` (another array) after the stages: the first run reads ``src`` in the
    same pass (a copy, then the stages in place, took 7x as long: 0.17 against 0.024 ms on
    a 3 x 300 x 300 input), the rest run in place."""
    if codes.shape[0] == 0:
        row[:] = src
    else:
        _stages(src, row, o, codes, vecs, params, True)


@nb.njit(cache=True, nogil=True, inline="always")
def _stages(src, row, o, codes, vecs, params, fresh):
    # Runs of up to 4 MUL/ADD stages and the activation after them go in one pass over the
    # row instead of one pass each. Every MUL/ADD stage is v * m + a with MUL as (m, -0.0)
    # and ADD as (1.0, a): x + -0.0 == x and x * 1.0 == x for every float, signed zeros and
    # NaN included, and a multiply and an add are never contracted into an FMA here, so each
    # stage rounds exactly as it does alone. Unused slots of the run are (1.0, -0.0).
    # ``fresh``: the first run reads src (another array) into row. The run is decoded here,
    # not by a function returning it: a returned tuple cost 70 ns a row (5x a 196-pixel row).
    S = codes.shape[0]
    one = np.float32(1.0)
    nz = np.float32(-0.0)
    s = 0
    while s < S:
        m0 = m1 = m2 = m3 = one
        a0 = a1 = a2 = a3 = nz
        k = 0
        while s < S and codes[s] <= 1 and k < 4:
            m, a = (vecs[s, o], nz) if codes[s] == 0 else (one, vecs[s, o])
            if k == 0:
                m0, a0 = m, a
            elif k == 1:
                m1, a1 = m, a
            elif k == 2:
                m2, a2 = m, a
            else:
                m3, a3 = m, a
            k += 1
            s += 1
        act = -1
        p0 = p1 = one
        if s < S and codes[s] >= 2:
            act = codes[s]
            p0 = params[s, 0]
            p1 = params[s, 1]
            s += 1
        if fresh:
            _run4_from(src, row, m0, a0, m1, a1, m2, a2, m3, a3, act, p0, p1)
            fresh = False
        elif k > 2:
            _run4(row, m0, a0, m1, a1, m2, a2, m3, a3, act, p0, p1)
        else:  # the common runs (bias; BatchNorm's or Scale's multiply-add) at half the work
            _run2(row, m0, a0, m1, a1, act, p0, p1)


@nb.njit(cache=True, nogil=True, inline="always")
def _activate(v, act, p0, p1):
    z = np.float32(0.0)
    if act == 2:  # RELU: np.maximum(v, 0), which also turns -0.0 into +0.0 (NaN kept)
        return z if v <= z else v
    if act == 3:  # LEAKY
        return v if v > z else v * p0
    if act == 4:  # CLIP (np.clip, NaN kept)
        v = p0 if v < p0 else v
        return p1 if v > p1 else v
    return v


@nb.njit(cache=True, nogil=True, inline="always")
def _run2(row, m0, a0, m1, a1, act, p0, p1):
    # one loop per activation, so that each vectorises without a test per value
    if act == -1:
        for p in range(row.shape[0]):
            row[p] = (row[p] * m0 + a0) * m1 + a1
    elif act == 2:
        for p in range(row.shape[0]):
            row[p] = _activate((row[p] * m0 + a0) * m1 + a1, 2, p0, p1)
    elif act == 3:
        for p in range(row.shape[0]):
            row[p] = _activate((row[p] * m0 + a0) * m1 + a1, 3, p0, p1)
    else:
        for p in range(row.shape[0]):
            row[p] = _activate((row[p] * m0 + a0) * m1 + a1, 4, p0, p1)


@nb.njit(cache=True, nogil=True, inline="always")
def _run4(row, m0, a0, m1, a1, m2, a2, m3, a3, act, p0, p1):
    if act == -1:
        for p in range(row.shape[0]):
            row[p] = (((row[p] * m0 + a0) * m1 + a1) * m2 + a2) * m3 + a3
    elif act == 2:
        for p in range(row.shape[0]):
            row[p] = _activate((((row[p] * m0 + a0) * m1 + a1) * m2 + a2) * m3 + a3, 2, p0, p1)
    elif act == 3:
        for p in range(row.shape[0]):
            row[p] = _activate((((row[p] * m0 + a0) * m1 + a1) * m2 + a2) * m3 + a3, 3, p0, p1)
    else:
        for p in range(row.shape[0]):
            row[p] = _activate((((row[p] * m0 + a0) * m1 + a1) * m2 + a2) * m3 + a3, 4, p0, p1)


@nb.njit(cache=True, nogil=True, inline="always")
def _run4_from(src, row, m0, a0, m1, a1, m2, a2, m3, a3, act, p0, p1):
    # _run4 reading src: in place, as _run4(row, ...) with src row, LLVM's overlap check
    # would send every loop to its scalar version
    if act == -1:
        for p in range(row.shape[0]):
            row[p] = (((src[p] * m0 + a0) * m1 + a1) * m2 + a2) * m3 + a3
    elif act == 2:
        for p in range(row.shape[0]):
            row[p] = _activate((((src[p] * m0 + a0) * m1 + a1) * m2 + a2) * m3 + a3, 2, p0, p1)
    elif act == 3:
        for p in range(row.shape[0]):
            row[p] = _activate((((src[p] * m0 + a0) * m1 + a1) * m2 + a2) * m3 + a3, 3, p0, p1)
    else:
        for p in range(row.shape[0]):
            row[p] = _activate((((src[p] * m0 + a0) * m1 + a1) * m2 + a2) * m3 + a3, 4, p0, p1)


def _apply(y, codes, vecs, params):
    N, O, P = y.shape
    for t in nb.prange(N * O):
        n = t // O
        o = t % O
        _stages_row(y[n, o], o, codes, vecs, params)


APPLY_K = parallel.dual(_apply)


def _apply_cols(y, p0, p1, codes, vecs, params):
    # y (O, P): the stages on columns p0..p1-1 of every row
    for o in nb.prange(y.shape[0]):
        _stages_row(y[o, p0:p1], o, codes, vecs, params)


APPLY_COLS_K = parallel.dual(_apply_cols)


def _transpose_apply(src, codes, vecs, params, out):
    # src (O, N, P) -> out (N, O, P), then the stages on each (n, o) row
    O, N, P = src.shape
    for t in nb.prange(N * O):
        n = t // O
        o = t % O
        _stages_row_from(src[o, n], out[n, o], o, codes, vecs, params)


TRANSPOSE_APPLY_K = parallel.dual(_transpose_apply)


def apply(y: np.ndarray, ep: Epilogue | None) -> np.ndarray:
    """Run ``ep`` in place on ``y`` (N, C, ...) C-contiguous float32; returns ``y``."""
    if ep is None or not ep.stages:
        return y
    n, c = y.shape[0], y.shape[1]
    if c != ep.channels:
        raise ValueError(f"epilogue for {ep.channels} channels applied to {c}")
    parallel.pick(APPLY_K, y.size)(y.reshape(n, c, -1), *ep.arrays())
    return y


def apply_cols(y2: np.ndarray, p0: int, p1: int, ep: Epilogue | None) -> np.ndarray:
    """Run ``ep`` in place on columns ``p0:p1`` of ``y2`` (C, P) C-contiguous (a tile of one image)."""
    if ep is not None and ep.stages:
        if y2.shape[0] != ep.channels:
            raise ValueError(f"epilogue for {ep.channels} channels applied to {y2.shape[0]}")
        parallel.pick(APPLY_COLS_K, y2.shape[0] * (p1 - p0))(y2, p0, p1, *ep.arrays())
    return y2


def transpose_apply(src: np.ndarray, ep: Epilogue | None, out: np.ndarray | None = None) -> np.ndarray:
    """(C, N, P) -> (N, C, P) contiguous, with ``ep`` applied on the way."""
    c, n, p = src.shape
    if out is None:
        out = np.empty((n, c, p), F32)
    if ep is None:
        ep = Epilogue(c)
    parallel.pick(TRANSPOSE_APPLY_K, src.size)(src, *ep.arrays(), out)
    return out
