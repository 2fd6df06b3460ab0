"""AlexeyAB's ``[yolo]`` training deltas (``process_batch`` in ``src/yolo_layer.c`` at
59596d78, unchanged in substance since December 2020), and the choice of fork per section.

Like pjreddie's, the layer writes a ``delta`` per output value (target minus output, the
negative gradient) that ``backward_yolo_layer`` adds unchanged to the layer below, so the
logistic and ``scale_x_y`` of the forward are not differentiated: the x, y deltas are
measured on the *scaled* output ``sigmoid(t) * s - (s - 1) / 2``. Per image:

1. every prediction: objectness ``obj_normalizer * (0 - obj)``; where the best IoU with a
   truth exceeds ``ignore_thresh`` *and* some class output exceeds .25 it is cleared (with
   ``objectness_smooth``, raised to ``obj_normalizer * (iou - obj)`` if larger); above
   ``truth_thresh`` the prediction is a positive of that truth;
2. every truth: the best anchor of all by shape IoU, and (``iou_thresh`` < 1) every other
   anchor of the mask whose shape overlaps the truth by more than ``iou_thresh``; each such
   anchor of this head gets the box delta (accumulated, not overwritten: MSE scaled by
   ``(2 - w*h) * iou_normalizer``, or the (g/d/c)IoU gradient times ``iou_normalizer``,
   ``exp`` of the w, h outputs unless ``new_coords``, clipped to ``max_delta``), objectness
   ``obj_normalizer * (1 - obj)`` and class deltas (``delta_yolo_class``: a class already
   set keeps the other classes' deltas);
3. with ``iou_thresh`` < 1, box deltas of a prediction that got several classes are
   divided by their number (``averages_yolo_deltas``).

The reported cost with an IoU loss (``show_details=1``, the default) is
``iou_normalizer * mean(1 - IoU)`` (GIoU for giou) over the positives plus
``obj_normalizer *`` the squared non-box deltas; otherwise the sum of squared deltas.
"""
from __future__ import annotations

import math

import numpy as np

from .alexeyab_boxes import F32, Box, as_box, dx_box_iou, giou, iou_kind, iou_or_zero, scalar_iou
from .darknet_boxes import truth_rows
from .torch_yolo_loss import _first_best, _pred, anchors, squared_sum, yolo_check, yolo_deltas
from .yolo_alexeyab_options import NO_CLIP, AlexeyabYolo, alexeyab_check, is_alexeyab, read_options

#: ``compare_yolo_class``'s threshold: a prediction is ignored only if some class beats it
CLASS_MATCH = F32(.25)
#: ``focal_loss``: alpha and the epsilon added to p_t before its log
FOCAL_ALPHA, FOCAL_EPS = F32(.5), F32(1e-15)


def yolo_head_check(layer) -> str:
    """Why the [yolo] section cannot be trained by its fork's rules ("" if it can)."""
    return alexeyab_check(layer) if is_alexeyab(layer) else yolo_check(layer)


def yolo_head_deltas(layer, output, truths, net_w: int, net_h: int):
    """The section's deltas and cost by its fork's rules (see :func:`alexeyab_deltas`)."""
    if is_alexeyab(layer):
        return alexeyab_deltas(layer, output, truths, net_w, net_h)
    return yolo_deltas(layer, output, truths, net_w, net_h)


class _Totals:
    """``train_yolo_args``' sums over the positives of a batch, for the reported cost."""

    def __init__(self):
        self.count, self.iou_loss, self.giou_loss = 0, F32(0), F32(0)


def alexeyab_deltas(layer, output: np.ndarray, truths: np.ndarray, net_w: int, net_h: int):
    """AlexeyAB Darknet's deltas of one [yolo] layer over a batch.

    Args:
        layer: the [yolo] layer (AlexeyAB options, :func:`.yolo_alexeyab_options.read_options`).
        output: its activated output (logistic and ``scale_x_y`` applied), float32
            (N, n*(5+classes), H, W).
        truths: float32 (N, rows, 5) x, y, w, h, class rows, zero rows padding.
        net_w, net_h: the network's input size.

    Returns:
        (delta, cost): delta like ``output`` (target minus output), and the cost AlexeyAB
        reports for the layer (module docstring).
    """
    opt = read_options(layer)
    n_batch, _, h, w = output.shape
    out = np.ascontiguousarray(output, F32).reshape(n_batch, len(opt.mask), 5 + opt.classes, h, w)
    delta = np.zeros_like(out)
    biases = anchors(layer, opt.total)
    totals = _Totals()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for b in range(n_batch):
            o, d, t = out[b], delta[b], truth_rows(truths[b], opt.rows)
            grid = (w, h, net_w, net_h)
            _predictions(opt, o, d, t, biases, grid)
            image = _Totals()  # one thread's sums, added to the batch's in image order
            for truth in t:
                _truth(opt, o, d, truth, biases, grid, image)
            if opt.iou_thresh < 1:
                _average_box_deltas(d, opt.classes)
            totals.count += image.count
            totals.iou_loss = F32(totals.iou_loss + image.iou_loss)
            totals.giou_loss = F32(totals.giou_loss + image.giou_loss)
    return delta.reshape(output.shape), _cost(opt, delta, totals)


