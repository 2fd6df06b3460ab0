"""Convolution and transposed convolution as tiled im2col + GEMM in one thread pool.

Each convolution is one Numba ``prange`` over independent tiles, so that the
only threads are Numba's (work-stealing: the calling thread takes tiles too,
and a worker the OS has not scheduled delays nobody). A tile's GEMM is
NumPy's OpenBLAS ``cblas_sgemm`` called single-threaded on strided blocks
(:mod:`.blas`), writing straight into the NCHW output, and the tile's
:class:`~.epilogue.Epilogue` (bias, BatchNorm, Scale, activation) runs right
after it, on values still in cache. The paths, by shape:

- *Winograd* F(2x2, 3x3) (:mod:`.winograd`, 2.25x fewer GEMM flops) for 3x3
  stride-1 layers with channels enough on both sides (:func:`use_winograd`), in runs
  of tile rows that keep its transformed data in cache where that moves less memory;
- *row tiles* (large feature maps): whole output rows of one image; the tile
  does its own im2col into a per-thread buffer that stays in cache (about
  ``TILE_BYTES``), then its GEMM and epilogue;
- *wide tiles* (several images of a small map with many output channels): the
  batch im2col'ed side by side, one wide GEMM split in blocks, each block's
  columns moved back to NCHW image by image;
- *block tiles* (other small maps): the batch is im2col'ed once (in parallel
  over input channels), then each tile is one image x group x block of output
  channels x block of output pixels, split along whichever of the two makes the
  GEMMs repack less (each tile repacks its weight block and its column block).
  1x1 stride-1 unpadded convolutions read the input in place. Where each tile would be
  a whole image and the batch has images enough for every thread, the row tiles make
  the same calls from per-image columns that stay in cache.

Where a tile's GEMM is thin enough for OpenBLAS's per-call packing to dominate, or its
map small enough for OpenBLAS's pixel vectors to be mostly padding, the row and block
tiles and the Winograd GEMMs call :func:`.microkernel.gemm` or
:func:`.channel_microkernel.gemm` instead (on AVX2 the row and block tiles call
:func:`.haswell_gemm.gemm`, which takes each call's whole shape), on weights packed once
per layer (:func:`own_gemm`); kxk layers with 48+ output channels on large maps take
:mod:`.direct_conv` (that micro-kernel on the padded input, no im2col), thinner ones
:mod:`.direct_conv_thin` (pixel vectors over phase planes of the input), and 1x1 layers on
large maps :mod:`.pointwise_conv` (the same tile on packed input blocks). Only where they
give OpenBLAS's bits, so which one ran never shows in a result: :func:`gemm_tiling` is the
im2col path's cut into GEMM calls, from the shapes alone.

Depthwise convolutions use their direct kernel. The tiling depends only on the
shapes, never on the epilogue, so fused and unfused layers agree bit for bit; it
depends on the thread count only where the BLAS's sums do not depend on the cut
(:func:`.microkernel.cuts_change_no_sum`), so the results never do. Without
a usable OpenBLAS (:func:`.blas.gemm` is None) the convolution is im2col +
``np.matmul`` per image.
"""
from __future__ import annotations

import contextlib
import threading
import weakref

import numba as nb
import numpy as np

from . import (blas, channel_microkernel, direct_conv, direct_conv_thin, fastest, haswell_gemm,
               microkernel, parallel, pointwise_conv, winograd)
from . import epilogue as epi
from .depthwise import depthwise_conv
from .epilogue import _stages_row, _stages_row_from
from .im2col import _im2col_batch, col2im, im2col_batch

