"""1x1 convolutions on large maps: the thin path's pixel tile on packed blocks of the input.

A 1x1 layer is a GEMM whose columns are the input's channel rows, ``H*W`` apart: read in
place, each k step of a tile touches another page, and OpenBLAS (which packs them per
call, with the weights) ran ResNet-50's 56x56 and 28x28 1x1 layers at 85-115 GFLOP/s. Here
a pass packs a few 48-pixel blocks of the input once, k-major (``buf[tile, k, 48]``), and
runs :func:`.direct_conv_thin._tile` (8 output channels x 48 pixels) over them for every
panel of the weights, which are packed once per layer. Full tiles store straight into the
NCHW output rows (the ragged last tile of a map goes through a small buffer), and the
epilogue runs on each panel's rows while they are in cache.

The sums are OpenBLAS's, bit for bit (its K blocks, :func:`.channel_microkernel.k_schedule`),
where the GEMM path's calls are all above its small-matrix size (:func:`use`).
"""
from __future__ import annotations

import contextlib

import numba as nb
import numpy as np

from . import parallel
from .channel_microkernel import k_schedule
from .direct_conv_thin import ROWS, WIDTH, _tile
from .epilogue import _stages_row
from .microkernel import SMALL_MNK

F32 = np.float32
#: bytes of packed input per pass (with a weight panel's slice, in L2 while every panel
#: passes over it)
PASS_BYTES = 192 << 10
#: maps up to this many pixels go to the channel micro-kernel (:mod:`.channel_microkernel`)
MIN_PIXELS = 201
#: input channels at most: with more, OpenBLAS's deeper K blocks were as fast (0.9-1.05x)...
MAX_CHANNELS_IN = 256
#: ...unless the layer has this many output channels or fewer (MobileNet v2's 384 -> 64 on
#: 28x28: 1.22x; 384 -> 96: 0.99x; ResNet-50's 512 -> 128: 0.94x)
MAX_CHANNELS_OUT_DEEP = 64


def use(w_shape, stride, pad, group, pixels, smallest_gemm: int) -> bool:
    """Whether this convolution takes the packed pointwise path (given that our kernels give
    the BLAS's bits here): 1x1, stride 1, no padding, ungrouped, output channels a multiple
    of the tile's 8, at most MAX_CHANNELS_IN input channels (any number into at most
    MAX_CHANNELS_OUT_DEEP outputs), a map over MIN_PIXELS, and every call of the GEMM path
    above OpenBLAS's small-matrix size."""
    O, C, kh, kw = w_shape
    return (kh == kw == 1 and tuple(stride) == (1, 1) and tuple(pad) == (0, 0) and group == 1
            and O % ROWS == 0 and (C <= MAX_CHANNELS_IN or O <= MAX_CHANNELS_OUT_DEEP)
            and pixels >= MIN_PIXELS and smallest_gemm > SMALL_MNK)


def pass_tiles(C: int) -> int:
    """48-pixel tiles per pass: their packed input within PASS_BYTES."""
    return max(1, PASS_BYTES // (4 * C * WIDTH))


def _passes(ap, x, per_pass, out, codes, vecs, params, q, u):
    # x (N, C, P) input, out (N, O, P); one pass (per_pass tiles of one image) per prange step
    N, C, P = x.shape
    O = out.shape[1]
    tiles = (P + WIDTH - 1) // WIDTH
    passes = (tiles + per_pass - 1) // per_pass
    steps = k_schedule(C, q, u)
    offs = np.arange(C) * WIDTH
    flat = out.reshape(-1)
    lds = per_pass * WIDTH
    for job in nb.prange(N * passes):
        n = job // passes
        t0 = (job % passes) * per_pass
        t1 = min(tiles, t0 + per_pass)
        buf = np.empty(per_pass * C * WIDTH, np.float32)
        for j in range(t0, t1):
            p0 = j * WIDTH
            cols = min(WIDTH, P - p0)
            base = (j - t0) * C * WIDTH
            for k in range(C):
                src = x[n, k, p0:p0 + cols]
                dst = buf[base + k * WIDTH:base + (k + 1) * WIDTH]
                for i in range(cols):
                    dst[i] = src[i]
                for i in range(cols, WIDTH):
                    dst[i] = 0.0
        s = np.empty(ROWS * lds, np.float32)
        tail = np.empty(ROWS * WIDTH, np.float32)  # the map's ragged last tile
        p_end = min(P, t1 * WIDTH)
        for p in range(O // ROWS):
            for i in range(steps.shape[0]):
                k, sc, finish, resume = steps[i, 0], steps[i, 1], steps[i, 2], steps[i, 3]
                for j in range(t0, t1):
                    p0 = j * WIDTH
                    if p0 + WIDTH <= P:
                        _tile(ap, (p * C + k) * ROWS, buf, (j - t0) * C * WIDTH, offs, k, sc, flat,
                              (n * O + p * ROWS) * P + p0, P, finish, s, (j - t0) * WIDTH, lds, resume)
                    else:
                        _tile(ap, (p * C + k) * ROWS, buf, (j - t0) * C * WIDTH, offs, k, sc, tail,
                              0, WIDTH, finish, s, (j - t0) * WIDTH, lds, resume)
            if p_end < t1 * WIDTH:
                p0 = (t1 - 1) * WIDTH
                for r in range(ROWS):
                    d = out[n, p * ROWS + r, p0:P]
                    for i in range(P - p0):
                        d[i] = tail[r * WIDTH + i]
            for o in range(p * ROWS, (p + 1) * ROWS):
                _stages_row(out[n, o, t0 * WIDTH:p_end], o, codes, vecs, params)


PASSES_K = parallel.dual(_passes)


def conv2d(x, packed, O, ep_arrays, threads, jobs, q, u):
    """x (N, C, H, W) float32 contiguous; ``packed``: the (O, C) weights as
    ``microkernel.pack_weights(w.reshape(1, O, C), None, ROWS)``; at least ``jobs`` passes
    where the map allows (the thread split; it never changes a result) -> (N, O, H, W)."""
    N, C, H, W = x.shape
    P = H * W
    tiles = -(-P // WIDTH)
    per_pass = -(-tiles // parallel.balanced_passes(N, -(-tiles // pass_tiles(C)), jobs))
    out = np.empty((N, O, H, W), F32)
    kernel = PASSES_K[0] if threads > 1 else PASSES_K[1]
    with parallel.chunksize(1) if threads > 1 else contextlib.nullcontext():
        kernel(packed, x.reshape(N, C, P), per_pass, out.reshape(N, O, P), *ep_arrays, q, u)
    return out