def decode(opt: AlexeyabYolo, o, slot, anchor_wh, grid, j=None, i=None):
    """``get_yolo_box``: ``exp`` sizes as pjreddie's, or ``new_coords``' ``x*x*4*anchor``."""
    w, h, net_w, net_h = grid
    bx, by, bw, bh = _pred(o, slot, anchor_wh, w, h, net_w, net_h, j, i)
    if opt.new_coords:
        tw, th = (o[slot, 2], o[slot, 3]) if j is None else (o[slot, 2, j, i], o[slot, 3, j, i])
        bw = (tw * tw * F32(4) * anchor_wh[..., 0] / F32(net_w)).astype(F32)
        bh = (th * th * F32(4) * anchor_wh[..., 1] / F32(net_h)).astype(F32)
    return bx, by, bw, bh


def _predictions(opt, o, d, t, biases, grid) -> None:
    """Step 1: objectness of every prediction; positives above ``truth_thresh``."""
    mask_wh = biases[list(opt.mask)]
    d[:, 4] = opt.obj_normalizer * (F32(0) - o[:, 4])
    if not len(t):
        return
    px, py, pw, ph = decode(opt, o, slice(None), mask_wh[:, None, None, :], grid)
    ious = iou_or_zero((px[..., None], py[..., None], pw[..., None], ph[..., None]),
                       tuple(t[:, k] for k in range(4)))               # (n, h, w, T)
    best_t = ious.argmax(-1)                                            # first maximum, as `>`
    best = np.take_along_axis(ious, best_t[..., None], -1)[..., 0]
    matched = np.where((o[:, 5:] > CLASS_MATCH).any(axis=1), best, F32(0))
    ignored = matched > opt.ignore_thresh
    if opt.objectness_smooth:
        pulled = opt.obj_normalizer * (matched - o[:, 4])
        d[:, 4] = np.where(ignored & (pulled > d[:, 4]), pulled, d[:, 4])
    else:
        d[:, 4][ignored] = 0
    for n, j, i in np.argwhere(best > opt.truth_thresh):
        truth = t[best_t[n, j, i]]
        cls = int(truth[4])
        square = F32(best[n, j, i] * best[n, j, i])
        target = square if opt.objectness_smooth else F32(1)
        d[n, 4, j, i] = opt.obj_normalizer * (target - o[n, 4, j, i])
        class_delta(opt, o, d, n, j, i, cls)
        weight = _multiplier(opt, cls)
        if opt.objectness_smooth:
            d[n, 5 + cls, j, i] = weight * (square - o[n, 5 + cls, j, i])
        box_delta(opt, o, d, n, mask_wh[n], truth, i, j, grid, opt.iou_normalizer * weight)


def _truth(opt, o, d, truth, biases, grid, totals) -> None:
    """Step 2 for one truth: its best anchor, then the ``iou_thresh`` ones."""
    w, h, net_w, net_h = grid
    i, j = int(F32(truth[0]) * F32(w)), int(F32(truth[1]) * F32(h))
    shapes = (F32(0), F32(0), biases[:, 0] / F32(net_w), biases[:, 1] / F32(net_h))
    best_n = _first_best(iou_or_zero(shapes, (F32(0), F32(0), F32(truth[2]), F32(truth[3]))))
    if best_n in opt.mask:
        _positive(opt, o, d, truth, best_n, i, j, biases, grid, totals)
    if opt.iou_thresh >= 1:
        return
    shift = Box(F32(0), F32(0), F32(truth[2]), F32(truth[3]))
    for n in range(opt.total):
        if n == best_n or n not in opt.mask:
            continue
        anchor = Box(F32(0), F32(0), F32(biases[n, 0] / F32(net_w)), F32(biases[n, 1] / F32(net_h)))
        if iou_kind(anchor, shift, opt.iou_thresh_kind) > opt.iou_thresh:
            _positive(opt, o, d, truth, n, i, j, biases, grid, totals)


def _positive(opt, o, d, truth, anchor, i, j, biases, grid, totals) -> None:
    """Box, objectness and class deltas of the truth at cell (i, j) for ``anchor``."""
    slot, cls = opt.mask.index(anchor), int(truth[4])
    weight = _multiplier(opt, cls)
    iou, g = box_delta(opt, o, d, slot, biases[anchor], truth, i, j, grid,
                       opt.iou_normalizer * weight)
    totals.count += 1
    totals.iou_loss = F32(totals.iou_loss + (F32(1) - iou))
    totals.giou_loss = F32(totals.giou_loss + (F32(1) - g))
    target = weight * opt.obj_normalizer * (F32(1) - o[slot, 4, j, i])
    if not opt.objectness_smooth or d[slot, 4, j, i] == 0:
        d[slot, 4, j, i] = target
    class_delta(opt, o, d, slot, j, i, cls)


