"""Our GEMM on AVX2 machines, bit-equal to OpenBLAS's Haswell kernel call for call.

On AVX-512 every output of an OpenBLAS call is one chain of fused multiply-adds per K
block, wherever it lies, so :mod:`.microkernel` can cut and order the work as it likes.
The Haswell kernel (``sgemm_kernel_8x4_haswell_2.c``, which Zen runs too) does not: some
8-pixel x 4- or 6-channel tiles sum the even k and the odd k in two chains, added at the
end, and which tiles do depends on where they lie in the call. So this GEMM takes a call's
whole shape (M channels x N pixels x K), as the im2col paths make it, and gives each output
the chains OpenBLAS gives it there (:func:`two_chains`). Which rows and columns it computes,
in which order and on which thread, then changes no bit.

OpenBLAS's level-3 driver sees a row-major ``C = A @ B`` as the column-major
``C^T = B^T A^T``: its m is our N (pixels, 8 to a ymm vector) and its n our M (channels).
It cuts the pixels in blocks of up to ``GEMM_P`` (320) and, for the first block only, the
channels in calls of 12, then 4, then the rest; the kernel takes a call's channels 12, 8,
4, 2, 1 at a time. Two chains (k < the last multiple of 8 split into even and odd, the
rest added to the even chain) fall on:

- a 12-channel chunk over a pixel block of 16 or more: the first 6 channels of the block's
  first 8 pixels, and 6 channels of its last full 8 (the first 6 if the block has an even
  number of full 8s, else the last 6);
- a 4-channel chunk: every full 8 pixels.

Every other output is one chain in k order. K is cut in ``GEMM_Q`` blocks as everywhere
(:func:`.microkernel.k_block`), each block's sum added to C once (the first to a zeroed C).
:func:`reproduces` checks all of it against the BLAS on this machine; the convolutions use
this kernel only where it holds.

The weights are packed once per layer in tiles of at most 6 channels that never straddle a
chunk boundary (:func:`pack_weights`): the 12-channel chunks' halves, then the remainder as
4, 4 and the rest. A one-chain tile is 6 x 16 pixels (12 ymm accumulators), a two-chain
tile 6 x 8 pixels in two sets of 6.
"""
from __future__ import annotations

import os
import threading

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import blas
from .microkernel import FEATURES, k_block, make_tile
from .simd import I32, I64, LANES, VEC, data_pointer, load, splat

F32 = np.float32
#: OpenBLAS's Haswell/Zen blocking: pixels per block, K per block, its pixel unroll
GEMM_P, GEMM_Q, UNROLL_M = 320, 320, 8
#: channels per packed tile; pixels per one-chain tile
MR, NR = 6, 16
#: zeros after the packed tiles: a narrow call's vector of a tile's 6 weights reads 2 past them
SPARE = 8
#: 8-pixel panels per run of columns every tile passes over
CHUNK = 8
#: AVX2 with FMA: what the kernel is compiled for. AVX-512 machines have it too, and some
#: run OpenBLAS's Haswell kernels (Zen 5 under OpenBLAS 0.3.31): :func:`reproduces` decides
USABLE = "+avx2" in FEATURES and "+fma" in FEATURES
#: AVX-512 here: OpenBLAS's Haswell kernels then leave half the vector width unused and
#: pack per call, and ours wins on far more shapes (:func:`worth_it`)
WIDE_HOST = "+avx512f" in FEATURES
#: ``panel`` code of this kernel's weights in the convolutions' tiles (``conv.own_gemm``)
PANEL = -1
# tile kinds: the halves of a 12-channel chunk, then the remainder's 4, 4 and rest
LEFT, RIGHT, REST0, REST1, REST2 = 0, 1, 2, 3, 4

_V8 = ir.VectorType(ir.FloatType(), 8)


def _fma(builder, vec):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                          f"llvm.fma.v{vec.count}f32")