F32 = np.float32
#: bytes of im2col columns per row tile (kept in the core's cache between im2col and GEMM)
TILE_BYTES = 1 << 20
#: feature maps whose whole column matrix is larger than this take row tiles
ROW_TILES_ABOVE = 4 << 20
#: tiles a layer big enough for the pool is cut into (2 per thread on the 2-core machines
#: it was tuned on; on bigger machines, run several ana workers rather than wider layers).
#: A cut never splits K, so it changes no sum; it stays the same at any thread count where
#: a smaller call could fall to OpenBLAS's small-matrix kernels (another order), so that
#: results never depend on the number of threads
TILES = 4
#: multiply-adds from which the tiles on our GEMM run on every thread (the BLAS's only from
#: parallel.MIN_PARALLEL_MACS: its cut of a layer fixes its bits, ours never does)
OWN_PARALLEL_MACS = 1_000_000
#: Winograd when C*O/(C+O) reaches this and the batch has this many 2x2 output tiles
WINOGRAD_MIN, WINOGRAD_MIN_TILES = 40, 36


def out_size(size, k, s, p, d):
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def _with_bias(b, ep, channels):
    if b is None:
        return ep
    full = epi.Epilogue(channels).add(b)
    return full.extend(ep) if ep is not None else full


_scratch = threading.local()  # one set per calling thread: concurrent forward passes may not share


def _thread_scratch(n: int) -> np.ndarray:
    """(threads, n) float32 reused between calls: row ``numba.get_thread_id()`` is a tile's own."""
    # get_num_threads() starts Numba's threading layer: a serial build loaded from the
    # cache calls get_thread_id(), which crashes in a process whose layer has not started
    nb.get_num_threads()
    rows = nb.config.NUMBA_NUM_THREADS
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.shape[1] < n:
        buf = np.empty((rows, n), F32)
        if buf.nbytes <= (256 << 20):
            _scratch.buf = buf
    return buf


def _row_tiles(gemm, x, wg, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, rows, out, codes, vecs, params,
               scratch, own, q, u, panel):
    # x (N, C, H, W), wg (G, og, k), out (N, G*og, oh*ow); tile = (image, block of `rows` rows)
    N = x.shape[0]
    G, og, k = wg.shape
    O = G * og
    P = oh * ow
    nt = (oh + rows - 1) // rows
    for t in nb.prange(N * nt):
        n = t // nt
        y0 = (t % nt) * rows
        y1 = min(oh, y0 + rows)
        T = (y1 - y0) * ow
        cols = scratch[nb.get_thread_id()][:G * k * T].reshape(G * k, 1, T)
        # output rows y0..y1-1 are rows 0.. of the same conv padded ph - y0*sh on top
        _im2col_batch(x[n:n + 1], kh, kw, sh, sw, ph - y0 * sh, pw, dh, dw, y1 - y0, ow, cols)
        for g in range(G):
            if own.size and (panel < 0 or og * T * k > microkernel.SMALL_MNK):
                channel_microkernel.either_gemm(
                    own, panel, channel_microkernel.own_offset(panel, g, 0, og, og, k),
                    og, T, k, scratch[nb.get_thread_id()], g * k * T, T, out.reshape(-1),
                    (n * O + g * og) * P + y0 * ow, P, q, u)
                continue
            gemm(101, 111, 111, og, T, k, np.float32(1.0), wg.ctypes.data + 4 * g * og * k, k,
                 cols.ctypes.data + 4 * g * k * T, T, np.float32(0.0),
                 out.ctypes.data + 4 * ((n * O + g * og) * P + y0 * ow), P)
        for o in range(O):
            _stages_row(out[n, o, y0 * ow:y1 * ow], o, codes, vecs, params)


ROW_TILES_K = parallel.dual(_row_tiles)