def _multiplier(opt, cls: int) -> np.float32:
    return F32(1) if opt.class_multipliers is None else opt.class_multipliers[cls]


def box_delta(opt, o, d, slot, anchor_wh, truth, i, j, grid, normalizer):
    """``delta_yolo_box`` with ``accumulate=1``: adds the box delta of one prediction.

    Returns:
        (IoU, GIoU) of the prediction with the truth, for the reported cost.
    """
    w, h, net_w, net_h = grid
    pred = Box(*decode(opt, o, slot, anchor_wh, grid, j, i))
    t = as_box(truth)
    iou, g = scalar_iou(pred, t), giou(pred, t)
    pred = pred._replace(w=pred.w if pred.w != 0 else F32(1), h=pred.h if pred.h != 0 else F32(1))
    x = o[slot, 0:4, j, i]
    if opt.iou_loss == "mse":
        scale = F32(2) - t.w * t.h
        target = [t.x * F32(w) - F32(i), t.y * F32(h) - F32(j)]
        for size, net, a in ((t.w, net_w, anchor_wh[0]), (t.h, net_h, anchor_wh[1])):
            if opt.new_coords:
                target.append(F32(math.sqrt(float(F32(size * F32(net)) / F32(F32(4) * a)))))
            else:
                target.append(F32(math.log(float(F32(size * F32(net)) / a))))
        for k in range(4):
            d[slot, k, j, i] += scale * (target[k] - x[k]) * normalizer
        return iou, g
    grad = list(dx_box_iou(pred, t, opt.iou_loss))
    if not opt.new_coords:  # the chain rule through exp, for w and h only
        grad[2] = F32(float(grad[2]) * math.exp(float(x[2])))
        grad[3] = F32(float(grad[3]) * math.exp(float(x[3])))
    for k in range(4):
        v = F32(grad[k] * normalizer)
        v = F32(0) if not np.isfinite(v) else v                  # fix_nan_inf
        if opt.max_delta != F32(NO_CLIP):
            v = min(max(v, -opt.max_delta), opt.max_delta)
        d[slot, k, j, i] += v
    return iou, g


def class_delta(opt, o, d, slot, j, i, cls) -> None:
    """``delta_yolo_class``: one-hot (or smoothed, or focal) class deltas; if the truth's
    class already has a delta (a second truth here), only that class is set again."""
    first = 5
    eps = opt.label_smooth_eps

    def smoothed(y):
        return F32(float(F32(y * (F32(1) - eps))) + 0.5 * float(eps)) if eps else F32(y)

    if d[slot, first + cls, j, i]:
        r = F32(smoothed(F32(1)) - o[slot, first + cls, j, i])
        if np.isfinite(r):
            d[slot, first + cls, j, i] = r
        if opt.class_multipliers is not None:
            d[slot, first + cls, j, i] *= opt.class_multipliers[cls]
        return
    p = o[slot, first:first + opt.classes, j, i]
    onehot = (np.arange(opt.classes) == cls).astype(F32)
    if opt.focal_loss:
        pt = F32(p[cls] + FOCAL_EPS)
        grad = F32(-(F32(1) - pt) * (F32(2) * pt * np.log(pt) + pt - F32(1)))
        d[slot, first:first + opt.classes, j, i] = (onehot - p) * F32(FOCAL_ALPHA * grad)
        return
    targets = np.asarray([smoothed(v) for v in onehot], F32)
    r = (targets - p).astype(F32)
    cur = d[slot, first:first + opt.classes, j, i]
    d[slot, first:first + opt.classes, j, i] = np.where(np.isfinite(r), r, cur)
    if opt.class_multipliers is not None:
        d[slot, first + cls, j, i] *= F32(opt.class_multipliers[cls] * opt.cls_normalizer)


def _average_box_deltas(d, classes: int) -> None:
    """``averages_yolo_deltas`` where objectness has a delta: box deltas divided by the
    number of classes with a positive delta (several truths accumulated here)."""
    count = (d[:, 5:5 + classes] > 0).sum(axis=1).astype(F32)          # (n, h, w)
    where = (d[:, 4] != 0) & (count > 0)
    d[:, 0:4] = np.where(where[:, None], d[:, 0:4] / np.maximum(count, F32(1))[:, None],
                         d[:, 0:4]).astype(F32)


def _cost(opt, delta, totals) -> float:
    """The layer's ``*(l.cost)`` as ``forward_yolo_layer`` leaves it."""
    if opt.iou_loss == "mse" or not opt.show_details:
        return squared_sum(delta)
    boxless = delta.copy()
    boxless[:, :, 0:4] = 0
    classification = F32(float(opt.obj_normalizer) * squared_sum(boxless))
    count = F32(max(totals.count, 1))
    lost = totals.giou_loss if opt.iou_loss == "giou" else totals.iou_loss
    return float(F32(opt.iou_normalizer * F32(lost / count) + classification))
