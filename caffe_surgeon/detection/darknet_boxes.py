"""From YOLO/region/detection head outputs to boxes, as ``darknet detector test`` does.

Follows pjreddie darknet (2018): ``get_network_boxes`` -> ``get_yolo_detections``
/ ``get_region_detections`` / ``get_detection_detections`` (with
``correct_*_boxes`` undoing the letterbox), ``do_nms_sort`` and the printing
and box arithmetic of ``draw_detections``. AlexeyAB's ``new_coords=1`` box
formula is supported for its cfgs (``scale_x_y`` is already applied by the
yolo forward). Box coordinates are computed in float32 like darknet's.

Worked example (the order of ``do_nms_sort``): detections with zero
objectness are moved to the end first (swapping with the last one, as the C
loop does), then for each class in turn the live ones are sorted by that
class's probability, highest first, and every box whose IoU with a
higher-ranked box of the same class exceeds ``nms`` loses that class. The
sort is stable (glibc's ``qsort`` is a merge sort), so ties keep their order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelError
from ..graph import Graph
from ..images.darknet_image import letterbox_image
from ..layers.darknet import opt_int, opt_list
from ..layers.registry import layers_with_role, spec_for

F32 = np.float32


@dataclass
class Detection:
    """One darknet ``detection``: a centre box (relative to the image) and per-class probs."""

    x: float
    y: float
    w: float
    h: float
    objectness: float
    prob: np.ndarray  # (classes,) float32, zero below the threshold
    layer: str = ""

    def pixel_box(self, im_w: int, im_h: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) as ``draw_detections`` computes and clips them."""
        x, y, w, h = (np.float64(F32(v)) for v in (self.x, self.y, self.w, self.h))
        left, right = int((x - w / 2.) * im_w), int((x + w / 2.) * im_w)
        top, bot = int((y - h / 2.) * im_h), int((y + h / 2.) * im_h)
        return (max(left, 0), max(top, 0), min(right, im_w - 1), min(bot, im_h - 1))


@dataclass
class Labelled:
    """One printed detection: class, probability and the pixel box draw_detections uses."""

    cls: int
    prob: float
    box: tuple[int, int, int, int]
    name: str = ""

    def line(self) -> str:
        """``dog: 99%`` exactly as darknet prints it (``%.0f`` rounds half to even)."""
        return f"{self.name or self.cls}: {float(F32(self.prob) * F32(100)):.0f}%"


def _anchors(layer) -> np.ndarray:
    a = layer.params.get("anchors")
    if a is None:
        return np.full(2 * max(1, opt_int(layer, "num", 1)), 0.5, F32)  # make_*_layer default
    vals = a if isinstance(a, (list, tuple)) else [a]
    if isinstance(a, str):
        vals = [float(v) for v in a.split("#")[0].split(",") if v.strip()]
    return np.asarray([float(v) for v in vals], F32)


def _correct(boxes: np.ndarray, im_w, im_h, net_w, net_h, relative=True) -> np.ndarray:
    """``correct_yolo_boxes`` / ``correct_region_boxes``: undo the letterbox (float32)."""
    if F32(net_w) / F32(im_w) < F32(net_h) / F32(im_h):
        new_w, new_h = net_w, (im_h * net_w) // im_w
    else:
        new_w, new_h = (im_w * net_h) // im_h, net_h
    b = boxes.astype(F32).copy()
    # (b.x - (netw - new_w)/2./netw) is computed in double, then stored as float
    b[:, 0] = ((b[:, 0].astype(np.float64) - (net_w - new_w) / 2. / net_w)
               / np.float64(F32(new_w) / F32(net_w))).astype(F32)
    b[:, 1] = ((b[:, 1].astype(np.float64) - (net_h - new_h) / 2. / net_h)
               / np.float64(F32(new_h) / F32(net_h))).astype(F32)
    b[:, 2] *= F32(net_w) / F32(new_w)
    b[:, 3] *= F32(net_h) / F32(new_h)
    if not relative:
        b *= np.array([im_w, im_h, im_w, im_h], F32)
    return b


def _detections(boxes, obj, prob, name) -> list[Detection]:
    return [Detection(float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(o), pr, name)
            for b, o, pr in zip(boxes, obj, prob)]


