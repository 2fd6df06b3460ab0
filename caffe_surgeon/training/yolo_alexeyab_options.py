"""Which Darknet fork's rules train a ``[yolo]`` section, and AlexeyAB's options for it.

The cfg says which fork wrote it: pjreddie's ``parse_yolo`` (2018) reads only
:data:`PJREDDIE_KEYS`; a section that sets any other option was written for AlexeyAB's
Darknet, which then trains it with *its* defaults (``iou_normalizer=0.75`` among them, so
even its MSE deltas differ from pjreddie's). A section with pjreddie's keys alone trains
by pjreddie's rules, bit for bit as before: the two cannot be told apart, and pjreddie's
is the one checked against ``libdarknet.so``.

Options are read as AlexeyAB's ``parse_yolo`` reads them (59596d78), each either
implemented (:data:`TRAINED`), harmless to training (:data:`HARMLESS`), or refused by name
with why (:data:`REFUSED`); anything else is refused as unknown to both forks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelError
from ..layers.darknet import opt_float, opt_int, opt_list
from .alexeyab_boxes import KINDS, F32

#: the options pjreddie's parse_yolo reads
PJREDDIE_KEYS = frozenset({"classes", "num", "mask", "max", "jitter", "ignore_thresh",
                           "truth_thresh", "random", "anchors"})
#: AlexeyAB training options reproduced here (see :class:`AlexeyabYolo`)
TRAINED = frozenset({"scale_x_y", "new_coords", "iou_loss", "iou_normalizer",
                     "obj_normalizer", "cls_normalizer", "max_delta", "iou_thresh",
                     "iou_thresh_kind", "objectness_smooth", "label_smooth_eps", "focal_loss",
                     "counters_per_class", "show_details"})
#: AlexeyAB options that only NMS, the data loader or the video tracker read
HARMLESS = frozenset({"beta_nms", "nms_kind", "resize", "track_history_size", "sim_thresh",
                      "dets_for_track", "dets_for_show", "track_ciou_norm"})
#: option -> (the value that changes nothing, why any other is refused)
REFUSED = {
    "delta_normalizer": (1.0, "the CPU build ignores it and the GPU build scales the "
                              "delta by it, so the build decides"),
    "embedding_layer": (999999, "tracking embeddings are trained with a [contrastive] "
                                "layer, which is not trainable here"),
}
#: ``FLT_MAX``: AlexeyAB's "no max_delta" (its deltas are clipped only below it)
NO_CLIP = float(np.finfo(np.float32).max)
#: the truth rows of a batch (``fill_truth_detection``'s 90), the most a head can read
TRUTH_ROWS = 90


def is_alexeyab(layer) -> bool:
    """Whether the section sets an option pjreddie's Darknet does not read."""
    return any(k not in PJREDDIE_KEYS and not k.startswith("#") for k in layer.params)


@dataclass(frozen=True)
class AlexeyabYolo:
    """One AlexeyAB ``[yolo]`` section's training settings, with AlexeyAB's defaults.

    Attributes:
        classes, total, mask, rows: classes, ``num`` anchors, the anchors this head
            predicts, the truth rows it reads.
        ignore_thresh, truth_thresh: as pjreddie's (objectness ignored above the first,
            a prediction made positive above the second).
        iou_thresh, iou_thresh_kind: every anchor of the mask whose shape overlaps a truth by
            more than ``iou_thresh`` (measured by ``iou_thresh_kind``) is trained on it too.
        iou_loss: ``mse`` or the (g/d/c)IoU whose gradient is the box delta.
        iou_normalizer, obj_normalizer, cls_normalizer: scales of the box, objectness and
            (with ``counters_per_class`` only, as AlexeyAB's code has it) class deltas.
        max_delta: each (g/d/c)IoU box delta is clipped to [-max_delta, max_delta].
        new_coords: boxes decoded as ``(2 sigmoid)^2``-style squares instead of ``exp``.
        objectness_smooth: objectness targets are IoUs instead of 1 and ignored ones are
            pulled towards their IoU.
        label_smooth_eps, focal_loss: class-target smoothing and focal class deltas.
        class_multipliers: ``counters_per_class`` as per-class weights (None without it).
        show_details: with an IoU loss, the reported cost is the IoU loss plus the squared
            non-box deltas (1, the default) instead of all squared deltas (0).
    """

    classes: int
    total: int
    mask: tuple
    rows: int
    ignore_thresh: np.float32
    truth_thresh: np.float32
    iou_thresh: np.float32
    iou_thresh_kind: str
    iou_loss: str
    iou_normalizer: np.float32
    obj_normalizer: np.float32
    cls_normalizer: np.float32
    max_delta: np.float32
    new_coords: bool
    objectness_smooth: bool
    label_smooth_eps: np.float32
    focal_loss: bool
    class_multipliers: np.ndarray | None
    show_details: bool


