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

V (16 x C x tiles) and M (16 x O x tiles) are 4x the input and output: the whole-layer
path writes both to memory and reads them back. Where that moves more than re-reading U
once per job would (:func:`blocked_groups`), the *blocked* path runs all three steps on
runs of tile rows whose V and M stay in the core's cache (res10's 128 -> 128 on 38x38
1.1x, yolov3-tiny's 64 -> 128 on 52x52 at batch 8 1.5x). Its GEMMs are the whole layer's
cut by columns, each above OpenBLAS's small-matrix size: the results are the same bits.
"""
from __future__ import annotations

import contextlib

import numba as nb
import numpy as np

from . import channel_microkernel, microkernel, parallel

from .epilogue import _stages_row

F32 = np.float32
#: bytes of V and M per job of the blocked path: they stay in the core's 2 MB L2 while the
#: 16 GEMMs and the output transform re-read them
BLOCK_BYTES = 1 << 20
#: where the BLAS's sums depend on the cut (:func:`.microkernel.cuts_change_no_sum`), the
#: choice between the blocked and whole-layer paths is made for this many threads at any
#: thread count, so that it never shows in a result
PLANNED_THREADS = 2
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


def _blocks(gemm, x, u, ph, pw, th, tw, groups, out, codes, vecs, params, own, q, uq, panel):
    # One job = a run of tile rows of one image, all three steps: its V (16, C, tb) and M
    # (16, O, tb) stay in the core's cache, where the whole-layer path writes and re-reads
    # both through memory. Each GEMM is (O x tb x C): its sums are those of the whole-layer
    # GEMM (a column cut never splits K; blocked_rows keeps every call above the BLAS's
    # small-matrix size).
    N, C, H, W = x.shape
    O = u.shape[1]
    oh, ow = out.shape[2], out.shape[3]
    zero = np.float32(0.0)
    for job in nb.prange(N * groups):
        n = job // groups
        g = job % groups
        ty0 = g * th // groups
        ty1 = (g + 1) * th // groups
        tb = (ty1 - ty0) * tw
        v = np.empty((16, C, tb), np.float32)
        m = np.empty((16, O, tb), np.float32)
        d = np.empty((4, 4), np.float32)
        for c in range(C):
            src = x[n, c]
            for ty in range(ty0, ty1):
                y0 = 2 * ty - ph
                row_inside = y0 >= 0 and y0 + 4 <= H
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
                    t00, t10, t20, t30 = _bt_row(d[0, 0], d[1, 0], d[2, 0], d[3, 0])
                    t01, t11, t21, t31 = _bt_row(d[0, 1], d[1, 1], d[2, 1], d[3, 1])
                    t02, t12, t22, t32 = _bt_row(d[0, 2], d[1, 2], d[2, 2], d[3, 2])
                    t03, t13, t23, t33 = _bt_row(d[0, 3], d[1, 3], d[2, 3], d[3, 3])
                    k = (ty - ty0) * tw + tx
                    v[0, c, k], v[1, c, k], v[2, c, k], v[3, c, k] = _bt_row(t00, t01, t02, t03)
                    v[4, c, k], v[5, c, k], v[6, c, k], v[7, c, k] = _bt_row(t10, t11, t12, t13)
                    v[8, c, k], v[9, c, k], v[10, c, k], v[11, c, k] = _bt_row(t20, t21, t22, t23)
                    v[12, c, k], v[13, c, k], v[14, c, k], v[15, c, k] = _bt_row(t30, t31, t32, t33)
        for xi in range(16):
            if own.size:
                channel_microkernel.either_gemm(
                    own, panel, microkernel.block_offset(xi, 0, O, O, C, panel or microkernel.MR),
                    O, tb, C, v.reshape(-1), xi * C * tb, tb, m.reshape(-1), xi * O * tb, tb, q, uq)
            else:
                gemm(101, 111, 111, O, tb, C, np.float32(1.0), u.ctypes.data + 4 * xi * O * C, C,
                     v.ctypes.data + 4 * xi * C * tb, tb, np.float32(0.0),
                     m.ctypes.data + 4 * xi * O * tb, tb)
        r0 = 2 * ty0
        r1 = min(oh, 2 * ty1)
        for o in range(O):
            dst = out[n, o]
            for ty in range(ty0, ty1):
                for tx in range(tw):
                    k = (ty - ty0) * tw + tx
                    s00 = m[0, o, k] + m[4, o, k] + m[8, o, k]
                    s01 = m[1, o, k] + m[5, o, k] + m[9, o, k]
                    s02 = m[2, o, k] + m[6, o, k] + m[10, o, k]
                    s03 = m[3, o, k] + m[7, o, k] + m[11, o, k]
                    s10 = m[4, o, k] - m[8, o, k] - m[12, o, k]
                    s11 = m[5, o, k] - m[9, o, k] - m[13, o, k]
                    s12 = m[6, o, k] - m[10, o, k] - m[14, o, k]
                    s13 = m[7, o, k] - m[11, o, k] - m[15, o, k]
                    yy = 2 * ty
                    xx = 2 * tx
                    dst[yy, xx] = s00 + s01 + s02
                    if xx + 1 < ow:
                        dst[yy, xx + 1] = s01 - s02 - s03
                    if yy + 1 < oh:
                        dst[yy + 1, xx] = s10 + s11 + s12
                        if xx + 1 < ow:
                            dst[yy + 1, xx + 1] = s11 - s12 - s13
            _stages_row(dst.reshape(oh * ow)[r0 * ow:r1 * ow], o, codes, vecs, params)


BLOCKS_K = parallel.dual(_blocks)


def blocked_rows(C, O, th, tw, small_mnk) -> int:
    """Tile rows per job of the blocked path (0: the whole-layer path instead): enough for its
    V and M to fill about BLOCK_BYTES, and never so few that a GEMM (O x rows*tw x C) falls
    to the BLAS's small-matrix kernels, whose sums run in another order."""
    fewest = small_mnk // (O * C * tw) + 1
    rows = max(fewest, BLOCK_BYTES // (4 * 16 * (C + O) * tw))
    return rows if rows < th else 0


def blocked_groups(N, C, O, out_hw, threads) -> int:
    """Jobs per image of the blocked path (runs of tile rows), or 0 for the whole-layer
    path: where no run is long enough, too few jobs would leave threads idle (the
    whole-layer path shares its 16 GEMMs out), or the jobs would re-read more weights than
    the whole-layer path moves."""
    th, tw = -(-out_hw[0] // 2), -(-out_hw[1] // 2)
    rows = blocked_rows(C, O, th, tw, microkernel.SMALL_MNK)
    groups = th // rows if rows else 0
    if not microkernel.cuts_change_no_sum():
        threads = PLANNED_THREADS  # the two paths cut the GEMMs differently
    if not groups or N * groups < threads:
        return 0
    # each job re-reads all of U (16*O*C floats), where the whole-layer path writes and
    # re-reads V and M (16*(C+O)*N*th*tw): blocked only where that moves less memory
    # (ResNet-50's 256 -> 256 on 14x14 and yolov3-tiny's 13x13 layers stay whole)
    return groups if (N * groups - 1) * O * C < 2 * (C + O) * N * th * tw else 0


def gemm_columns(N, out_hw, groups) -> int:
    """Columns of the largest GEMM of a layer run in ``groups`` runs per image
    (:func:`blocked_groups`; 0: whole), for the choice of GEMM kernel."""
    th, tw = -(-out_hw[0] // 2), -(-out_hw[1] // 2)
    return -(-th // groups) * tw if groups else N * th * tw


def tiles(x_shape, out_hw) -> int:
    """Output tiles (columns of each GEMM) for a batch of ``x_shape``."""
    return x_shape[0] * -(-out_hw[0] // 2) * -(-out_hw[1] // 2)


def conv2d(gemm, x, u, pad, out_hw, ep_arrays, threads: int, own=None, groups=None) -> np.ndarray:
    """x (N, C, H, W) float32 contiguous, u = transform_weights(w) -> (N, O, oh, ow).
    ``own``: (panels, q, u, panel) of u for our GEMM (``conv.own_gemm``), or None for the BLAS's;
    ``groups``: :func:`blocked_groups` when the caller has it."""
    N, C, H, W = x.shape
    O = u.shape[1]
    oh, ow = out_hw
    th, tw = -(-oh // 2), -(-ow // 2)
    NT = N * th * tw
    own = own or (_NO_WEIGHTS, 0, 0, 0)
    par = threads > 1  # the caller decided (conv2d: enough work for the pool)
    if groups is None:
        groups = blocked_groups(N, C, O, out_hw, threads)
    if groups:
        out = np.empty((N, O, oh, ow), F32)
        kernel = BLOCKS_K[0] if par else BLOCKS_K[1]
        with parallel.chunksize(1) if par else contextlib.nullcontext():
            kernel(gemm, x, u, pad[0], pad[1], th, tw, groups, out, *ep_arrays, *own)
        return out
    v = np.empty((16, C, NT), F32)
    (INPUT_TRANSFORM_K[0] if par else INPUT_TRANSFORM_K[1])(x, pad[0], pad[1], th, tw, v)
    m = np.empty((16, O, NT), F32)
    # the 16 GEMMs share out over the threads whole, so their shapes (and the rounding)
    # do not depend on the thread count
    if par:
        with parallel.chunksize(1):  # one GEMM at a time to whichever thread is free
            GEMMS_K[0](gemm, u, v, m, O, NT, *own)
    else:
        GEMMS_K[1](gemm, u, v, m, O, NT, *own)
    out = np.empty((N, O, oh, ow), F32)
    (OUTPUT_TRANSFORM_K[0] if par else OUTPUT_TRANSFORM_K[1])(m, th, tw, out, *ep_arrays)
    return out
