"""Darknet's logistic in cache-sized blocks, bit-for-bit the float64 tanh expression.

The engine's logistic is ``float32(0.5 * tanh(0.5 * float64(x)) + 0.5)`` (darknet's
``1/(1 + exp(-x))`` without its overflow, within one float32 ulp of it). As one array
expression it makes four float64 temporaries the size of the input: a [yolo] head
(255 x 26 x 26 x 8 images) spent 5 ms of its 7 ms there, not in the tanh.

Here the same steps run on blocks of ``BLOCK`` values that stay in L2. The tanh stays
NumPy's (its SIMD loop): Numba's ``math.tanh`` calls libm, whose float64 results differ
from NumPy's in the last bits, and that moves some float32 results (measured: values
near 0 by 1.8e-15). The steps around it are exact or single roundings, so doing them in
Numba changes nothing: ``x * 0.5`` is exact in float64, ``u * 0.5`` too, so
``u * 0.5 + 0.5`` has one rounding whether or not LLVM contracts it into an FMA, and the
cast to float32 is the same round-to-nearest as NumPy's.
Slow twin: :func:`reference.logistic`.
"""
from __future__ import annotations

import numba as nb
import numpy as np

#: values per block: 64K float64 = 512 KiB per temporary, two of them in L2
BLOCK = 1 << 16


@nb.njit(cache=True, nogil=True)
def _half_in_f64(x, t):
    for i in range(x.size):
        t[i] = np.float64(x[i]) * 0.5


@nb.njit(cache=True, nogil=True)
def _halve_shift_to_f32(u, out):
    for i in range(u.size):
        out[i] = np.float32(u[i] * 0.5 + 0.5)


def logistic(x: np.ndarray) -> np.ndarray:
    """A new float32 array: the logistic of ``x``, any shape or strides."""
    flat = np.ascontiguousarray(x, np.float32).reshape(-1)
    out = np.empty(flat.size, np.float32)
    n = min(BLOCK, flat.size)
    t, u = np.empty(n, np.float64), np.empty(n, np.float64)
    for s in range(0, flat.size, BLOCK):
        e = min(s + BLOCK, flat.size)
        tb, ub = t[:e - s], u[:e - s]
        _half_in_f64(flat[s:e], tb)
        np.tanh(tb, out=ub)
        _halve_shift_to_f32(ub, out[s:e])
    return out.reshape(np.shape(x))
