"""YOLO box decoding and darknet's NMS inside an exported ONNX graph (standard operators).

A Darknet detector exported without ``heads_only`` keeps its heads' outputs (what the
engine's forward gives) and gains one more output, ``detections``: what
``get_network_boxes`` + ``do_nms_sort`` + ``draw_detections`` of
:mod:`caffe_surgeon.detection.darknet_boxes` give, for every image of the batch.

Layout of ``detections``: (M, 7) float32 rows ``[image, class, score, x1, y1, x2, y2]``,
one per (box, class) that darknet prints, ordered by image, class and falling score (ties
in darknet's detection order). Boxes are corners relative to the *network input*
(0..1 of its width and height): the letterbox is an image-level step, so the graph does
not take the image size. To get boxes of an ``im_w`` x ``im_h`` image letterboxed into a
``net_w`` x ``net_h`` net, undo the letterbox as darknet's ``correct_yolo_boxes`` does::

    if net_w / im_w < net_h / im_h: new_w, new_h = net_w, im_h * net_w // im_w
    else:                           new_w, new_h = im_w * net_h // im_h, net_h
    x = (x - (net_w - new_w) / 2 / net_w) * net_w / new_w      # x1 and x2
    y = (y - (net_h - new_h) / 2 / net_h) * net_h / new_h      # y1 and y2
    pixels: x * im_w, y * im_h (darknet's draw_detections then truncates and clips)

The thresholds are graph inputs with defaults stored in the file (``conf_thresh`` (1,),
``nms_thresh`` (1,)), so a runtime may override them per call.

Why ONNX NonMaxSuppression gives darknet's kept set: darknet's ``do_nms_sort`` handles one
class at a time, sorts the live detections by that class's probability (stable), and every
box still holding the class removes it from each later box whose IoU exceeds the threshold.
Boxes at or below ``conf_thresh`` hold probability 0 and suppress nothing. That is greedy
NMS per (image, class) over the boxes scoring above ``conf_thresh``, with suppression at
IoU strictly above ``nms_thresh``: NonMaxSuppression with the boxes shared by all classes
(``center_point_box=1``, darknet's centre boxes), ``score_threshold`` = ``conf_thresh``
(kept when strictly above, as darknet) and ``iou_threshold`` = ``nms_thresh``
(onnxruntime suppresses strictly above). Where they can differ: (1) two boxes of exactly
equal score for a class (darknet keeps the earlier one in its array; the ONNX spec leaves
ties open, onnxruntime prefers the lower index, which is darknet's order); (2) an IoU within
float rounding of ``nms_thresh`` (the IoU is computed from corners here and from centres in
darknet). darknet's ``nms = 0`` (no NMS) is ``nms_thresh = 1`` here (no IoU exceeds 1).

YOLOv1 ``[detection]`` heads (boxes in image pixels, a different NMS) are not decoded; their
graphs keep the head output only.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..layers.darknet import opt_int, opt_list
from ..layers.registry import layers_with_role, spec_for

F32 = np.float32
#: darknet ``detector test``'s defaults
CONF_THRESH, NMS_THRESH = .5, .45
#: the ``detections`` columns
COLUMNS = ("image", "class", "score", "x1", "y1", "x2", "y2")
LAYOUT = ("(M, 7) rows [image, class, score, x1, y1, x2, y2], corners relative to the "
          "network input, ordered by image, class and falling score")


def _anchors(layer) -> np.ndarray:
    # the decoder's own reading of anchors= (its defaults included), so both agree
    from ..detection.darknet_boxes import _anchors as decoder_anchors
    return decoder_anchors(layer)


def _yolo_v3(b, layer, value, net_w, net_h):
    """(boxes (N, D, 4) centre form, objectness (N, D, 1), class probs (N, D, C)) of a yolo
    head, D in ``get_yolo_detections``' loop order: cell, then anchor."""
    _, c, h, w = b.shapes1.outputs[layer.name][0]
    mask = opt_list(layer, "mask") or list(range(opt_int(layer, "num", 1)))
    na, classes = len(mask), opt_int(layer, "classes", 20)
    per = c // na
    v = b.node("Reshape", [value, b.ints([0, na, per, h * w])])
    v = b.node("Transpose", [v], perm=[0, 3, 1, 2])                       # (N, HW, A, P)
    v = b.node("Reshape", [v, b.ints([0, h * w * na, per])])
    cell = np.repeat(np.arange(h * w), na)
    row, col = np.divmod(cell, w)
    anchors = _anchors(layer)
    m = np.tile(np.asarray(mask), h * w)
    awh = np.stack([anchors[2 * m], anchors[2 * m + 1]], axis=1).astype(F32)
    txy, twh = _part(b, v, 0, 2), _part(b, v, 2, 4)
    if opt_int(layer, "new_coords", 0):  # AlexeyAB: w = tw * tw * 4 * anchor / net_w, in float
        wh = b.node("Mul", [b.node("Mul", [twh, twh]), b.const(np.array(4, F32), "four")])
    else:
        wh = b.node("Exp", [twh])
    wh = b.node("Div", [b.node("Mul", [wh, b.const(awh[None], "anchors")]),
                        b.const(np.array([net_w, net_h], F32), "net_wh")])
    return _boxes(b, txy, wh, col, row, w, h), _part(b, v, 4, 5), _part(b, v, 5, 5 + classes)


