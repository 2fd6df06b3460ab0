"""ONNX export of the SSD layers: Normalize, PriorBox (a constant) and DetectionOutput.

PriorBox depends only on its parameters and two spatial sizes, so its output is computed
once by the engine's own ``prior_boxes`` and stored as an initializer.

DetectionOutput is built from standard operators, reproducing ``engine/ssd_ops.py``:

1. decode every prior's box (CENTER_SIZE / CORNER / CORNER_SIZE, with the variances);
2. per image and class (background left out): the ``top_k`` best scores above the threshold,
   then greedy NMS. ONNX's NonMaxSuppression shares boxes across classes and has no
   pre-NMS top_k, so each (image, class) pair becomes its own NMS batch over its own
   ``top_k`` candidates (TopK, whose ties go to the lower index, as the engine's stable sort);
3. ``keep_top_k`` best over all classes of an image, then rows ordered by image, class and
   falling score (two stable TopK sorts), ``[image, label, score, xmin, ymin, xmax, ymax]``;
   with no detection, one row of -1, as Caffe and the engine.
"""
from __future__ import annotations

import numpy as np

from ..layers.caffe_geometry import sub
from .onnx_table import export

F32 = np.float32


@export("caffe", "Normalize")
def normalize(b, layer):
    p = sub(layer, "norm_param")
    eps = float(p.get("eps", 1e-10))
    x = b.inputs()[0]
    nd = len(b.in_shape())
    axes = list(range(1, nd)) if p.get("across_spatial", True) else [1]
    sq = b.node("ReduceSum", [b.node("Mul", [x, x]), b.ints(axes, "axes")], keepdims=1)
    norm = b.node("Sqrt", [b.node("Add", [sq, b.const(np.array(eps, F32), "eps")])])
    s = layer.weights["scale"].reshape(-1)
    scale = s.reshape(1) if s.size == 1 else s.reshape((1, -1) + (1,) * (nd - 2))
    y = b.node("Div", [x, norm])
    b.node("Mul", [y, b.const(scale, "scale")], [b.write(layer.tops[0])])


@export("caffe", "PriorBox")
def prior_box(b, layer):
    from ..engine.ssd_ops import prior_boxes
    boxes = prior_boxes(sub(layer, "prior_box_param"), b.in_shape(0)[2:], b.in_shape(1)[2:])
    b.node("Identity", [b.const(boxes[None], "priors")], [b.write(layer.tops[0])])


def _decode(b, loc, priors, variances, code_type):
    """Decoded (N, P, 4) corner boxes from (N, P, 4) offsets and constant priors/variances."""
    p = priors.astype(np.float64)
    v = variances.astype(np.float64)
    if code_type == "CORNER":
        return b.node("Add", [b.node("Mul", [loc, b.const(v[None], "var")]), b.const(p[None], "priors")])
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    if code_type == "CORNER_SIZE":
        scale = v * np.stack([pw, ph, pw, ph], axis=1)
        return b.node("Add", [b.node("Mul", [loc, b.const(scale[None], "var")]), b.const(p[None], "priors")])
    if code_type != "CENTER_SIZE":
        raise b.refusal(f"unknown code_type {code_type}")
    center = np.stack([(p[:, 0] + p[:, 2]) / 2, (p[:, 1] + p[:, 3]) / 2], axis=1)
    size = np.stack([pw, ph], axis=1)

    def part(lo, hi):
        return b.node("Slice", [loc, b.ints([lo]), b.ints([hi]), b.ints([2])])

    c = b.node("Add", [b.node("Mul", [part(0, 2), b.const((v[:, :2] * size)[None], "var_size")]),
                       b.const(center[None], "center")])
    wh = b.node("Mul", [b.node("Exp", [b.node("Mul", [part(2, 4), b.const(v[None, :, 2:], "var_wh")])]),
                        b.const(size[None], "size")])
    half = b.node("Mul", [wh, b.const(np.array(0.5, F32), "half")])
    return b.node("Concat", [b.node("Sub", [c, half]), b.node("Add", [c, half])], axis=2)


