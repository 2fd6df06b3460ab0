"""Greedy non-maximum suppression of Caffe SSD (``ApplyNMSFast``), compiled.

The candidates come sorted best first; each is kept when its IoU with every box
kept so far is at most the (adaptive) threshold. Arithmetic in float64 with the
formula of ``reference.nms_fast`` (clipped widths, IoU 0 without overlap), and
NaN treated the same way (a NaN coordinate propagates through max/min; a NaN
overlap counts as none; a NaN IoU is not "<=" the threshold).
"""
from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True, inline="always")
def _max(a, b):
    if a != a or b != b:
        return np.nan
    return a if a > b else b


@nb.njit(cache=True, nogil=True, inline="always")
def _min(a, b):
    if a != a or b != b:
        return np.nan
    return a if a < b else b


@nb.njit(cache=True, nogil=True, inline="always")
def _area(b0, b1, b2, b3):
    return _max(b2 - b0, 0.0) * _max(b3 - b1, 0.0)


@nb.njit(cache=True, nogil=True)
def _greedy(boxes, order, threshold, eta, kept):
    n_kept = 0
    thr = threshold
    for t in range(order.shape[0]):
        idx = order[t]
        b0, b1, b2, b3 = boxes[idx, 0], boxes[idx, 1], boxes[idx, 2], boxes[idx, 3]
        area = _area(b0, b1, b2, b3)
        keep = True
        for k in range(n_kept):
            o = kept[k]
            o0, o1, o2, o3 = boxes[o, 0], boxes[o, 1], boxes[o, 2], boxes[o, 3]
            inter = _max(_min(b2, o2) - _max(b0, o0), 0.0) * _max(_min(b3, o3) - _max(b1, o1), 0.0)
            union = area + _area(o0, o1, o2, o3) - inter
            iou = inter / (union if union > 0 else 1.0) if inter > 0 else 0.0
            if not iou <= thr:
                keep = False
                break
        if keep:
            kept[n_kept] = idx
            n_kept += 1
            if eta < 1 and thr > 0.5:
                thr *= eta
    return n_kept


def nms_greedy(boxes: np.ndarray, order: np.ndarray, threshold: float, eta: float = 1.0) -> list[int]:
    """Indices (into ``boxes`` (M, 4) float64) kept from ``order`` (best first), in order."""
    kept = np.empty(len(order), np.int64)
    n = _greedy(np.ascontiguousarray(boxes, np.float64), np.ascontiguousarray(order, np.int64),
                 float(threshold), float(eta), kept)
    return [int(i) for i in kept[:n]]
