"""Depthwise convolution one (image, channel) plane at a time, in NCHW, epilogue fused.

Why planes: a depthwise filter touches one input plane only, so a tile is a plane
(no transposes to channels-last and back) and a batch-1 layer of 144+ channels
has tiles enough for every thread, with no GEMM inside to amortise.

Per plane, the input is copied once into a zero-padded per-thread scratch,
split into ``sh x sw`` *phases* (phase (a, b) holds the padded rows a, a+sh, ...
and columns b, b+sw, ...). Every tap (i, j) then reads, for all outputs of a
block of rows at once, one contiguous run of its phase: output (y, x) flattened
as ``y*Wq + x`` (``Wq`` the phase width) reads phase element
``(y + ri)*Wq + x + cj``. The columns ``ow..Wq-1`` of each row are computed
too and thrown away; in exchange the inner loop runs over whole blocks, which
vectorises even on 7x7 maps and at stride 2. The kept outputs are moved into
the output plane and the epilogue (bias, BN, Scale, ReLU...) runs on them
while they are in cache.

Same bits as the tap-skipping kernels of :mod:`.depthwise`: each output sums
its taps in the same order (i, then j) from +0.0; a padded tap adds
``0.0 * w``, a zero, which leaves any sum that starts at +0.0 unchanged
(such a sum is never -0.0). That holds for finite weights only (``0 * inf``
is NaN), which :func:`depthwise_planes` checks. The epilogue runs the same
float32 stages in the same order as :func:`.epilogue.apply`.
"""
from __future__ import annotations

import functools
import threading

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import parallel, simd
from .epilogue import _stages_row

F32 = np.float32
#: floats of the accumulator block (a few output rows): stays in L1 while the taps sweep it
BLOCK_FLOATS = 2048
#: one AVX-512 vector of float32: the 3x3 loop runs in whole vectors
LANES = simd.LANES
#: work (multiply-adds, plus twice the phase floats filled) from which a layer is shared
#: among threads: tiles are independent planes with no GEMM inside, so the pool pays off
#: earlier than parallel.MIN_PARALLEL_MACS (1M multiply-adds are ~120 us here at 8 GMAC/s:
#: half of it saved beats the 10-45 us of waking the pool)
MIN_PARALLEL_MACS = 1_000_000


