"""SSD's detection metric as the fork's solver computes it (``Solver::TestDetection``).

Per test batch, the ``DetectionEvaluate`` layer (:func:`detection_evaluate`,
also the engine's op) turns ``DetectionOutput`` rows and the ``AnnotatedData``
label rows into ``[image, label, score, tp, fp]`` rows, after one row
``[-1, label, num_pos, -1, -1]`` per non-background class. The solver gathers
them over ``test_iter`` batches (rows with tp = fp = 0 - matched to a
difficult box - are dropped) and averages, over every non-background class,
``ComputeAP`` of that class (0 for a class without detections):

- ``11point`` (VOC2007), ``MaxIntegral`` (VOC2012), ``Integral`` (the solver's
  default ``ap_version``), with Caffe's float arithmetic and 1e-6 recall steps.

Boxes are matched in normalized coordinates (``name_size_file``, which scores
at the original image sizes, is refused where the layer is read).
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError

F32 = np.float32
AP_VERSIONS = ("11point", "MaxIntegral", "Integral")


def _size(b) -> float:
    """``BBoxSize`` of a normalized box (0 when inverted)."""
    if b[2] < b[0] or b[3] < b[1]:
        return 0.0
    return float(F32(F32(b[2] - b[0]) * F32(b[3] - b[1])))


def jaccard(a, b) -> float:
    """``JaccardOverlap(bbox1, bbox2, normalized=true)`` in float."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    inter = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    i = _size(inter)
    return float(F32(i / F32(F32(_size(a) + _size(b)) - i)))


def detection_evaluate(det: np.ndarray, gt: np.ndarray, num_classes: int, background: int,
                       overlap: float, evaluate_difficult: bool) -> np.ndarray:
    """``DetectionEvaluateLayer::Forward_cpu`` (normalized boxes): rows (K, 5)."""
    det, gt = np.asarray(det, F32).reshape(-1, 7), np.asarray(gt, F32).reshape(-1, 8)
    detections: dict = {}
    for r in det:
        if int(r[0]) == -1:
            continue
        if int(r[1]) == background:
            raise ModelError("DetectionEvaluate: found the background label in the detections")
        detections.setdefault(int(r[0]), {}).setdefault(int(r[1]), []).append(r[2:7])
    truths: dict = {}
    for r in gt:
        if int(r[0]) == -1:
            continue
        truths.setdefault(int(r[0]), {}).setdefault(int(r[1]), []).append(
            (r[3:7], bool(r[7])))
    num_pos: dict = {}
    for labels in truths.values():
        for label, boxes in labels.items():
            count = len(boxes) if evaluate_difficult else sum(not d for _, d in boxes)
            num_pos[label] = num_pos.get(label, 0) + count
    rows = [[-1, c, num_pos.get(c, 0), -1, -1] for c in range(num_classes) if c != background]
    for image in sorted(detections):
        by_label = truths.get(image, {})
        for label in sorted(detections[image]):
            if label == -1:
                continue
            boxes = detections[image][label]
            gts = by_label.get(label)
            if gts is None:
                rows += [[image, label, b[0], 0, 1] for b in boxes]
                continue
            visited = [False] * len(gts)
            # std::sort by score, descending (ties: any order; scores rarely tie exactly)
            for b in sorted(boxes, key=lambda b: -float(b[0])):
                best, jmax = -1.0, -1
                for j, (g, _) in enumerate(gts):
                    o = jaccard(b[1:5], g)
                    if o > best:
                        best, jmax = o, j
                if best >= overlap:
                    if evaluate_difficult or not gts[jmax][1]:
                        rows.append([image, label, b[0], 0 if visited[jmax] else 1,
                                     1 if visited[jmax] else 0])
                        visited[jmax] = True
                    else:
                        rows.append([image, label, b[0], 0, 0])  # difficult: ignored
                else:
                    rows.append([image, label, b[0], 0, 1])
    return np.asarray(rows, F32).reshape(1, 1, -1, 5)


def compute_ap(tp: list, fp: list, num_pos: int, version: str) -> float:
    """``ComputeAP``: ``tp``/``fp`` are (score, 0/1) pairs in the order gathered."""
    if version not in AP_VERSIONS:
        raise ModelError(f"ap_version must be one of {', '.join(AP_VERSIONS)}, got {version!r}")
    if not tp or num_pos == 0:
        return 0.0
    order = sorted(range(len(tp)), key=lambda k: -tp[k][0])  # stable, like std::stable_sort
    tp_cum = np.cumsum([tp[k][1] for k in order])
    fp_cum = np.cumsum([fp[k][1] for k in order])
    prec = (tp_cum.astype(F32) / (tp_cum + fp_cum).astype(F32)).astype(F32)
    rec = (tp_cum.astype(F32) / F32(num_pos)).astype(F32)
    eps, ap, num = 1e-6, F32(0), len(order)
    if version == "11point":
        max_precs = [F32(0)] * 11
        start = num - 1
        for j in range(10, -1, -1):
            for i in range(start, -1, -1):
                if float(rec[i]) < j / 10.0:
                    start = i
                    if j > 0:
                        max_precs[j - 1] = max_precs[j]
                    break
                if max_precs[j] < prec[i]:
                    max_precs[j] = prec[i]
        for j in range(10, -1, -1):
            ap = F32(ap + F32(max_precs[j] / F32(11)))
    elif version == "MaxIntegral":
        cur_rec, cur_prec = rec[-1], prec[-1]
        for i in range(num - 2, -1, -1):
            cur_prec = max(prec[i], cur_prec)
            if abs(float(cur_rec) - float(rec[i])) > eps:
                ap = F32(ap + F32(cur_prec * F32(abs(cur_rec - rec[i]))))
            cur_rec = rec[i]
        ap = F32(ap + F32(cur_rec * cur_prec))
    else:
        prev = F32(0)
        for i in range(num):
            if abs(float(rec[i]) - float(prev)) > eps:
                ap = F32(ap + F32(prec[i] * F32(abs(rec[i] - prev))))
            prev = rec[i]
    return float(ap)


def solver_detection_map(batches: list, version: str) -> float:
    """The solver's mAP over the ``DetectionEvaluate`` outputs of every test batch."""
    tps: dict = {}
    fps: dict = {}
    num_pos: dict = {}
    for out in batches:
        for r in np.asarray(out, F32).reshape(-1, 5):
            label = int(r[1])
            if int(r[0]) == -1:
                num_pos[label] = num_pos.get(label, 0) + int(r[2])
                continue
            tp, fp = int(r[3]), int(r[4])
            if tp == 0 and fp == 0:
                continue
            tps.setdefault(label, []).append((float(r[2]), tp))
            fps.setdefault(label, []).append((float(r[2]), fp))
    if not num_pos:
        return 0.0
    total = F32(0)
    for label in sorted(num_pos):
        if label in tps:
            total = F32(total + F32(compute_ap(tps[label], fps[label], num_pos[label], version)))
    return float(F32(total / F32(len(num_pos))))
