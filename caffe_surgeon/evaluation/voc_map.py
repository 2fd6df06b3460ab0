"""PASCAL VOC mean average precision (IoU > 0.5, all-point interpolation).

The procedure of the VOC2010+ devkit (and py-faster-rcnn's ``voc_eval``): for
each class, all detections of all images are ranked by confidence; going down
the list, a detection is a true positive when its best-overlapping ground-truth
box of that class in the same image has IoU strictly above the threshold and
was not matched before, otherwise a false positive. AP is the area under the
precision/recall curve after making precision monotonically decreasing
(all-point interpolation, not the 11-point VOC2007 variant).

Choices where the devkit is silent or differs:

* boxes are continuous corner boxes (relative or pixel units alike): IoU has
  no "+1 pixel" term;
* ties in confidence keep image order, then detection order (a stable sort),
  so results are deterministic;
* mAP averages the classes that have at least one ground-truth box;
  detections of other classes cannot be scored and are ignored.

Worked example (one class, ground truth g1 and g2 in one image): detections
at confidence .9 (matches g1), .8 (matches nothing), .7 (matches g2) give
precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError


@dataclass
class MapResult:
    """mAP and its parts: AP and ground-truth count per scored class."""

    mean: float
    ap: dict[int, float] = field(default_factory=dict)
    positives: dict[int, int] = field(default_factory=dict)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP of one class (``voc_ap(..., use_07_metric=False)``)."""
    mrec = np.concatenate(([0.0], np.asarray(recall, np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, np.float64), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope, right to left
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one corner box (x1, y1, x2, y2) with each row of ``boxes``."""
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def voc_map(detections: list[np.ndarray], truths: list[np.ndarray], classes: int,
            iou_thresh: float = 0.5) -> MapResult:
    """mAP over images.

    Args:
        detections: per image, rows ``(class, confidence, x1, y1, x2, y2)``.
        truths: per image, rows ``(class, x1, y1, x2, y2)``.
        classes: number of classes.
        iou_thresh: a match needs IoU strictly above this.
    """
    if len(detections) != len(truths):
        raise ModelError(f"{len(detections)} images with detections but {len(truths)} with "
                         "ground truth")
    dets = [np.asarray(d, np.float64).reshape(-1, 6) for d in detections]
    gts = [np.asarray(t, np.float64).reshape(-1, 5) for t in truths]
    result = MapResult(0.0)
    for c in range(classes):
        class_truth = [g[g[:, 0] == c, 1:] for g in gts]
        positives = sum(len(g) for g in class_truth)
        if positives == 0:
            continue
        rows = [(i, d) for i, det in enumerate(dets) for d in det[det[:, 0] == c]]
        order = sorted(range(len(rows)), key=lambda k: -rows[k][1][1])  # stable
        matched = [np.zeros(len(g), bool) for g in class_truth]
        tp = np.zeros(len(rows))
        for rank, k in enumerate(order):
            image, row = rows[k]
            g = class_truth[image]
            if len(g):
                iou = box_iou(row[2:6], g)
                best = int(np.argmax(iou))
                if iou[best] > iou_thresh and not matched[image][best]:
                    matched[image][best] = True
                    tp[rank] = 1
        hits = np.cumsum(tp)
        ranks = np.arange(1, len(rows) + 1)
        result.ap[c] = average_precision(hits / positives, hits / np.maximum(ranks, 1))
        result.positives[c] = positives
    if not result.ap:
        raise ModelError("no ground-truth boxes in any image: mAP is undefined")
    result.mean = float(np.mean(list(result.ap.values())))
    return result