class PhaseLayout:
    """Where each input pixel and each tap lives in a plane's phases, worked out once per
    layer (integer divisions per plane would cost more than a 7x7 plane's taps).

    Phase (a, b) starts at ``(a*sw + b) * (Hq+1) * Wq``: ``Hq x Wq`` plus one spare zero row,
    which the thrown-away columns of the last output row may reach into (by at most
    ``(kw-1)*dw // sw < Wq`` floats); ``LANES`` spare zeros follow the phases for the last
    vector's overrun.
    """

    def __init__(self, H, W, kh, kw, stride, pad, dilation):
        sh, sw = stride
        ph, pw = pad
        dh, dw = dilation
        self.Hq, self.Wq = -(-(H + 2 * ph) // sh), -(-(W + 2 * pw) // sw)
        per = (self.Hq + 1) * self.Wq
        self.floats = sh * sw * per + LANES
        pr = np.arange(H) + ph
        #: input row r -> start of its row in phase (pr % sh, 0)
        self.rows = ((pr % sh) * sw * per + (pr // sh) * self.Wq).astype(np.int64)
        #: column phase b -> (first input column, its offset in the row, input columns in it)
        cols = []
        for b in range(sw):
            c0 = (b - pw) % sw
            cols.append((c0, b * per + (c0 + pw) // sw, max(0, -(-(W - c0) // sw))))
        self.cols = np.array(cols, np.int64).reshape(sw, 3)
        #: tap (i, j) -> where output (0, 0) reads it
        i, j = np.divmod(np.arange(kh * kw), kw)
        self.taps = ((((i * dh) % sh) * sw + (j * dw) % sw) * per
                     + ((i * dh) // sh) * self.Wq + (j * dw) // sw).astype(np.int64)


@functools.lru_cache(maxsize=256)
def phase_layout(H, W, kh, kw, stride, pad, dilation) -> PhaseLayout:
    """:class:`PhaseLayout`, built once per layer geometry (about 40 us of NumPy a layer,
    a few % of a MobileNet v2 pass otherwise); shared, so never written to."""
    return PhaseLayout(H, W, kh, kw, stride, pad, dilation)


@nb.njit(cache=True, nogil=True)
def _fill_phases(x, at, H, W, buf, base, floats, rows, cols):
    # x[at:at + H*W] (an input plane) -> buf[base:base+floats], zero where padded (PhaseLayout).
    # Flat indices, no array views: each view of an argument costs an atomic reference count
    # pair, which adds up over thousands of 7x7 planes. Unsigned indices: no negative-index
    # wrap-around test per element, which would keep the loops from vectorising.
    u = np.uint64
    for k in range(u(base), u(base + floats)):
        buf[k] = F32(0.0)
    sw = u(cols.shape[0])
    if sw == 2 and cols[0, 0] + 1 == cols[1, 0]:
        # both column phases in one loop: an interleaved pair of loads, which vectorises
        # (one phase at a time is a gather with gaps, which does not)
        for r in range(H):
            s = u(at + r * W + cols[0, 0])
            d0 = u(base + rows[r] + cols[0, 1])
            d1 = u(base + rows[r] + cols[1, 1])
            for t in range(u(cols[1, 2])):
                buf[d0 + t] = x[s + u(2) * t]
                buf[d1 + t] = x[s + u(2) * t + u(1)]
            if cols[0, 2] > cols[1, 2]:  # odd width: the first phase has one column more
                t = u(cols[1, 2])
                buf[d0 + t] = x[s + u(2) * t]
        return
    for r in range(H):
        for b in range(cols.shape[0]):
            s = u(at + r * W + cols[b, 0])
            d = u(base + rows[r] + cols[b, 1])
            for t in range(u(cols[b, 2])):
                buf[d + t] = x[s + t * sw]


@intrinsic
def _taps3x3(typingctx, buf, t0, t1, t2, t3, t4, t5, t6, t7, t8, w0, w1, w2, w3, w4, w5, w6, w7, w8,
             acc, a, m):
    """acc[a + k] = ((+0.0 + buf[t0 + k]*w0) + buf[t1 + k]*w1) + ... + buf[t8 + k]*w8 for k in
    [0, m) rounded up to whole vectors: a multiply then an add per tap (never fused), in tap
    order, on LANES outputs at a time. Plain Numba vectorises this loop at half width and
    spills its nine tap pointers."""
    sig = types.void(buf, *([types.uint64] * 9), *([types.float32] * 9), acc, types.uint64,
                     types.uint64)

    def codegen(context, builder, sig, args):
        zero64 = ir.Constant(simd.I64, 0)
        taps = [simd.data_pointer(context, builder, sig.args[0], args[0], t) for t in args[1:10]]
        weights = [simd.splat(builder, w) for w in args[10:19]]
        out = simd.data_pointer(context, builder, sig.args[19], args[19], args[20])
        zero = ir.Constant(simd.VEC, [0.0] * LANES)
        with cgutils.for_range_slice(builder, zero64, args[21], ir.Constant(simd.I64, LANES),
                                     intp=simd.I64) as (k, _):
            total = zero
            for tap, w in zip(taps, weights):
                total = builder.fadd(total, builder.fmul(simd.load(builder, builder.gep(tap, [k])), w))
            simd.store(builder, total, builder.gep(out, [k]))
        return context.get_dummy_value()

    return sig, codegen


@nb.njit(cache=True, nogil=True)
def _plane(buf, base, w, o, taps, Wq, oh, ow, acc, a0, block, out, p0, codes, vecs, params):
    # buf[base:]: the phases of one input plane; w[o] (kh, kw) its filter; out[p0:p0 + oh*ow]
    # its output plane (flat, as in _fill_phases)
    kh, kw = w.shape[1], w.shape[2]
    u = np.uint64
    rows = max(1, min(oh, block // Wq))
    a = u(a0)
    for y0 in range(0, oh, rows):
        y1 = min(oh, y0 + rows)
        m = u((y1 - y0) * Wq)
        at = base + y0 * Wq
        if kh == 3 and kw == 3:
            # the nine taps in one pass, summed in order (i, then j) from +0.0
            t0, t1, t2 = u(at + taps[0]), u(at + taps[1]), u(at + taps[2])
            t3, t4, t5 = u(at + taps[3]), u(at + taps[4]), u(at + taps[5])
            t6, t7, t8 = u(at + taps[6]), u(at + taps[7]), u(at + taps[8])
            w0, w1, w2 = w[o, 0, 0], w[o, 0, 1], w[o, 0, 2]
            w3, w4, w5 = w[o, 1, 0], w[o, 1, 1], w[o, 1, 2]
            w6, w7, w8 = w[o, 2, 0], w[o, 2, 1], w[o, 2, 2]
            # LANES at a time, a whole number of times (the spare floats of the phases and of
            # the block absorb the overrun): no scalar remainder loop on short planes
            _taps3x3(buf, t0, t1, t2, t3, t4, t5, t6, t7, t8, w0, w1, w2, w3, w4, w5, w6, w7, w8,
                     acc, a, m)
        else:
            for k in range(m):
                acc[a + k] = F32(0.0)
            for i in range(kh):
                for j in range(kw):
                    t = u(at + taps[i * kw + j])
                    wv = w[o, i, j]
                    for k in range(m):
                        acc[a + k] += buf[t + k] * wv
        for y in range(y1 - y0):
            d = u(p0 + (y0 + y) * ow)
            s0 = u(a0 + y * Wq)
            for x in range(u(ow)):
                out[d + x] = acc[s0 + x]
        _stages_row(out[p0 + y0 * ow:p0 + y1 * ow], o, codes, vecs, params)


def _depthwise_planes(x, w, mult, rows, cols, taps, Wq, floats, oh, ow, scratch, block, out, codes,
                      vecs, params):
    # x (N, C, H, W), w (C*mult, kh, kw), out (N, C*mult, oh*ow); (rows, cols, taps, Wq, floats)
    # a PhaseLayout; scratch (threads, floats + block + LANES). Tile = (image, input channel),
    # which makes its `mult` output planes from one fill of the phases.
    N, C, H, W = x.shape
    O = w.shape[0]
    flat = scratch.reshape(-1)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for t in nb.prange(N * C):
        n = t // C
        c = t % C
        # the thread's scratch row: phases, then the accumulator block
        base = nb.get_thread_id() * scratch.shape[1]
        _fill_phases(xf, t * H * W, H, W, flat, base, floats, rows, cols)
        for m in range(mult):
            o = c * mult + m
            _plane(flat, base, w, o, taps, Wq, oh, ow, flat, base + floats, block, of,
                   (n * O + o) * oh * ow, codes, vecs, params)


DEPTHWISE_PLANES_K = parallel.dual(_depthwise_planes)

_scratch = threading.local()  # one per calling thread: concurrent forward passes may not share


def _thread_scratch(n: int) -> np.ndarray:
    """(threads, n) float32 reused between calls: row ``numba.get_thread_id()`` is a tile's own."""
    rows = nb.config.NUMBA_NUM_THREADS
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.shape[1] < n:
        buf = np.empty((rows, n), F32)
        if buf.nbytes <= (256 << 20):  # a giant map's scratch is not kept
            _scratch.buf = buf
    return buf


def depthwise_planes(x, w, stride, pad, dilation, out_hw, arrays) -> np.ndarray | None:
    """x (N, C, H, W) float32, w (C*m, 1, kh, kw) -> (N, C*m, oh, ow) with the epilogue
    ``arrays`` (:meth:`.epilogue.Epilogue.arrays`) applied; None when a weight is not finite
    (a padded tap would then add NaN where the tap-skipping kernels add nothing)."""
    if not np.isfinite(w).all():
        return None
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    oh, ow = out_hw
    lay = phase_layout(H, W, kh, kw, tuple(stride), tuple(pad), tuple(dilation))
    block = max(BLOCK_FLOATS, lay.Wq)
    out = np.empty((N, O, oh, ow), F32)
    # nb.get_num_threads() starts Numba's threading layer, which get_thread_id() inside even
    # the serial build reads: a build loaded from the cache into a process that has not
    # started it would read an unset thread id
    nb.get_num_threads()
    # the work: its multiply-adds and the phase fill (which made MobileNet v2's 384-channel
    # stride-2 layer, 0.68M multiply-adds, take 240 us on one thread: 2x the rate of stride 1)
    kernel = parallel.pick(DEPTHWISE_PLANES_K, N * O * oh * ow * kh * kw + 2 * N * C * lay.floats,
                           MIN_PARALLEL_MACS)
    args = (x, np.ascontiguousarray(w[:, 0], F32), O // C, lay.rows, lay.cols, lay.taps, lay.Wq,
            lay.floats, oh, ow, _thread_scratch(lay.floats + block + LANES), block,
            out.reshape(N, O, oh * ow)) + tuple(arrays)
    parallel.run_in_chunks(DEPTHWISE_PLANES_K, kernel, args, N * C)
    return out