def _block_tiles(gemm, wg, b, b_img, ldb, n_img, P, ob, pb, out, codes, vecs, params, own, q, u,
                 panel, sub):
    # wg (G, og, k); b (1, size) flat: image n's column matrix of group g starts at value
    # n*b_img + g*k*ldb, rows ldb apart; out (N, G*og, P). Tile = (image, group, channel block,
    # pixel block). A tile on our GEMM is cut further in ``sub`` jobs of whole weight panels
    # (any cut of ours gives the tile's bits); one on the BLAS is one call, whatever ``sub``.
    G, og, k = wg.shape
    O = G * og
    nob = (og + ob - 1) // ob
    npb = (P + pb - 1) // pb
    for job in nb.prange(n_img * G * nob * npb * sub):
        part = job % sub
        t = job // sub
        p0 = (t % npb) * pb
        r = t // npb
        o0 = (r % nob) * ob
        r //= nob
        g = r % G
        n = r // G
        p1 = min(P, p0 + pb)
        o1 = min(og, o0 + ob)
        if own.size and panel < 0:
            # the AVX2 GEMM takes the call's whole shape; a job computes some of its tiles
            tiles = haswell_gemm.tile_count(o1 - o0)
            first, last = part * tiles // sub, (part + 1) * tiles // sub
            if first == last:
                continue
            haswell_gemm.gemm(own, haswell_gemm.block_offset(g, o0, og, ob, k), o1 - o0, p1 - p0, k, b[0],
                              n * b_img + g * k * ldb + p0, ldb, out.reshape(-1),
                              (n * O + g * og + o0) * P + p0, P, first, last)
            r0 = haswell_gemm.row_tile(o1 - o0, first)[0]
            r1 = haswell_gemm.row_tile(o1 - o0, last - 1)
            for o in range(g * og + o0 + r0, g * og + o0 + r1[0] + r1[1]):
                _stages_row(out[n, o, p0:p1], o, codes, vecs, params)
            continue
        if own.size and (o1 - o0) * (p1 - p0) * k > microkernel.SMALL_MNK:
            mr = panel or microkernel.MR
            panels = (o1 - o0 + mr - 1) // mr
            first, last = part * panels // sub, (part + 1) * panels // sub
            if first == last:
                continue
            r0, r1 = o0 + first * mr, min(o1, o0 + last * mr)
            channel_microkernel.either_gemm(
                own, panel, microkernel.block_offset(g, o0, og, ob, k, mr) + first * k * mr,
                r1 - r0, p1 - p0, k, b[0], n * b_img + g * k * ldb + p0, ldb, out.reshape(-1),
                (n * O + g * og + r0) * P + p0, P, q, u)
            for o in range(g * og + r0, g * og + r1):
                _stages_row(out[n, o, p0:p1], o, codes, vecs, params)
            continue
        if part:
            continue
        gemm(101, 111, 111, o1 - o0, p1 - p0, k, np.float32(1.0),
             wg.ctypes.data + 4 * (g * og + o0) * k, k,
             b.ctypes.data + 4 * (n * b_img + g * k * ldb + p0), ldb, np.float32(0.0),
             out.ctypes.data + 4 * ((n * O + g * og + o0) * P + p0), P)
        for o in range(g * og + o0, g * og + o1):
            _stages_row(out[n, o, p0:p1], o, codes, vecs, params)


BLOCK_TILES_K = parallel.dual(_block_tiles)


def _wide_tiles(gemm, wg, cols, n_img, P, ob, cb, wide, out, codes, vecs, params):
    # Several images side by side: wide[g*og + o, c] (O, N*P) = wg[g] @ cols[g*k:, c] for one
    # (group, channel block, column block) per tile, then the tile's columns move to out
    # (N, O, P) image by image with the epilogue.
    G, og, k = wg.shape
    NP = n_img * P
    nob = (og + ob - 1) // ob
    ncb = (NP + cb - 1) // cb
    for t in nb.prange(G * nob * ncb):
        c0 = (t % ncb) * cb
        r = t // ncb
        o0 = (r % nob) * ob
        g = r // nob
        c1 = min(NP, c0 + cb)
        o1 = min(og, o0 + ob)
        gemm(101, 111, 111, o1 - o0, c1 - c0, k, np.float32(1.0),
             wg.ctypes.data + 4 * (g * og + o0) * k, k,
             cols.ctypes.data + 4 * (g * k * NP + c0), NP, np.float32(0.0),
             wide.ctypes.data + 4 * ((g * og + o0) * NP + c0), NP)
        for o in range(g * og + o0, g * og + o1):
            src = wide[o]
            n = c0 // P
            while n * P < c1:
                a = max(c0, n * P)
                b = min(c1, (n + 1) * P)
                _stages_row_from(src[a:b], out[n, o, a - n * P:b - n * P], o, codes, vecs, params)
                n += 1


