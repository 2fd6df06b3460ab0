"""Direct convolution with pixels in the vectors, for thin kxk layers (under 48 output channels).

The channel micro-kernel of :mod:`.direct_conv` puts 48-64 output channels in its vectors:
a 16- or 32-channel layer would leave it broadcast-bound, and im2col + OpenBLAS on such a
layer packs a column matrix kh*kw times the input for a handful of weight rows (res10's
32-channel 3x3 layers and its SSD heads, yolov3-tiny's 16 -> 32, the stems). Here a tile is
``ROWS`` output channels x ``VECTORS`` vectors of 16 consecutive output pixels, and each
vector is one load from the input read in place:

- the input is copied once into ``stride_h * stride_w`` zero-padded *phase planes*
  (plane (a, b) holds padded rows a, a + sh, ... and columns b, b + sw, ...), so that for
  every stride, output pixel (y, x) of tap (c, ky, kx) reads plane ((ky*dh) % sh, (kx*dw) %
  sw) at row y + (ky*dh)//sh, column x + (kx*dw)//sw (:func:`tap_offsets`);
- in a plane ``Wq`` wide, output pixel (y, x) is read at ``y*Wq + x`` plus the tap's
  offset: a run of output rows is one run of the plane, the ``Wq - ow`` columns between
  rows computed and dropped.

Each output sums its taps in im2col's row order with fused multiply-adds, in OpenBLAS's K
blocks (:func:`.channel_microkernel.k_schedule`): the results are those of the im2col +
OpenBLAS path bit for bit, where that path's every GEMM call is above OpenBLAS's
small-matrix size (:func:`use`). Measured on Sapphire Rapids, one thread, against that
path: 1.3-1.5x on res10's 32 -> 32 at 75x75 and its stem, 1.8-2.3x on its heads, 1.2-1.4x
on yolov3-tiny's first two layers (``benchmarks/conv_paths.py``).
"""
from __future__ import annotations

import contextlib
import functools

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import parallel
from .channel_microkernel import emit_finish, k_schedule
from .epilogue import _stages_row_from
from .microkernel import SMALL_MNK
from .simd import I64, LANES, VEC, data_pointer, load, splat

F32 = np.float32
#: output channels x 16-pixel vectors per micro-tile: 24 accumulators, 3 input loads and 8
#: weight broadcasts per tap (8 x 3 was the fastest of 4x5..16x1 on the thin layers above)
ROWS, VECTORS = 8, 3
WIDTH = VECTORS * LANES
#: output channels below which the layer is thin (from 48 on, :mod:`.direct_conv`)
MAX_CHANNELS = 47
#: plane values per pass over the weights: a pass's input rows and sums stay in L2
PASS_PIXELS = 1024


