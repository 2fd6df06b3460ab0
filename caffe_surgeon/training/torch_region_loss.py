"""The pjreddie ``[region]`` (YOLOv2) training deltas (``forward_region_layer``, 61c9d02e).

Per image, in Darknet's order:

1. every prediction: objectness ``noobject_scale * (0 - obj)`` (``(1 - obj)`` with
   ``background=1``), cleared where its best IoU with a truth exceeds ``thresh``; while
   ``seen < 12800`` every box is also pulled towards its anchor at the cell centre with
   scale .01 (the prior warm-up);
2. every truth (until the first row whose x is 0, at most 30: Darknet reads region truths
   with a 30-box stride): the best anchor at the truth's cell by shape-only IoU, of the
   *predicted* box or, with ``bias_match=1``, of the anchor; box deltas scaled by
   ``coord_scale * (2 - w*h)``, objectness ``object_scale * (1 - obj)`` (``iou - obj`` with
   ``rescore=1``, ``0 - obj`` with ``background=1``), class deltas times ``class_scale``
   (softmax or logistic; with logistic classes a second truth in the same cell sets only
   its own class, ``delta_region_class``'s ``tag``).

How the deltas reach the layer below is the trainer's choice (``darknet_trainer``): the
CPU build of this Darknet has ``backward_region_layer`` commented out (nothing flows back);
its GPU build multiplies the x, y and objectness deltas by the logistic's derivative.
"""
from __future__ import annotations

import numpy as np

from ..layers.darknet import opt_float, opt_int
from .darknet_boxes import F32, box_iou, truth_rows
from .torch_yolo_loss import _first_best, _pred, anchors, box_delta, class_delta, squared_sum

#: options of ``parse_region`` that change nothing in the 2018 forward (``log``, ``sqrt``,
#: ``classfix``, ``absolute`` are parsed and never read) or belong to the data loader
HARMLESS = {"coords", "classes", "num", "log", "sqrt", "softmax", "background", "max",
            "jitter", "rescore", "thresh", "classfix", "absolute", "random", "coord_scale",
            "object_scale", "noobject_scale", "class_scale", "bias_match", "anchors"}
#: Darknet's region layer reads 30 truths per image (``l.truths = 30*(coords + 1)``)
REGION_ROWS = 30
#: ``if(*(net.seen) < 12800)``: the prior warm-up's length in images
WARMUP_SEEN = 12800


def region_check(layer) -> str:
    """Why this [region] cannot be trained as pjreddie Darknet trains it ("" if it can)."""
    if layer.params.get("tree") or layer.params.get("map"):
        return "tree= / map= (YOLO9000's hierarchical classes) are not supported"
    unknown = sorted(k for k in layer.params if k not in HARMLESS and not k.startswith("#"))
    if unknown:
        return f"option(s) {', '.join(unknown)} are not implemented"
    if opt_int(layer, "coords", 4) != 4:
        return f"coords={opt_int(layer, 'coords', 4)} (mask coefficients) is not supported"
    if opt_int(layer, "max", REGION_ROWS) != REGION_ROWS:
        return (f"max={opt_int(layer, 'max', REGION_ROWS)}: Darknet loads that many truths but "
                f"its region layer reads them {REGION_ROWS} to an image, misaligned")
    return ""


def region_deltas(layer, output: np.ndarray, truths: np.ndarray, seen: int):
    """Darknet's deltas of one [region] layer over a batch.

    Args:
        layer: the [region] layer.
        output: its activated output, float32 (N, num*(5+classes), H, W).
        truths: float32 (N, rows, 5), zero rows padding; the first 30 rows are read.
        seen: Darknet's image counter, already advanced by this forward's batch.

    Returns:
        (delta, cost) as :func:`.torch_yolo_loss.yolo_deltas`.
    """
    classes, num = opt_int(layer, "classes", 20), opt_int(layer, "num", 1)
    scale = {k: F32(opt_float(layer, k, 1)) for k in
             ("coord_scale", "object_scale", "noobject_scale", "class_scale")}
    thresh = F32(opt_float(layer, "thresh", .5))
    background, rescore = opt_int(layer, "background", 0), opt_int(layer, "rescore", 0)
    softmax, bias_match = opt_int(layer, "softmax", 0), opt_int(layer, "bias_match", 0)
    biases = anchors(layer, num)
    n_batch, _, h, w = output.shape
    out = np.ascontiguousarray(output, F32).reshape(n_batch, num, 5 + classes, h, w)
    delta = np.zeros_like(out)
    for b in range(n_batch):
        o, d, t = out[b], delta[b], truth_rows(truths[b], REGION_ROWS)
        obj = o[:, 4]
        d[:, 4] = scale["noobject_scale"] * ((F32(1) if background else F32(0)) - obj)
        if len(t):
            px, py, pw, ph = _pred(o, slice(None), biases[:, None, None, :], w, h, w, h)
            ious = box_iou((px[..., None], py[..., None], pw[..., None], ph[..., None]),
                           tuple(t[:, k] for k in range(4)))
            best = np.nan_to_num(ious, nan=-1).max(-1)
            d[:, 4][best > thresh] = 0
        if seen < WARMUP_SEEN:
            _prior_warmup(o, d, biases, w, h)
        for truth in t:
            i, j = int(F32(truth[0]) * F32(w)), int(F32(truth[1]) * F32(h))
            px, py, pw, ph = (np.asarray(v) for v in _pred(o, slice(None), biases, w, h, w, h,
                                                           j, i))
            if bias_match:
                pw, ph = biases[:, 0] / F32(w), biases[:, 1] / F32(h)
            best_n = _first_best(box_iou((F32(0), F32(0), pw, ph),
                                         (F32(0), F32(0), F32(truth[2]), F32(truth[3]))))
            iou = box_delta(o, d, best_n, biases[best_n], truth, i, j, w, h, w, h,
                            scale["coord_scale"] * (F32(2) - F32(truth[2]) * F32(truth[3])))
            target = F32(0) if background else (F32(iou) if rescore else F32(1))
            d[best_n, 4, j, i] = scale["object_scale"] * (target - o[best_n, 4, j, i])
            class_delta(o, d, best_n, j, i, 5, int(truth[4]), classes, scale["class_scale"],
                        tag=not softmax)
    return delta.reshape(output.shape), squared_sum(delta)


def _prior_warmup(o, d, biases, w, h) -> None:
    """``delta_region_box`` towards (cell centre, anchor size) with scale .01, every cell."""
    jj, ii = np.arange(h, dtype=np.float64)[:, None], np.arange(w, dtype=np.float64)[None, :]
    tx = F32((ii + .5) / w) * F32(w) - ii.astype(F32)    # truth.x*w - i, truth.x a float
    ty = F32((jj + .5) / h) * F32(h) - jj.astype(F32)
    for n in range(len(biases)):
        tw = F32(np.log(np.float64(F32(biases[n, 0] / F32(w) * F32(w)) / biases[n, 0])))
        th = F32(np.log(np.float64(F32(biases[n, 1] / F32(h) * F32(h)) / biases[n, 1])))
        for k, target in enumerate((tx, ty, tw, th)):
            d[n, k] = F32(.01) * (np.broadcast_to(target, (h, w)).astype(F32) - o[n, k])
