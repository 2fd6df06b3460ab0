"""Darknet's ``valid`` output: ``detector valid``'s result files, ``classifier valid``'s lines.

Detectors (pjreddie ``print_detector_detections``):

One file per class, ``<results>/<prefix><class name>.txt`` (prefix
``comp4_det_test_`` by default, the folder from the .data ``results=`` option,
default ``results``), every file created even when empty. For each image in
list order, each detection in darknet's post-NMS order and each class with a
non-zero probability, one line::

    <image id> <prob> <xmin> <ymin> <xmax> <ymax>

``image id`` is darknet's ``basecfg``: the file name up to its first dot.
Boxes are in pixels of the original image with darknet's "+1" convention
(``x - w/2. + 1`` in double, stored as float), then ``xmin``/``ymin`` raised
to at least 1 and ``xmax``/``ymax`` lowered to at most the width/height. All
numbers are printed with ``%f``.

Classifiers (pjreddie ``validate_classifier_single``, which ``classifier valid``
runs): for each image ``i`` of the list, two lines on stdout, printed with
``"%s, %d, %f, %f, \\n"`` (path as listed, class, ``pred[0]``, ``pred[1]``; the
line ends in a space) and ``"%d: top 1: %f, top %d: %f\\n"`` (``i``, running
top-1, ``k``, running top-k).

``pred`` is the output layer's vector (its first two values, whatever the
classes), ``k`` the .data file's ``top`` (default 1), and the running figures
are float sums divided by ``i + 1`` in float, so the last line is the accuracy
over the whole list.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError
from .darknet_eval import top_k
from ..fileio import atomic_write

F32 = np.float32


def image_id(path: str) -> str:
    """darknet ``basecfg``: the part after the last '/', cut at the first '.'."""
    return path.rsplit("/", 1)[-1].split(".", 1)[0]


def _pixel_box(d, in_pixels: bool, w: int, h: int) -> tuple[F32, F32, F32, F32]:
    """get_network_boxes(..., relative=0): relative boxes times the image size, in float."""
    if in_pixels:  # YOLOv1 boxes are already in pixels
        return F32(d.x), F32(d.y), F32(d.w), F32(d.h)
    return F32(d.x) * F32(w), F32(d.y) * F32(h), F32(d.w) * F32(w), F32(d.h) * F32(h)


def detection_lines(ident: str, dets, pixel_boxes: dict, w: int, h: int, classes: int):
    """(class, line) pairs for one image, in darknet's printing order."""
    out = []
    for d in dets:
        x, y, bw, bh = (float(v) for v in _pixel_box(d, pixel_boxes[d.layer], w, h))
        xmin, xmax = F32(x - bw / 2. + 1), F32(x + bw / 2. + 1)
        ymin, ymax = F32(y - bh / 2. + 1), F32(y + bh / 2. + 1)
        xmin, ymin = max(xmin, F32(1)), max(ymin, F32(1))
        xmax, ymax = min(xmax, F32(w)), min(ymax, F32(h))
        for c in range(classes):
            if d.prob[c]:
                out.append((c, f"{ident} {float(d.prob[c]):f} {float(xmin):f} {float(ymin):f} "
                               f"{float(xmax):f} {float(ymax):f}\n"))
    return out


def write_detector_valid(evaluator, results, out_dir=None, prefix: str = "comp4_det_test_") -> list[Path]:
    """Write darknet's per-class result files for a detector evaluation.

    Args:
        evaluator: a :class:`DarknetDetectorEvaluator` (its images, sizes, thresholds, names).
        results: the network outputs for its feeds (see ``Evaluator.run``).
        out_dir: output folder (default: the .data ``results=`` option, else "results").
        prefix: file name prefix (darknet's ``-out``; default ``comp4_det_test_``).

    Returns:
        The files written, in class order.
    """
    names = evaluator.names()
    folder = Path(out_dir) if out_dir is not None else evaluator.data.file("results", default="results")
    if not folder.is_dir():
        raise ModelError("results folder does not exist (darknet does not create it either)",
                         file=folder)
    texts = [[] for _ in range(evaluator.classes)]
    per_image = evaluator.detections(results)
    for item, dets, (w, h) in zip(evaluator.items, per_image, evaluator.sizes):
        for c, line in detection_lines(image_id(item.written), dets, evaluator.pixel_boxes,
                                       w, h, evaluator.classes):
            texts[c].append(line)
    paths = [folder / f"{prefix}{name}.txt" for name in names]
    for path, lines in zip(paths, texts):
        atomic_write(path, "".join(lines))
    return paths


def classifier_valid_lines(evaluator, results) -> list[str]:
    """The lines ``darknet classifier valid`` prints for a labelled classifier evaluation.

    Args:
        evaluator: a labelled :class:`DarknetClassifierEvaluator`; its ``k`` is darknet's ``top``.
        results: the network outputs for its feeds (see ``Evaluator.run``).

    Returns:
        Two lines per image (no newlines), in list order; the last holds the final accuracies.
    """
    if evaluator.label_free:
        raise ModelError("'valid' prints darknet's per-image accuracy, which needs labels: "
                         "remove label_free=1 or use 'map' for the top-1 agreement")
    pred = evaluator.predictions(results)
    best = top_k(pred[:, :evaluator.classes], evaluator.k)
    hit = best == evaluator.truth[:, None]
    top1, topk = np.cumsum(hit[:, 0]), np.cumsum(hit.any(1))
    lines = []
    for i, (item, cls, row) in enumerate(zip(evaluator.items, evaluator.truth, pred)):
        first = "".join(f"{float(v):f}, " for v in row[:2])
        lines.append(f"{item.written}, {int(cls)}, {first}")
        lines.append(f"{i}: top 1: {float(F32(top1[i]) / F32(i + 1)):f}, "
                     f"top {evaluator.k}: {float(F32(topk[i]) / F32(i + 1)):f}")
    return lines