def _kind(layer, key: str, default: str) -> str:
    text = str(layer.params.get(key, default)).strip()
    if text not in KINDS or (key == "iou_thresh_kind" and text == "mse"):
        allowed = KINDS if key == "iou_loss" else KINDS[1:]
        raise ModelError(f"{key}={text} is not one of {', '.join(allowed)} (AlexeyAB would "
                         "fall back to iou without saying so)", layer=layer.name)
    return text


def _multipliers(layer, classes: int, max_delta: np.float32):
    """``get_classes_multipliers``: max count / count per class (counts below 1 read as 1),
    clipped at ``max_delta``."""
    if "counters_per_class" not in layer.params:
        return None
    counts = [max(int(c), 1) for c in opt_list(layer, "counters_per_class")]
    if len(counts) != classes:
        raise ModelError(f"counters_per_class has {len(counts)} values and classes={classes}",
                         layer=layer.name)
    top = F32(max(counts))
    return np.minimum(np.asarray([top / F32(c) for c in counts], F32), max_delta)


def read_options(layer) -> AlexeyabYolo:
    """The section's settings as AlexeyAB's ``parse_yolo`` reads them.

    Raises:
        ModelError: an ``iou_loss`` / ``iou_thresh_kind`` AlexeyAB does not know, or
            ``counters_per_class`` of the wrong length.
    """
    classes, total = opt_int(layer, "classes", 20), opt_int(layer, "num", 1)
    max_delta = F32(opt_float(layer, "max_delta", NO_CLIP))
    return AlexeyabYolo(
        classes=classes, total=total, mask=tuple(opt_list(layer, "mask") or range(total)),
        rows=min(opt_int(layer, "max", TRUTH_ROWS), TRUTH_ROWS),
        ignore_thresh=F32(opt_float(layer, "ignore_thresh", .5)),
        truth_thresh=F32(opt_float(layer, "truth_thresh", 1)),
        iou_thresh=F32(opt_float(layer, "iou_thresh", 1)),
        iou_thresh_kind=_kind(layer, "iou_thresh_kind", "iou"),
        iou_loss=_kind(layer, "iou_loss", "mse"),
        iou_normalizer=F32(opt_float(layer, "iou_normalizer", .75)),
        obj_normalizer=F32(opt_float(layer, "obj_normalizer", 1)),
        cls_normalizer=F32(opt_float(layer, "cls_normalizer", 1)),
        max_delta=max_delta, new_coords=bool(opt_int(layer, "new_coords", 0)),
        objectness_smooth=bool(opt_int(layer, "objectness_smooth", 0)),
        label_smooth_eps=F32(opt_float(layer, "label_smooth_eps", 0)),
        focal_loss=bool(opt_int(layer, "focal_loss", 0)),
        class_multipliers=_multipliers(layer, classes, max_delta),
        show_details=bool(opt_int(layer, "show_details", 1)))


def alexeyab_check(layer) -> str:
    """Why this AlexeyAB [yolo] cannot be trained as AlexeyAB's Darknet trains it ("" if it
    can), one option named."""
    for key, (harmless, why) in REFUSED.items():
        if key in layer.params and opt_float(layer, key, harmless) != harmless:
            return f"{key}={layer.params[key]} (AlexeyAB [yolo]) is not supported: {why}"
    if "map" in layer.params:
        return "map= (AlexeyAB [yolo] classes remapped through a file) is not supported"
    known = PJREDDIE_KEYS | TRAINED | HARMLESS | set(REFUSED)
    unknown = sorted(k for k in layer.params if k not in known and not k.startswith("#"))
    if unknown:
        return (f"option(s) {', '.join(unknown)} are not [yolo] training options of pjreddie's "
                "or AlexeyAB's Darknet")
    if opt_int(layer, "max", TRUTH_ROWS) > TRUTH_ROWS:
        return f"max={opt_int(layer, 'max', 90)} exceeds the {TRUTH_ROWS} truth rows of a batch"
    try:
        read_options(layer)
    except ModelError as e:
        return e.message
    return ""