def _finish(builder, v, ptr, acc, vec):
    """C at ``ptr`` = its value + v (one rounding) when ``acc``, else v + 0.0: OpenBLAS adds
    every block's sum to C, the first to a zeroed C (so -0.0 comes out +0.0)."""
    zero = ir.Constant(vec, [0.0] * vec.count)
    with builder.if_else(acc) as (add, put):  # never a load of C that is only stored to
        with add:
            builder.store(builder.fadd(builder.load(ptr, align=4), v), ptr, align=4)
        with put:
            builder.store(builder.fadd(zero, v), ptr, align=4)


#: one chain: 6 x 16 (12 ymm accumulators), partial tiles reading only their columns
_tile1 = make_tile(MR, masked_loads=True, zero_first=True)


def _tile_sig(a, b, c):
    """The signature of a tile ``(a, a_off, b, b_off, ldb, c, c_off, ldc, kc, rows, accumulate)``."""
    return types.void(a, types.int64, b, types.int64, types.int64, c, types.int64, types.int64,
                      types.int64, types.int64, types.int64)


def _tile_args(context, builder, sig, args):
    """A tile's (a, b, c pointers at their offsets, ldb, ldc, kc, rows, accumulate)."""
    a_arr, a_off, b_arr, b_off, ldb, c_arr, c_off, ldc, kc, rows, acc = args
    return (data_pointer(context, builder, sig.args[0], a_arr, a_off),
            data_pointer(context, builder, sig.args[2], b_arr, b_off),
            data_pointer(context, builder, sig.args[5], c_arr, c_off), ldb, ldc, kc, rows, acc)


@intrinsic
def _tile1_wide(typingctx, a, a_off, b, b_off, ldb, c, c_off, ldc, kc, rows, accumulate):
    """One chain over 32 whole columns (4 panels): _tile1's sums, two vectors a row, so
    that an AVX-512 core keeps 12 zmm accumulators busy where _tile1 keeps 6."""
    def codegen(context, builder, sig, args):
        ap, bp, cp, ldb, ldc, kc, rows, acc = _tile_args(context, builder, sig, args)
        zero = ir.Constant(VEC, [0.0] * LANES)
        sums = [[cgutils.alloca_once_value(builder, zero) for _ in range(2)] for _ in range(MR)]
        fma = _fma(builder, VEC)
        mr = ir.Constant(I64, MR)
        half = ir.Constant(I64, LANES)
        with cgutils.for_range(builder, kc) as loop:
            k = loop.index
            brow = builder.gep(bp, [builder.mul(k, ldb)])
            bv = [load(builder, brow), load(builder, builder.gep(brow, [half]))]
            arow = builder.gep(ap, [builder.mul(k, mr)])
            for i in range(MR):
                av = splat(builder, builder.load(builder.gep(arow, [ir.Constant(I64, i)])))
                for h in range(2):
                    builder.store(builder.call(fma, [av, bv[h], builder.load(sums[i][h])]), sums[i][h])
        adding = builder.icmp_signed("!=", acc, ir.Constant(I64, 0))
        for i in range(MR):
            with builder.if_then(builder.icmp_signed(">", rows, ir.Constant(I64, i))):
                crow = builder.gep(cp, [builder.mul(ir.Constant(I64, i), ldc)])
                for h in range(2):
                    ptr = builder.bitcast(builder.gep(crow, [ir.Constant(I64, h * LANES)]), VEC.as_pointer())
                    _finish(builder, builder.load(sums[i][h]), ptr, adding, VEC)
        return context.get_dummy_value()

    return _tile_sig(a, b, c), codegen


