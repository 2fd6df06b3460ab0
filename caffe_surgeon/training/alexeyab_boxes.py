"""AlexeyAB Darknet's box arithmetic for training (``src/box.c`` at 59596d78, unchanged in
substance since December 2020): IoU that is 0 for disjoint boxes, GIoU, DIoU, CIoU, and
``dx_box_iou``, the hand-written gradient of the (G/D/C)IoU loss the ``[yolo]`` layer uses
as its box delta.

Scalars are float32 and the operations keep C's types: float arithmetic stays float32;
``pow``, ``atan``, ``exp`` and ``M_PI`` work in double and are rounded back where the C code
stores a float. The gradient is *not* the derivative of the loss: ``dx_box_iou`` keeps
AlexeyAB's choices (the width and height terms are not halved; CIoU's aspect term is
``alpha * 8/pi^2 * (atan(w_t/h_t) - atan(w/h)) * h`` without the ``1 / (w^2 + h^2)`` of the
paper), and those choices are what this module reproduces.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .darknet_boxes import box_iou

F32 = np.float32
#: ``iou_loss`` / ``iou_thresh_kind`` names of ``parse_yolo``; any other ``iou_loss`` text
#: is IOU there (only ``iou_thresh_kind`` warns)
KINDS = ("mse", "iou", "giou", "diou", "ciou")


class Box(NamedTuple):
    """Darknet's ``box``: centre x, y and width, height, float32, relative to the image."""

    x: np.float32
    y: np.float32
    w: np.float32
    h: np.float32


def as_box(values) -> Box:
    return Box(*(F32(v) for v in values[:4]))


def iou_or_zero(a, b) -> np.ndarray:
    """AlexeyAB ``box_iou``: pjreddie's ratio, but 0 where the intersection or the union is 0
    (pjreddie's would be 0/0 = NaN for two empty boxes). Broadcasts like
    :func:`.darknet_boxes.box_iou`."""
    r = box_iou(a, b)
    return np.where(np.isnan(r), F32(0), r).astype(F32)


def _enclosing(a: Box, b: Box):
    """``box_c``: the smallest box holding both, as (width, height)."""
    top = min(a.y - a.h / F32(2), b.y - b.h / F32(2))
    bot = max(a.y + a.h / F32(2), b.y + b.h / F32(2))
    left = min(a.x - a.w / F32(2), b.x - b.w / F32(2))
    right = max(a.x + a.w / F32(2), b.x + b.w / F32(2))
    return F32(right - left), F32(bot - top)


def _union(a: Box, b: Box) -> np.float32:
    """``box_union``: both areas less the intersection."""
    return F32(F32(a.w * a.h + b.w * b.h) - iou_inter(a, b))


def iou_inter(a: Box, b: Box) -> np.float32:
    """``box_intersection`` (0 when the boxes do not overlap)."""
    w = F32(min(a.x + a.w / F32(2), b.x + b.w / F32(2)) - max(a.x - a.w / F32(2), b.x - b.w / F32(2)))
    h = F32(min(a.y + a.h / F32(2), b.y + b.h / F32(2)) - max(a.y - a.h / F32(2), b.y - b.h / F32(2)))
    return F32(0) if w < 0 or h < 0 else F32(w * h)


def scalar_iou(a: Box, b: Box) -> np.float32:
    return F32(iou_or_zero(a, b))


def giou(a: Box, b: Box) -> np.float32:
    """``box_giou``: IoU minus the share of the enclosing box that the union leaves empty."""
    cw, ch = _enclosing(a, b)
    c, iou = F32(cw * ch), scalar_iou(a, b)
    if c == 0:
        return iou
    return F32(iou - F32((c - _union(a, b)) / c))


def diou(a: Box, b: Box) -> np.float32:
    """``box_diou``: IoU minus (centre distance^2 / enclosing diagonal^2) ** 0.6 (AlexeyAB's
    exponent; the paper has 1)."""
    cw, ch = _enclosing(a, b)
    c, iou = F32(cw * cw + ch * ch), scalar_iou(a, b)
    if c == 0:
        return iou
    d = F32((a.x - b.x) * (a.x - b.x) + (a.y - b.y) * (a.y - b.y))
    return F32(iou - F32(math.pow(float(F32(d / c)), 0.6)))


def _aspect_gap(a: Box, b: Box) -> float:
    """``atan(ar_gt) - atan(ar_pred)`` in double, ``b`` the truth."""
    return math.atan(float(F32(b.w / b.h))) - math.atan(float(F32(a.w / a.h)))


def ciou(a: Box, b: Box) -> np.float32:
    """``box_ciou`` (``b`` the truth): IoU minus the squared centre distance over the squared
    enclosing diagonal minus ``alpha * v``."""
    cw, ch = _enclosing(a, b)
    c, iou = F32(cw * cw + ch * ch), scalar_iou(a, b)
    if c == 0:
        return iou
    d = F32(F32((a.x - b.x) * (a.x - b.x) + (a.y - b.y) * (a.y - b.y)) / c)
    gap = _aspect_gap(a, b)
    v = F32(4 / (math.pi * math.pi) * gap * gap)
    alpha = F32(float(v) / (float(F32(F32(1) - iou + v)) + 0.000001))
    return F32(iou - F32(d + alpha * v))


def iou_kind(a: Box, b: Box, kind: str) -> np.float32:
    """``box_iou_kind``: the overlap measure ``iou_thresh_kind`` names."""
    return {"giou": giou, "diou": diou, "ciou": ciou}.get(kind, scalar_iou)(a, b)


