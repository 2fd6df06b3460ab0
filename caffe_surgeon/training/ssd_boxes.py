"""Box arithmetic of the SSD fork (``src/caffe/util/bbox_util.cpp``), in float32 NumPy.

Boxes are rows ``(xmin, ymin, xmax, ymax)`` in normalised image coordinates. Everything is
float32 because the fork holds boxes in ``NormalizedBBox`` (float fields): an overlap that
lands exactly on a threshold decides the same way here as there. Shared by the MultiBoxLoss
forward (prior matching, target encoding) and the TRAIN augmentation (sampled crops).
"""
from __future__ import annotations

import numpy as np

F32 = np.float32

#: PriorBoxParameter.CodeType, by number as a parsed prototxt may give it
CODE_TYPES = {1: "CORNER", 2: "CENTER_SIZE", 3: "CORNER_SIZE"}


def box_size(b: np.ndarray) -> np.ndarray:
    """``BBoxSize`` (normalised): width x height, 0 for an inverted box."""
    b = np.asarray(b, F32)
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return np.where((w < 0) | (h < 0), F32(0), w * h).astype(F32)


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``JaccardOverlap`` of every box of ``a`` (M, 4) with every box of ``b`` (K, 4): (M, K).
    Boxes that do not touch (the fork's strict test) or meet in a line overlap 0."""
    a, b = np.asarray(a, F32)[:, None, :], np.asarray(b, F32)[None, :, :]
    apart = (b[..., 0] > a[..., 2]) | (b[..., 2] < a[..., 0]) | \
            (b[..., 1] > a[..., 3]) | (b[..., 3] < a[..., 1])
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = (iw * ih).astype(F32)
    union = (box_size(a) + box_size(b) - inter).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = (inter / union).astype(F32)
    return np.where(apart | (iw <= 0) | (ih <= 0), F32(0), iou).astype(F32)


def coverage(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``BBoxCoverage``: the share of each box of ``a`` (M, 4) that each box of ``b`` (K, 4)
    covers, (M, K); 0 where they do not intersect."""
    a, b = np.asarray(a, F32)[:, None, :], np.asarray(b, F32)[None, :, :]
    apart = (b[..., 0] > a[..., 2]) | (b[..., 2] < a[..., 0]) | \
            (b[..., 1] > a[..., 3]) | (b[..., 3] < a[..., 1])
    inter = np.stack([np.maximum(a[..., 0], b[..., 0]), np.maximum(a[..., 1], b[..., 1]),
                      np.minimum(a[..., 2], b[..., 2]), np.minimum(a[..., 3], b[..., 3])], -1)
    isize = np.where(apart, F32(0), box_size(inter)).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = (isize / box_size(a)).astype(F32)
    return np.where(isize > 0, share, F32(0)).astype(F32)


def match(priors: np.ndarray, gts: np.ndarray, bipartite_only: bool, threshold: float,
          ignore_cross_boundary: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``MatchBBox``: which ground truth each prediction box is matched to.

    First every ground truth takes, greedily, its best still-free box (the largest overlap
    left over all free boxes and unassigned truths, ties to the lower box then the lower
    truth, as the fork's ordered loops find it); then (``PER_PREDICTION``, unless
    ``bipartite_only``) every free box takes the truth it overlaps most if that overlap is
    at least ``threshold``. Only overlaps above 1e-6 count.

    Returns:
        ``(index, overlap)``: per box the matched truth (-1: none; -2: crosses the image
        border and ``ignore_cross_boundary``), and its best overlap with any truth (the
        matched one's for matched boxes), float32.
    """
    n = len(priors)
    index = np.full(n, -1, np.int64)
    overlap = np.zeros(n, F32)
    if len(gts) == 0:
        return index, overlap
    iou = jaccard(priors, gts)
    if ignore_cross_boundary:
        crossing = ((priors < 0) | (priors > 1)).any(axis=1)
        index[crossing] = -2
        iou[crossing] = 0
    valid = iou > F32(1e-6)
    overlap = np.where(valid, iou, F32(0)).max(axis=1).astype(F32)
    scores = np.where(valid, iou, F32(-1))
    free_box = index == -1
    free_gt = np.ones(len(gts), bool)
    for _ in range(len(gts)):
        masked = np.where(free_box[:, None] & free_gt[None, :], scores, F32(-1))
        best = int(np.argmax(masked))  # row-major: the lowest box, then the lowest truth
        i, j = divmod(best, len(gts))
        if masked[i, j] <= 0:
            break
        index[i], overlap[i] = j, iou[i, j]
        free_box[i], free_gt[j] = False, False
    if not bipartite_only:
        ok = valid & (iou >= F32(threshold))
        masked = np.where(ok, iou, F32(-1))
        best = np.argmax(masked, axis=1)
        take = (index == -1) & ok.any(axis=1)
        index[take] = best[take]
        overlap[take] = iou[take, best[take]]
    return index, overlap


def _center_size(b):
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return (b[..., 0] + b[..., 2]) / F32(2), (b[..., 1] + b[..., 3]) / F32(2), w, h


def encode(priors: np.ndarray, variances: np.ndarray, gts: np.ndarray, code_type: str,
           variance_in_target: bool) -> np.ndarray:
    """``EncodeBBox`` row by row: the regression target of box ``gts[k]`` against prior
    ``priors[k]``, divided by the prior's variances unless ``variance_in_target``."""
    p, v, g = (np.asarray(x, F32) for x in (priors, variances, gts))
    if code_type == "CORNER":
        t = g - p
    elif code_type == "CENTER_SIZE":
        pcx, pcy, pw, ph = _center_size(p)
        gcx, gcy, gw, gh = _center_size(g)
        t = np.stack([(gcx - pcx) / pw, (gcy - pcy) / ph, np.log(gw / pw), np.log(gh / ph)], -1)
    else:  # CORNER_SIZE
        pw, ph = p[..., 2] - p[..., 0], p[..., 3] - p[..., 1]
        t = (g - p) / np.stack([pw, ph, pw, ph], -1)
    t = t.astype(F32)
    return t if variance_in_target else (t / v).astype(F32)


def decode(priors: np.ndarray, variances: np.ndarray, codes: np.ndarray, code_type: str,
           variance_in_target: bool) -> np.ndarray:
    """``DecodeBBox`` without clipping: the boxes that ``codes`` describe against ``priors``."""
    p, v, c = (np.asarray(x, F32) for x in (priors, variances, codes))
    c = c if variance_in_target else (c * v).astype(F32)
    if code_type == "CORNER":
        return (p + c).astype(F32)
    pw, ph = p[..., 2] - p[..., 0], p[..., 3] - p[..., 1]
    if code_type == "CORNER_SIZE":
        return (p + c * np.stack([pw, ph, pw, ph], -1)).astype(F32)
    pcx, pcy, _, _ = _center_size(p)
    cx, cy = c[..., 0] * pw + pcx, c[..., 1] * ph + pcy
    w, h = np.exp(c[..., 2]) * pw, np.exp(c[..., 3]) * ph
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).astype(F32)