def _yolo_v2(b, layer, value, net_w, net_h):
    """The same for a region head, D in ``get_region_detections``' order: anchor, then cell."""
    if layer.params.get("tree"):
        raise b.refusal("region detections with a softmax tree (YOLO9000) are not decoded")
    _, c, h, w = b.shapes1.outputs[layer.name][0]
    num, classes = opt_int(layer, "num", 1), opt_int(layer, "classes", 20)
    coords, background = opt_int(layer, "coords", 4), opt_int(layer, "background", 0)
    per = c // num
    v = b.node("Reshape", [value, b.ints([0, num, per, h * w])])
    v = b.node("Transpose", [v], perm=[0, 1, 3, 2])                       # (N, A, HW, P)
    v = b.node("Reshape", [v, b.ints([0, num * h * w, per])])
    n, cell = np.divmod(np.arange(num * h * w), h * w)
    row, col = np.divmod(cell, w)
    anchors = _anchors(layer)
    awh = np.stack([anchors[2 * n], anchors[2 * n + 1]], axis=1).astype(F32)
    txy, twh = _part(b, v, 0, 2), _part(b, v, 2, 4)
    wh = b.node("Div", [b.node("Mul", [b.node("Exp", [twh]), b.const(awh[None], "anchors")]),
                        b.const(np.array([w, h], F32), "grid_wh")])      # region: over the grid
    if background:  # objectness is 1: the probabilities are the class outputs themselves
        obj = b.node("Mul", [_part(b, v, 0, 1), b.const(np.array(0, F32), "zero")])
        obj = b.node("Add", [obj, b.const(np.array(1, F32), "one")])
    else:
        obj = _part(b, v, coords, coords + 1)
    return (_boxes(b, txy, wh, col, row, w, h), obj,
            _part(b, v, coords + 1, coords + 1 + classes))


#: box_format -> the decoder of that head type's output
DECODERS = {"yolo_v3": _yolo_v3, "yolo_v2": _yolo_v2}


def _part(b, v, lo, hi):
    return b.node("Slice", [v, b.ints([lo]), b.ints([hi]), b.ints([2])])


def _boxes(b, txy, wh, col, row, w, h):
    """Centre boxes: ``(col + tx) / w`` and ``(row + ty) / h`` in float32, as darknet."""
    grid = np.stack([col, row], axis=1).astype(F32)[None]
    xy = b.node("Div", [b.node("Add", [txy, b.const(grid, "grid")]),
                        b.const(np.array([w, h], F32), "grid_wh")])
    return b.node("Concat", [xy, wh], axis=2)


def decoded_heads(graph) -> list:
    """The heads whose boxes the graph decodes ([yolo] / [region] without a softmax tree),
    in layer order; empty when the net has none, or has a head it cannot decode (YOLOv1)."""
    heads = layers_with_role(graph, "detector_head")
    formats = [spec_for(graph.framework, l).box_format for l in heads]
    if not heads or any(f not in DECODERS for f in formats):
        return []
    return heads


def check_thresholds(conf_thresh, nms_thresh) -> tuple[float, float]:
    """(conf, nms) as floats in darknet's ranges, else a ModelError saying which."""
    conf = CONF_THRESH if conf_thresh is None else conf_thresh
    nms = NMS_THRESH if nms_thresh is None else nms_thresh
    try:
        conf, nms = float(conf), float(nms)
    except (TypeError, ValueError):
        raise ModelError(f"--conf-thresh and --nms-thresh are numbers, got {conf!r} and {nms!r}") from None
    if not 0 <= conf < 1:
        raise ModelError(f"--conf-thresh {conf} is outside [0, 1)")
    if not 0 < nms <= 1:
        raise ModelError(f"--nms-thresh {nms} is outside (0, 1] (1 keeps every box: darknet's "
                         "nms 0)")
    return conf, nms


