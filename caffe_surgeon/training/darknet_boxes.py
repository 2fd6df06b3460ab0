"""Darknet's box arithmetic (``box.c``) in float32 NumPy, broadcasting over arrays.

The [yolo] and [region] deltas decide which anchor answers a truth and which predictions
are ignored by comparing IoUs with thresholds; computing them in float32, in ``box.c``'s
order, keeps those decisions the ones ``libdarknet.so`` takes.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
HALF = F32(2)


def _overlap(x1, w1, x2, w2):
    left = np.maximum(x1 - w1 / HALF, x2 - w2 / HALF)
    right = np.minimum(x1 + w1 / HALF, x2 + w2 / HALF)
    return right - left


def box_iou(a, b) -> np.ndarray:
    """``box_iou`` of boxes ``a`` and ``b``, each a tuple (x, y, w, h) of float32 arrays
    that broadcast together."""
    w = _overlap(a[0], a[2], b[0], b[2])
    h = _overlap(a[1], a[3], b[1], b[3])
    inter = np.where((w < 0) | (h < 0), F32(0), w * h).astype(F32)
    union = a[2] * a[3] + b[2] * b[3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return (inter / union).astype(F32)


def truth_rows(truths: np.ndarray, limit: int) -> np.ndarray:
    """One image's truths as Darknet reads them: rows up to ``limit``, stopping at the first
    whose x is 0 (``if(!truth.x) break;``)."""
    rows = truths[:limit]
    zero = np.flatnonzero(rows[:, 0] == 0)
    return rows[:zero[0]] if len(zero) else rows
