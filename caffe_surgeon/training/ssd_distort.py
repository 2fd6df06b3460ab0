"""The SSD fork's photometric distortion (``im_transforms.cpp`` ``ApplyDistort``) on uint8
BGR images, with OpenCV's 8-bit arithmetic written out in NumPy.

Order (one uniform draw picks it): brightness, contrast, saturation, hue, channel order;
or brightness, saturation, hue, contrast, channel order. Each step happens with its
probability and draws its amount uniformly in its range:

* brightness: ``convertTo(.., 1, delta)``, delta in [-brightness_delta, brightness_delta];
* contrast: ``convertTo(.., delta, 0)``, delta in [contrast_lower, contrast_upper] (skipped
  when |delta - 1| <= 1e-3);
* saturation / hue: to OpenCV's 8-bit HSV (H in [0, 180)), S scaled by delta or H shifted
  by delta (saturated to [0, 255], not wrapped, as the fork's ``convertTo`` does), back to
  BGR. The fork's test ``fabs(delta - 1.f) != 1e-3`` means saturation nearly always makes
  the HSV round trip, even for delta 1;
* channel order: a uniform permutation of B, G, R.

``convertTo`` rounds ``x * alpha + beta`` (float) to nearest, ties to even, and saturates.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .ssd_sampler import uniform

F32 = np.float32
_HSV_SHIFT = 12
_FIELDS = {"brightness_prob": 0.0, "brightness_delta": 0.0, "contrast_prob": 0.0,
           "contrast_lower": 0.0, "contrast_upper": 0.0, "hue_prob": 0.0, "hue_delta": 0.0,
           "saturation_prob": 0.0, "saturation_lower": 0.0, "saturation_upper": 0.0,
           "random_order_prob": 0.0}


def settings(p: dict) -> dict:
    """``distort_param`` with its defaults, checked as the fork's CHECKs do."""
    unknown = set(p) - set(_FIELDS)
    if unknown:
        raise ModelError(f"distort_param.{sorted(unknown)[0]} is not a DistortionParameter field")
    s = {k: float(p.get(k, d)) for k, d in _FIELDS.items()}
    for lo, hi in (("contrast_lower", "contrast_upper"), ("saturation_lower", "saturation_upper")):
        if s[lo] < 0 or s[hi] < s[lo]:
            raise ModelError(f"distort_param.{lo} {s[lo]:g} / {hi} {s[hi]:g}: the fork needs "
                             f"0 <= {lo} <= {hi}")
    for k in ("brightness_delta", "hue_delta"):
        if s[k] < 0:
            raise ModelError(f"distort_param.{k} {s[k]:g} must be non-negative")
    return s


def convert(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """``Mat::convertTo(uchar, alpha, beta)``: float ``x * alpha + beta``, rounded half to
    even, saturated."""
    y = x.astype(F32) * F32(alpha) + F32(beta)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _tables():
    i = np.arange(1, 256, dtype=np.float64)
    sdiv = np.concatenate([[0], np.rint((255 << _HSV_SHIFT) / i)]).astype(np.int64)
    hdiv = np.concatenate([[0], np.rint((180 << _HSV_SHIFT) / (6.0 * i))]).astype(np.int64)
    return sdiv.astype(np.int32), hdiv.astype(np.int32)


_SDIV, _HDIV = _tables()


def bgr_to_hsv(img: np.ndarray) -> np.ndarray:
    """``cvtColor(COLOR_BGR2HSV)`` on uint8 (3, H, W): OpenCV's fixed-point tables."""
    b, g, r = (img[k].astype(np.int32) for k in range(3))  # products stay below 2^31
    v = np.maximum(np.maximum(b, g), r)
    diff = v - np.minimum(np.minimum(b, g), r)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> _HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + half) >> _HSV_SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([np.clip(h, 0, 255), s, v]).astype(np.uint8)


_SECTORS = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


