"""The pjreddie ``[yolo]`` training deltas (``forward_yolo_layer``, ``yolo_layer.c`` at 61c9d02e).

Darknet does not differentiate a loss: the layer writes a ``delta`` per output value and
``backward_yolo_layer`` adds it, unchanged, to the delta of the layer below, so the
logistic of x, y, objectness and classes is *not* differentiated (the delta of the
activated value is used as the delta of the raw one). The trainer therefore backpropagates
``-delta`` into the head's input (``darknet_trainer``), and the reported cost is Darknet's:
the sum of squared deltas.

Per image, in Darknet's order:

1. every prediction (cell, anchor of the mask): objectness delta ``0 - obj``, cleared where
   its best IoU with any truth exceeds ``ignore_thresh``; above ``truth_thresh`` it becomes a
   positive with that truth's class and box deltas;
2. every truth (until the first row whose x is 0): the best of *all* anchors by
   shape-only IoU; if that anchor is one of this layer's mask, box deltas scaled by
   ``2 - w*h``, objectness ``1 - obj`` and class deltas at the truth's cell. Later truths
   overwrite earlier ones in the same cell.

``delta_yolo_class`` keeps its quirk: if the *first* class's delta is already non-zero, only
the truth's class is set (a second truth of another class in the same cell and anchor).

A section that sets any option pjreddie's ``parse_yolo`` does not read (``iou_loss``,
``scale_x_y``, ``*_normalizer``, ``nms_kind`` ...) was written for AlexeyAB's Darknet and is
trained by its rules instead (:mod:`.yolo_alexeyab`, chosen in :mod:`.torch_darknet_train`).
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..layers.darknet import opt_float, opt_int, opt_list
from .darknet_boxes import F32, box_iou, truth_rows

#: options of pjreddie's ``parse_yolo`` that change nothing here (the data loader's
#: ``jitter`` and ``random``), and inference-only options of AlexeyAB's
HARMLESS = {"classes", "num", "mask", "anchors", "max", "jitter", "ignore_thresh",
            "truth_thresh", "random", "nms_kind", "beta_nms"}
#: rows of a truth batch (fill_truth_detection's 90 boxes): the most a head can read
TRUTH_ROWS = 90


def yolo_check(layer) -> str:
    """Why this [yolo] cannot be trained as pjreddie Darknet trains it ("" if it can)."""
    unknown = sorted(k for k in layer.params if k not in HARMLESS and not k.startswith("#"))
    if unknown:
        return (f"option(s) {', '.join(unknown)} (AlexeyAB [yolo] training) are not "
                "implemented; only pjreddie's [yolo] loss is")
    if opt_int(layer, "max", 90) > TRUTH_ROWS:
        return f"max={opt_int(layer, 'max', 90)} exceeds the {TRUTH_ROWS} truth rows of a batch"
    return ""


def anchors(layer, total: int) -> np.ndarray:
    """``l.biases``: the cfg's anchors as float32 pairs, Darknet's .5 where none are given."""
    values = layer.params.get("anchors")
    out = np.full(total * 2, .5, F32)
    if values is not None:
        items = values if isinstance(values, (list, tuple)) else str(values).split(",")
        got = np.asarray([float(v) for v in items], F32)[:total * 2]
        out[:len(got)] = got
    return out.reshape(total, 2)


def _pred(o, n_anchor, anchor_wh, w, h, net_w, net_h, j=None, i=None):
    """``get_yolo_box`` for anchor slot(s): float32 x, y; w, h through a double exp."""
    if j is None:
        jj, ii = np.arange(h, dtype=F32)[:, None], np.arange(w, dtype=F32)[None, :]
        x, y, tw, th = o[n_anchor, 0], o[n_anchor, 1], o[n_anchor, 2], o[n_anchor, 3]
    else:
        jj, ii = F32(j), F32(i)
        x, y, tw, th = (o[n_anchor, k, j, i] for k in range(4))
    bx = ((ii + x) / F32(w)).astype(F32)
    by = ((jj + y) / F32(h)).astype(F32)
    bw = (np.exp(np.float64(tw)) * np.float64(anchor_wh[..., 0]) / net_w).astype(F32)
    bh = (np.exp(np.float64(th)) * np.float64(anchor_wh[..., 1]) / net_h).astype(F32)
    return bx, by, bw, bh


def box_delta(o, d, slot, anchor_wh, truth, i, j, w, h, net_w, net_h, scale) -> float:
    """``delta_yolo_box`` (also ``delta_region_box``, which has the same formulas)."""
    pred = _pred(o, slot, anchor_wh, w, h, net_w, net_h, j, i)
    iou = box_iou(pred, tuple(F32(v) for v in truth[:4]))
    tx = F32(truth[0]) * F32(w) - F32(i)
    ty = F32(truth[1]) * F32(h) - F32(j)
    tw = F32(np.log(np.float64(F32(F32(truth[2]) * F32(net_w)) / anchor_wh[0])))
    th = F32(np.log(np.float64(F32(F32(truth[3]) * F32(net_h)) / anchor_wh[1])))
    for k, target in enumerate((tx, ty, tw, th)):
        d[slot, k, j, i] = F32(scale) * (target - o[slot, k, j, i])
    return float(iou)


def class_delta(o, d, slot, j, i, first, cls, classes, scale=F32(1), tag=True) -> None:
    """``delta_yolo_class`` / ``delta_region_class`` (no tree) at one prediction."""
    if d[slot, first, j, i] and tag:
        d[slot, first + cls, j, i] = scale * (F32(1) - o[slot, first + cls, j, i])
        return
    onehot = (np.arange(classes) == cls).astype(F32)
    d[slot, first:first + classes, j, i] = scale * (onehot - o[slot, first:first + classes, j, i])


def check_truths(truths, rows, classes, file, layer) -> None:
    """The truths a head will read must be boxes Darknet can take: x, y in [0, 1), positive
    w, h (a log of 0 is -inf), classes in range; a clear ModelError instead of NaN deltas."""
    for b in range(truths.shape[0]):
        t = truth_rows(truths[b], rows)
        bad = np.flatnonzero((t[:, 0] < 0) | (t[:, 0] >= 1) | (t[:, 1] < 0) | (t[:, 1] >= 1)
                             | ~(t[:, 2] > 0) | ~(t[:, 3] > 0) | (t[:, 4] < 0)
                             | (t[:, 4].astype(np.int64) >= classes))
        if len(bad):
            r = bad[0]
            raise ModelError(f"truth row {r} of image {b} is x, y, w, h, class = "
                             f"{', '.join(f'{v:g}' for v in t[r])}: the head needs x, y in "
                             f"[0, 1), w, h > 0 and a class in [0, {classes})", file=file,
                             layer=layer)


def yolo_deltas(layer, output: np.ndarray, truths: np.ndarray, net_w: int, net_h: int):
    """Darknet's deltas of one [yolo] layer over a batch.

    Args:
        layer: the [yolo] layer.
        output: its activated output, float32 (N, n*(5+classes), H, W).
        truths: float32 (N, rows, 5) x, y, w, h, class rows, zero rows padding.
        net_w, net_h: the network's input size (``net.w``, ``net.h``).

    Returns:
        (delta, cost): delta like ``output`` (Darknet's sign: target minus output), and
        Darknet's cost, the float32 sum of its squares.
    """
    classes = opt_int(layer, "classes", 20)
    total = opt_int(layer, "num", 1)
    mask = opt_list(layer, "mask") or list(range(total))
    biases = anchors(layer, total)
    rows = opt_int(layer, "max", 90)
    ignore, positive = F32(opt_float(layer, "ignore_thresh", .5)), F32(opt_float(layer, "truth_thresh", 1))
    n_batch, _, h, w = output.shape
    out = np.ascontiguousarray(output, F32).reshape(n_batch, len(mask), 5 + classes, h, w)
    delta = np.zeros_like(out)
    mask_wh = biases[mask]                                    # (n, 2)
    for b in range(n_batch):
        o, d, t = out[b], delta[b], truth_rows(truths[b], rows)
        d[:, 4] = F32(0) - o[:, 4]
        if len(t):
            px, py, pw, ph = _pred(o, slice(None), mask_wh[:, None, None, :], w, h, net_w, net_h)
            ious = box_iou((px[..., None], py[..., None], pw[..., None], ph[..., None]),
                           tuple(t[:, k] for k in range(4)))       # (n, h, w, T)
            ious = np.where(np.isnan(ious), F32(-1), ious)
            best_t = ious.argmax(-1)                               # the first maximum, as `>`
            best = np.maximum(np.take_along_axis(ious, best_t[..., None], -1)[..., 0], F32(0))
            d[:, 4][best > ignore] = 0
            for n, j, i in np.argwhere(best > positive):
                d[n, 4, j, i] = F32(1) - o[n, 4, j, i]
                truth = t[best_t[n, j, i]]
                class_delta(o, d, n, j, i, 5, int(truth[4]), classes)
                box_delta(o, d, n, mask_wh[n], truth, i, j, w, h, net_w, net_h,
                          F32(2) - F32(truth[2]) * F32(truth[3]))
        shapes = (F32(0), F32(0), biases[:, 0] / F32(net_w), biases[:, 1] / F32(net_h))
        for truth in t:
            i, j = int(F32(truth[0]) * F32(w)), int(F32(truth[1]) * F32(h))
            ious = box_iou(shapes, (F32(0), F32(0), F32(truth[2]), F32(truth[3])))
            best_n = _first_best(ious)
            if best_n not in mask:
                continue
            slot = mask.index(best_n)
            box_delta(o, d, slot, biases[best_n], truth, i, j, w, h, net_w, net_h,
                      F32(2) - F32(truth[2]) * F32(truth[3]))
            d[slot, 4, j, i] = F32(1) - o[slot, 4, j, i]
            class_delta(o, d, slot, j, i, 5, int(truth[4]), classes)
    return delta.reshape(output.shape), squared_sum(delta)


def _first_best(ious) -> int:
    """The index a ``if (iou > best_iou)`` scan from 0 keeps (0 when none beats 0)."""
    best, best_i = F32(0), 0
    for k, v in enumerate(np.atleast_1d(ious)):
        if v > best:
            best, best_i = v, k
    return best_i


def squared_sum(delta) -> float:
    """``pow(mag_array(delta), 2)``: Darknet's cost of a head, as the float32 it stores."""
    return float(F32(np.sum(np.square(delta, dtype=np.float64))))
