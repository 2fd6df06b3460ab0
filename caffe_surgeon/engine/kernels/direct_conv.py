"""Direct convolution on the channel micro-kernel, for kxk layers on large maps.

im2col + GEMM copies every input value kh*kw times into a column matrix and then
has OpenBLAS pack it again. Here the micro-kernel of :mod:`.channel_microkernel`
reads the (zero-padded) input in place instead: for tap k = (c, ky, kx), in the
order of im2col's rows, pixel r of a tile reads ``xp[base + offs[k] + r*stride]``,
with ``offs[k] = c*Hp*Wp + ky*dh*Wp + kx*dw`` (an indirection table built once per
call). A pass covers a few output rows (or a stretch of one long row); per
panel of output channels it runs every tap over every tile of the pass, then
writes the sums to the NCHW rows and applies the epilogue there.

The sums are the GEMM's, in the same k order and K blocks, so the results are
those of the im2col + OpenBLAS path bit for bit (:func:`.microkernel.blocking`
must hold). Measured on Sapphire Rapids, one thread: 1.2-1.4x faster than that
path on ResNet-50's 7x7 stem and its 64-channel 3x3 layers at 56x56, 1.1-1.2x on
yolov3-tiny's 32 -> 64 layer at 104x104; no faster for 16- or 32-channel layers,
which therefore keep the im2col path (:func:`use`).
"""
from __future__ import annotations

import contextlib
import functools

import numba as nb
import numpy as np

from . import parallel
from .channel_microkernel import (LANES, NB, ONE_PIXEL_BELOW, _PIXELS48, _PIXELS64, _one_taps48,
                                  _one_taps64, _put_transposed, _taps48, _taps64, k_schedule,
                                  panel_rows)
from .epilogue import _stages_row

F32 = np.float32
#: output pixels at least (smaller maps take im2col + the channel GEMM, which covers them)
MIN_PIXELS = 201
#: taps at least: with fewer, a tile's k loop is too short for its fixed costs
MIN_TAPS = 64


