"""Darknet's ``detector valid`` result files (pjreddie ``print_detector_detections``).

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
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError
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