def _grid_xy(col, row, tx, ty, w, h):
    """``(i + x) / lw`` in float32: an int plus a float, then divided by an int."""
    return ((col.astype(F32) + tx) / F32(w)).astype(F32), ((row.astype(F32) + ty) / F32(h)).astype(F32)


def yolo_detections(layer, out: np.ndarray, im_w, im_h, net_w, net_h, thresh) -> list[Detection]:
    """``get_yolo_detections`` for one image: out is the yolo layer's (C, H, W) output.

    Detections come in darknet's loop order (cell, then anchor), only where the
    objectness exceeds ``thresh``; class probabilities at or below it are zero.
    """
    p = yolo_cells(layer, out)
    cell, n = np.nonzero(p[:, :, 4] > F32(thresh))
    return yolo_cell_detections(layer, cell, n, p[cell, n], out.shape[1:], im_w, im_h, net_w, net_h,
                                thresh)


def yolo_cells(layer, out: np.ndarray) -> np.ndarray:
    """A yolo layer's (C, H, W) output or input as (cell, anchor, entry)."""
    _, h, w = out.shape
    mask = opt_list(layer, "mask") or list(range(opt_int(layer, "num", 1)))
    return out.reshape(len(mask), 5 + opt_int(layer, "classes", 20), h * w).transpose(2, 0, 1)


def yolo_cell_detections(layer, cell, n, v, hw, im_w, im_h, net_w, net_h, thresh) -> list[Detection]:
    """The rest of ``get_yolo_detections``: the detections of the (cell, anchor) pairs whose
    objectness exceeds ``thresh``, in that order, from their yolo output entries ``v``
    (pairs x (5 + classes)); ``hw`` is the map's (H, W)."""
    if not len(cell):
        return []
    h, w = hw
    mask = opt_list(layer, "mask") or list(range(opt_int(layer, "num", 1)))
    anchors = _anchors(layer)
    thresh = F32(thresh)
    row, col = np.divmod(cell, w)
    bx, by = _grid_xy(col, row, v[:, 0], v[:, 1], w, h)
    aw, ah = anchors[2 * np.asarray(mask)[n]], anchors[2 * np.asarray(mask)[n] + 1]
    if opt_int(layer, "new_coords", 0):  # AlexeyAB, all in float
        bw = v[:, 2] * v[:, 2] * F32(4) * aw / F32(net_w)
        bh = v[:, 3] * v[:, 3] * F32(4) * ah / F32(net_h)
    else:  # exp() of a double times a float over an int, stored as float
        bw = (np.exp(v[:, 2].astype(np.float64)) * aw / net_w).astype(F32)
        bh = (np.exp(v[:, 3].astype(np.float64)) * ah / net_h).astype(F32)
    obj = v[:, 4]
    prob = obj[:, None] * v[:, 5:]
    prob = np.where(prob > thresh, prob, F32(0)).astype(F32)
    boxes = _correct(np.stack([bx, by, bw, bh], axis=1), im_w, im_h, net_w, net_h)
    return _detections(boxes, obj, prob, layer.name)