@intrinsic
def _tile2(typingctx, a, a_off, b, b_off, ldb, c, c_off, ldc, kc, rows, accumulate):
    """Two chains over 8 whole columns: the even k below kc's last multiple of 8 in one, the
    odd k in the other, the rest added to the even chain in order; the two added at the end."""
    def codegen(context, builder, sig, args):
        ap, bp, cp, ldb, ldc, kc, rows, acc = _tile_args(context, builder, sig, args)
        vptr = _V8.as_pointer()
        zero = ir.Constant(_V8, [0.0] * 8)
        even = [cgutils.alloca_once_value(builder, zero) for _ in range(MR)]
        odd = [cgutils.alloca_once_value(builder, zero) for _ in range(MR)]
        fma = _fma(builder, _V8)
        mr = ir.Constant(I64, MR)

        def step(k, sums):
            bv = builder.load(builder.bitcast(builder.gep(bp, [builder.mul(k, ldb)]), vptr), align=4)
            arow = builder.gep(ap, [builder.mul(k, mr)])
            for i in range(MR):
                av = splat(builder, builder.load(builder.gep(arow, [ir.Constant(I64, i)])), _V8)
                builder.store(builder.call(fma, [av, bv, builder.load(sums[i])]), sums[i])

        main = builder.and_(kc, ir.Constant(I64, ~7))
        with cgutils.for_range(builder, builder.ashr(main, ir.Constant(I64, 1))) as loop:
            k = builder.shl(loop.index, ir.Constant(I64, 1))
            step(k, even)
            step(builder.add(k, ir.Constant(I64, 1)), odd)
        with cgutils.for_range(builder, builder.sub(kc, main)) as loop:
            step(builder.add(main, loop.index), even)
        adding = builder.icmp_signed("!=", acc, ir.Constant(I64, 0))
        for i in range(MR):
            with builder.if_then(builder.icmp_signed(">", rows, ir.Constant(I64, i))):
                ptr = builder.bitcast(builder.gep(cp, [builder.mul(ir.Constant(I64, i), ldc)]), vptr)
                _finish(builder, builder.fadd(builder.load(even[i]), builder.load(odd[i])), ptr, adding, _V8)
        return context.get_dummy_value()

    return _tile_sig(a, b, c), codegen


@intrinsic
def _column4(typingctx, a, a0, a1, a2, a3, b, b_off, ldb, c, c0, c1, c2, c3, ldc, kc, rows, accumulate):
    """One column of four packed tiles (from a[a0..a3], rows[i] rows each) in one chain per
    output: the tiles' 6 weights of step k as one vector (2 lanes spare), times b[b_off +
    k*ldb]; each lane's sum stored at c[ci + lane*ldc] (or added to it, one rounding)."""
    sig = types.void(a, types.int64, types.int64, types.int64, types.int64, b, types.int64, types.int64,
                     c, types.int64, types.int64, types.int64, types.int64, types.int64, types.int64,
                     rows, types.int64)

    def codegen(context, builder, sig, args):
        a_arr, b_arr, b_off, ldb, c_arr, ldc, kc, rows_arr, acc = (args[0], args[5], args[6], args[7],
                                                                   args[8], args[13], args[14], args[15],
                                                                   args[16])
        aps = [data_pointer(context, builder, sig.args[0], a_arr, off) for off in args[1:5]]
        bp = data_pointer(context, builder, sig.args[5], b_arr, b_off)
        rows = context.make_array(sig.args[15])(context, builder, rows_arr).data
        zero = ir.Constant(_V8, [0.0] * 8)
        sums = [cgutils.alloca_once_value(builder, zero) for _ in range(4)]
        fma = _fma(builder, _V8)
        with cgutils.for_range(builder, kc) as loop:
            k = loop.index
            bv = splat(builder, builder.load(builder.gep(bp, [builder.mul(k, ldb)])), _V8)
            for i, ap in enumerate(aps):
                wv = builder.load(builder.bitcast(builder.gep(ap, [builder.mul(k, ir.Constant(I64, MR))]),
                                                  _V8.as_pointer()), align=4)
                builder.store(builder.call(fma, [wv, bv, builder.load(sums[i])]), sums[i])
        adding = builder.icmp_signed("!=", acc, ir.Constant(I64, 0))
        for i in range(4):
            cp = data_pointer(context, builder, sig.args[8], c_arr, args[9 + i])
            n = builder.load(builder.gep(rows, [ir.Constant(I64, i)]))
            v = builder.load(sums[i])
            for lane in range(MR):
                with builder.if_then(builder.icmp_signed(">", n, ir.Constant(I64, lane))):
                    ptr = builder.gep(cp, [builder.mul(ir.Constant(I64, lane), ldc)])
                    old = builder.select(adding, builder.load(ptr), ir.Constant(ir.FloatType(), 0.0))
                    builder.store(builder.fadd(old, builder.extract_element(v, ir.Constant(I32, lane))), ptr)
        return context.get_dummy_value()

    return sig, codegen


