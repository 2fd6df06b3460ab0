"""A second GEMM micro-kernel, vectorised over output channels, for small feature maps.

:mod:`.microkernel` puts 16 output pixels in a vector. A 7x7 map has 49 pixels, so its
last vector is mostly padding, and OpenBLAS (which vectorises over pixels too) runs those
layers at about 100 GFLOP/s where it reaches 150 on larger maps. Here a vector holds 16
output channels instead: a micro-tile is ``PANEL`` channels (3 or 4 vectors) x a few
pixels, the weights are packed once per layer in panels of ``PANEL`` rows, k-major
(:func:`.microkernel.pack_weights` with ``mr=PANEL``), and each pixel's input value is
broadcast from the column matrix read in place, so nothing is packed per call. The tile's
sums go to a small pixel-major buffer and are written back to the NCHW rows once per
panel.

Each output still sums its products in k order with fused multiply-adds, in OpenBLAS's K
blocks, added in order (see :mod:`.microkernel`): the results are OpenBLAS's, bit for bit.
Within a K block, the k steps run in sub-blocks of ``KS`` (so that a panel's slice stays in
L1); between sub-blocks the accumulators are parked in memory and reloaded unchanged, which
changes no rounding. Measured in ``benchmarks/gemm_shapes.py``; used where
:func:`worth_it` says.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import haswell_gemm, microkernel
from .microkernel import SMALL_MNK, k_block
from .simd import I32, I64, LANES, VEC, data_pointer, load, splat, store

F32 = np.float32
#: k steps per pass over a panel: 48-64 rows x 96 floats (18-24 KB) stay in L1 beside the columns
KS = 96
#: pixels per pass over the weights: the pixel-major buffers stay in L2
NB = 198
#: panel rows (output channels per micro-tile) -> pixels per micro-tile: 3 x 9 or 4 x 6
#: accumulators, plus the weight vectors and one broadcast, in AVX-512's 32 registers
PIXELS = {48: 9, 64: 6}
_PIXELS48, _PIXELS64 = PIXELS[48], PIXELS[64]
STORE, ADD, PARK = 0, 1, 2


def emit_finish(builder, sums, finish, t_at, s_at):
    """A tile's last step, by ``finish``: PARK the accumulators ``sums[r][v]`` at ``s_at(r, v)``,
    or STORE them at ``t_at(r, v)``, or ADD them to what is there (one rounding)."""
    adding = builder.icmp_signed("==", finish, ir.Constant(I64, ADD))
    with builder.if_else(builder.icmp_signed("==", finish, ir.Constant(I64, PARK))) as (park, done):
        with park:
            for r, row in enumerate(sums):
                for v, acc in enumerate(row):
                    store(builder, builder.load(acc), s_at(r, v))
        with done:
            for r, row in enumerate(sums):
                for v, acc in enumerate(row):
                    ptr = t_at(r, v)
                    value = builder.load(acc)
                    with builder.if_else(adding) as (add, put):  # C read only when added to
                        with add:
                            store(builder, builder.fadd(load(builder, ptr), value), ptr)
                        with put:
                            store(builder, value, ptr)


def _make_tile(vectors: int, pixels: int, indirect: bool):
    rows = vectors * LANES

    @intrinsic
    def tile(typingctx, a, a_off, b, b_off, ldb, offs, o_off, kc, cols, t, t_off, finish, s, resume):
        """Sums over kc k steps for ``rows`` channels x ``pixels`` pixels:
        acc[r, i] = sum_k a[a_off + k*rows + i] * b[row(k) + r*step] (fused, in k order), with
        row(k) = b_off + k*ldb and step 1, or, ``indirect``, row(k) = b_off + offs[o_off + k] and step
        ``ldb`` (a direct convolution: offs holds each tap's offset in the padded input, ldb
        the stride); started from 0 or, with ``resume``, from s[t_off:]; then by ``finish``:
        STORE t[t_off + r*rows + i] = acc, ADD t += acc (one rounding), or PARK s = acc.
        Pixels r >= cols re-read pixel cols - 1 (their sums are not used)."""
        sig = types.void(a, types.int64, b, types.int64, types.int64, offs, types.int64, types.int64,
                         types.int64, t, types.int64, types.int64, s, types.int64)

        def codegen(context, builder, sig, args):
            a_arr, a_off, b_arr, b_off, ldb, offs_arr, o_off, kc, cols, t_arr, t_off, finish, s_arr, resume = args
            ap = data_pointer(context, builder, sig.args[0], a_arr, a_off)
            bp = data_pointer(context, builder, sig.args[2], b_arr, b_off)
            op = data_pointer(context, builder, sig.args[5], offs_arr, o_off)
            tp = data_pointer(context, builder, sig.args[9], t_arr, t_off)
            sp = data_pointer(context, builder, sig.args[12], s_arr, t_off)
            zero = ir.Constant(VEC, [0.0] * LANES)

            def at(base, r, v):
                return builder.gep(base, [ir.Constant(I64, (r * vectors + v) * LANES)])

            sums = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)]
                    for _ in range(pixels)]
            with builder.if_then(builder.icmp_signed("!=", resume, ir.Constant(I64, 0))):
                for r in range(pixels):
                    for v in range(vectors):
                        builder.store(load(builder, at(sp, r, v)), sums[r][v])
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(VEC, [VEC] * 3),
                                                 f"llvm.fma.v{LANES}f32")
            last = builder.sub(cols, ir.Constant(I64, 1))
            column = []
            for r in range(pixels):
                rc = ir.Constant(I64, r)
                pixel = builder.select(builder.icmp_signed("<", rc, cols), rc, last)
                column.append(builder.mul(pixel, ldb) if indirect else pixel)
            step = ir.Constant(I64, rows)
            with cgutils.for_range(builder, kc) as loop:
                k = loop.index
                brow = builder.gep(bp, [builder.load(builder.gep(op, [k])) if indirect else builder.mul(k, ldb)])
                arow = builder.gep(ap, [builder.mul(k, step)])
                av = [load(builder, builder.gep(arow, [ir.Constant(I64, LANES * v)])) for v in range(vectors)]
                for r in range(pixels):
                    bv = splat(builder, builder.load(builder.gep(brow, [column[r]])))
                    for v in range(vectors):
                        builder.store(builder.call(fma, [bv, av[v], builder.load(sums[r][v])]), sums[r][v])
            emit_finish(builder, sums, finish, lambda r, v: at(tp, r, v), lambda r, v: at(sp, r, v))
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile48 = _make_tile(3, PIXELS[48], False)
_tile64 = _make_tile(4, PIXELS[64], False)
#: one-pixel tiles for the last few pixels of a block or of a direct convolution's row, and
#: for N = 1 (a classifier as a 1x1 convolution): the full tile would do 6-9 pixels'
#: multiply-adds for them
_one48 = _make_tile(3, 1, False)
_one64 = _make_tile(4, 1, False)
_one_taps48 = _make_tile(3, 1, True)
_one_taps64 = _make_tile(4, 1, True)
#: pixels left over below which they take one-pixel tiles: a full tile's 27 or 24 fused
#: multiply-adds per k step run about as fast as 4 one-pixel tiles (each waits on its
#: accumulators' latency)
ONE_PIXEL_BELOW = 4
_taps48 = _make_tile(3, PIXELS[48], True)
_taps64 = _make_tile(4, PIXELS[64], True)
_NO_OFFSETS = np.zeros(1, np.int64)


def _transpose_masks():
    # 16 x 16 transpose in 4 stages: stage b swaps bit b of the vector index with bit b of
    # the lane index, pairing vectors j (bit b clear) and j | 1 << b
    stages = []
    for bit in range(4):
        lo, hi = [], []
        for lane in range(LANES):
            src = LANES if lane >> bit & 1 else 0
            lo.append(src + (lane & ~(1 << bit)))
            hi.append(src + (lane | 1 << bit))
        stages.append((lo, hi))
    return stages


_STAGES = _transpose_masks()


@intrinsic
def _put_transposed(typingctx, t, t_off, ld_t, c, c_off, ldc, rows, cols):
    """c[c_off + i*ldc + j] = t[t_off + j*ld_t + i] for i < rows, j < cols (both <= 16): a 16 x
    16 block of pixel-major sums written to channel rows. Reads 16 full vectors of t."""
    sig = types.void(t, types.int64, types.int64, c, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, sig, args):
        t_arr, t_off, ld_t, c_arr, c_off, ldc, rows, cols = args
        tp = data_pointer(context, builder, sig.args[0], t_arr, t_off)
        cp = data_pointer(context, builder, sig.args[3], c_arr, c_off)
        v = [load(builder, builder.gep(tp, [builder.mul(ir.Constant(I64, j), ld_t)])) for j in range(LANES)]
        for bit, (lo, hi) in enumerate(_STAGES):
            out = list(v)
            for j in range(LANES):
                if j >> bit & 1:
                    continue
                k = j | 1 << bit
                out[j] = builder.shuffle_vector(v[j], v[k], ir.Constant(ir.VectorType(I32, LANES), lo))
                out[k] = builder.shuffle_vector(v[j], v[k], ir.Constant(ir.VectorType(I32, LANES), hi))
            v = out
        vptr = VEC.as_pointer()
        mask_t = ir.VectorType(ir.IntType(1), LANES)
        lanes = ir.Constant(ir.VectorType(I64, LANES), list(range(LANES)))
        mask = builder.icmp_signed("<", lanes, splat(builder, cols, ir.VectorType(I64, LANES)))
        mstore = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [VEC, vptr, I32, mask_t]),
            f"llvm.masked.store.v{LANES}f32.p0")
        full = builder.icmp_signed("==", cols, ir.Constant(I64, LANES))
        for i in range(LANES):
            with builder.if_then(builder.icmp_signed(">", rows, ir.Constant(I64, i))):
                ptr = builder.gep(cp, [builder.mul(ir.Constant(I64, i), ldc)])
                with builder.if_else(full) as (whole, part):
                    with whole:
                        store(builder, v[i], ptr)
                    with part:
                        builder.call(mstore, [v[i], builder.bitcast(ptr, vptr), ir.Constant(I32, 4), mask])
        return context.get_dummy_value()

    return sig, codegen


@nb.njit(cache=True, nogil=True)
def k_schedule(K, q, u):
    """The passes over the k steps, one row each: (first step, steps, finish, resume).
    OpenBLAS's K blocks (``q``, ``u``) in order, each cut in sub-blocks of KS: a block's
    first sub-block starts from zero, the others resume the parked sums; its last one
    stores (the first block) or adds (the others), the others park."""
    rows = np.empty((K // KS + K // max(q, 1) + 4, 4), np.int64)
    n = 0
    k0 = 0
    while k0 < K:
        kc = k_block(K - k0, q, u)
        s0 = 0
        while s0 < kc:
            sc = min(KS, kc - s0)
            rows[n, 0] = k0 + s0
            rows[n, 1] = sc
            rows[n, 2] = PARK if s0 + sc < kc else (ADD if k0 > 0 else STORE)
            rows[n, 3] = 1 if s0 > 0 else 0
            n += 1
            s0 += sc
        k0 += kc
    return rows[:n]


@nb.njit(cache=True, nogil=True)
def gemm(ap, a_off, M, N, K, b, b_off, ldb, c, c_off, ldc, q, u, panel):
    """c[c_off:] (M x N, rows ldc apart) = A (M x K, panels of ``panel`` rows packed from
    ap[a_off]) @ b[b_off:] (K x N, rows ldb apart), K cut in blocks as OpenBLAS cuts it."""
    pixels = _PIXELS48 if panel == 48 else _PIXELS64
    width = ((min(N, NB) + pixels - 1) // pixels) * pixels
    t = np.empty((width + LANES) * panel, np.float32)  # the last 16-pixel block reads past width
    s = np.empty(width * panel, np.float32)
    panels = (M + panel - 1) // panel
    steps = k_schedule(K, q, u)
    for n_start in range(0, N, NB):
        n_end = min(N, n_start + NB)
        for p in range(panels):
            for i in range(steps.shape[0]):
                k, sc, finish, resume = steps[i, 0], steps[i, 1], steps[i, 2], steps[i, 3]
                a_at = a_off + (p * K + k) * panel
                for n0 in range(n_start, n_end, pixels):
                    b_at = b_off + k * ldb + n0
                    t_at = (n0 - n_start) * panel
                    if n_end - n0 < ONE_PIXEL_BELOW:
                        for j in range(n_end - n0):
                            if panel == 48:
                                _one48(ap, a_at, b, b_at + j, ldb, _NO_OFFSETS, 0, sc, 1, t, t_at + j * panel,
                                       finish, s, resume)
                            else:
                                _one64(ap, a_at, b, b_at + j, ldb, _NO_OFFSETS, 0, sc, 1, t, t_at + j * panel,
                                       finish, s, resume)
                    elif panel == 48:
                        _tile48(ap, a_at, b, b_at, ldb, _NO_OFFSETS, 0, sc, n_end - n0, t, t_at, finish, s, resume)
                    else:
                        _tile64(ap, a_at, b, b_at, ldb, _NO_OFFSETS, 0, sc, n_end - n0, t, t_at, finish, s, resume)
            rows = min(panel, M - p * panel)
            for i0 in range(0, rows, LANES):
                for n0 in range(n_start, n_end, LANES):
                    _put_transposed(t, (n0 - n_start) * panel + i0, panel, c,
                                    c_off + (p * panel + i0) * ldc + n0, ldc, min(LANES, rows - i0),
                                    min(LANES, n_end - n0))


@nb.njit(cache=True, nogil=True, inline="always")
def either_gemm(ap, panel, a_off, M, N, K, b, b_off, ldb, c, c_off, ldc, q, u):
    """Our GEMM on panels packed for it (``conv.own_gemm``): this module's when ``panel``
    (its panel rows) is positive, :func:`.microkernel.gemm`'s 12x16 kernel when 0, the AVX2
    one (:mod:`.haswell_gemm`, the whole call) when ``haswell_gemm.PANEL`` (negative)."""
    if panel > 0:
        gemm(ap, a_off, M, N, K, b, b_off, ldb, c, c_off, ldc, q, u, panel)
    elif panel == 0:
        microkernel.gemm(ap, a_off, M, N, K, b, b_off, ldb, c, c_off, ldc, q, u)
    else:
        haswell_gemm.gemm(ap, a_off, M, N, K, b, b_off, ldb, c, c_off, ldc, 0, haswell_gemm.tile_count(M))


@nb.njit(cache=True, nogil=True, inline="always")
def own_offset(panel, group, row, og, block, k):
    """Where :func:`either_gemm`'s weights for the block of rows from ``row`` of ``group``
    start, packed for ``panel`` (see :func:`either_gemm`)."""
    if panel < 0:
        return haswell_gemm.block_offset(group, row, og, block, k)
    return microkernel.block_offset(group, row, og, block, k, panel if panel > 0 else microkernel.MR)


def panel_rows(block: int) -> int:
    """48 or 64, whichever pads a channel block of ``block`` rows less (48 on a tie: its
    3 x 9 tile re-reads the weights less)."""
    return 64 if -(-block // 64) * 64 < -(-block // 48) * 48 else 48


def worth_it(M: int, N: int, K: int, ldb: int) -> bool:
    """Whether :func:`gemm` beats OpenBLAS for one call of this shape, the columns read in
    place ``ldb`` apart. Measured single-threaded on Sapphire Rapids (AVX-512),
    ``benchmarks/gemm_shapes.py``: 1.2-1.7x faster on 7x7 maps (49 columns, where OpenBLAS's
    pixel vectors are a quarter padding), 1.0-1.3x on 14x14 maps; 0.9-1.1x from about 400
    columns on, where OpenBLAS's packed copy of the columns pays."""
    if M * N * K <= SMALL_MNK or M < 48 or K < 64:
        return False
    return N <= 200 and ldb <= 200