def _threshold_input(b, name: str, value: float) -> str:
    """A graph input of shape (1,) whose default (an initializer) is ``value``."""
    name = b.unique(name)
    b.graph_inputs.append(b.helper.make_tensor_value_info(name, 1, [1]))
    b.arrays.append((name, np.array([value], F32)))
    return name


def add_detections(b, graph, heads, conf_thresh: float, nms_thresh: float):
    """Append the decoding of ``heads`` (their values as built in ``b``) and darknet's NMS.

    Returns:
        The ``detections`` graph output (a ValueInfoProto, doc_string ``detections``).
    """
    net_h, net_w = b.shapes1.blobs[next(iter(graph.inputs))][2:]
    boxes, scores, classes = [], [], set()
    for layer in heads:
        b.layer = layer
        fmt = spec_for(graph.framework, layer).box_format
        box, obj, cls = DECODERS[fmt](b, layer, b.value(layer.tops[0]), net_w, net_h)
        classes.add(opt_int(layer, "classes", 20))
        boxes.append(box)
        scores.append((obj, cls))
    b.layer = None
    if len(classes) != 1:
        raise ModelError(f"the detector heads disagree on the number of classes {sorted(classes)}",
                         file=graph.source_text)
    nc = classes.pop()
    conf = _threshold_input(b, "conf_thresh", conf_thresh)
    nms = _threshold_input(b, "nms_thresh", nms_thresh)
    zero = b.const(np.array(0, F32), "zero")
    probs = []
    for obj, cls in scores:
        # objectness x class prob, zero where the objectness is at or below the threshold
        # (darknet creates no detection there)
        prob = b.node("Mul", [obj, cls])
        probs.append(b.node("Where", [b.node("Greater", [obj, conf]), prob, zero]))
    box = b.node("Concat", boxes, axis=1) if len(boxes) > 1 else boxes[0]       # (N, D, 4)
    prob = b.node("Concat", probs, axis=1) if len(probs) > 1 else probs[0]      # (N, D, C)
    prob = b.node("Transpose", [prob], perm=[0, 2, 1])                         # (N, C, D)
    total = sum(int(np.prod(b.shapes1.outputs[l.name][0][2:])) * _anchor_count(l) for l in heads)
    sel = b.node("NonMaxSuppression", [box, prob, b.ints([total], "max_out"), nms, conf],
                 center_point_box=1)                                           # (M, 3)
    score = b.node("GatherND", [prob, sel])                                    # (M,)
    image_box = b.node("Gather", [sel, b.ints([0, 2], "image_box")], axis=1)
    centre = b.node("GatherND", [box, image_box])                              # (M, 4)
    image = b.node("Gather", [sel, b.ints([0], "col0")], axis=1)
    cls_i = b.node("Gather", [sel, b.ints([1], "col1")], axis=1)
    image = b.node("Reshape", [image, b.ints([-1], "flat")])
    cls_i = b.node("Reshape", [cls_i, b.ints([-1], "flat")])
    m = b.node("Shape", [score])
    # falling score (ties keep darknet's order), then by image and class (stable)
    order = _stable_sort(b, score, m)
    key = b.node("Add", [b.node("Mul", [image, b.ints([nc], "nc")]), cls_i])
    order = b.node("Gather", [order, _stable_sort(b, b.node("Neg", [b.node("Gather", [key, order])]), m)])
    score, centre, image, cls_i = (b.node("Gather", [v, order]) for v in (score, centre, image, cls_i))
    xy = b.node("Slice", [centre, b.ints([0]), b.ints([2]), b.ints([1])])
    half = b.node("Div", [b.node("Slice", [centre, b.ints([2]), b.ints([4]), b.ints([1])]),
                          b.const(np.array(2, F32), "two")])
    cols = [b.node("Unsqueeze", [b.node("Cast", [v], to=1), b.ints([1], "axes")])
            for v in (image, cls_i)]
    cols.append(b.node("Unsqueeze", [score, b.ints([1], "axes")]))
    out = b.unique("detections")
    b.node("Concat", cols + [b.node("Sub", [xy, half]), b.node("Add", [xy, half])], [out],
           name="detections", axis=1)
    return b.helper.make_tensor_value_info(out, 1, ["M", len(COLUMNS)], doc_string="detections")


def _anchor_count(layer) -> int:
    return len(opt_list(layer, "mask")) or opt_int(layer, "num", 1)


def _stable_sort(b, values, m):
    """Indices sorting 1-D ``values`` (length ``m``) highest first, ties in index order."""
    _, idx = b.node("TopK", [values, m], 2, axis=0, largest=1, sorted=1)
    return idx