def region_detections(layer, out: np.ndarray, im_w, im_h, net_w, net_h, thresh) -> list[Detection]:
    """pjreddie ``get_region_detections`` (no softmax tree): one detection per anchor and
    cell, at index anchor * H * W + cell; objectness and probs zeroed at or below thresh."""
    if layer.params.get("tree"):
        raise ModelError("region detections with a softmax tree (YOLO9000) are not supported",
                         layer=layer.name)
    c, h, w = out.shape
    num, classes = opt_int(layer, "num", 1), opt_int(layer, "classes", 20)
    coords, background = opt_int(layer, "coords", 4), opt_int(layer, "background", 0)
    anchors = _anchors(layer)
    thresh = F32(thresh)
    p = out.reshape(num, c // num, h * w)
    n, cell = np.meshgrid(np.arange(num), np.arange(h * w), indexing="ij")
    n, cell = n.reshape(-1), cell.reshape(-1)
    v = p[n, :, cell]                                  # (num * cells, entries)
    row, col = np.divmod(cell, w)
    bx, by = _grid_xy(col, row, v[:, 0], v[:, 1], w, h)
    bw = (np.exp(v[:, 2].astype(np.float64)) * anchors[2 * n] / w).astype(F32)
    bh = (np.exp(v[:, 3].astype(np.float64)) * anchors[2 * n + 1] / h).astype(F32)
    scale = np.ones(len(n), F32) if background else v[:, coords]
    obj = np.where(scale > thresh, scale, F32(0)).astype(F32)
    pr = scale[:, None] * v[:, coords + 1:coords + 1 + classes]
    prob = np.where((pr > thresh) & (obj[:, None] != 0), pr, F32(0)).astype(F32)
    boxes = _correct(np.stack([bx, by, bw, bh], axis=1), im_w, im_h, net_w, net_h)
    return _detections(boxes, obj, prob, layer.name)


def detection_detections(layer, out: np.ndarray, im_w, im_h, thresh) -> list[Detection]:
    """YOLOv1 ``get_detection_detections``: boxes come out in pixels of (im_w, im_h).

    darknet's ``draw_detections`` then multiplies them by the image size again (a
    pjreddie bug for YOLOv1); :meth:`Detection.pixel_box` repeats it faithfully.
    """
    side, num = opt_int(layer, "side", 7), opt_int(layer, "num", 1)
    classes, sqrt = opt_int(layer, "classes", 1), opt_int(layer, "sqrt", 0)
    thresh = F32(thresh)
    p = out.reshape(-1)
    dets = []
    for i in range(side * side):
        row, col = divmod(i, side)
        for n in range(num):
            scale = p[side * side * classes + i * num + n]
            bi = side * side * (classes + num) + (i * num + n) * 4
            x = (p[bi] + col) / side * im_w
            y = (p[bi + 1] + row) / side * im_h
            w = p[bi + 2] ** (2 if sqrt else 1) * im_w
            h = p[bi + 3] ** (2 if sqrt else 1) * im_h
            pr = scale * p[i * classes:(i + 1) * classes]
            prob = np.where(pr > thresh, pr, F32(0)).astype(F32)
            dets.append(Detection(float(F32(x)), float(F32(y)), float(F32(w)), float(F32(h)),
                                  float(scale), prob, layer.name))
    return dets


def network_boxes(graph: Graph, outputs: dict, im_w: int, im_h: int, thresh: float,
                  batch_index: int = 0) -> list[Detection]:
    """``get_network_boxes``: detections of every yolo/region/detection layer, in layer order.

    Args:
        graph: the darknet graph.
        outputs: layer name -> that layer's output (N, C, H, W) (from the executor).
        im_w, im_h: size of the original image (before letterboxing).
        thresh: objectness / probability threshold.
    """
    dets: list[Detection] = []
    for layer in head_layers(graph):
        if layer.name not in outputs:
            raise ModelError(f"the output of {layer.type} layer '{layer.name}' was not computed")
        dets += head_boxes(graph, layer, np.asarray(outputs[layer.name][batch_index], F32), im_w, im_h,
                           thresh)
    return dets


def head_boxes(graph: Graph, layer, out: np.ndarray, im_w: int, im_h: int, thresh: float) -> list[Detection]:
    """The detections of one head of ``graph`` from its (C, H, W) output ``out``."""
    _, _, net_h, net_w = graph.inputs["data"]
    return DECODERS[box_format(graph, layer)](layer, out, im_w, im_h, net_w, net_h, thresh)


#: box_format of a Darknet head -> its ``get_*_detections``
DECODERS = {
    "yolo_v3": yolo_detections,
    "yolo_v2": region_detections,
    "yolo_v1": lambda layer, out, im_w, im_h, net_w, net_h, thresh:
        detection_detections(layer, out, im_w, im_h, thresh),
}
#: heads whose boxes come in image pixels rather than relative to the image
PIXEL_BOXES = frozenset({"yolo_v1"})


def head_layers(graph: Graph) -> list:
    """The layers whose output holds boxes darknet decodes ([yolo], [region], [detection])."""
    return [l for l in layers_with_role(graph, "detector_head") if box_format(graph, l) in DECODERS]


def box_format(graph: Graph, layer) -> str:
    return spec_for(graph.framework, layer).box_format


def boxes_in_pixels(graph: Graph, layer) -> bool:
    """Whether ``layer``'s decoded boxes are in image pixels (YOLOv1) rather than relative."""
    return box_format(graph, layer) in PIXEL_BOXES


def _iou_matrix(dets: list[Detection]) -> np.ndarray:
    """darknet ``box_iou`` of every pair of centre boxes, with the C code's float32 steps."""
    b = np.array([(d.x, d.y, d.w, d.h) for d in dets], F32).reshape(-1, 4)
    x, y, w, h = (b[:, k] for k in range(4))
    two = F32(2)

    def overlap(c, s):
        left = np.maximum((c - s / two)[:, None], (c - s / two)[None, :])
        right = np.minimum((c + s / two)[:, None], (c + s / two)[None, :])
        return right - left
    ow, oh = overlap(x, w), overlap(y, h)
    inter = np.where((ow < 0) | (oh < 0), F32(0), ow * oh)
    area = w * h
    union = area[:, None] + area[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def box_iou(a: Detection, b: Detection) -> float:
    """darknet ``box_iou`` of two centre boxes (float32 like the C code)."""
    return float(_iou_matrix([a, b])[0, 1])


def do_nms_sort(dets: list[Detection], classes: int, thresh: float) -> list[Detection]:
    """pjreddie ``do_nms_sort``; returns the array in darknet's final order (dets are modified)."""
    dets = list(dets)
    thresh = F32(thresh)
    k = len(dets) - 1
    i = 0
    while i <= k:
        if dets[i].objectness == 0:
            dets[i], dets[k] = dets[k], dets[i]
            k -= 1
        else:
            i += 1
    live, dead = dets[:k + 1], dets[k + 1:]
    if not live:
        return dets
    iou = _iou_matrix(live)
    probs = np.stack([d.prob for d in live])  # (n, classes), views written back below
    order = np.arange(len(live))
    # a class no box has leaves the order as it is (a stable sort of equal keys), and a box
    # without the class neither suppresses nor needs suppressing: only the others are walked
    for c in np.flatnonzero((probs[:, :classes] != 0).any(axis=0)):
        order = order[np.argsort(-probs[order, c], kind="stable")]  # qsort is glibc's mergesort
        head = order[probs[order, c] != 0]
        for pos, i in enumerate(head):
            if probs[i, c] == 0:
                continue
            later = head[pos + 1:]
            probs[later[iou[i, later] > thresh], c] = 0
    for d, row in zip(live, probs):
        d.prob = row
    return [live[i] for i in order] + dead


def labelled(dets: list[Detection], im_w: int, im_h: int, thresh: float,
             names: list[str] | None = None) -> list[Labelled]:
    """``draw_detections``: every detection with some class prob > thresh, in array order.

    The first such class labels the box; further classes above thresh on the same
    box are returned as extra Labelled entries right after it (darknet prints a
    line for each).
    """
    out: list[Labelled] = []
    thresh = F32(thresh)
    for d in dets:
        hits = [j for j in range(len(d.prob)) if d.prob[j] > thresh]
        if not hits:
            continue
        box = d.pixel_box(im_w, im_h)
        for j in hits:
            out.append(Labelled(j, float(d.prob[j]), box, names[j] if names and j < len(names) else ""))
    return out


def detections(graph: Graph, executor, image: np.ndarray, thresh: float = .25,
               nms: float = .45) -> list[Detection]:
    """Letterbox ``image`` (C, H, W) into the net, run it, decode and NMS the boxes.

    Returns darknet's detection array after ``do_nms_sort``, in its final order
    (what ``draw_detections`` walks).
    """
    _, c, net_h, net_w = graph.inputs["data"]
    _, im_h, im_w = image.shape
    heads = [l.name for l in head_layers(graph)]
    if not heads:
        raise ModelError("the net has no [yolo], [region] or [detection] layer to detect with",
                         file=graph.source_text)
    x = letterbox_image(image, net_w, net_h)[None]
    outs = executor.run({"data": x}, outputs=[], layer_outputs=heads)
    outs = {k.split(":")[0]: v for k, v in outs.items()}
    dets = network_boxes(graph, outs, im_w, im_h, thresh)
    if nms:
        dets = do_nms_sort(dets, max((len(d.prob) for d in dets), default=0), nms)
    return dets


def detect(graph: Graph, executor, image: np.ndarray, thresh: float = .25, hier: float = .5,
           nms: float = .45, names: list[str] | None = None) -> list[Labelled]:
    """What ``darknet detector test`` prints for ``image`` (C, H, W), as Labelled entries.

    ``hier`` only matters for softmax trees (YOLO9000), which are refused; it is
    accepted so the arguments mirror ``darknet detector test``.
    """
    _, im_h, im_w = image.shape
    return labelled(detections(graph, executor, image, thresh, nms), im_w, im_h, thresh, names)
