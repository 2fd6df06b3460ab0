"""Label-free metrics: how closely a candidate (pruned) model reproduces the reference.

Without labelled data, pruning can still be steered by fidelity to the
unpruned model on unlabelled images:

* classifiers: the fraction of images whose top-1 class is unchanged;
* detectors: VOC mAP@0.5 of the candidate's detections scored against the
  reference's confident detections (probability above ``truth_thresh``, one
  truth box per class above it) as ground truth. The reference scored against
  itself gives exactly 1.0: each truth box is one of its own detections,
  ranked above every lower-probability extra.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError


def top1_agreement(reference_top1: np.ndarray, candidate_top1: np.ndarray) -> float:
    """Fraction of images where the candidate's top-1 class equals the reference's."""
    reference_top1, candidate_top1 = np.asarray(reference_top1), np.asarray(candidate_top1)
    if reference_top1.shape != candidate_top1.shape:
        raise ModelError(f"{candidate_top1.size} candidate predictions for "
                         f"{reference_top1.size} reference predictions")
    return float(np.mean(reference_top1 == candidate_top1)) if reference_top1.size else 0.0


def reference_truth(rows: list[np.ndarray], truth_thresh: float) -> list[np.ndarray]:
    """Truth rows ``(class, x1, y1, x2, y2)`` from detection rows ``(class, prob, x1, ..)``."""
    limit = float(np.float32(truth_thresh))  # darknet compares float probabilities with a float
    return [r[r[:, 1] > limit][:, [0, 2, 3, 4, 5]] for r in rows]
