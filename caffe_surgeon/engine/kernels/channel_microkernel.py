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

from .microkernel import SMALL_MNK, k_block
from .simd import I64, LANES, VEC, data_pointer, load, splat, store

F32 = np.float32
#: k steps per pass over a panel: 48-64 rows x 128 floats (24-32 KB) stay in L1
KS = 128
#: pixels per pass over the weights: the pixel-major buffers stay in L2
NB = 198
#: panel rows (output channels per micro-tile) -> pixels per micro-tile: 3 x 9 or 4 x 6
#: accumulators, plus the weight vectors and one broadcast, in AVX-512's 32 registers
PIXELS = {48: 9, 64: 6}
_PIXELS48, _PIXELS64 = PIXELS[48], PIXELS[64]
STORE, ADD, PARK = 0, 1, 2


def _make_tile(vectors: int, pixels: int):
    rows = vectors * LANES

    @intrinsic
    def tile(typingctx, a, a_off, b, b_off, ldb, kc, cols, t, t_off, finish, s, resume):
        """Sums over kc k steps for ``rows`` channels x ``pixels`` pixels:
        acc[r, i] = sum_k a[a_off + k*rows + i] * b[b_off + k*ldb + r] (fused, in k order),
        started from 0 or, with ``resume``, from s[t_off:]; then by ``finish``: STORE
        t[t_off + r*rows + i] = acc, ADD t += acc (one rounding), or PARK s = acc. Pixels
        r >= cols re-read column cols - 1 (their sums are not used)."""
        sig = types.void(a, types.int64, b, types.int64, types.int64, types.int64, types.int64,
                         t, types.int64, types.int64, s, types.int64)

        def codegen(context, builder, sig, args):
            a_arr, a_off, b_arr, b_off, ldb, kc, cols, t_arr, t_off, finish, s_arr, resume = args
            ap = data_pointer(context, builder, sig.args[0], a_arr, a_off)
            bp = data_pointer(context, builder, sig.args[2], b_arr, b_off)
            tp = data_pointer(context, builder, sig.args[7], t_arr, t_off)
            sp = data_pointer(context, builder, sig.args[10], s_arr, t_off)
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
                column.append(builder.select(builder.icmp_signed("<", rc, cols), rc, last))
            step = ir.Constant(I64, rows)
            with cgutils.for_range(builder, kc) as loop:
                k = loop.index
                brow = builder.gep(bp, [builder.mul(k, ldb)])
                arow = builder.gep(ap, [builder.mul(k, step)])
                av = [load(builder, builder.gep(arow, [ir.Constant(I64, LANES * v)])) for v in range(vectors)]
                for r in range(pixels):
                    bv = splat(builder, builder.load(builder.gep(brow, [column[r]])))
                    for v in range(vectors):
                        builder.store(builder.call(fma, [bv, av[v], builder.load(sums[r][v])]), sums[r][v])
            adding = builder.icmp_signed("==", finish, ir.Constant(I64, ADD))
            with builder.if_else(builder.icmp_signed("==", finish, ir.Constant(I64, PARK))) as (park, done):
                with park:
                    for r in range(pixels):
                        for v in range(vectors):
                            store(builder, builder.load(sums[r][v]), at(sp, r, v))
                with done:
                    for r in range(pixels):
                        for v in range(vectors):
                            ptr = at(tp, r, v)
                            acc = builder.load(sums[r][v])
                            store(builder, builder.select(adding, builder.fadd(load(builder, ptr), acc), acc), ptr)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile48 = _make_tile(3, PIXELS[48])
_tile64 = _make_tile(4, PIXELS[64])


@nb.njit(cache=True, nogil=True)
def gemm(ap, a_off, M, N, K, b, b_off, ldb, c, c_off, ldc, q, u, panel):
    """c[c_off:] (M x N, rows ldc apart) = A (M x K, panels of ``panel`` rows packed from
    ap[a_off]) @ b[b_off:] (K x N, rows ldb apart), K cut in blocks as OpenBLAS cuts it."""
    pixels = _PIXELS48 if panel == 48 else _PIXELS64
    width = ((min(N, NB) + pixels - 1) // pixels) * pixels
    t = np.empty(width * panel, np.float32)
    s = np.empty(width * panel, np.float32)
    panels = (M + panel - 1) // panel
    for n_start in range(0, N, NB):
        n_end = min(N, n_start + NB)
        for p in range(panels):
            k0 = 0
            while k0 < K:
                kc = k_block(K - k0, q, u)
                s0 = 0
                while s0 < kc:
                    sc = min(KS, kc - s0)
                    finish = PARK if s0 + sc < kc else (ADD if k0 > 0 else STORE)
                    a_at = a_off + (p * K + k0 + s0) * panel
                    for n0 in range(n_start, n_end, pixels):
                        b_at = b_off + (k0 + s0) * ldb + n0
                        t_at = (n0 - n_start) * panel
                        if panel == 48:
                            _tile48(ap, a_at, b, b_at, ldb, sc, n_end - n0, t, t_at, finish, s, s0 > 0)
                        else:
                            _tile64(ap, a_at, b, b_at, ldb, sc, n_end - n0, t, t_at, finish, s, s0 > 0)
                    s0 += sc
                k0 += kc
            for i in range(min(panel, M - p * panel)):
                row = c_off + (p * panel + i) * ldc
                for n in range(n_start, n_end):
                    c[row + n] = t[(n - n_start) * panel + i]


def panel_rows(block: int) -> int:
    """48 or 64, whichever pads a channel block of ``block`` rows less (48 on a tie: its
    3 x 9 tile re-reads the weights less)."""
    return 64 if -(-block // 64) * 64 < -(-block // 48) * 48 else 48


def worth_it(M: int, N: int, K: int, ldb: int) -> bool:
    """Whether :func:`gemm` beats OpenBLAS for one call of this shape, the columns read in
    place ``ldb`` apart. Measured single-threaded on Sapphire Rapids (AVX-512),
    ``benchmarks/gemm_shapes.py``: 1.1-1.7x faster on 7x7 maps (49 columns, where OpenBLAS's
    pixel vectors are a quarter padding), 1.1-1.2x on 14x14 maps with up to 512 channels;
    0.85-1.0x from about 400 columns on, and with 1024 channels on 196 columns."""
    if M * N * K <= SMALL_MNK or M < 48 or K < 64:
        return False
    return (N <= 64 and ldb <= 64) or (M <= 512 and N <= 200 and ldb <= 200)