def hsv_to_bgr(hsv: np.ndarray) -> np.ndarray:
    """``cvtColor(COLOR_HSV2BGR)`` on uint8 (3, H, W), OpenCV's scalar 8-bit definition:
    float S and V over 255, hue x 6/180 mod 6, the sector table, then x 255 rounded.

    This is what OpenCV 2.4 / 3.x (the fork's era) give everywhere and OpenCV 4 gives on
    the scalar path; OpenCV 4's vectorised blocks (4 x SIMD lanes pixels of a row) truncate
    instead of rounding, so a fork built on OpenCV 4 can be one level lower there."""
    h = hsv[0].astype(F32) * F32(6 / 180)
    s = hsv[1].astype(F32) * F32(1 / 255)
    v = hsv[2].astype(F32) * F32(1 / 255)
    h = np.fmod(h, F32(6)).astype(F32)
    sector = np.floor(h).astype(np.int64)
    h = (h - sector.astype(F32)).astype(F32)
    bad = (sector < 0) | (sector >= 6)
    sector, h = np.where(bad, 0, sector), np.where(bad, F32(0), h).astype(F32)
    tab = np.stack([v, v * (F32(1) - s), v * (F32(1) - s * h), v * (F32(1) - s * (F32(1) - h))])
    idx = _SECTORS[sector]  # (H, W, 3): which tab entry each of b, g, r takes
    out = np.take_along_axis(tab, np.moveaxis(idx, -1, 0), axis=0)
    out = np.where((s == 0)[None], v[None], out).astype(F32)
    return np.clip(np.rint(out * F32(255)), 0, 255).astype(np.uint8)


def _brightness(img, s, rng):
    if uniform(rng, 0.0, 1.0) < F32(s["brightness_prob"]):
        d = uniform(rng, -s["brightness_delta"], s["brightness_delta"])
        if abs(d) > 0:
            return convert(img, 1.0, d)
    return img


def _contrast(img, s, rng):
    if uniform(rng, 0.0, 1.0) < F32(s["contrast_prob"]):
        d = uniform(rng, s["contrast_lower"], s["contrast_upper"])
        if abs(d - F32(1)) > F32(1e-3):
            return convert(img, d, 0.0)
    return img


def _saturation(img, s, rng):
    if uniform(rng, 0.0, 1.0) < F32(s["saturation_prob"]):
        d = uniform(rng, s["saturation_lower"], s["saturation_upper"])
        if abs(d - F32(1)) != F32(1e-3):  # the fork's test: nearly always true
            hsv = bgr_to_hsv(img)
            hsv[1] = convert(hsv[1], d, 0.0)
            return hsv_to_bgr(hsv)
    return img


def _hue(img, s, rng):
    if uniform(rng, 0.0, 1.0) < F32(s["hue_prob"]):
        d = uniform(rng, -s["hue_delta"], s["hue_delta"])
        if abs(d) > 0:
            hsv = bgr_to_hsv(img)
            hsv[0] = convert(hsv[0], 1.0, d)
            return hsv_to_bgr(hsv)
    return img


def _order(img, s, rng):
    if uniform(rng, 0.0, 1.0) < F32(s["random_order_prob"]):
        return np.ascontiguousarray(img[rng.permutation(3)])
    return img


def distort(img: np.ndarray, s: dict, rng: np.random.Generator) -> np.ndarray:
    """``ApplyDistort`` on a uint8 BGR (3, H, W) image."""
    if img.shape[0] != 3:
        raise ModelError(f"distort_param needs 3-channel (BGR) images, got {img.shape[0]} "
                         "channel(s) (the fork converts to HSV)")
    steps = (_brightness, _contrast, _saturation, _hue, _order) \
        if uniform(rng, 0.0, 1.0) > F32(0.5) else \
        (_brightness, _saturation, _hue, _contrast, _order)
    for step in steps:
        img = step(img, s, rng)
    return img
