"""The label half of Darknet's detection loading: label files in, truth rows out.

pjreddie darknet (2018), ``src/data.c``:

* ``read_boxes``: ``class x y w h`` per line, relative to the image, read as C floats;
  ``left = x - w/2`` etc. are kept beside them.
* ``randomize_boxes``: for each box ``i`` in order, swap it with box ``rand() % n``.
* ``correct_boxes``: the edges mapped into the network input (``* sx - dx``),
  mirrored when the image was flipped, each edge clipped to [0, 1], centre and size
  recomputed from the clipped edges (a box centred at exactly (0, 0) becomes
  999999s; :func:`read_label_file` refuses such a box instead, see there).
* ``fill_truth_detection``: the first ``max_boxes`` boxes after the shuffle; those
  narrower or lower than 0.001 are dropped and the rest move up, so the truth holds
  rows ``x, y, w, h, class`` followed by zero rows.

The arithmetic follows the Debian ``libdarknet.so`` as compiled (``-Ofast``; see
:mod:`.darknet_augment`): a flipped edge is ``(1 + dx) - edge * sx``.

Darknet stops reading a label file at its first malformed line and trains on
whatever class number it finds; :func:`read_label_file` refuses both, with the file
and line, before training starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ModelError
from ..evaluation.darknet_data import label_path, read_lines

F32 = np.float32
#: truth rows per image: the trainer's contract (Darknet's ``max=`` default of [yolo])
MAX_BOXES = 90


def read_label_file(path, classes: int) -> np.ndarray:
    """One image's boxes as float32 rows ``(class, x, y, w, h)``, checked.

    Refused, naming the file and line: a line that is not ``class x y w h``; a class
    outside ``0..classes-1``; a centre outside [0, 1] or a size outside (0, 1]; a
    centre of exactly (0, 0), which Darknet's ``correct_boxes`` turns into a box of
    999999s that its trainer then looks up outside the grid.

    Args:
        path: the label file (it must exist; the caller decides about missing files).
        classes: the model's class count.
    """
    rows = []
    for number, text in read_lines(path, "label file"):
        parts = text.split()
        try:
            if len(parts) != 5:
                raise ValueError
            cls = int(parts[0])
            x, y, w, h = (float(p) for p in parts[1:])
        except ValueError:
            raise ModelError(f"expected 'class x y w h', got {text.strip()!r}", file=path,
                             line=number) from None
        if not 0 <= cls < classes:
            raise ModelError(f"class {cls} is outside 0..{classes - 1} (the model has "
                             f"{classes} classes)", file=path, line=number)
        if not (0 <= x <= 1 and 0 <= y <= 1 and 0 < w <= 1 and 0 < h <= 1):
            raise ModelError(f"box x={x:g} y={y:g} w={w:g} h={h:g} is out of range: the "
                             f"centre must lie in [0, 1] and the size in (0, 1], relative "
                             f"to the image", file=path, line=number)
        if x == 0 and y == 0:
            raise ModelError("a box centred at exactly (0, 0): Darknet's correct_boxes "
                             "marks it as 999999 and its trainer indexes outside the grid",
                             file=path, line=number)
        rows.append((cls, x, y, w, h))
    return np.asarray(rows, F32).reshape(-1, 5)


def shuffle_boxes(boxes: np.ndarray, rand: Callable[[], int]) -> np.ndarray:
    """Darknet ``randomize_boxes``: box ``i`` swapped with box ``rand() % n``, i = 0..n-1."""
    out = boxes.copy()
    n = len(out)
    for i in range(n):
        j = rand() % n
        out[[i, j]] = out[[j, i]]
    return out


def correct_boxes(boxes: np.ndarray, dx: float, dy: float, sx: float, sy: float,
                  flip: bool) -> np.ndarray:
    """Darknet ``correct_boxes`` on rows ``(class, x, y, w, h)``; returns float32
    ``(x, y, w, h)`` in the network input, clipped.

    Args:
        dx, dy: the offset as ``fill_truth_detection`` receives it (``-dx / w``).
        sx, sy: the placed size over the input size (``nw / w``).
    """
    x, y, w, h = (boxes[:, k].astype(F32) for k in range(1, 5))
    two, zero, one = F32(2), F32(0), F32(1)
    left, right = x - w / two, x + w / two  # as read_boxes stored them
    top, bottom = y - h / two, y + h / two
    dx, dy, sx, sy = F32(dx), F32(dy), F32(sx), F32(sy)
    if flip:  # as compiled: (1 + dx) - edge * sx, one rounding fewer than 1 - (edge*sx - dx)
        left, right = (one + dx) - right * sx, (one + dx) - left * sx
    else:
        left, right = left * sx - dx, right * sx - dx
    top, bottom = top * sy - dy, bottom * sy - dy
    left, right = np.clip(left, zero, one), np.clip(right, zero, one)
    top, bottom = np.clip(top, zero, one), np.clip(bottom, zero, one)
    cx, cy = (left + right) / two, (top + bottom) / two
    bw = np.clip(right - left, zero, one)
    bh = np.clip(bottom - top, zero, one)
    return np.stack([cx, cy, bw, bh], axis=1).astype(F32, copy=False)


def truth_rows(boxes: np.ndarray, corrected: np.ndarray, max_boxes: int = MAX_BOXES) -> np.ndarray:
    """Darknet ``fill_truth_detection``'s layout: float32 (max_boxes, 5) rows
    ``x, y, w, h, class``, the first ``max_boxes`` boxes minus those under 0.001 wide or
    high, then zero rows.

    Args:
        boxes: shuffled rows ``(class, x, y, w, h)`` (for the classes).
        corrected: their :func:`correct_boxes` result.
    """
    out = np.zeros((max_boxes, 5), F32)
    kept = corrected[:max_boxes]
    classes = boxes[:max_boxes, 0]
    # the C test compares floats with the double .001
    keep = ~((kept[:, 2].astype(np.float64) < .001) | (kept[:, 3].astype(np.float64) < .001))
    n = int(keep.sum())
    out[:n, :4] = kept[keep]
    out[:n, 4] = classes[keep]
    return out


def label_file_of(image_written: str, resolve: Callable[[str], Path]) -> Path:
    """The label file Darknet's ``fill_truth_detection`` opens for a listed image path.

    The first ``images``, ``JPEGImages`` and ``raw`` become ``labels`` and the first
    ``.jpg``, ``.png``, ``.JPG``, ``.JPEG`` become ``.txt``, on the path as written in
    the list (see :func:`caffe_surgeon.evaluation.darknet_data.label_path`).
    """
    return resolve(label_path(image_written))