def dx_box_iou(pred: Box, truth: Box, kind: str):
    """``dx_box_iou``: AlexeyAB's (dx, dy, dw, dh) for ``iou_loss`` = ``kind`` (iou, giou,
    diou or ciou), the direction that raises the overlap, before the ``exp`` of w, h and
    ``iou_normalizer``."""
    half = F32(2)
    pt, pb = pred.y - pred.h / half, pred.y + pred.h / half
    pl, pr = pred.x - pred.w / half, pred.x + pred.w / half
    pred_t, pred_b, pred_l, pred_r = min(pt, pb), max(pt, pb), min(pl, pr), max(pl, pr)
    tt, tb = truth.y - truth.h / half, truth.y + truth.h / half
    tl, tr = truth.x - truth.w / half, truth.x + truth.w / half
    X = F32((pred_b - pred_t) * (pred_r - pred_l))
    Xhat = F32((tb - tt) * (tr - tl))
    Ih = F32(min(pred_b, tb) - max(pred_t, tt))
    Iw = F32(min(pred_r, tr) - max(pred_l, tl))
    I = F32(Iw * Ih)
    U = F32(X + Xhat - I)
    S = F32((pred.x - truth.x) * (pred.x - truth.x) + (pred.y - truth.y) * (pred.y - truth.y))
    gcw = F32(max(pred_r, tr) - min(pred_l, tl))
    gch = F32(max(pred_b, tb) - min(pred_t, tt))
    gc = F32(gcw * gch)
    zero = F32(0)
    dX = {"t": -(pred_r - pred_l), "b": pred_r - pred_l, "l": -(pred_b - pred_t), "r": pred_b - pred_t}
    dI = {"t": -Iw if pred_t > tt else zero, "b": Iw if pred_b < tb else zero,
          "l": -Ih if pred_l > tl else zero, "r": Ih if pred_r < tr else zero}
    dU = {k: F32(dX[k] - dI[k]) for k in dX}
    dC = {"t": -gcw if pred_t < tt else zero, "b": gcw if pred_b > tb else zero,
          "l": -gch if pred_l < tl else zero, "r": gch if pred_r > tr else zero}
    p = {k: zero for k in dX}
    if U > 0:
        p = {k: F32(F32(U * dI[k] - I * dU[k]) / F32(U * U)) for k in dX}
    # the corner order of a box with a negative size (never, for decoded predictions)
    p["t"], p["b"] = (p["t"], p["b"]) if pt < pb else (p["b"], p["b"])
    p["l"], p["r"] = (p["l"], p["r"]) if pl < pr else (p["r"], p["r"])
    if kind == "giou":
        term = {k: F32(F32(gc * dU[k] - U * dC[k]) / F32(gc * gc)) for k in dX}
        if gc > 0:
            p = {k: F32(p[k] + term[k]) for k in dX}
        if Iw <= 0 or Ih <= 0:
            p = term
    ct, cb = min(pred.y - pred.h / half, tt), max(pred.y + pred.h / half, tb)
    cl, cr = min(pred.x - pred.w / half, tl), max(pred.x + pred.w / half, tr)
    Cw, Ch = F32(cr - cl), F32(cb - ct)
    C = F32(Cw * Cw + Ch * Ch)
    one = F32(1)
    dCw = (F32((one if pred_r > tr else zero) - (one if pred_l < tl else zero)), zero,
           F32((F32(.5) if pred_r > tr else zero) - (F32(-.5) if pred_l < tl else zero)), zero)
    dCh = (zero, F32((one if pred_b > tb else zero) - (one if pred_t < tt else zero)), zero,
           F32((F32(.5) if pred_b > tb else zero) - (F32(-.5) if pred_t < tt else zero)))
    px, py = F32(p["l"] + p["r"]), F32(p["t"] + p["b"])
    pw, ph = F32(p["r"] - p["l"]), F32(p["b"] - p["t"])
    if kind in ("diou", "ciou"):
        CC = F32(C * C)
        dist = (F32(F32(F32(2) * (truth.x - pred.x) * C - F32(F32(2) * Cw * dCw[0] + F32(2) * Ch * dCh[0]) * S) / CC),
                F32(F32(F32(2) * (truth.y - pred.y) * C - F32(F32(2) * Cw * dCw[1] + F32(2) * Ch * dCh[1]) * S) / CC),
                F32(F32(F32(2) * Cw * dCw[2] + F32(2) * Ch * dCh[2]) * S / CC),
                F32(F32(F32(2) * Cw * dCw[3] + F32(2) * Ch * dCh[3]) * S / CC))
        extra_w = extra_h = zero
        if kind == "ciou":
            gap = _aspect_gap(pred, truth)
            v = F32(4 / (math.pi * math.pi) * gap * gap)
            alpha = F32(float(v) / (float(F32(one - F32(I / U) + v)) + 0.000001))
            extra_w = F32(alpha * F32(8 / (math.pi * math.pi) * gap * float(pred.h)))
            extra_h = F32(alpha * F32(-8 / (math.pi * math.pi) * gap * float(pred.w)))
        if C > 0:
            px, py = F32(px + dist[0]), F32(py + dist[1])
            pw, ph = F32(pw + F32(dist[2] + extra_w)), F32(ph + F32(dist[3] + extra_h))
        if Iw <= 0 or Ih <= 0:
            px, py, pw, ph = dist[0], dist[1], F32(dist[2] + extra_w), F32(dist[3] + extra_h)
    return px, py, pw, ph
