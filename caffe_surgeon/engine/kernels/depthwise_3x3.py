"""3x3 stride-1 depthwise convolution (pad 1) on whole NCHW planes, no padded copy.

The most common depthwise layer (MobileNet v1/v2, every stride-1 block) keeps its map
size. Output pixel ``p`` of a plane (flattened ``y*W + x``) reads input pixel
``p + (i-1)*W + (j-1)`` for tap (i, j), so one pass over the flattened plane in whole
vectors reads every tap as one contiguous run: no phase copy, no copy-out (the
:mod:`.depthwise_planes` kernel's fill and copy are half its time on 28x28 maps). A tap
that falls in the padding (first or last row or column) is a masked-off lane of its
load: it reads nothing (so it cannot fault before the first plane or after the last)
and gives 0.0.

Same bits as the tap-skipping kernels of :mod:`.depthwise`: each output sums its nine
taps in order (i, then j) from +0.0, a multiply then an add per tap (never fused); a
padded tap adds ``0.0 * w``, a zero, which leaves any sum that starts at +0.0 unchanged
(such a sum is never -0.0) when the weights are finite, which :func:`depthwise_3x3`
checks. The epilogue then runs on the plane while it is in cache, as
:func:`.epilogue.apply` would.
"""
from __future__ import annotations

import functools

import llvmlite.binding as llvm
import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import parallel, simd
from .depthwise_planes import CHUNKS_PER_THREAD, MIN_PARALLEL_MACS
from .epilogue import _stages_row

F32 = np.float32
LANES = simd.LANES
MASK = ir.VectorType(ir.IntType(1), LANES)
BYTES = ir.VectorType(ir.IntType(8), LANES)
INDEX = ir.VectorType(simd.I64, LANES)
#: LLVM 17 on has opaque pointers only, which the masked intrinsics' names reflect
_POINTER = "p0" if llvm.llvm_version_info[0] >= 17 else "p0v16f32"


def _masked_load(builder, ptr, mask):
    fnty = ir.FunctionType(simd.VEC, [simd.VEC.as_pointer(), simd.I32, MASK, simd.VEC])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.load.v16f32.{_POINTER}")
    return builder.call(fn, [builder.bitcast(ptr, simd.VEC.as_pointer()), ir.Constant(simd.I32, 4),
                             mask, ir.Constant(simd.VEC, [0.0] * LANES)])


def _masked_store(builder, value, ptr, mask):
    fnty = ir.FunctionType(ir.VoidType(), [simd.VEC, simd.VEC.as_pointer(), simd.I32, MASK])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.store.v16f32.{_POINTER}")
    builder.call(fn, [value, builder.bitcast(ptr, simd.VEC.as_pointer()), ir.Constant(simd.I32, 4), mask])


@intrinsic
def _plane3x3(typingctx, x, at, width, edges, stride, pixels, w0, w1, w2, w3, w4, w5, w6, w7, w8,
              out, dst):
    """out[dst + p] = ((+0.0 + x[at + p - W - 1]*w0) + x[at + p - W]*w1) + ... + x[at + p + W + 1]*w8
    for p in [0, pixels), a tap whose ``edges`` flag is 0 (see :func:`edge_masks`) adding 0.0."""
    sig = types.void(x, types.int64, types.int64, edges, types.int64, types.int64,
                     *([types.float32] * 9), out, types.int64)

    def codegen(context, builder, sig, args):
        x_arr, at, width, edges_arr, stride, pixels = args[:6]
        weights = [simd.splat(builder, w) for w in args[6:15]]
        out_arr, dst = args[15], args[16]
        src = context.make_array(sig.args[0])(context, builder, x_arr).data
        flags = context.make_array(sig.args[3])(context, builder, edges_arr).data
        dest = context.make_array(sig.args[15])(context, builder, out_arr).data
        lanes = ir.Constant(INDEX, list(range(LANES)))
        zero8 = ir.Constant(BYTES, [0] * LANES)
        end = simd.splat(builder, pixels, INDEX)
        step = ir.Constant(simd.I64, LANES)
        with cgutils.for_range_slice(builder, ir.Constant(simd.I64, 0), pixels, step,
                                     intp=simd.I64) as (p, _):
            inside = builder.icmp_signed("<", builder.add(simd.splat(builder, p, INDEX), lanes), end)
            # top, bottom, left, right: whether the row above / below, the column left / right exist
            edge = []
            for r in range(4):
                ptr = builder.gep(flags, [builder.add(builder.mul(ir.Constant(simd.I64, r), stride), p)])
                bits = builder.load(builder.bitcast(ptr, BYTES.as_pointer()), align=1)
                edge.append(builder.and_(inside, builder.icmp_unsigned("!=", bits, zero8)))
            rows = (edge[0], inside, edge[1])
            total = ir.Constant(simd.VEC, [0.0] * LANES)
            for i in range(3):
                for j in range(3):
                    mask = rows[i] if j == 1 else builder.and_(rows[i], edge[2 if j == 0 else 3])
                    off = builder.add(builder.add(at, p),
                                      builder.add(builder.mul(ir.Constant(simd.I64, i - 1), width),
                                                  ir.Constant(simd.I64, j - 1)))
                    v = _masked_load(builder, builder.gep(src, [off]), mask)
                    total = builder.fadd(total, builder.fmul(v, weights[3 * i + j]))
            _masked_store(builder, total, builder.gep(dest, [builder.add(dst, p)]), inside)
        return context.get_dummy_value()

    return sig, codegen


