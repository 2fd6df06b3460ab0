"""Our own GEMM for the thin convolutions, bit-equal to the BLAS it stands in for.

OpenBLAS packs both operands on every call. For a 1x1 convolution with 16-32
input channels, or 16-32 output channels, that packing costs as much as the
multiply (MobileNet v2's 16 -> 96 expansion at 112x112 ran at 42 GFLOP/s). Here
the weights are packed once per layer (:func:`pack_weights`: panels of ``MR``
rows, k-major) and the columns are read in place, ``NR`` at a time.

The micro-kernel is LLVM vector IR emitted through ``numba.extending.intrinsic``
(plain Numba leaves a 12x16 register block unvectorised): ``MR`` accumulators of
``<16 x float>``, one ``llvm.fma`` per row and k step with the weight splatted,
which LLVM turns into 12 zmm FMAs with broadcast operands per k step. It runs on
AVX-512 machines only (:data:`USABLE`). No compiled extension of our own: it is JIT
like the rest.

Every output sums its products in k order with fused multiply-adds, in K blocks
cut as OpenBLAS cuts them (``GEMM_Q``, rounded to its ``GEMM_UNROLL_M``), the
blocks added in order: the same float operations as OpenBLAS's own kernels, so
the results are equal bit for bit. :func:`matches_blas` checks that on this
machine (the block sizes differ between OpenBLAS's CPU kernels) and the
convolutions use this kernel only where it holds, and only for shapes where it
is faster (:func:`worth_it`): which GEMM ran never changes a result.
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
from .simd import I32 as _I32, I64 as _I64, LANES, VEC as _VEC, data_pointer, load, splat

F32 = np.float32
#: columns per micro-tile: one <16 x float>, a zmm
NR = LANES
#: OpenBLAS uses its small-matrix kernels (another summation order) at or below this many
#: multiply-adds per call (SkylakeX: 100^3); we stay above it
SMALL_MNK = 1_000_000


def _target_features() -> str:
    from numba.core import config
    if config.CPU_FEATURES:
        return config.CPU_FEATURES
    if config.CPU_NAME and config.CPU_NAME != "host":
        return ""  # a named target: assume no AVX-512 (the kernel then stays off)
    import llvmlite.binding as ll
    return ll.get_host_cpu_features().flatten()


#: the CPU features Numba compiles for (``+avx2,+fma,...``): which kernels this machine runs
FEATURES = _target_features()
#: AVX-512 with FMA: where the kernel was measured faster than OpenBLAS (compiled for AVX2,
#: as a 6x16 block of ymm pairs, it was slower on 5 of the 9 layer shapes worth_it picks, so
#: elsewhere the convolutions keep OpenBLAS; without FMA it would not give OpenBLAS's bits)
USABLE = "+avx512f" in FEATURES and "+fma" in FEATURES
#: rows per micro-tile: 12 zmm accumulators of AVX-512's 32 registers
MR = 12

def make_tile(mr: int, masked_loads: bool = False, zero_first: bool = False):
    """The micro-tile as a Numba intrinsic, ``tile(a, a_off, b, b_off, ldb, c, c_off, ldc, kc,
    rows, cols, accumulate)``: c[c_off + i*ldc + j] (+)= sum_k a[a_off + k*mr + i] *
    b[b_off + k*ldb + j] for i < rows (<= mr), j < cols (<= NR), k < kc: fused multiply-adds
    in k order from 0, ``mr`` accumulators of ``<NR x float>``; ``accumulate`` adds the
    block's sums to what c holds (one rounding), else stores them. ``masked_loads``: a
    partial tile reads only its ``cols`` columns (else whole vectors, which must lie inside
    b); ``zero_first``: a stored block is added to +0.0, as OpenBLAS's kernels add it to a
    zeroed C (-0.0 comes out +0.0)."""
    @intrinsic
    def tile(typingctx, a, a_off, b, b_off, ldb, c, c_off, ldc, kc, rows, cols, accumulate):
        sig = types.void(a, types.int64, b, types.int64, types.int64, c, types.int64, types.int64,
                         types.int64, types.int64, types.int64, types.int64)

        def codegen(context, builder, sig, args):
            a_arr, a_off, b_arr, b_off, ldb, c_arr, c_off, ldc, kc, rows, cols, acc = args
            ap = data_pointer(context, builder, sig.args[0], a_arr, a_off)
            bp = data_pointer(context, builder, sig.args[2], b_arr, b_off)
            cp = data_pointer(context, builder, sig.args[5], c_arr, c_off)
            vptr = _VEC.as_pointer()
            zero = ir.Constant(_VEC, [0.0] * NR)
            # entry-block allocas: promoted to registers, one accumulator per row
            sums = [cgutils.alloca_once_value(builder, zero) for _ in range(mr)]
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3),
                                                 f"llvm.fma.v{NR}f32")
            step = ir.Constant(_I64, mr)
            mask_t = ir.VectorType(ir.IntType(1), NR)
            lanes = ir.Constant(ir.VectorType(_I64, NR), list(range(NR)))
            mask = builder.icmp_signed("<", lanes, splat(builder, cols, ir.VectorType(_I64, NR)))
            mload = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_VEC, [vptr, _I32, mask_t, _VEC]),
                f"llvm.masked.load.v{NR}f32.p0")
            mstore = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [_VEC, vptr, _I32, mask_t]),
                f"llvm.masked.store.v{NR}f32.p0")
            full = builder.icmp_signed("==", cols, ir.Constant(_I64, NR))
            align = ir.Constant(_I32, 4)

            def steps(masked):
                with cgutils.for_range(builder, kc) as loop:
                    k = loop.index
                    bptr = builder.gep(bp, [builder.mul(k, ldb)])
                    bv = (builder.call(mload, [builder.bitcast(bptr, vptr), align, mask, zero]) if masked
                          else load(builder, bptr))
                    arow = builder.gep(ap, [builder.mul(k, step)])
                    for i in range(mr):
                        av = splat(builder, builder.load(builder.gep(arow, [ir.Constant(_I64, i)])))
                        builder.store(builder.call(fma, [av, bv, builder.load(sums[i])]), sums[i])

            if masked_loads:  # the loop twice: its loads never test the mask
                with builder.if_else(full) as (whole, part):
                    with whole:
                        steps(False)
                    with part:
                        steps(True)
            else:
                steps(False)
            adding = builder.icmp_signed("!=", acc, ir.Constant(_I64, 0))
            for i in range(mr):
                with builder.if_then(builder.icmp_signed(">", rows, ir.Constant(_I64, i))):
                    ptr = builder.bitcast(builder.gep(cp, [builder.mul(ir.Constant(_I64, i), ldc)]), vptr)
                    v = builder.load(sums[i])
                    with builder.if_else(full) as (whole, part):
                        with whole:
                            if zero_first:
                                # a branch, not a select of a load: a stored tile never reads C
                                # (a cold C would be fetched from memory for nothing)
                                with builder.if_else(adding) as (add, put):
                                    with add:
                                        old = builder.load(ptr, align=4)
                                        builder.store(builder.fadd(old, v), ptr, align=4)
                                    with put:
                                        builder.store(builder.fadd(zero, v), ptr, align=4)
                            else:
                                with builder.if_else(adding) as (add, put):
                                    with add:
                                        old = builder.load(ptr, align=4)
                                        builder.store(builder.fadd(old, v), ptr, align=4)
                                    with put:
                                        builder.store(v, ptr, align=4)
                        with part:
                            old = builder.call(mload, [ptr, align, mask, zero])
                            if zero_first:
                                value = builder.fadd(builder.select(adding, old, zero), v)
                            else:
                                value = builder.select(adding, builder.fadd(old, v), v)
                            builder.call(mstore, [value, ptr, align, mask])
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile = make_tile(MR)


@nb.njit(cache=True, nogil=True, inline="always")
def k_block(rest, q, u):
    """The next K block OpenBLAS takes with ``rest`` left (its level-3 driver's rule)."""
    if rest >= 2 * q:
        return q
    if rest > q:
        return ((rest // 2 + u - 1) // u) * u
    return rest


@nb.njit(cache=True, nogil=True)
def gemm(ap, a_off, M, N, K, b, b_off, ldb, c, c_off, ldc, q, u):
    """c[c_off:] (M x N, rows ldc apart) = A (M x K, packed panels from ap[a_off]) @
    b[b_off:] (K x N, rows ldb apart), K cut in blocks as OpenBLAS cuts it (``q``, ``u``)."""
    panels = (M + MR - 1) // MR
    if K * N <= 65536:
        # the columns fit in L2: each weight panel is read once, for every micro-tile of columns
        k0 = 0
        while k0 < K:
            kc = k_block(K - k0, q, u)
            for p in range(panels):
                for n0 in range(0, N, NR):
                    _tile(ap, a_off + p * K * MR + k0 * MR, b, b_off + k0 * ldb + n0, ldb, c,
                          c_off + p * MR * ldc + n0, ldc, kc, min(MR, M - p * MR), min(NR, N - n0),
                          1 if k0 > 0 else 0)
            k0 += kc
        return
    # columns in blocks whose outputs stay in L2 while every panel passes over them
    nb_cols = max(NR, ((131072 // max(M, 1)) // NR) * NR)
    for n_start in range(0, N, nb_cols):
        n_end = min(N, n_start + nb_cols)
        k0 = 0
        while k0 < K:
            kc = k_block(K - k0, q, u)
            for p in range(panels):
                for n0 in range(n_start, n_end, NR):
                    _tile(ap, a_off + p * K * MR + k0 * MR, b, b_off + k0 * ldb + n0, ldb, c,
                          c_off + p * MR * ldc + n0, ldc, kc, min(MR, M - p * MR), min(NR, n_end - n0),
                          1 if k0 > 0 else 0)
            k0 += kc


def pack_weights(wg: np.ndarray, block: int | None = None, mr: int = MR) -> np.ndarray:
    """(G, og, k) weights -> flat panels for :func:`gemm` (``mr`` = MR) or
    :func:`.channel_microkernel.gemm` (``mr`` = its panel rows). Each group's rows are cut in
    blocks of ``block`` (the convolution's channel blocks; default all of og), each block in
    panels of ``mr`` rows (zero rows past its end), k-major: see :func:`block_offset`."""
    G, og, k = wg.shape
    block = og if block is None else block
    blocks, panels = -(-og // block), -(-block // mr)
    out = np.zeros((G, blocks, panels * mr, k), F32)
    for i in range(blocks):
        rows = wg[:, i * block:(i + 1) * block]
        out[:, i, :rows.shape[1]] = rows
    return np.ascontiguousarray(out.reshape(G, blocks, panels, mr, k).transpose(0, 1, 2, 4, 3)).reshape(-1)


@nb.njit(cache=True, nogil=True, inline="always")
def block_offset(group, row, og, block, k, mr=MR):
    """Where block ``row // block`` of group ``group`` starts in :func:`pack_weights`'s panels
    of ``mr`` rows (``row`` a multiple of ``block``)."""
    blocks = (og + block - 1) // block
    return ((group * blocks + row // block) * ((block + mr - 1) // mr)) * k * mr


_state: dict = {}
_lock = threading.Lock()


def _blas_blocking() -> tuple[int, int] | None:
    """OpenBLAS's K blocking (GEMM_Q, GEMM_UNROLL_M) on this machine, single-threaded as the
    convolutions call it (its threaded driver cuts K otherwise), found by reproducing its
    results bit for bit; None when no blocking (or no FMA) reproduces them."""
    blas_gemm = blas.gemm()
    if not USABLE or blas_gemm is None:
        return None
    with blas.single_threaded():
        return _search(blas_gemm)


def _search(blas_gemm):
    rng = np.random.default_rng(7)
    # M*N*K above the small-matrix path; K values whose cuts tell the candidates apart
    cases = []
    for K in (300, 700, 1000, 1300, 2304):
        M, N = 24, max(NR + 3, SMALL_MNK // (24 * K) + 40)
        cases.append((rng.standard_normal((1, M, K), dtype=F32), rng.standard_normal((K, N), dtype=F32)))
    refs = []
    for a, b in cases:
        _, M, K = a.shape
        N = b.shape[1]
        ref = np.empty((M, N), F32)
        blas_gemm(101, 111, 111, M, N, K, F32(1.0), a.ctypes.data, K, b.ctypes.data, N, F32(0.0),
                  ref.ctypes.data, N)
        refs.append(ref)
    packed = [pack_weights(a) for a, _ in cases]
    for q in (448, 384, 320, 256, 512, 640, 768, 192, 224, 240, 288, 352, 416, 480, 576, 1024):
        for u in (16, 8, 32, 4, 24, 6, 2, 1):
            if all(_agrees(ap, a, b, ref, q, u) for ap, (a, b), ref in zip(packed, cases, refs)):
                return q, u
    return None


def _agrees(ap, a, b, ref, q, u) -> bool:
    _, M, K = a.shape
    N = b.shape[1]
    got = np.empty((M, N), F32)
    gemm(ap, 0, M, N, K, b.reshape(-1), 0, N, got.reshape(-1), 0, N, q, u)
    return bool(np.array_equal(got.view(np.uint32), ref.view(np.uint32)))


def _reproduced() -> tuple[int, int] | None:
    """:func:`_blas_blocking`, found once per process."""
    state = _state
    if "reproduced" not in state:
        with _lock:
            if "reproduced" not in state:
                state["reproduced"] = _blas_blocking()
    return state["reproduced"]


def blocking() -> tuple[int, int] | None:
    """(q, u) for :func:`gemm` when it reproduces the BLAS here, else None (then the
    convolutions keep the BLAS). Found once per process, as is ``CAFFE_SURGEON_OWN_GEMM=0``
    (our kernels off), read at the first call: every convolution asks."""
    state = _state
    if "blocking" not in state:
        off = os.environ.get("CAFFE_SURGEON_OWN_GEMM", "1") == "0"
        state["blocking"] = None if off else _reproduced()
    return state["blocking"]


def cuts_change_no_sum() -> bool:
    """Whether cutting a GEMM into calls along M or N leaves every output's bits alone: known
    where our kernel reproduces the BLAS (each output one chain per K block, wherever it lies).
    OpenBLAS's Haswell kernel (AVX2) sums some tiles in two chains (even and odd k), by where
    the tile lies in the call, so there a layer's cut must not depend on the thread count."""
    return _reproduced() is not None


def worth_it(M: int, N: int, K: int, ldb: int) -> bool:
    """Whether :func:`gemm` beats OpenBLAS for one call of this shape, the columns read in
    place ``ldb`` apart. Measured single-threaded on Sapphire Rapids (AVX-512),
    ``benchmarks/gemm_shapes.py``: 1.1-1.8x faster where OpenBLAS's packing dominates
    (K <= 32; M <= 32 on rows spanning up to about 1 MB, as a row tile's im2col block; M <=
    128 with K <= 64 on short rows), 0.25-1.0x elsewhere (long rows of columns read in place
    miss the TLB, wide M re-reads them, and OpenBLAS's packed copy avoids both)."""
    if M * N * K <= SMALL_MNK or N < NR:
        return False
    if K <= 32:
        return M <= 128 or (M <= 512 and 784 <= ldb <= 4096)
    if M <= 32:
        # K * ldb <= 2^18: the column rows span at most 1 MB (a row tile's whole im2col block)
        return (K * ldb <= 1 << 18 or (ldb <= 1024 and K <= 640)
                or (K <= 128 and ldb <= 4096))
    if M <= 128:
        return (K <= 64 and ldb <= 1024) or ldb <= 64
    return False