def use(x_shape, w_shape, stride, dilation, group, out_hw) -> bool:
    """Whether this convolution takes the direct path (given that our kernels give the
    BLAS's bits here): kxk (not 1x1), ungrouped, 48 output channels or more (no more than a
    quarter of a panel padding), enough taps, a large output map."""
    O, cg, kh, kw = w_shape
    if group != 1 or kh * kw == 1 or O < 48 or cg * kh * kw < MIN_TAPS:
        return False
    panel = panel_rows(O)
    return -(-O // panel) * panel <= O * 5 // 4 and out_hw[0] * out_hw[1] >= MIN_PIXELS


@functools.lru_cache(maxsize=256)  # the same geometry every pass: 40-55 us a call to build
def tap_offsets(C, kh, kw, Hp, Wp, dh, dw) -> np.ndarray:
    """offs[(c*kh + ky)*kw + kx] = c*Hp*Wp + ky*dh*Wp + kx*dw (int64)."""
    c, ky, kx = np.meshgrid(np.arange(C, dtype=np.int64), np.arange(kh, dtype=np.int64),
                            np.arange(kw, dtype=np.int64), indexing="ij")
    return (c * Hp * Wp + ky * dh * Wp + kx * dw).reshape(-1)


@nb.njit(cache=True, nogil=True, inline="always")
def _pass_shape(ow, pixels):
    """(row segment, rows per pass): whole rows while they fit NB pixels of tiles, else
    stretches of one row."""
    if ow >= NB:
        return (NB // pixels) * pixels, 1
    tiles = (ow + pixels - 1) // pixels
    return ow, max(1, NB // (tiles * pixels))


def _passes(ap, panel, xp, offs, Hp, Wp, sh, sw, K, oh, ow, seg, rows_per_pass, out, codes, vecs,
            params, q, u):
    # xp (N, C, Hp, Wp) padded input, flat; out (N, O, oh*ow); one pass (``rows_per_pass``
    # output rows, or a ``seg`` stretch of one) per prange step
    N, O = out.shape[0], out.shape[1]
    P = oh * ow
    pixels = _PIXELS48 if panel == 48 else _PIXELS64
    segs = (ow + seg - 1) // seg
    row_groups = (oh + rows_per_pass - 1) // rows_per_pass
    per_image = row_groups * segs
    tiles_max = (min(seg, ow) + pixels - 1) // pixels
    width = rows_per_pass * tiles_max * pixels
    panels = (O + panel - 1) // panel
    img = xp.shape[0] // N
    flat = out.reshape(-1)
    steps = k_schedule(K, q, u)
    for job in nb.prange(N * per_image):
        n = job // per_image
        r0 = ((job % per_image) // segs) * rows_per_pass
        xs = (job % segs) * seg
        r1 = min(oh, r0 + rows_per_pass)
        xe = min(ow, xs + seg)
        tiles = (xe - xs + pixels - 1) // pixels
        t = np.empty((width + LANES) * panel, np.float32)  # 16-pixel write-back blocks read past width
        s = np.empty(width * panel, np.float32)
        for p in range(panels):
            for i in range(steps.shape[0]):
                k, sc, finish, resume = steps[i, 0], steps[i, 1], steps[i, 2], steps[i, 3]
                a_at = (p * K + k) * panel
                for y in range(r0, r1):
                    for j in range(tiles):
                        x0 = xs + j * pixels
                        b_at = n * img + y * sh * Wp + x0 * sw
                        t_at = ((y - r0) * tiles + j) * pixels * panel
                        cols = min(pixels, xe - x0)
                        if cols < ONE_PIXEL_BELOW:  # a row's last 1-3 pixels (19 = 3 x 6 + 1)
                            for c in range(cols):
                                if panel == 48:
                                    _one_taps48(ap, a_at, xp, b_at + c * sw, sw, offs, k, sc, 1, t,
                                                t_at + c * panel, finish, s, resume)
                                else:
                                    _one_taps64(ap, a_at, xp, b_at + c * sw, sw, offs, k, sc, 1, t,
                                                t_at + c * panel, finish, s, resume)
                        elif panel == 48:
                            _taps48(ap, a_at, xp, b_at, sw, offs, k, sc, cols, t, t_at, finish, s, resume)
                        else:
                            _taps64(ap, a_at, xp, b_at, sw, offs, k, sc, cols, t, t_at, finish, s, resume)
            rows = min(panel, O - p * panel)
            for y in range(r0, r1):
                at = ((y - r0) * tiles * pixels - xs) * panel
                for i0 in range(0, rows, LANES):
                    for x0 in range(xs, xe, LANES):
                        _put_transposed(t, at + x0 * panel + i0, panel, flat,
                                        (n * O + p * panel + i0) * P + y * ow + x0, P,
                                        min(LANES, rows - i0), min(LANES, xe - x0))
            for o in range(p * panel, p * panel + rows):
                for y in range(r0, r1):
                    _stages_row(out[n, o, y * ow + xs:y * ow + xe], o, codes, vecs, params)


PASSES_K = parallel.dual(_passes)


def conv2d(x, packed, panel, w_shape, stride, pad, dilation, out_hw, ep_arrays, threads, jobs, q, u):
    """x (N, C, H, W) float32 contiguous; ``packed``: the weights as
    ``microkernel.pack_weights(w.reshape(1, O, -1), None, panel)``; passes of whole rows
    cut in a multiple of ``jobs`` where the map allows (the thread split; it never changes
    a result) -> (N, O, oh, ow)."""
    N, C, H, W = x.shape
    O, _, kh, kw = w_shape
    oh, ow = out_hw
    ph, pw = pad
    Hp, Wp = H + 2 * ph, W + 2 * pw
    if ph or pw:
        xp = np.zeros((N, C, Hp, Wp), F32)
        xp[:, :, ph:ph + H, pw:pw + W] = x
    else:
        xp = x
    offs = tap_offsets(C, kh, kw, Hp, Wp, dilation[0], dilation[1])
    seg, rows = _pass_shape(ow, _PIXELS48 if panel == 48 else _PIXELS64)
    if seg >= ow:  # whole rows: share them out evenly (3 passes on 2 threads ran at 1.2x)
        rows = -(-oh // min(oh, parallel.balanced_passes(N, -(-oh // rows), jobs)))
    out = np.empty((N, O, oh, ow), F32)
    kernel = PASSES_K[0] if threads > 1 else PASSES_K[1]
    with parallel.chunksize(1) if threads > 1 else contextlib.nullcontext():
        kernel(packed, panel, xp.reshape(-1), offs, Hp, Wp, stride[0], stride[1], C * kh * kw, oh, ow,
               seg, rows, out.reshape(N, O, oh * ow), *ep_arrays, q, u)
    return out