@nb.njit(cache=True, nogil=True)
def _narrow(ap, a_off, M, K, b, b_off, ldb, c, c_off, ldc, N, t0, t1):
    # fewer than 8 columns: no full 8-pixel panel, so every output is one chain; a column of
    # four tiles at a time, the weights read once per column (a GEMV for N = 1)
    rows = np.zeros(4, np.int64)
    offs = np.zeros(4, np.int64)
    cs = np.zeros(4, np.int64)
    k0 = 0
    while k0 < K:
        kc = k_block(K - k0, GEMM_Q, UNROLL_M)
        acc = 1 if k0 > 0 else 0
        for g in range(t0, t1, 4):
            for i in range(4):
                t = min(g + i, t1 - 1)  # a missing tile repeats the last one, storing nothing
                r0, n, _ = row_tile(M, t)
                rows[i] = n if g + i < t1 else 0
                offs[i] = a_off + t * K * MR + k0 * MR
                cs[i] = c_off + r0 * ldc
            for j in range(N):
                _column4(ap, offs[0], offs[1], offs[2], offs[3], b, b_off + k0 * ldb + j, ldb, c,
                         cs[0] + j, cs[1] + j, cs[2] + j, cs[3] + j, ldc, kc, rows, acc)
        k0 += kc


@nb.njit(cache=True, nogil=True, inline="always")
def tile_count(M):
    """Packed tiles of a call of M channels: two per 12-channel chunk, then 4, 4, the rest."""
    rest = M % 12
    return 2 * (M // 12) + (rest > 0) + (rest > 4) + (rest > 8)


@nb.njit(cache=True, nogil=True, inline="always")
def row_tile(M, t):
    """(first row, rows, kind) of tile t of a call of M channels."""
    n12 = M // 12
    if t < 2 * n12:
        return 6 * t, 6, LEFT if t % 2 == 0 else RIGHT
    i = t - 2 * n12
    return 12 * n12 + 4 * i, min(4, M - 12 * n12 - 4 * i), REST0 + i


@nb.njit(cache=True, nogil=True, inline="always")
def two_chains(kind, rest, first_block, panel, panels):
    """Whether OpenBLAS sums tile ``kind`` over full 8-pixel panel ``panel`` of a pixel block
    of ``panels`` full 8s in two chains (``rest`` = M % 12; see the module's docstring)."""
    if kind == LEFT:
        return panels >= 2 and (panel == 0 or (panel == panels - 1 and panels % 2 == 0))
    if kind == RIGHT:
        return panels >= 2 and panel == panels - 1 and panels % 2 == 1
    if kind == REST0:
        return rest >= 4 if first_block else 4 <= rest < 8
    if kind == REST1:
        return first_block and rest >= 8
    return False


@nb.njit(cache=True, nogil=True)
def gemm(ap, a_off, M, N, K, b, b_off, ldb, c, c_off, ldc, t0, t1):
    """Tiles [t0, t1) (:func:`tile_count`) of the call c[c_off:] (M x N, rows ldc apart) =
    A (M x K, packed from ap[a_off]) @ b[b_off:] (K x N, rows ldb apart), with the bits
    OpenBLAS's call of that shape gives."""
    tiles(ap, a_off, M, N, K, b, b_off, ldb, c, c_off, ldc, t0, t1, WIDE_HOST)


@nb.njit(cache=True, nogil=True, inline="always")
def tiles(ap, a_off, M, N, K, b, b_off, ldb, c, c_off, ldc, t0, t1, wide):
    """:func:`gemm`, with its one-chain runs of 4 panels in the wide tile when ``wide`` (the
    same bits either way; an argument so that any machine can test both, inlined so that
    :func:`gemm` compiles only the branch its machine takes)."""
    if N < 8:
        _narrow(ap, a_off, M, K, b, b_off, ldb, c, c_off, ldc, N, t0, t1)
        return
    rest = M % 12
    k0 = 0
    while k0 < K:
        kc = k_block(K - k0, GEMM_Q, UNROLL_M)
        acc = 1 if k0 > 0 else 0
        js = 0
        while js < N:
            ml = k_block(N - js, GEMM_P, UNROLL_M)  # the driver cuts pixels as it cuts K
            panels = ml // 8
            # the block's columns in runs of CHUNK panels, each run's K block staying in L2
            # while every tile passes over it
            for q0 in range(0, max(panels, 1), CHUNK):
                q1 = min(panels, q0 + CHUNK)
                tail = ml - 8 * panels if q1 == panels else 0
                for t in range(t0, t1):
                    r0, rows, kind = row_tile(M, t)
                    a_t = a_off + t * K * MR + k0 * MR
                    b_t = b_off + k0 * ldb + js
                    c_t = c_off + r0 * ldc + js
                    p = q0
                    while p < q1:
                        if two_chains(kind, rest, js == 0, p, panels):
                            _tile2(ap, a_t, b, b_t + 8 * p, ldb, c, c_t + 8 * p, ldc, kc, rows, acc)
                            p += 1
                        elif wide and p + 3 < q1 and not two_chains(kind, rest, js == 0, p + 1, panels) \
                                and not two_chains(kind, rest, js == 0, p + 2, panels) \
                                and not two_chains(kind, rest, js == 0, p + 3, panels):
                            _tile1_wide(ap, a_t, b, b_t + 8 * p, ldb, c, c_t + 8 * p, ldc, kc, rows, acc)
                            p += 4
                        elif p + 1 < q1 and not two_chains(kind, rest, js == 0, p + 1, panels):
                            _tile1(ap, a_t, b, b_t + 8 * p, ldb, c, c_t + 8 * p, ldc, kc, rows, 16, acc)
                            p += 2
                        else:
                            _tile1(ap, a_t, b, b_t + 8 * p, ldb, c, c_t + 8 * p, ldc, kc, rows, 8, acc)
                            p += 1
                if tail:
                    # the last 1-7 columns, one chain each as in a partial tile, a column of
                    # four tiles at a time: a 16-column tile would do its 12 vector FMAs a step
                    # for them (a 7x7 map's 49th column cost a third of the call)
                    rows4 = np.zeros(4, np.int64)
                    offs = np.zeros(4, np.int64)
                    cs = np.zeros(4, np.int64)
                    for g in range(t0, t1, 4):
                        for i in range(4):
                            t = min(g + i, t1 - 1)  # a missing tile repeats the last, storing nothing
                            r0, n, _ = row_tile(M, t)
                            rows4[i] = n if g + i < t1 else 0
                            offs[i] = a_off + t * K * MR + k0 * MR
                            cs[i] = c_off + r0 * ldc + js + 8 * panels
                        for j in range(tail):
                            _column4(ap, offs[0], offs[1], offs[2], offs[3], b,
                                     b_off + k0 * ldb + js + 8 * panels + j, ldb, c, cs[0] + j,
                                     cs[1] + j, cs[2] + j, cs[3] + j, ldc, kc, rows4, acc)
            js += ml
        k0 += kc


def pack_weights(wg: np.ndarray, block: int | None = None) -> np.ndarray:
    """(G, og, k) weights -> flat tiles for :func:`gemm`: each group's rows in blocks of
    ``block`` (the calls' channels; default og), each block in :func:`tile_count` tiles of
    MR rows (zero rows past a tile's end), k-major, then SPARE zeros; see :func:`block_offset`."""
    G, og, k = wg.shape
    block = og if block is None else block
    blocks, tiles = -(-og // block), tile_count(block)
    flat = np.zeros(G * blocks * tiles * k * MR + SPARE, F32)
    out = flat[:-SPARE].reshape(G, blocks, tiles, k, MR)
    for i in range(blocks):
        rows = wg[:, i * block:(i + 1) * block]
        for t in range(tile_count(rows.shape[1])):
            r0, n, _ = row_tile(rows.shape[1], t)
            out[:, i, t, :, :n] = rows[:, r0:r0 + n].transpose(0, 2, 1)
    return flat


@nb.njit(cache=True, nogil=True, inline="always")
def block_offset(group, row, og, block, k):
    """Where the block of rows from ``row`` (a multiple of ``block``) of group ``group``
    starts in :func:`pack_weights`'s tiles."""
    blocks = (og + block - 1) // block
    return (group * blocks + row // block) * tile_count(block) * k * MR


_state: dict = {}
_lock = threading.Lock()


def _check() -> bool:
    blas_gemm = blas.gemm()
    if not USABLE or blas_gemm is None:
        return False
    rng = np.random.default_rng(11)
    # each chunk kind and remainder, pixel blocks of every kind, K blocks cut or not, ldb > N,
    # and small calls (the Haswell kernels have no small-matrix path with another order)
    shapes = [(24, 700, 300, 700), (16, 1000, 64, 1030), (13, 777, 333, 777), (5, 900, 700, 900),
              (100, 640, 90, 650), (7, 321, 50, 321), (12, 641, 641, 641), (20, 17, 4000, 17),
              (9, 50, 650, 64), (22, 1300, 24, 1300), (27, 655, 40, 700), (8, 20, 30, 20)]
    with blas.single_threaded():
        for M, N, K, ldb in shapes:
            a = rng.standard_normal((1, M, K), dtype=F32)
            b = rng.standard_normal((K, ldb), dtype=F32)
            ref = np.empty((M, N), F32)
            blas_gemm(101, 111, 111, M, N, K, F32(1.0), a.ctypes.data, K, b.ctypes.data, ldb, F32(0.0),
                      ref.ctypes.data, N)
            got = np.full((M, N), np.nan, F32)
            gemm(pack_weights(a), 0, M, N, K, b.reshape(-1), 0, ldb, got.reshape(-1), 0, N, 0, tile_count(M))
            if not np.array_equal(got.view(np.uint32), ref.view(np.uint32)):
                return False
    return True


def reproduces() -> bool:
    """Whether :func:`gemm` gives this machine's OpenBLAS bits (checked once per process)."""
    if "ok" not in _state:
        with _lock:
            if "ok" not in _state:
                _state["ok"] = _check()
    return _state["ok"]


def enabled() -> bool:
    """Whether the convolutions may take :func:`gemm`: it reproduces the BLAS here and
    ``CAFFE_SURGEON_OWN_GEMM=0`` (our kernels off; read at the first call) is not set."""
    if "on" not in _state:
        _state["on"] = os.environ.get("CAFFE_SURGEON_OWN_GEMM", "1") != "0" and reproduces()
    return _state["on"]


def worth_it(M: int, N: int, K: int, ldb: int) -> bool:
    """Whether :func:`gemm` beats OpenBLAS for one call of this shape. Measured single-threaded
    on a Zen 3 (``benchmarks/gemm_shapes.py``): 1.1-1.4x on K up to 32 (OpenBLAS's per-call
    packing dominates), 1.0-1.35x on K 64 with rows of up to 1024 columns, and 1.1-2.4x on
    few channels over a small map (an image of 14x14 or less: 24 channels with K up to 432,
    64 with K up to 144, 32 with K up to 288 on 10x10 or less), where OpenBLAS packs the
    weights again for little work; 0.7-0.95x on other deep calls and on longer rows (its
    packed copy of the columns is read faster than ours in place). Under 8 columns (a
    classifier at batch 1) ours reads each weight once per column, where OpenBLAS packs them
    all per call: 2.4-5x.

    On an AVX-512 machine whose OpenBLAS runs these Haswell kernels (Zen 5), with the wide
    tile (:func:`_tile1_wide`): 1.26-1.99x on every shape of the grid and of the models'
    layers (16 to 1280 channels, K 16 to 4608, 49 to 43264 columns)."""
    if N < 8:
        return True
    if N < 16:
        return False
    if WIDE_HOST:
        return True
    if K <= 32 or (K <= 64 and ldb <= 1024):
        return True
    return N <= 200 and ((M <= 24 and K <= 432) or (M <= 64 and K <= 144)
                         or (M <= 32 and K <= 288 and N <= 100))