@functools.lru_cache(maxsize=64)
def edge_masks(H: int, W: int) -> np.ndarray:
    """(4, H*W + LANES) uint8 for a plane of H x W: whether each pixel has a row above, a row
    below, a column left and a column right (LANES spare zeros: whole-vector loads);
    shared, so never written to."""
    p = np.arange(H * W)
    y, x = np.divmod(p, W)
    masks = np.zeros((4, H * W + LANES), np.uint8)
    masks[0, :H * W] = y > 0
    masks[1, :H * W] = y < H - 1
    masks[2, :H * W] = x > 0
    masks[3, :H * W] = x < W - 1
    masks.setflags(write=False)
    return masks


def _depthwise_3x3(x, w, mult, edges, out, codes, vecs, params):
    # x (N, C, H, W), w (C*mult, 3, 3), out (N, C*mult, H*W); tile = one output plane
    N, C, H, W = x.shape
    O = w.shape[0]
    P = H * W
    xf = x.reshape(-1)
    of = out.reshape(-1)
    flags = edges.reshape(-1)
    stride = edges.shape[1]
    for t in nb.prange(N * O):
        n = t // O
        o = t % O
        _plane3x3(xf, (n * C + o // mult) * P, W, flags, stride, P,
                  w[o, 0, 0], w[o, 0, 1], w[o, 0, 2], w[o, 1, 0], w[o, 1, 1], w[o, 1, 2],
                  w[o, 2, 0], w[o, 2, 1], w[o, 2, 2], of, t * P)
        _stages_row(out[n, o], o, codes, vecs, params)


DEPTHWISE_3X3_K = parallel.dual(_depthwise_3x3)


def applies(w_shape, stride, pad, dilation) -> bool:
    """Whether :func:`depthwise_3x3` takes a depthwise layer of this geometry."""
    return tuple(w_shape[2:]) == (3, 3) and tuple(stride) == (1, 1) and tuple(pad) == (1, 1) \
        and tuple(dilation) == (1, 1)


def depthwise_3x3(x, w, arrays) -> np.ndarray | None:
    """x (N, C, H, W) float32 C-contiguous, w (C*m, 1, 3, 3) -> (N, C*m, H, W) (stride 1,
    pad 1) with the epilogue ``arrays`` (:meth:`.epilogue.Epilogue.arrays`) applied; None
    when a weight is not finite (a padded tap would then add NaN where the tap-skipping
    kernels add nothing)."""
    if not np.isfinite(w).all():
        return None
    N, C, H, W = x.shape
    O = w.shape[0]
    out = np.empty((N, O, H, W), F32)
    kernel = parallel.pick(DEPTHWISE_3X3_K, N * O * H * W * 9, MIN_PARALLEL_MACS)
    args = (x, np.ascontiguousarray(w[:, 0], F32), O // C, edge_masks(H, W), out.reshape(N, O, H * W)) \
        + tuple(arrays)
    if kernel is DEPTHWISE_3X3_K[1] or not CHUNKS_PER_THREAD:
        kernel(*args)
        return out
    # chunks of planes handed out as threads come free (see depthwise_planes)
    threads = max(1, parallel.threads())
    before = nb.set_parallel_chunksize(max(1, -(-N * O // (CHUNKS_PER_THREAD * threads))))
    try:
        kernel(*args)
    finally:
        nb.set_parallel_chunksize(before)
    return out