@intrinsic
def _tile(typingctx, a, a_off, b, b_off, offs, o_off, kc, t, t_off, ldt, finish, s, s_off, lds, resume):
    """For ROWS channels i and WIDTH pixels j: acc[i, j] = sum over kc taps k of
    a[a_off + k*ROWS + i] * b[b_off + offs[o_off + k] + j] (fused, in k order), started from 0
    or, with ``resume``, from s[s_off + i*lds + j]; then by ``finish``: store to
    t[t_off + i*ldt + j], add to it (one rounding), or park in s."""
    sig = types.void(a, types.int64, b, types.int64, offs, types.int64, types.int64, t, types.int64,
                     types.int64, types.int64, s, types.int64, types.int64, types.int64)

    def codegen(context, builder, sig, args):
        (a_arr, a_off, b_arr, b_off, offs_arr, o_off, kc, t_arr, t_off, ldt, finish, s_arr, s_off, lds,
         resume) = args
        ap = data_pointer(context, builder, sig.args[0], a_arr, a_off)
        bp = data_pointer(context, builder, sig.args[2], b_arr, b_off)
        op = data_pointer(context, builder, sig.args[4], offs_arr, o_off)
        tp = data_pointer(context, builder, sig.args[7], t_arr, t_off)
        sp = data_pointer(context, builder, sig.args[11], s_arr, s_off)
        zero = ir.Constant(VEC, [0.0] * LANES)

        def at(base, i, v, ld):
            return builder.gep(base, [builder.add(builder.mul(ir.Constant(I64, i), ld),
                                                  ir.Constant(I64, v * LANES))])

        sums = [[cgutils.alloca_once_value(builder, zero) for _ in range(VECTORS)] for _ in range(ROWS)]
        with builder.if_then(builder.icmp_signed("!=", resume, ir.Constant(I64, 0))):
            for i in range(ROWS):
                for v in range(VECTORS):
                    builder.store(load(builder, at(sp, i, v, lds)), sums[i][v])
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(VEC, [VEC] * 3),
                                             f"llvm.fma.v{LANES}f32")
        with cgutils.for_range(builder, kc) as loop:
            k = loop.index
            brow = builder.gep(bp, [builder.load(builder.gep(op, [k]))])
            arow = builder.gep(ap, [builder.mul(k, ir.Constant(I64, ROWS))])
            bv = [load(builder, builder.gep(brow, [ir.Constant(I64, LANES * v)])) for v in range(VECTORS)]
            for i in range(ROWS):
                av = splat(builder, builder.load(builder.gep(arow, [ir.Constant(I64, i)])))
                for v in range(VECTORS):
                    builder.store(builder.call(fma, [av, bv[v], builder.load(sums[i][v])]), sums[i][v])
        emit_finish(builder, sums, finish, lambda i, v: at(tp, i, v, ldt), lambda i, v: at(sp, i, v, lds))
        return context.get_dummy_value()

    return sig, codegen


def use(w_shape, stride, group, smallest_gemm: int) -> bool:
    """Whether this convolution takes the thin direct path (given that our kernels give the
    BLAS's bits here): kxk, ungrouped, under 48 output channels, and every GEMM call of the
    im2col path it replaces (the smallest does ``smallest_gemm`` multiply-adds) above
    OpenBLAS's small-matrix size, whose kernels sum in another order. Stride-1 layers from
    27 taps on; strided ones from 64 (with fewer, copying the input into phase planes costs
    more than it saves: MobileNet v2's 27-tap stem ran at 0.9x)."""
    O, cg, kh, kw = w_shape
    if group != 1 or kh * kw == 1 or O > MAX_CHANNELS or smallest_gemm <= SMALL_MNK:
        return False
    taps = cg * kh * kw
    return taps >= (27 if stride == (1, 1) else 64)