@export("caffe", "DetectionOutput")
def detection_output(b, layer):
    p = sub(layer, "detection_output_param")
    num_classes = int(p.get("num_classes", 0))
    if num_classes <= 0:
        raise b.refusal("DetectionOutput needs num_classes")
    if not p.get("share_location", True):
        raise b.refusal("share_location: false has no engine forward")
    nms = p.get("nms_param", {})
    if float(nms.get("eta", 1.0)) != 1.0:
        raise b.refusal(f"adaptive NMS (eta {nms.get('eta')}) has no ONNX NonMaxSuppression form")
    if p.get("variance_encoded_in_target", False):
        raise b.refusal("variance_encoded_in_target: true is not exported")
    nms_thr, top_k = float(nms.get("nms_threshold", 0.3)), int(nms.get("top_k", -1))
    conf_thr = p.get("confidence_threshold")
    keep_top_k = int(p.get("keep_top_k", -1))
    background = int(p.get("background_label_id", 0))
    loc_v, conf_v, _ = b.inputs()
    priors = b.constant_value(b.inputs()[2])
    if priors is None:
        raise b.refusal("its prior boxes are not a constant of the graph (PriorBox outputs, "
                        "concatenated); nothing else is exported")
    priors = priors.reshape(2, -1, 4)
    num_priors = priors.shape[1]
    classes = [c for c in range(num_classes) if c != background]
    nc = len(classes)
    loc = b.node("Reshape", [loc_v, b.ints([-1, num_priors, 4])])
    boxes = _decode(b, loc, priors[0], priors[1], p.get("code_type", "CORNER"))  # (N, P, 4)
    if p.get("clip", False):
        boxes = b.node("Clip", [boxes, b.const(np.array(0, F32), "lo"), b.const(np.array(1, F32), "hi")])
    conf = b.node("Reshape", [conf_v, b.ints([-1, num_priors, num_classes])])
    conf = b.node("Gather", [conf, b.ints(classes, "classes")], axis=2)        # (N, P, nc)
    conf = b.node("Transpose", [conf], perm=[0, 2, 1])                        # (N, nc, P)
    k = num_priors if top_k < 0 else min(top_k, num_priors)
    cand_scores, cand_idx = b.node("TopK", [conf, b.ints([k], "k")], 2, axis=2)  # (N, nc, k)
    # boxes of each (image, class) candidate: (N*nc, k, 4)
    flat_idx = b.node("Reshape", [cand_idx, b.ints([-1, nc * k])])
    cand_boxes = b.node("GatherElements", [boxes, b.node("Expand", [
        b.node("Unsqueeze", [flat_idx, b.ints([2], "axes")]), b.ints([1, 1, 4], "four")])], axis=1)
    cand_boxes = b.node("Reshape", [cand_boxes, b.ints([-1, k, 4])])
    cand = b.node("Reshape", [cand_scores, b.ints([-1, 1, k])])
    nms_in = [cand_boxes, cand, b.ints([k], "max_out"), b.const(np.array([nms_thr], F32), "iou")]
    if conf_thr is not None:
        nms_in.append(b.const(np.array([float(conf_thr)], F32), "score_thr"))
    sel = b.node("NonMaxSuppression", nms_in)                                  # (M, 3)
    pair = b.node("Gather", [sel, b.ints([0], "col0")], axis=1)                # (M, 1) = n*nc + c
    slot = b.node("Gather", [sel, b.ints([2], "col2")], axis=1)                # (M, 1) index in k
    flat_pair = b.node("Reshape", [pair, b.ints([-1], "flat")])
    flat_slot = b.node("Reshape", [slot, b.ints([-1], "flat")])
    pos = b.node("Add", [b.node("Mul", [flat_pair, b.ints([k], "kk")]), flat_slot])  # into N*nc*k
    score = b.node("Gather", [b.node("Reshape", [cand_scores, b.ints([-1], "flat")]), pos])
    prior = b.node("Gather", [b.node("Reshape", [cand_idx, b.ints([-1], "flat")]), pos])
    image = b.node("Div", [flat_pair, b.ints([nc], "nc")])
    cls_i = b.node("Mod", [flat_pair, b.ints([nc], "nc")])
    m = b.node("Shape", [score])
    # best first (stable), then keep_top_k per image
    order = _stable_sort(b, score, m, largest=1)
    score, prior, image, cls_i = (b.node("Gather", [v, order]) for v in (score, prior, image, cls_i))
    order = _stable_sort(b, b.node("Neg", [image]), m, largest=1)  # by image, scores stay sorted
    score, prior, image, cls_i = (b.node("Gather", [v, order]) for v in (score, prior, image, cls_i))
    if keep_top_k > -1:
        rank = _rank_within(b, image, m)
        keep = b.node("NonZero", [b.node("Less", [rank, b.ints([keep_top_k], "keep")])])
        keep = b.node("Reshape", [keep, b.ints([-1], "flat")])
        score, prior, image, cls_i = (b.node("Gather", [v, keep]) for v in (score, prior, image, cls_i))
        m = b.node("Shape", [score])
    # final order: image, class, then falling score (scores are sorted within each group)
    key = b.node("Add", [b.node("Mul", [image, b.ints([nc], "nc")]), cls_i])
    order = _stable_sort(b, b.node("Neg", [key]), m, largest=1)
    score, prior, image, cls_i = (b.node("Gather", [v, order]) for v in (score, prior, image, cls_i))
    label = b.node("Gather", [b.ints(classes, "labels"), cls_i])
    box_pos = b.node("Add", [b.node("Mul", [image, b.ints([num_priors], "np")]), prior])
    flat_boxes = b.node("Reshape", [boxes, b.ints([-1, 4])])
    row_boxes = b.node("Gather", [flat_boxes, box_pos], axis=0)               # (M, 4)
    cols = [b.node("Unsqueeze", [b.node("Cast", [v], to=1), b.ints([1], "axes")])
            for v in (image, label)]
    rows = b.node("Concat", cols + [b.node("Unsqueeze", [score, b.ints([1], "axes")]), row_boxes], axis=1)
    none = b.const(np.full((1, 7), -1, F32), "no_detection")
    rows = b.node("Concat", [rows, none], axis=0)
    count = b.node("Max", [b.node("Shape", [score]), b.ints([1], "one")])
    rows = b.node("Slice", [rows, b.ints([0], "zero"), count, b.ints([0], "axis0")])
    b.node("Reshape", [rows, b.ints([1, 1, -1, 7])], [b.write(layer.tops[0])])


def _stable_sort(b, values, m, largest: int):
    """Indices sorting 1-D ``values`` (length ``m``, a shape value), ties in index order."""
    _, idx = b.node("TopK", [values, m], 2, axis=0, largest=largest, sorted=1)
    return idx


def _rank_within(b, image, m):
    """Each row's position among the rows of its image (rows sorted by image)."""
    zero, one = b.const(np.array([0], np.int64), "zero"), b.const(np.array([1], np.int64), "one")
    depth = b.node("Add", [b.node("ReduceMax", [b.node("Concat", [image, zero], axis=0)], keepdims=1), one])
    one_hot = b.node("OneHot", [image, depth, b.const(np.array([0, 1], np.int64), "off_on")], axis=-1)
    counts = b.node("ReduceSum", [one_hot, b.ints([0], "axes")], keepdims=0)
    starts = b.node("Sub", [b.node("CumSum", [counts, b.const(np.array(0, np.int64), "axis")]), counts])
    first = b.node("Gather", [starts, image])
    positions = b.node("Range", [b.const(np.array(0, np.int64), "start"),
                                 b.node("Squeeze", [m, b.ints([0], "axes")]),
                                 b.const(np.array(1, np.int64), "step")])
    return b.node("Sub", [positions, first])
