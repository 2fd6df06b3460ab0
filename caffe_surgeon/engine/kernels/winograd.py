"""Winograd F(2x2, 3x3) convolution for 3x3 stride-1 undilated ungrouped layers.

Each 4x4 input tile d (stride 2, zero padded) becomes V = B^T d B, each 3x3
filter g becomes U = G g G^T (done once per weights by the caller through
:func:`transform_weights` and cached), the 16 positions xi of the 4x4 domain
are 16 GEMMs M[xi] = U[xi] (O x C) @ V[xi] (C x tiles), and each 2x2 output
tile is A^T M A. That is 16 multiplies per 4 outputs instead of 36: 2.25x
fewer GEMM flops, for two cheap transforms. With::

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

The transforms and the GEMM tiles run in Numba's pool like the other
convolution kernels (:mod:`.conv`); the output transform applies the epilogue
per channel plane. Slow twin: ``reference.winograd_conv2d``.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from . import channel_microkernel, microkernel, parallel

from .epilogue import _stages_row

F32 = np.float32
_NO_WEIGHTS = np.empty(0, F32)


def applicable(w_shape, stride, dilation, group) -> bool:
    return (tuple(w_shape[2:]) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and group == 1)


def transform_weights(w: np.ndarray) -> np.ndarray:
    """(O, C, 3, 3) -> U (16, O, C) float32, U[4i + j] = (G g G^T)[i, j] (computed in float64)."""
    w = np.ascontiguousarray(w, F32)
    u = np.empty((16, w.shape[0], w.shape[1]), F32)
    # sensitivity analysis transforms every pruned variant's weights: in the pool
    parallel.pick(TRANSFORM_WEIGHTS_K, w.size)(w, u)
    return u


@nb.njit(cache=True, nogil=True, inline="always")
def _g_rows(a0, a1, a2):
    # G applied to one column (or row) of three values, in float64 (exact for float32 inputs)
    return a0, .5 * a0 + .5 * a1 + .5 * a2, .5 * a0 - .5 * a1 + .5 * a2, a2


def _transform_weights(w, u):
    O, C = w.shape[0], w.shape[1]
    for o in nb.prange(O):
        for c in range(C):
            g = w[o, c]
            # t = G g (per kernel column), then u = t G^T (per row of t)
            c0 = _g_rows(np.float64(g[0, 0]), np.float64(g[1, 0]), np.float64(g[2, 0]))
            c1 = _g_rows(np.float64(g[0, 1]), np.float64(g[1, 1]), np.float64(g[2, 1]))
            c2 = _g_rows(np.float64(g[0, 2]), np.float64(g[1, 2]), np.float64(g[2, 2]))
            for i in range(4):
                r = _g_rows(c0[i], c1[i], c2[i])
                for j in range(4):
                    u[4 * i + j, o, c] = np.float32(r[j])


TRANSFORM_WEIGHTS_K = parallel.dual(_transform_weights)


@nb.njit(cache=True, nogil=True, inline="always")
def _bt_row(a0, a1, a2, a3):
    # one row (or column) of B^T d: (a0 - a2, a1 + a2, a2 - a1, a1 - a3)
    return a0 - a2, a1 + a2, a2 - a1, a1 - a3


def _input_transform(x, ph, pw, th, tw, v):
    # x (N, C, H, W) -> v (16, C, N*th*tw): v[4i + j] = (B^T d B)[i, j] of each 4x4 tile d.
    # Per channel the 16 values of every tile go to a local (16, tiles) buffer first, then to
    # v one plane at a time: 16 interleaved 4-byte write streams over planes megabytes apart
    # run an order of magnitude slower once v outgrows the cache.
    N, C, H, W = x.shape
    T = th * tw
    zero = np.float32(0.0)
    for c in nb.prange(C):
        d = np.empty((4, 4), np.float32)
        buf = np.empty((16, N * T), np.float32)
        for n in range(N):
            src = x[n, c]
            for ty in range(th):
                y0 = 2 * ty - ph
                row_inside = y0 >= 0 and y0 + 4 <= H
                base = n * T + ty * tw
                for tx in range(tw):
                    x0 = 2 * tx - pw
                    if row_inside and x0 >= 0 and x0 + 4 <= W:
                        for i in range(4):
                            for j in range(4):
                                d[i, j] = src[y0 + i, x0 + j]
                    else:
                        for i in range(4):
                            yy = y0 + i
                            for j in range(4):
                                xx = x0 + j
                                d[i, j] = src[yy, xx] if 0 <= yy < H and 0 <= xx < W else zero
                    # t = B^T d (columns), then v = t B (rows)
                    t00, t10, t20, t30 = _bt_row(d[0, 0], d[1, 0], d[2, 0], d[3, 0])
                    t01, t11, t21, t31 = _bt_row(d[0, 1], d[1, 1], d[2, 1], d[3, 1])
                    t02, t12, t22, t32 = _bt_row(d[0, 2], d[1, 2], d[2, 2], d[3, 2])
                    t03, t13, t23, t33 = _bt_row(d[0, 3], d[1, 3], d[2, 3], d[3, 3])
                    k = base + tx
                    buf[0, k], buf[1, k], buf[2, k], buf[3, k] = _bt_row(t00, t01, t02, t03)
                    buf[4, k], buf[5, k], buf[6, k], buf[7, k] = _bt_row(t10, t11, t12, t13)
                    buf[8, k], buf[9, k], buf[10, k], buf[11, k] = _bt_row(t20, t21, t22, t23)
                    buf[12, k], buf[13, k], buf[14, k], buf[15, k] = _bt_row(t30, t31, t32, t33)
        for xi in range(16):
            dst = v[xi, c]
            row = buf[xi]
            for k in range(N * T):
                dst[k] = row[k]


INPUT_TRANSFORM_K = parallel.dual(_input_transform)


def _gemms(gemm, u, v, m, ob, tb, own, q, uq, panel):
    # m[xi] (O, NT) = u[xi] (O, C) @ v[xi] (C, NT); tile = (xi, channel block, tile block);
    # on our GEMM (own: u's panels, see conv.own_gemm) when given
    _, O, C = u.shape
    NT = v.shape[2]
    nob = (O + ob - 1) // ob
    ntb = (NT + tb - 1) // tb
    for t in nb.prange(16 * nob * ntb):
        p0 = (t % ntb) * tb
        r = t // ntb
        o0 = (r % nob) * ob
        xi = r // nob
        p1 = min(NT, p0 + tb)
        o1 = min(O, o0 + ob)
        if own.size and (o1 - o0) * (p1 - p0) * C > microkernel.SMALL_MNK:
            channel_microkernel.either_gemm(
                own, panel, microkernel.block_offset(xi, o0, O, ob, C, panel or microkernel.MR),
                o1 - o0, p1 - p0, C, v.reshape(-1), xi * C * NT + p0, NT, m.reshape(-1),
                (xi * O + o0) * NT + p0, NT, q, uq)
            continue
        gemm(101, 111, 111, o1 - o0, p1 - p0, C, np.float32(1.0),
             u.ctypes.data + 4 * (xi * O + o0) * C, C,
             v.ctypes.data + 4 * (xi * C * NT + p0), NT, np.float32(0.0),
             m.ctypes.data + 4 * ((xi * O + o0) * NT + p0), NT)


GEMMS_K = parallel.dual(_gemms)


def _output_transform(m, th, tw, out, codes, vecs, params):
    # m (16, O, N*th*tw) -> out (N, O, oh, ow), then the epilogue on each (n, o) plane. The
    # plane's 16 rows of m are first copied to a local buffer (see _input_transform).
    N, O, oh, ow = out.shape
    T = th * tw
    for plane in nb.prange(N * O):
        n = plane // O
        o = plane % O
        dst = out[n, o]
        buf = np.empty((16, T), np.float32)
        for xi in range(16):
            src = m[xi, o, n * T:(n + 1) * T]
            row = buf[xi]
            for k in range(T):
                row[k] = src[k]
        for ty in range(th):
            for tx in range(tw):
                k = ty * tw + tx
                # s = A^T m (per column j), then y = s A
                s00 = buf[0, k] + buf[4, k] + buf[8, k]
                s01 = buf[1, k] + buf[5, k] + buf[9, k]
                s02 = buf[2, k] + buf[6, k] + buf[10, k]
                s03 = buf[3, k] + buf[7, k] + buf[11, k]
                s10 = buf[4, k] - buf[8, k] - buf[12, k]
                s11 = buf[5, k] - buf[9, k] - buf[13, k]
                s12 = buf[6, k] - buf[10, k] - buf[14, k]
                s13 = buf[7, k] - buf[11, k] - buf[15, k]
                yy = 2 * ty
                xx = 2 * tx
                dst[yy, xx] = s00 + s01 + s02
                if xx + 1 < ow:
                    dst[yy, xx + 1] = s01 - s02 - s03
                if yy + 1 < oh:
                    dst[yy + 1, xx] = s10 + s11 + s12
                    if xx + 1 < ow:
                        dst[yy + 1, xx + 1] = s11 - s12 - s13
        _stages_row(dst.reshape(oh * ow), o, codes, vecs, params)


OUTPUT_TRANSFORM_K = parallel.dual(_output_transform)


def tiles(x_shape, out_hw) -> int:
    """Output tiles (columns of each GEMM) for a batch of ``x_shape``."""
    return x_shape[0] * -(-out_hw[0] // 2) * -(-out_hw[1] // 2)


def conv2d(gemm, x, u, pad, out_hw, ep_arrays, threads: int, own=None) -> np.ndarray:
    """x (N, C, H, W) float32 contiguous, u = transform_weights(w) -> (N, O, oh, ow).
    ``own``: (panels, q, u, panel) of u for our GEMM (``conv.own_gemm``), or None for the BLAS's."""
    N, C, H, W = x.shape
    O = u.shape[1]
    oh, ow = out_hw
    th, tw = -(-oh // 2), -(-ow // 2)
    NT = N * th * tw
    own = own or (_NO_WEIGHTS, 0, 0, 0)
    v = np.empty((16, C, NT), F32)
    par = threads > 1  # the caller decided (conv2d: enough work for the pool)
    (INPUT_TRANSFORM_K[0] if par else INPUT_TRANSFORM_K[1])(x, pad[0], pad[1], th, tw, v)
    m = np.empty((16, O, NT), F32)
    # the 16 GEMMs share out over the threads whole, so their shapes (and the rounding)
    # do not depend on the thread count
    if par:
        with nb.parallel_chunksize(1):  # one GEMM at a time to whichever thread is free
            GEMMS_K[0](gemm, u, v, m, O, NT, *own)
    else:
        GEMMS_K[1](gemm, u, v, m, O, NT, *own)
    out = np.empty((N, O, oh, ow), F32)
    (OUTPUT_TRANSFORM_K[0] if par else OUTPUT_TRANSFORM_K[1])(m, th, tw, out, *ep_arrays)
    return out
