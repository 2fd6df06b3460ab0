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

Boxes are matched in normalized coordinates, or, with the layer's
``name_size_file``, in pixels of each original image (``OutputBBox``: clipped to
[0, 1], scaled, sizes and overlaps with Caffe's +1). The image sizes are taken
in file order by a running count of the images that have detections, kept
across the test batches (``count_``; it skips images without any detection, as
Caffe's does); :func:`detection_evaluate` takes it and returns it advanced.
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


def _pixel_size(b) -> float:
    """``BBoxSize(bbox, normalized=false)``: (w + 1) * (h + 1)."""
    if b[2] < b[0] or b[3] < b[1]:
        return 0.0
    return float(F32(F32(b[2] - b[0] + F32(1)) * F32(b[3] - b[1] + F32(1))))


def output_bbox(b, height: int, width: int) -> np.ndarray:
    """``OutputBBox`` without a resize (or a WARP one): clip to [0, 1], scale to pixels."""
    c = np.clip(np.asarray(b, F32), F32(0), F32(1))
    return np.array([c[0] * F32(width), c[1] * F32(height), c[2] * F32(width),
                     c[3] * F32(height)], F32)


def pixel_jaccard(a, b) -> float:
    """``JaccardOverlap(bbox1, bbox2, normalized=false)``: +1 sizes; boxes that do not
    intersect still share the 1 x 1 of Caffe's zero intersection box."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        inter = (F32(0), F32(0), F32(0), F32(0))
    else:
        inter = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    iw, ih = F32(inter[2] - inter[0] + F32(1)), F32(inter[3] - inter[1] + F32(1))
    if iw <= 0 or ih <= 0:
        return 0.0
    i = F32(iw * ih)
    return float(F32(i / F32(F32(_pixel_size(a) + _pixel_size(b)) - i)))


def read_name_sizes(path) -> list[tuple[int, int]]:
    """A ``name_size_file``: ``name height width`` per line -> [(height, width)]."""
    from ..fileio import read_bytes
    text = read_bytes(path, "name_size_file").decode("utf-8", "replace")
    sizes = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 3:
                raise ValueError
            h, w = int(parts[1]), int(parts[2])
            if h < 1 or w < 1:
                raise ValueError
        except ValueError:
            raise ModelError(f"expected 'name height width', got {line.strip()!r}", file=path,
                             line=n) from None
        sizes.append((h, w))
    if not sizes:
        raise ModelError("the name_size_file lists no image", file=path)
    return sizes


def detection_evaluate(det: np.ndarray, gt: np.ndarray, num_classes: int, background: int,
                       overlap: float, evaluate_difficult: bool, sizes=None,
                       count: int = 0):
    """``DetectionEvaluateLayer::Forward_cpu``: rows (1, 1, K, 5).

    With ``sizes`` (the name_size_file's (height, width) list) boxes are matched in
    pixels, image ``count`` onwards; returns ``(rows, count advanced)`` then."""
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
            n = len(boxes) if evaluate_difficult else sum(not d for _, d in boxes)
            num_pos[label] = num_pos.get(label, 0) + n
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
            if sizes is not None:  # the ground truth of this label, in this image's pixels
                gts = [(output_bbox(g, *sizes[count]), d) for g, d in gts]
            overlap_of = jaccard if sizes is None else pixel_jaccard
            # std::sort by score, descending (ties: any order; scores rarely tie exactly)
            for b in sorted(boxes, key=lambda b: -float(b[0])):
                box = b[1:5] if sizes is None else output_bbox(b[1:5], *sizes[count])
                best, jmax = -1.0, -1
                for j, (g, _) in enumerate(gts):
                    o = overlap_of(box, g)
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
        if sizes is not None:
            count = (count + 1) % len(sizes)
    out = np.asarray(rows, F32).reshape(1, 1, -1, 5)
    return out if sizes is None else (out, count)


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
