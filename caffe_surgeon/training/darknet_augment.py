"""The image half of Darknet's detection augmentation, operation by operation in float32.

pjreddie darknet (2018, the Debian package), ``src/image.c``:

* :func:`place_image`: ``place_image`` - the source scaled to ``w x h`` by
  ``bilinear_interpolate`` (pixels outside the source read as 0, so the right and
  bottom edges blend with black) and written at ``(dx, dy)`` into the canvas, pixels
  falling outside the canvas dropped. Its size and offset are C ``int`` parameters:
  the caller's floats are truncated, while the boxes keep the floats.
* :func:`distort_image`: ``rgb_to_hsv``, saturation and value scaled, hue shifted
  with wrap-around, ``hsv_to_rgb``, ``constrain_image`` (clip to [0, 1]).
* :func:`flip_image`: mirror left-right.

Darknet's Makefile builds with ``-Ofast``, so the library does not compute exactly
what the C source says: a division by a loop invariant becomes a multiplication by
its reciprocal and some sums are regrouped. What matters here was read from the
disassembly of the Debian ``libdarknet.so`` and is followed as compiled, so the
NumPy versions give libdarknet's bits (the tests compare them through ctypes):

* ``place_image`` scales ``x * (im.w * (1/w))``, takes ``1 - dx`` as
  ``(ix + 1) - rx`` and sums ``(1-dx) * (p00 (1-dy) + p01 dy) + (dx (1-dy)) p10 +
  (dx dy) p11``;
* ``rgb_to_hsv`` divides the hue by 6 as ``h * (1/6.)`` in double.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32


def place_image(im: np.ndarray, w: int, h: int, dx: int, dy: int, canvas: np.ndarray) -> None:
    """Darknet ``place_image``: ``im`` (C, H, W) scaled to ``w x h`` and written into
    ``canvas`` (C, CH, CW) at column ``dx``, row ``dy``, in place.

    Args:
        im: float32 (C, H, W) source.
        w, h, dx, dy: ints, as the C function's parameters.
        canvas: float32 (C, CH, CW), changed in place.
    """
    c, ih, iw = im.shape
    if w <= 0 or h <= 0:
        return
    # bilinear_interpolate reads 0 outside the source: pad two zero rows/columns
    # (rx can round up to exactly iw, and then ix + 1 is iw + 1)
    padded = np.zeros((c, ih + 2, iw + 2), F32)
    padded[:, :ih, :iw] = im
    one = F32(1)
    rx = np.arange(w, dtype=F32) * (F32(iw) * (one / F32(w)))  # x * (im.w * (1/w)), as compiled
    ry = np.arange(h, dtype=F32) * (F32(ih) * (one / F32(h)))
    ix, iy = np.floor(rx).astype(np.int64), np.floor(ry).astype(np.int64)
    fx, fy = rx - ix.astype(F32), ry - iy.astype(F32)
    gx0 = ((ix.astype(F32) + one) - rx)[None, :]  # 1 - dx, as compiled
    gy0 = ((iy.astype(F32) + one) - ry)[:, None]
    gx1, gy1 = fx[None, :], fy[:, None]
    rows0, rows1 = padded[:, iy, :], padded[:, iy + 1, :]
    column = rows0[:, :, ix] * gy0 + rows1[:, :, ix] * gy1
    val = gx0 * column
    val = val + (gx1 * gy0) * rows0[:, :, ix + 1]
    val = val + (gx1 * gy1) * rows1[:, :, ix + 1]
    _, ch, cw = canvas.shape
    x0, y0 = max(0, -dx), max(0, -dy)  # set_pixel drops what falls outside the canvas
    x1, y1 = min(w, cw - dx), min(h, ch - dy)
    if x1 > x0 and y1 > y0:
        canvas[:, dy + y0:dy + y1, dx + x0:dx + x1] = val[:, y0:y1, x0:x1]


def rgb_to_hsv(im: np.ndarray) -> np.ndarray:
    """Darknet ``rgb_to_hsv`` of a (3, H, W) float32 image; returns the HSV planes.

    A grey pixel (max == min > 0) gets hue 0/0 = NaN, as in C; its saturation is 0,
    so :func:`hsv_to_rgb` never reads that hue.
    """
    r, g, b = im[0], im[1], im[2]
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    delta = mx - mn
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(mx == 0, F32(0), delta / mx)
        h = np.where(r == mx, (g - b) / delta,
                     np.where(g == mx, F32(2) + (b - r) / delta, F32(4) + (r - g) / delta))
    h = np.where(h < 0, h + F32(6), h)
    h = (h.astype(np.float64) * (1. / 6.)).astype(F32)  # h / 6. as compiled: double, reciprocal
    h = np.where(mx == 0, F32(0), h)
    return np.stack([h, s.astype(F32), mx]).astype(F32, copy=False)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Darknet ``hsv_to_rgb`` of (3, H, W) float32 HSV planes; returns RGB (unclipped)."""
    h6 = F32(6) * hsv[0]
    s, v = hsv[1], hsv[2]
    with np.errstate(invalid="ignore"):
        index = np.floor(np.nan_to_num(h6, nan=0.0)).astype(np.int64)
    one = F32(1)
    f = h6 - index.astype(F32)
    p = v * (one - s)
    q = v * (one - s * f)
    t = v * (one - s * (one - f))
    # index 0..4 pick their sector; everything else (5, and 6 when h == 1) the last one
    choices_r = [v, q, p, p, t]
    choices_g = [t, v, v, q, p]
    choices_b = [p, p, t, v, v]
    conds = [index == k for k in range(5)]
    r = np.select(conds, choices_r, default=v)
    g = np.select(conds, choices_g, default=p)
    b = np.select(conds, choices_b, default=q)
    grey = s == 0
    return np.stack([np.where(grey, v, r), np.where(grey, v, g),
                     np.where(grey, v, b)]).astype(F32, copy=False)


def distort_image(im: np.ndarray, hue: float, sat: float, val: float) -> np.ndarray:
    """Darknet ``distort_image``: saturation and value scaled, hue shifted (wrapping
    once into [0, 1]), clipped to [0, 1]. Returns a new (3, H, W) float32 image."""
    hsv = rgb_to_hsv(im)
    hsv[1] = hsv[1] * F32(sat)
    hsv[2] = hsv[2] * F32(val)
    h = hsv[0] + F32(hue)
    h = np.where(h > 1, h - F32(1), h)
    hsv[0] = np.where(h < 0, h + F32(1), h)
    return np.clip(hsv_to_rgb(hsv), F32(0), F32(1))


def flip_image(im: np.ndarray) -> np.ndarray:
    """Darknet ``flip_image``: every row mirrored left-right."""
    return np.ascontiguousarray(im[:, :, ::-1])
