"""3x3 depthwise convolution (pad 1) in NCHW without a padded copy: stride 1 on whole
planes, stride 2 by rows, in zmm vectors on AVX-512 machines (:data:`USABLE`), in ymm
vectors on AVX2 ones (:data:`USABLE_YMM`: :func:`_plane3x3_ymm`, :func:`_row3x3_s2_ymm`);
elsewhere the plane kernel of :mod:`.depthwise_planes` runs.

Stride 1 keeps the map size (MobileNet v1/v2's every stride-1 block). Output pixel ``p``
of a plane (flattened ``y*W + x``) reads input pixel ``p + (i-1)*W + (j-1)`` for tap
(i, j), so one pass over the flattened plane in whole vectors reads every tap as one
contiguous run: no phase copy, no copy-out (the plane kernel's fill and copy are half its
time on 28x28 maps). A tap that falls in the padding (first or last row or column) is a
masked-off lane of its load: it reads nothing (so it cannot fault before the first plane
or after the last) and gives 0.0.

Stride 2 reads each input row as whole vectors from column ``2q - 1`` and splits them
into even and odd columns by shuffles (the plane kernel copies the input into phases for
that); rows and columns outside the map are masked off the same way.

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

from . import microkernel, parallel, simd
from .epilogue import _stages_row

F32 = np.float32
LANES = simd.LANES
MASK = ir.VectorType(ir.IntType(1), LANES)
BYTES = ir.VectorType(ir.IntType(8), LANES)
INDEX = ir.VectorType(simd.I64, LANES)
#: AVX-512, whose masked loads and stores are plain ones. Compiled for AVX2 (vmaskmovps,
#: ymm pairs, cross-lane shuffles) these kernels ran 0.7-0.8x the plane kernel on 56x56 and
#: 112x112 maps, and AMD's masked stores are microcoded: there the ymm kernels run
USABLE = microkernel.USABLE
#: AVX2 (Zen 3, no AVX-512): ymm vectors, with masked loads and stores only where a plain
#: one could leave the input or the plane; the same sums. On MobileNet v2's shapes, against
#: the plane kernel: stride 1 1.3-2.4x, stride 2 1.5-2.2x (``benchmarks/depthwise_3x3.py``)
USABLE_YMM = "+avx2" in microkernel.FEATURES
#: lanes of the kernels this machine runs: zmm where AVX-512 has them, else ymm
MACHINE_LANES = LANES if USABLE else 8
#: work (multiply-adds, plus the input floats at stride 2) from which a layer is shared among
#: threads: at 2 threads MobileNet v2's 960-channel 7x7 layer (0.42M) took 0.035 ms against
#: 0.046 on one, its 384-channel 28x28 stride-2 layer 0.055 against 0.088
MIN_PARALLEL_MACS = 300_000
#: LLVM 17 on has opaque pointers only, which the masked intrinsics' names reflect
_OPAQUE = llvm.llvm_version_info[0] >= 17


def _name(op, vec):
    return f"llvm.masked.{op}.v{vec.count}f32." + ("p0" if _OPAQUE else f"p0v{vec.count}f32")


def _masked_load(builder, ptr, mask, vec=simd.VEC):
    fnty = ir.FunctionType(vec, [vec.as_pointer(), simd.I32, mask.type, vec])
    fn = cgutils.get_or_insert_function(builder.module, fnty, _name("load", vec))
    return builder.call(fn, [builder.bitcast(ptr, vec.as_pointer()), ir.Constant(simd.I32, 4),
                             mask, ir.Constant(vec, [0.0] * vec.count)])


def _masked_store(builder, value, ptr, mask):
    vec = value.type
    fnty = ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), simd.I32, mask.type])
    fn = cgutils.get_or_insert_function(builder.module, fnty, _name("store", vec))
    builder.call(fn, [value, builder.bitcast(ptr, vec.as_pointer()), ir.Constant(simd.I32, 4), mask])


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


YMM = 8
_VEC_Y = ir.VectorType(ir.FloatType(), YMM)
_BYTES_Y = ir.VectorType(ir.IntType(8), YMM)
_INDEX_Y = ir.VectorType(simd.I64, YMM)


@intrinsic
def _plane3x3_ymm(typingctx, x, at, width, edges, stride, pixels, w0, w1, w2, w3, w4, w5, w6, w7, w8,
                  out, dst):
    """:func:`_plane3x3` in vectors of 8, with AVX2's masked loads and stores (slow on AMD)
    only where a load could leave ``x`` or a store the plane: a vector with no pixel on the
    plane's border (row 4 of :func:`edge_masks`) reads every tap with plain loads (they all
    lie inside the plane); one with a border pixel reads them plainly too and zeroes the
    padded taps' lanes with the edge masks (the values read there, from a neighbouring
    plane, never count); only the plane's last vector, when partial, and the vectors whose
    taps reach before x[0] or past its end mask their loads. Same sums in the same order."""
    sig = types.void(x, types.int64, types.int64, edges, types.int64, types.int64,
                     *([types.float32] * 9), out, types.int64)

    def codegen(context, builder, sig, args):
        x_arr, at, width, edges_arr, stride, pixels = args[:6]
        weights = [simd.splat(builder, w, _VEC_Y) for w in args[6:15]]
        out_arr, dst = args[15], args[16]
        x_struct = context.make_array(sig.args[0])(context, builder, x_arr)
        src, size = x_struct.data, x_struct.nitems
        flags = context.make_array(sig.args[3])(context, builder, edges_arr).data
        dest = context.make_array(sig.args[15])(context, builder, out_arr).data
        i64 = simd.I64
        lanes = ir.Constant(_INDEX_Y, list(range(YMM)))
        zero8 = ir.Constant(_BYTES_Y, [0] * YMM)
        zero = ir.Constant(_VEC_Y, [0.0] * YMM)
        end = simd.splat(builder, pixels, _INDEX_Y)
        vptr = _VEC_Y.as_pointer()
        words = ir.VectorType(ir.IntType(32), YMM)
        reach = builder.add(width, ir.Constant(i64, 1))  # taps lie within W + 1 of the pixel

        def tap(i, j, p):
            off = builder.add(builder.add(at, p), builder.add(builder.mul(ir.Constant(i64, i - 1), width),
                                                             ir.Constant(i64, j - 1)))
            return builder.gep(src, [off])

        def flag_bytes(r, p):
            ptr = builder.gep(flags, [builder.add(builder.mul(ir.Constant(i64, r), stride), p)])
            return builder.load(builder.bitcast(ptr, _BYTES_Y.as_pointer()), align=1)

        def nine(p, load):
            total = zero
            for i in range(3):
                for j in range(3):
                    total = builder.fadd(total, builder.fmul(load(i, j, p), weights[3 * i + j]))
            return total

        with cgutils.for_range_slice(builder, ir.Constant(i64, 0), pixels, ir.Constant(i64, YMM),
                                     intp=i64) as (p, _):
            border = builder.gep(flags, [builder.add(builder.mul(ir.Constant(i64, 4), stride), p)])
            on_border = builder.load(builder.bitcast(border, ir.IntType(64).as_pointer()), align=1)
            whole = builder.icmp_signed("<=", builder.add(p, ir.Constant(i64, YMM)), pixels)
            first = builder.add(at, p)
            in_x = builder.and_(builder.icmp_signed(">=", builder.sub(first, reach), ir.Constant(i64, 0)),
                                builder.icmp_signed("<=", builder.add(builder.add(first, reach),
                                                                      ir.Constant(i64, YMM)), size))
            out_ptr = builder.bitcast(builder.gep(dest, [builder.add(dst, p)]), vptr)
            inner_only = builder.icmp_unsigned("==", on_border, ir.Constant(ir.IntType(64), 0))
            plain = builder.and_(whole, inner_only)
            with builder.if_else(plain) as (inner, other):
                with inner:
                    builder.store(nine(p, lambda i, j, p: builder.load(builder.bitcast(tap(i, j, p), vptr),
                                                                       align=4)), out_ptr, align=4)
                with other:
                    with builder.if_else(builder.and_(whole, in_x)) as (edge, outer):
                        with edge:
                            # 0 or all ones per lane (edge_masks holds 0 or 255)
                            m = [builder.sext(flag_bytes(r, p), words) for r in range(4)]
                            every = ir.Constant(words, [-1] * YMM)
                            rows = (m[0], every, m[1])

                            def masked(i, j, p):
                                mask = rows[i] if j == 1 else builder.and_(rows[i], m[2 if j == 0 else 3])
                                v = builder.load(builder.bitcast(tap(i, j, p), vptr), align=4)
                                return builder.bitcast(builder.and_(builder.bitcast(v, words), mask), _VEC_Y)

                            builder.store(nine(p, masked), out_ptr, align=4)
                        with outer:
                            inside = builder.icmp_signed("<", builder.add(simd.splat(builder, p, _INDEX_Y),
                                                                          lanes), end)
                            e = [builder.and_(inside, builder.icmp_unsigned("!=", flag_bytes(r, p), zero8))
                                 for r in range(4)]
                            rows_m = (e[0], inside, e[1])

                            def faulting(i, j, p):
                                mask = rows_m[i] if j == 1 else builder.and_(rows_m[i], e[2 if j == 0 else 3])
                                return _masked_load(builder, tap(i, j, p), mask, _VEC_Y)

                            _masked_store(builder, nine(p, faulting), out_ptr, inside)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _row3x3_s2(typingctx, x, r0, r1, r2, width, outs, w0, w1, w2, w3, w4, w5, w6, w7, w8, out, dst):
    """One output row of a stride-2 layer: out[dst + q] = ((+0.0 + x[r0 + 2q - 1]*w0) + x[r0 + 2q]*w1)
    + ... + x[r2 + 2q + 1]*w8 for q in [0, outs); an input row given as -1 (in the padding)
    and columns outside [0, width) read as 0.0. Each input row is read as whole vectors from
    column 2q0 - 1 and split into its even and odd columns by shuffles."""
    sig = types.void(x, types.int64, types.int64, types.int64, types.int64, types.int64,
                     *([types.float32] * 9), out, types.int64)

    def codegen(context, builder, sig, args):
        x_arr, starts, width, outs = args[0], args[1:4], args[4], args[5]
        weights = [simd.splat(builder, w) for w in args[6:15]]
        out_arr, dst = args[15], args[16]
        src = context.make_array(sig.args[0])(context, builder, x_arr).data
        dest = context.make_array(sig.args[15])(context, builder, out_arr).data
        lanes = ir.Constant(INDEX, list(range(LANES)))
        zero = ir.Constant(simd.I64, 0)
        wide = simd.splat(builder, width, INDEX)
        last = simd.splat(builder, outs, INDEX)
        present = [builder.icmp_signed(">=", r, zero) for r in starts]
        even = ir.Constant(ir.VectorType(simd.I32, LANES), list(range(0, 2 * LANES, 2)))
        odd = ir.Constant(ir.VectorType(simd.I32, LANES), list(range(1, 2 * LANES, 2)))
        shift = ir.Constant(ir.VectorType(simd.I32, LANES), list(range(1, LANES + 1)))
        step = ir.Constant(simd.I64, LANES)
        with cgutils.for_range_slice(builder, zero, outs, step, intp=simd.I64) as (q, _):
            inside = builder.icmp_signed("<", builder.add(simd.splat(builder, q, INDEX), lanes), last)
            col0 = builder.sub(builder.add(q, q), ir.Constant(simd.I64, 1))  # column 2q - 1
            total = ir.Constant(simd.VEC, [0.0] * LANES)
            for i in range(3):
                vectors = []
                for part in range(3):  # columns col0 + 16*part + lane
                    first = builder.add(col0, ir.Constant(simd.I64, 16 * part))
                    cols = builder.add(simd.splat(builder, first, INDEX), lanes)
                    ok = builder.and_(builder.icmp_signed(">=", cols, ir.Constant(INDEX, [0] * LANES)),
                                      builder.icmp_signed("<", cols, wide))
                    ok = builder.and_(ok, builder.select(present[i], ir.Constant(MASK, [1] * LANES),
                                                         ir.Constant(MASK, [0] * LANES)))
                    at = builder.add(starts[i], first)
                    vectors.append(_masked_load(builder, builder.gep(src, [at]), ok))
                a, b, c = vectors
                left = builder.shuffle_vector(a, b, even)   # columns 2q - 1
                mid = builder.shuffle_vector(a, b, odd)     # columns 2q
                right = builder.shuffle_vector(left, c, shift)  # columns 2q + 1
                for j, v in enumerate((left, mid, right)):
                    total = builder.fadd(total, builder.fmul(v, weights[3 * i + j]))
            _masked_store(builder, total, builder.gep(dest, [builder.add(dst, q)]), inside)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _row3x3_s2_ymm(typingctx, x, r0, r1, r2, width, outs, w0, w1, w2, w3, w4, w5, w6, w7, w8, out, dst,
                   room):
    """:func:`_row3x3_s2` in vectors of 8: each input row is three plain loads from column
    2q - 1. At the row's ends and next to the padding rows the loads stay plain too (an
    absent row reads the middle one) and the lanes of column -1, of column W and of an
    absent row are zeroed after the split; masked loads (slow on AMD) only where a load
    could pass x's start or end. Which vectors are inner is worked out once per row. Same
    sums in the same order (a zeroed tap adds 0.0 * w, as a padded one does). A row's last,
    partial vector is stored whole where the ``room`` outputs after the row (its plane's
    later rows, which the caller writes after it) take its spare lanes; else masked."""
    sig = types.void(x, types.int64, types.int64, types.int64, types.int64, types.int64,
                     *([types.float32] * 9), out, types.int64, types.int64)

    def codegen(context, builder, sig, args):
        x_arr, starts, width, outs = args[0], args[1:4], args[4], args[5]
        weights = [simd.splat(builder, w, _VEC_Y) for w in args[6:15]]
        out_arr, dst, room = args[15], args[16], args[17]
        x_struct = context.make_array(sig.args[0])(context, builder, x_arr)
        src, size = x_struct.data, x_struct.nitems
        dest = context.make_array(sig.args[15])(context, builder, out_arr).data
        i64 = simd.I64
        lanes = ir.Constant(_INDEX_Y, list(range(YMM)))
        zero = ir.Constant(i64, 0)
        wide = simd.splat(builder, width, _INDEX_Y)
        last = simd.splat(builder, outs, _INDEX_Y)
        vptr = _VEC_Y.as_pointer()
        mask_t = ir.VectorType(ir.IntType(1), YMM)
        present = [builder.icmp_signed(">=", r, zero) for r in starts]
        all_rows = builder.and_(builder.and_(present[0], present[1]), present[2])
        even = ir.Constant(ir.VectorType(simd.I32, YMM), list(range(0, 2 * YMM, 2)))
        odd = ir.Constant(ir.VectorType(simd.I32, YMM), list(range(1, 2 * YMM, 2)))
        shift = ir.Constant(ir.VectorType(simd.I32, YMM), list(range(1, YMM + 1)))

        def one_row(i, load):
            a, b, c = (load(i, part) for part in range(3))
            left = builder.shuffle_vector(a, b, even)   # columns 2q - 1
            mid = builder.shuffle_vector(a, b, odd)     # columns 2q
            right = builder.shuffle_vector(left, c, shift)  # columns 2q + 1
            return left, mid, right

        def nine(load):
            total = ir.Constant(_VEC_Y, [0.0] * YMM)
            for i in range(3):
                for j, v in enumerate(one_row(i, load)):
                    total = builder.fadd(total, builder.fmul(v, weights[3 * i + j]))
            return total

        # The row's inner vectors, q in [YMM, limit]: whole (q + 8 <= outs), columns 2q - 1 ..
        # 2q + 15 inside the row, the third load (to 2q + 22) inside x, every row present.
        # Worked out once per row; a shift right is a floor division of a negative too.
        one = ir.Constant(i64, 1)
        limit = builder.sub(outs, ir.Constant(i64, YMM))
        for bound in (builder.ashr(builder.sub(width, ir.Constant(i64, 2 * YMM)), one),
                      builder.ashr(builder.sub(builder.sub(size, starts[2]), ir.Constant(i64, 3 * YMM - 1)), one)):
            limit = builder.select(builder.icmp_signed("<", bound, limit), bound, limit)
        limit = builder.select(all_rows, limit, ir.Constant(i64, -1))
        ones_v = ir.Constant(_INDEX_Y, [1] * YMM)
        zeros_v = ir.Constant(_INDEX_Y, [0] * YMM)
        on = [builder.select(p, ir.Constant(mask_t, [1] * YMM), ir.Constant(mask_t, [0] * YMM))
              for p in present]
        nothing = ir.Constant(_VEC_Y, [0.0] * YMM)

        with cgutils.for_range_slice(builder, zero, outs, ir.Constant(i64, YMM), intp=i64) as (q, _):
            col0 = builder.sub(builder.add(q, q), one)  # column 2q - 1
            whole = builder.icmp_signed("<=", builder.add(q, ir.Constant(i64, YMM)), outs)
            inner = builder.and_(builder.icmp_signed(">=", q, ir.Constant(i64, YMM)),
                                 builder.icmp_signed("<=", q, limit))
            out_ptr = builder.bitcast(builder.gep(dest, [builder.add(dst, q)]), vptr)

            def plain_load(row, part):
                at = builder.add(builder.add(row, col0), ir.Constant(i64, YMM * part))
                return builder.load(builder.bitcast(builder.gep(src, [at]), vptr), align=4)

            with builder.if_else(inner) as (fast, edge):
                with fast:
                    builder.store(nine(lambda i, part: plain_load(starts[i], part)), out_ptr, align=4)
                with edge:
                    def masked_load(i, part):  # the lanes whose column and row lie inside the map
                        first = builder.add(col0, ir.Constant(i64, YMM * part))
                        cols = builder.add(simd.splat(builder, first, _INDEX_Y), lanes)
                        ok = builder.and_(builder.icmp_signed(">=", cols, zeros_v),
                                          builder.icmp_signed("<", cols, wide))
                        at = builder.gep(src, [builder.add(starts[i], first)])
                        return _masked_load(builder, at, builder.and_(ok, on[i]), _VEC_Y)

                    def nine_near():
                        # plain loads (an absent row reads the middle one), then the lanes of
                        # an absent row, of column -1 or of column W zeroed after the split:
                        # an output's lanes hold no other column outside the row
                        qs = builder.add(simd.splat(builder, q, _INDEX_Y), lanes)
                        twice = builder.add(qs, qs)
                        left_ok = builder.icmp_signed(">=", builder.sub(twice, ones_v), zeros_v)
                        right_ok = builder.icmp_signed("<", builder.add(twice, ones_v), wide)
                        total = nothing
                        for i in range(3):
                            row = builder.select(present[i], starts[i], starts[1])
                            left, mid, right = one_row(i, lambda _, part, row=row: plain_load(row, part))
                            kept = (builder.select(builder.and_(left_ok, on[i]), left, nothing),
                                    builder.select(on[i], mid, nothing),
                                    builder.select(builder.and_(right_ok, on[i]), right, nothing))
                            for j, v in enumerate(kept):
                                total = builder.fadd(total, builder.fmul(v, weights[3 * i + j]))
                        return total

                    # every load within a row of the middle one lies inside x: plain loads
                    mid_at = builder.add(starts[1], col0)
                    far_end = builder.add(builder.add(mid_at, width), ir.Constant(i64, 3 * YMM))
                    safe = builder.and_(builder.icmp_signed(">=", builder.sub(mid_at, width), zero),
                                        builder.icmp_signed("<=", far_end, size))
                    with builder.if_else(safe) as (near, far):
                        with near:
                            total_near = nine_near()
                            block_near = builder.block
                        with far:
                            total_far = nine(masked_load)
                            block_far = builder.block
                    total = builder.phi(_VEC_Y)
                    total.add_incoming(total_near, block_near)
                    total.add_incoming(total_far, block_far)
                    spare = builder.icmp_signed("<=", builder.add(q, ir.Constant(i64, YMM)),
                                                builder.add(outs, room))
                    with builder.if_else(builder.or_(whole, spare)) as (full, part):
                        with full:
                            builder.store(total, out_ptr, align=4)
                        with part:
                            outputs = builder.add(simd.splat(builder, q, _INDEX_Y), lanes)
                            fits = builder.icmp_signed("<", outputs, last)
                            _masked_store(builder, total, out_ptr, fits)
        return context.get_dummy_value()

    return sig, codegen


@functools.lru_cache(maxsize=64)
def edge_masks(H: int, W: int) -> np.ndarray:
    """(5, H*W + LANES) uint8 for a plane of H x W, 255 for yes and 0 for no: whether each
    pixel has a row above, a row below, a column left and a column right, and whether it
    lies on the border (lacks one of them) (LANES spare zeros: whole-vector loads); shared,
    so never written to."""
    p = np.arange(H * W)
    y, x = np.divmod(p, W)
    masks = np.zeros((5, H * W + LANES), np.uint8)
    masks[0, :H * W] = y > 0
    masks[1, :H * W] = y < H - 1
    masks[2, :H * W] = x > 0
    masks[3, :H * W] = x < W - 1
    masks[4, :H * W] = masks[:4, :H * W].min(axis=0) == 0
    masks *= 255  # all ones: a lane mask when sign-extended
    masks.setflags(write=False)
    return masks


def _depthwise_3x3(x, w, mult, edges, ymm, out, codes, vecs, params):
    # x (N, C, H, W), w (C*mult, 3, 3), out (N, C*mult, H*W); tile = one output plane;
    # ymm: _plane3x3_ymm, else _plane3x3
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
        at = (n * C + o // mult) * P
        if ymm:
            _plane3x3_ymm(xf, at, W, flags, stride, P,
                          w[o, 0, 0], w[o, 0, 1], w[o, 0, 2], w[o, 1, 0], w[o, 1, 1], w[o, 1, 2],
                          w[o, 2, 0], w[o, 2, 1], w[o, 2, 2], of, t * P)
        else:
            _plane3x3(xf, at, W, flags, stride, P,
                      w[o, 0, 0], w[o, 0, 1], w[o, 0, 2], w[o, 1, 0], w[o, 1, 1], w[o, 1, 2],
                      w[o, 2, 0], w[o, 2, 1], w[o, 2, 2], of, t * P)
        _stages_row(out[n, o], o, codes, vecs, params)


DEPTHWISE_3X3_K = parallel.dual(_depthwise_3x3)


def _depthwise_3x3_s2(x, w, mult, oh, ow, ymm, out, codes, vecs, params):
    # x (N, C, H, W), w (C*mult, 3, 3), out (N, C*mult, oh*ow), stride 2, pad 1;
    # ymm: _row3x3_s2_ymm, else _row3x3_s2
    N, C, H, W = x.shape
    O = w.shape[0]
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for t in nb.prange(N * O):
        n = t // O
        o = t % O
        at = (n * C + o // mult) * H * W
        # the taps read once per plane: the row kernels' stores may alias w as far as LLVM
        # knows, so it would load all nine again for every row
        w0, w1, w2 = w[o, 0, 0], w[o, 0, 1], w[o, 0, 2]
        w3, w4, w5 = w[o, 1, 0], w[o, 1, 1], w[o, 1, 2]
        w6, w7, w8 = w[o, 2, 0], w[o, 2, 1], w[o, 2, 2]
        for y in range(oh):
            r = 2 * y - 1
            r0 = at + r * W if r >= 0 else -1
            r2 = at + (r + 2) * W if r + 2 < H else -1
            if ymm:
                _row3x3_s2_ymm(xf, r0, at + (r + 1) * W, r2, W, ow, w0, w1, w2, w3, w4, w5, w6, w7, w8,
                               of, t * oh * ow + y * ow, (oh - y - 1) * ow)
            else:
                _row3x3_s2(xf, r0, at + (r + 1) * W, r2, W, ow, w0, w1, w2, w3, w4, w5, w6, w7, w8,
                           of, t * oh * ow + y * ow)
        _stages_row(out[n, o], o, codes, vecs, params)


DEPTHWISE_3X3_S2_K = parallel.dual(_depthwise_3x3_s2)


def applies(w_shape, stride, pad, dilation) -> bool:
    """Whether :func:`depthwise_3x3` takes a depthwise layer of this geometry here (AVX-512
    or AVX2)."""
    return (USABLE or USABLE_YMM) and tuple(w_shape[2:]) == (3, 3) and tuple(stride) in ((1, 1), (2, 2)) \
        and tuple(pad) == (1, 1) and tuple(dilation) == (1, 1)


def depthwise_3x3(x, w, stride, arrays, lanes: int | None = None) -> np.ndarray | None:
    """x (N, C, H, W) float32 C-contiguous, w (C*m, 1, 3, 3) -> (N, C*m, oh, ow) (pad 1,
    ``stride`` (1, 1) or (2, 2)) with the epilogue ``arrays``
    (:meth:`.epilogue.Epilogue.arrays`) applied; None when a weight is not finite (a padded
    tap would then add NaN where the tap-skipping kernels add nothing). ``lanes``: the
    kernels' vectors, 16 (zmm) or 8 (ymm) (default: :data:`MACHINE_LANES`)."""
    if not np.isfinite(w).all():
        return None
    N, C, H, W = x.shape
    O = w.shape[0]
    s = stride[0]
    oh, ow = (H - 1) // s + 1, (W - 1) // s + 1
    out = np.empty((N, O, oh, ow), F32)
    wt = np.ascontiguousarray(w[:, 0], F32)
    flat = out.reshape(N, O, oh * ow)
    work = N * O * oh * ow * 9 + (N * C * H * W if s > 1 else 0)
    ymm = (lanes or MACHINE_LANES) != LANES
    if s == 1:
        kernels, args = DEPTHWISE_3X3_K, (x, wt, O // C, edge_masks(H, W), ymm, flat)
    else:
        kernels, args = DEPTHWISE_3X3_S2_K, (x, wt, O // C, oh, ow, ymm, flat)
    parallel.run_in_chunks(kernels, parallel.pick(kernels, work, MIN_PARALLEL_MACS), args + tuple(arrays),
                           N * O)
    return out