@functools.lru_cache(maxsize=256)  # the same geometry every pass: 40-55 us a call to build
def tap_offsets(C, kh, kw, Hq, Wq, sh, sw, dh, dw) -> np.ndarray:
    """offs[(c*kh + ky)*kw + kx]: where tap (c, ky, kx) of output pixel (0, 0) lies in one
    image's phase planes, (sh*sw, C, Hq, Wq) (int64)."""
    c, ky, kx = np.meshgrid(np.arange(C, dtype=np.int64), np.arange(kh, dtype=np.int64),
                            np.arange(kw, dtype=np.int64), indexing="ij")
    ry, rx = ky * dh, kx * dw
    plane = (ry % sh) * sw + rx % sw
    return (((plane * C + c) * Hq + ry // sh) * Wq + rx // sw).reshape(-1)


def _phase_planes(x, ph, pw, sh, sw, Hq, Wq, out):
    # out (N * sh*sw * C * Hq * Wq + slack) zeroed: plane (a, b) row i, column j of image n,
    # channel c = padded input row i*sh + a, column j*sw + b
    N, C, H, W = x.shape
    planes = sh * sw
    for t in nb.prange(N * planes * C):
        c = t % C
        ab = (t // C) % planes
        n = t // (C * planes)
        a, b = ab // sw, ab % sw
        base = ((n * planes + ab) * C + c) * Hq * Wq
        for i in range(Hq):
            yy = i * sh + a - ph
            if yy < 0 or yy >= H:
                continue
            row = base + i * Wq
            for j in range(Wq):
                xx = j * sw + b - pw
                if 0 <= xx < W:
                    out[row + j] = x[n, c, yy, xx]


PHASE_PLANES_K = parallel.dual(_phase_planes)


def _passes(ap, xq, img, offs, Wq, K, oh, ow, rows_per_pass, out, codes, vecs, params, q, u):
    # xq: the phase planes, ``img`` values per image; out (N, O, oh*ow). One pass per prange
    # step: a few output rows of one image, every channel panel.
    N, O = out.shape[0], out.shape[1]
    panels = (O + ROWS - 1) // ROWS
    groups = (oh + rows_per_pass - 1) // rows_per_pass
    steps = k_schedule(K, q, u)
    ldt = (((rows_per_pass - 1) * Wq + ow + WIDTH - 1) // WIDTH) * WIDTH
    for job in nb.prange(N * groups):
        n = job // groups
        r0 = (job % groups) * rows_per_pass
        r1 = min(oh, r0 + rows_per_pass)
        j0 = r0 * Wq
        tiles = ((r1 - 1 - r0) * Wq + ow + WIDTH - 1) // WIDTH
        t = np.empty(ROWS * ldt, np.float32)
        s = np.empty(ROWS * ldt, np.float32)
        for p in range(panels):
            for i in range(steps.shape[0]):
                k, sc, finish, resume = steps[i, 0], steps[i, 1], steps[i, 2], steps[i, 3]
                for j in range(tiles):
                    _tile(ap, (p * K + k) * ROWS, xq, n * img + j0 + j * WIDTH, offs, k, sc, t,
                          j * WIDTH, ldt, finish, s, j * WIDTH, ldt, resume)
            for i in range(min(ROWS, O - p * ROWS)):
                o = p * ROWS + i
                for y in range(r0, r1):
                    src = i * ldt + (y - r0) * Wq
                    _stages_row_from(t[src:src + ow], out[n, o, y * ow:(y + 1) * ow], o, codes, vecs, params)


PASSES_K = parallel.dual(_passes)


def conv2d(x, packed, w_shape, stride, pad, dilation, out_hw, ep_arrays, threads, jobs, q, u):
    """x (N, C, H, W) float32 contiguous; ``packed``: the weights as
    ``microkernel.pack_weights(w.reshape(1, O, -1), None, ROWS)``; at least ``jobs`` passes
    when the map allows (the thread split; it never changes a result) -> (N, O, oh, ow)."""
    N, C, H, W = x.shape
    O, _, kh, kw = w_shape
    oh, ow = out_hw
    sh, sw = stride
    Hq, Wq = -(-(H + 2 * pad[0]) // sh), -(-(W + 2 * pad[1]) // sw)
    img = sh * sw * C * Hq * Wq
    xq = np.zeros(N * img + WIDTH, F32)  # the last tile of a pass reads up to WIDTH - 1 past
    parallel.pick(PHASE_PLANES_K, N * img)(x, pad[0], pad[1], sh, sw, Hq, Wq, xq)
    offs = tap_offsets(C, kh, kw, Hq, Wq, sh, sw, dilation[0], dilation[1])
    rows = max(1, min(oh, PASS_PIXELS // Wq))
    rows = -(-oh // min(oh, parallel.balanced_passes(N, -(-oh // rows), jobs)))
    out = np.empty((N, O, oh, ow), F32)
    kernel = PASSES_K[0] if threads > 1 else PASSES_K[1]
    with parallel.chunksize(1) if threads > 1 else contextlib.nullcontext():
        kernel(packed, xq, img, offs, Wq, C * kh * kw, oh, ow, rows, out.reshape(N, O, oh * ow),
               *ep_arrays, q, u)
    return out
