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

#: IoUs computed between two tests for suppression
CHUNK = 16


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
    # the kept boxes (one row per coordinate) and their areas are copied as they are kept:
    # the inner loop then reads consecutive memory and computes no area twice
    n_kept = 0
    thr = threshold
    kb = np.empty((4, order.shape[0]), np.float64)
    ka = np.empty(order.shape[0], np.float64)
    for t in range(order.shape[0]):
        idx = order[t]
        b0, b1, b2, b3 = boxes[idx, 0], boxes[idx, 1], boxes[idx, 2], boxes[idx, 3]
        area = _area(b0, b1, b2, b3)
        keep = True
        for k0 in range(0, n_kept, CHUNK):
            # a chunk of IoUs without an exit inside (vectorised), then the test
            k1 = min(k0 + CHUNK, n_kept)
            hit = 0
            for k in range(k0, k1):
                inter = (_max(_min(b2, kb[2, k]) - _max(b0, kb[0, k]), 0.0)
                         * _max(_min(b3, kb[3, k]) - _max(b1, kb[1, k]), 0.0))
                union = area + ka[k] - inter
                iou = inter / (union if union > 0 else 1.0) if inter > 0 else 0.0
                hit += 0 if iou <= thr else 1
            if hit:
                keep = False
                break
        if keep:
            kept[n_kept] = idx
            kb[0, n_kept], kb[1, n_kept], kb[2, n_kept], kb[3, n_kept] = b0, b1, b2, b3
            ka[n_kept] = area
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