WIDE_TILES_K = parallel.dual(_wide_tiles)


def one_tile_at_a_time(parallel_build: bool = True):
    """GEMM tiles handed out one at a time rather than in one fixed share per thread
    (Numba's default): a thread the OS deschedules then holds up one tile, not half the
    layer. The tiles, and so the results, stay the same. A serial build has no share to
    hand out (and setting the chunk size costs more than a small layer's GEMM)."""
    return parallel.chunksize(1) if parallel_build else contextlib.nullcontext()


def _round16(v: int, cap: int) -> int:
    return min(cap, -(-v // 16) * 16)


def use_winograd(x_shape, w_shape, stride, dilation, group, pad=(1, 1)) -> bool:
    """Whether :func:`conv2d` takes the Winograd F(2x2, 3x3) path for these shapes: 3x3 stride 1,
    and channels enough on both sides for the GEMMs to dominate the transforms (measured: from
    64 -> 128 channels on; 64 -> 64 and thinner layers are faster as im2col + GEMM)."""
    c, o = w_shape[1] * group, w_shape[0]
    if not (winograd.applicable(w_shape, stride, dilation, group) and c * o >= WINOGRAD_MIN * (c + o)):
        return False
    if x_shape is None:  # weights only: whether the layer can take it at all
        return True
    # and output tiles enough for the 16 GEMMs to be worth it (a 7x7 map gives only 16)
    oh, ow = x_shape[2] + 2 * pad[0] - 2, x_shape[3] + 2 * pad[1] - 2
    return winograd.tiles(x_shape, (oh, ow)) >= WINOGRAD_MIN_TILES


#: id(weight array) -> (weak reference to it, its Winograd transform), shared by every
#: executor: pruned copies of a model share their untouched arrays with the original, and
#: sensitivity analysis builds hundreds of such copies
_TRANSFORMS: dict[int, tuple] = {}


def winograd_weights(cache: dict, key, w, stride, dilation, group):
    """``winograd.transform_weights(w)`` when :func:`use_winograd` picks the layer, computed
    once per weight array while it lives (a replaced array is transformed anew)."""
    if not use_winograd(None, w.shape, stride, dilation, group):
        return None
    hit = cache.get(key)
    if hit is not None and hit[0] is w:
        return hit[1]
    shared = _TRANSFORMS.get(id(w))
    if shared is not None and shared[0]() is w:
        u = shared[1]
    else:
        u = winograd.transform_weights(w)
        try:
            ref = weakref.ref(w, lambda _, k=id(w): _TRANSFORMS.pop(k, None))
            _TRANSFORMS[id(w)] = (ref, u)
        except TypeError:  # an array type without weak references: per-executor cache only
            pass
    cache[key] = (w, u)
    return u


_NO_WEIGHTS = np.empty(0, F32)
#: (id(weight array), block) -> (weak reference to it, its microkernel panels)
_PACKED: dict[tuple, tuple] = {}


def own_gemm(w, wg, block, rows, cols, ldb, avx2=False, own=True):
    """(panels, q, u, panel) for the tiles to run our GEMM on, or an empty array when the BLAS
    is used: ours only where it gives the BLAS's bits (:func:`.microkernel.blocking`) and is
    faster for a tile of ``rows`` x ``cols`` (``worth_it`` of :mod:`.channel_microkernel`,
    then of :mod:`.microkernel`; ``panel`` is the former's panel rows, 0 for the latter). With
    ``avx2`` (a caller that takes :mod:`.haswell_gemm`'s tiles), on AVX2: that kernel where it
    reproduces the BLAS and is faster (``panel`` = its PANEL). The panels are packed once per
    weight array and channel block while the array lives. ``own`` False: the BLAS."""
    if not own:
        return _NO_WEIGHTS, 0, 0, 0
    blocking = microkernel.blocking()
    k = wg.shape[2]
    if blocking is None:
        if avx2 and haswell_gemm.USABLE and haswell_gemm.worth_it(rows, cols, k, ldb) \
                and haswell_gemm.enabled():
            return (packed_weights(w, wg, block, haswell_gemm.PANEL), haswell_gemm.GEMM_Q,
                    haswell_gemm.UNROLL_M, haswell_gemm.PANEL)
        return _NO_WEIGHTS, 0, 0, 0
    if channel_microkernel.worth_it(rows, cols, k, ldb):
        panel = channel_microkernel.panel_rows(block)
    elif microkernel.worth_it(rows, cols, k, ldb):
        panel = 0
    else:
        return _NO_WEIGHTS, 0, 0, 0
    return packed_weights(w, wg, block, panel or microkernel.MR), blocking[0], blocking[1], panel


def packed_weights(w, wg, block, mr):
    """``microkernel.pack_weights(wg, block, mr)`` (``haswell_gemm.pack_weights(wg, block)``
    for its negative PANEL), once per weight array while it lives."""
    key = (id(w), block, wg.shape, mr)
    hit = _PACKED.get(key)
    if hit is not None and hit[0]() is w:
        return hit[1]
    panels = haswell_gemm.pack_weights(wg, block) if mr < 0 else microkernel.pack_weights(wg, block, mr)
    try:
        _PACKED[key] = (weakref.ref(w, lambda _, k=key: _PACKED.pop(k, None)), panels)
    except TypeError:  # an array type without weak references: packed per call
        pass
    return panels


class ConvPlan:
    """What :func:`conv2d` chose for one input shape, weight arrays, epilogue and thread
    count (kernel, tiling, packed weights, epilogue arrays), kept so that a layer run again
    on the same shapes goes straight to its kernel: the choosing cost 20-40 us a call, a
    tenth of MobileNet v2's small layers at batch 1."""

    __slots__ = ("shape", "given", "geometry", "threads", "run")

    def __init__(self, shape, given, geometry, threads, run):
        self.shape, self.given, self.geometry, self.threads, self.run = shape, given, geometry, threads, run

    def fits(self, shape, given, geometry, threads) -> bool:
        return (shape == self.shape and threads == self.threads and geometry == self.geometry
                and all(a is b for a, b in zip(given, self.given)))


def conv2d(x, w, b=None, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1,
           epilogue: epi.Epilogue | None = None, winograd_u: np.ndarray | None = None,
           plans: dict | None = None, plan_key=None) -> np.ndarray:
    """x (N, C, H, W) float32, w (O, C/group, kh, kw), b (O,) or None -> (N, O, oh, ow).

    ``epilogue`` (per output channel, after the bias) is applied in the same pass.
    ``winograd_u``: ``winograd.transform_weights(w)``, cached by the caller, for the layers
    :func:`use_winograd` picks (computed here when not given).
    ``plans``: a dict where the :class:`ConvPlan` of this call is kept under ``plan_key``
    and reused while the input shape, the thread count, the geometry and the arrays (``w``,
    ``b``, ``epilogue``'s stage arrays, ``winograd_u``, by identity) stay the same. The
    arrays must not be changed in place meanwhile (the packed weights are not either).
    """
    # an epilogue's stage arrays are made anew when it changes: their identity stands for it
    given = (w, b, None if epilogue is None else epilogue.arrays(), winograd_u)
    geometry = (stride, pad, dilation, group)
    threads = parallel.threads()
    if plans is not None:
        hit = plans.get(plan_key)
        if hit is not None and hit.fits(x.shape, given, geometry, threads):
            return hit.run(x)
    args = (x.shape, w, b, stride, pad, dilation, group, epilogue, winograd_u, threads)
    run, own = _choose(*args)
    if own and fastest.enabled():
        # the same layer on the BLAS alone (the same bits): the faster one is kept, measured
        # on this machine (the rules of _choose were measured on a few)
        run = fastest.Fastest((run, _choose(*args, own=False)[0]))
    plan = ConvPlan(x.shape, given, geometry, threads, run)
    if plans is not None:
        plans[plan_key] = plan
    return plan.run(x)


def _choose(shape, w, b, stride, pad, dilation, group, epilogue, winograd_u, threads_now, own=True):
    """:func:`conv2d`'s choices for an input of ``shape``: (a function of the input that runs
    the chosen kernel, whether it runs one of our GEMM kernels); ``own`` False: the BLAS's
    GEMMs only."""
    N, C, H, W = shape
    O, cg, kh, kw = w.shape
    oh = out_size(H, kh, stride[0], pad[0], dilation[0])
    ow = out_size(W, kw, stride[1], pad[1], dilation[1])
    if oh <= 0 or ow <= 0:
        raise ValueError(f"kernel {kh}x{kw} with pad {pad} and dilation {dilation} leaves no output "
                         f"for a {H}x{W} input")
    P = oh * ow
    ep = _with_bias(b, epilogue, O)
    w = np.ascontiguousarray(w, F32)

    def contiguous(x):
        return np.ascontiguousarray(x, F32)

    if cg == 1 and group == C and group > 1:
        return (lambda x: depthwise_conv(contiguous(x), w, stride, pad, dilation, (oh, ow), ep)), False
    og = O // group
    k = cg * kh * kw
    K = group * k
    wg = w.reshape(group, og, k)
    gemm = blas.gemm()
    if gemm is None:
        return (lambda x: _conv2d_matmul(contiguous(x), wg, (kh, kw), stride, pad, dilation, (oh, ow),
                                         ep)), False
    arrays = (ep or epi.Epilogue(O)).arrays()
    codes, vecs, params = arrays
    # a small layer runs on the calling thread alone (see parallel.py)
    big = N * O * k * P >= parallel.MIN_PARALLEL_MACS
    threads = threads_now if big else 1
    kernel = 0 if threads > 1 else 1  # parallel or serial build, same tiles
    want = TILES if big else 1  # tiles to share out
    if use_winograd(shape, w.shape, stride, dilation, group, pad):
        transform = winograd.transform_weights(w) if winograd_u is None else winograd_u
        groups = winograd.blocked_groups(N, C, O, (oh, ow), threads)
        cols = winograd.gemm_columns(N, (oh, ow), groups)
        own_u = own_gemm(transform, transform, O, O, cols, cols, own=own)

        def run_winograd(x):
            with blas.single_threaded():
                return winograd.conv2d(gemm, contiguous(x), transform, pad, (oh, ow), arrays, threads,
                                       own_u, groups)
        return run_winograd, own_u[0].size > 0
    blocking = microkernel.blocking() if own else None
    if blocking is not None and direct_conv.use(shape, w.shape, stride, dilation, group, (oh, ow)):
        panel = channel_microkernel.panel_rows(O)
        packed = packed_weights(w, wg, O, panel)
        return (lambda x: direct_conv.conv2d(contiguous(x), packed, panel, w.shape, stride, pad, dilation,
                                             (oh, ow), arrays, threads, want, *blocking)), True
    pointwise = kh == kw == 1 and stride == (1, 1) and pad == (0, 0) and group == 1
    tiling, smallest = blas_tiling(N, group, og, k, oh, ow, want, threads)
    if blocking is not None and direct_conv_thin.use(w.shape, stride, group, smallest):
        packed = packed_weights(w, wg, O, direct_conv_thin.ROWS)
        return (lambda x: direct_conv_thin.conv2d(contiguous(x), packed, w.shape, stride, pad, dilation,
                                                  (oh, ow), arrays, threads, want, *blocking)), True
    if blocking is not None and pointwise_conv.use(w.shape, stride, pad, group, P, smallest):
        packed = packed_weights(w, wg, O, direct_conv_thin.ROWS)
        return (lambda x: pointwise_conv.conv2d(contiguous(x), packed, O, arrays, threads, want,
                                                *blocking)), True
    kind, ob, pb = tiling
    if kind == "block" and not pointwise and ob == og and pb == P and N >= 2 * threads:
        # whole-image calls either way (same calls, same bits): the row tiles im2col each
        # image into their own cache-resident buffer instead of the whole batch up front
        kind, pb = "rows", oh
    if kind == "rows":
        rows = pb
        T = rows * ow
        mine, q, u, panel = own_gemm(w, wg, og, og, T, T, avx2=True, own=own)

        def run_rows(x):
            x = contiguous(x)
            out = np.empty((N, O, oh, ow), F32)
            scratch = _thread_scratch(K * rows * ow)
            with blas.single_threaded(), one_tile_at_a_time(kernel == 0):
                ROW_TILES_K[kernel](gemm, x, wg, kh, kw, stride[0], stride[1], pad[0], pad[1],
                                    dilation[0], dilation[1], oh, ow, rows, out.reshape(N, O, P),
                                    codes, vecs, params, scratch, mine, q, u, panel)
            return out
        return run_rows, mine.size > 0
    if kind == "wide":
        # small maps, big weights: one GEMM over the batch side by side (weights packed
        # once per tile rather than once per image), then back to NCHW
        def run_wide(x):
            x = contiguous(x)
            out = np.empty((N, O, oh, ow), F32)
            with blas.single_threaded():
                cols = im2col_batch(x, (kh, kw), stride, pad, dilation, (oh, ow), parallel=threads > 1)
                with one_tile_at_a_time(kernel == 0):
                    WIDE_TILES_K[kernel](gemm, wg, cols, N, P, ob, pb, np.empty((O, N * P), F32),
                                         out.reshape(N, O, P), codes, vecs, params)
            return out
        return run_wide, False
    if pointwise:
        b_img, ldb = C * P, P  # the input is the column matrix
    else:
        b_img, ldb = P, N * P
    mine, q, u, panel = own_gemm(w, wg, ob, ob, pb, ldb, avx2=True, own=own)
    sub = 1
    if mine.size and threads_now > 1 and N * O * k * P >= OWN_PARALLEL_MACS:
        # our GEMM's tiles in panel jobs for every thread: the tiles the BLAS cut leaves
        # (its shapes fix the bits) may be too few or uneven (64, 64, 64 and 4 pixels of a
        # 14x14 map; one GEMV-like call for MobileNet v2's classifier)
        sub, kernel = threads_now, 0

    def run_blocks(x):
        x = contiguous(x)
        out = np.empty((N, O, oh, ow), F32)
        with blas.single_threaded():
            b_mat = x if pointwise else im2col_batch(x, (kh, kw), stride, pad, dilation, (oh, ow),
                                                     parallel=threads > 1)
            with one_tile_at_a_time(kernel == 0):
                BLOCK_TILES_K[kernel](gemm, wg, b_mat.reshape(1, -1), b_img, ldb, N, P, ob, pb,
                                      out.reshape(N, O, P), codes, vecs, params, mine, q, u, panel, sub)
        return out
    return run_blocks, mine.size > 0


def gemm_tiling(N, group, og, k, oh, ow, want):
    """How the im2col + GEMM paths cut a layer into GEMM calls for ``want`` tiles or more,
    from its shapes alone: ("rows", 0, output rows per tile), ("wide", channel block, column
    block) or ("block", channel block, pixel block)."""
    P = oh * ow
    K = group * k
    if 4 * K * N * P > ROW_TILES_ABOVE:
        rows = max(1, min(oh, TILE_BYTES // (4 * K * ow)))
        if N * -(-oh // rows) < want:
            rows = max(1, -(-N * oh // want))
        return "rows", 0, rows
    if N > 1 and og > P:
        ob, cb = og, N * P
        if want > 1:
            if og * k <= k * N * P:
                cb = _round16(-(-N * P // want), N * P)
            else:
                ob = _round16(-(-og // want), og)
        return "wide", ob, cb
    parts = -(-want // (N * group))
    ob, pb = og, P
    if parts > 1:  # split the side whose other operand is cheaper to repack per tile
        if og * k <= k * P:
            pb = _round16(-(-P // parts), P)
        else:
            ob = _round16(-(-og // parts), og)
    return "block", ob, pb


def blas_tiling(N, group, og, k, oh, ow, want, threads):
    """(:func:`gemm_tiling` for this layer and thread count, the multiply-adds of the smallest
    call of the cut for ``want`` tiles). One thread takes whole GEMMs (OpenBLAS repacks the
    weights per call: 4 pixel blocks cost 15-20% more than one) where that changes no bit:
    the BLAS's sums do not depend on the cut, and every call of either cut is above its
    small-matrix size."""
    tiling = gemm_tiling(N, group, og, k, oh, ow, want)
    smallest = smallest_gemm(tiling, N, group, og, k, oh, ow)
    if threads == 1 and want > 1 and smallest > microkernel.SMALL_MNK and microkernel.cuts_change_no_sum():
        return gemm_tiling(N, group, og, k, oh, ow, 1), smallest
    return tiling, smallest


def smallest_gemm(tiling, N, group, og, k, oh, ow) -> int:
    """Multiply-adds of the smallest GEMM call of ``tiling`` (:func:`gemm_tiling`)."""
    kind, ob, pb = tiling

    def last(size, block):
        return min(block, size - (-(-size // block) - 1) * block)

    if kind == "rows":
        return og * last(oh, pb) * ow * k
    cols = N * oh * ow if kind == "wide" else oh * ow
    return last(og, ob) * last(cols, pb) * k


def _conv2d_matmul(x, wg, kernel, stride, pad, dilation, out_hw, ep):
    """Fallback without a callable OpenBLAS: im2col + np.matmul per image and group."""
    N = x.shape[0]
    group, og, k = wg.shape
    P = out_hw[0] * out_hw[1]
    out = np.empty((N, group * og) + tuple(out_hw), F32)
    out3 = out.reshape(N, group * og, P)
    for n in range(N):
        cols = im2col_batch(x[n:n + 1], kernel, stride, pad, dilation, out_hw).reshape(group, k, P)
        for g in range(group):
            np.matmul(wg[g], cols[g], out=out3[n, g * og:(g + 1) * og])
    return epi.apply(out, ep)


def deconv2d(x, w, b=None, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1) -> np.ndarray:
    """Transposed convolution, w (C, O/group, kh, kw) as Caffe stores it -> (N, O, oh, ow)."""
    N, C, H, W = x.shape
    _, og, kh, kw = w.shape
    O = og * group
    oh = stride[0] * (H - 1) + dilation[0] * (kh - 1) + 1 - 2 * pad[0]
    ow = stride[1] * (W - 1) + dilation[1] * (kw - 1) + 1 - 2 * pad[1]
    cg = C // group
    out = np.empty((N, O, oh, ow), np.float32)
    wg = w.reshape(group, cg, og * kh * kw)
    for n in range(N):
        xg = x[n].reshape(group, cg, H * W)
        for g in range(group):
            cols = wg[g].T @ xg[g]  # (og*kh*kw, H*W)
            out[n, g * og:(g + 1) * og] = col2im(cols, (og, oh, ow), (kh, kw), stride, pad, dilation, (H, W))
    if b is not None:
        out += b.reshape(1, O, 1, 1)
    return out
