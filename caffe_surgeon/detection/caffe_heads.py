"""Darknet detections from a converted Caffe model and its ``<stem>.heads.json``.

A Darknet -> Caffe conversion (:mod:`caffe_surgeon.convert.to_caffe`) ends the Caffe net
at the inputs of the [yolo] / [region] / [detection] layers and writes their parameters
beside the prototxt. Here the Caffe net runs on the letterboxed image, each head is
rebuilt as the Darknet layer it was (type and options from the file) and run by the
Darknet engine on its input blob, and the boxes are decoded and NMS-sorted exactly as
for the Darknet model, so ``detect`` prints the same lines for both.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..graph import Graph, Layer
from ..layers.registry import spec_for
from .darknet_boxes import DECODERS, do_nms_sort, labelled

F32 = np.float32
HEADS_FORMAT = "caffe-surgeon darknet heads"


def heads_file(prototxt) -> Path:
    """Where the conversion put the heads of ``prototxt``: ``<stem>.heads.json`` beside it."""
    p = Path(prototxt)
    return p.parent / f"{p.stem}.heads.json"


def read_heads(prototxt) -> dict:
    """The heads record of a converted model; a ModelError if it is missing or not one."""
    path = heads_file(prototxt)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError("a Caffe model needs the heads file its Darknet conversion wrote "
                         f"beside it ({path.name}) to decode detections", file=path) from None
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the heads file: {e}", file=path) from None
    ok = isinstance(record, dict) and record.get("format") == HEADS_FORMAT
    if not ok or not isinstance(record.get("heads"), list) or "net" not in record:
        raise ModelError(f"not a heads file (expected \"format\": \"{HEADS_FORMAT}\" with "
                         "\"net\" and \"heads\")", file=path)
    return record


def head_layers(record: dict) -> list[Layer]:
    """The Darknet head layers the record describes, each reading its Caffe input blob."""
    out = []
    for h in record["heads"]:
        layer = Layer(h["name"], h["type"], [h["input"]], [h["name"]], dict(h.get("params", {})))
        spec_for("darknet", layer)  # an unknown type is a ModelError here, not a KeyError later
        out.append(layer)
    return out


def decode_heads(record: dict, outputs: dict, im_w: int, im_h: int, thresh: float,
                 darknet_bn: str = "pjreddie") -> list:
    """``get_network_boxes`` over the heads: ``outputs`` maps each head's Caffe input blob
    to its (N, ...) value; boxes relative to the (im_w, im_h) image, in layer order."""
    from ..engine import Executor
    net_w, net_h = int(record["net"]["width"]), int(record["net"]["height"])
    dets = []
    for layer in head_layers(record):
        x = np.asarray(outputs[layer.bottoms[0]], F32)
        if x.ndim == 2:  # a head after [connected] reads a flat (N, C) blob as (N, C, 1, 1)
            x = x.reshape(x.shape + (1, 1))
        g = Graph("darknet", layers=[layer], inputs={layer.bottoms[0]: tuple(x.shape)})
        y = Executor(g, darknet_bn=darknet_bn).run({layer.bottoms[0]: x}, outputs=[layer.name])
        decode = DECODERS.get(spec_for("darknet", layer).box_format)
        if decode is None:
            raise ModelError(f"{layer.type} heads are not decoded by detect", layer=layer.name)
        dets += decode(layer, y[layer.name][0], im_w, im_h, net_w, net_h, thresh)
    return dets


def caffe_detect(graph: Graph, executor, record: dict, image: np.ndarray, thresh: float = .25,
                 nms: float = .45, names: list[str] | None = None) -> list:
    """What ``darknet detector test`` prints for ``image`` (C, H, W), from the Caffe model."""
    from ..images.darknet_image import letterbox_image
    net_w, net_h = int(record["net"]["width"]), int(record["net"]["height"])
    _, im_h, im_w = image.shape
    x = letterbox_image(image, net_w, net_h)[None]
    blobs = [h["input"] for h in record["heads"]]
    if not blobs:
        raise ModelError("the heads file lists no head to detect with")
    outs = executor.run({record.get("input", "data"): x}, outputs=blobs)
    dets = decode_heads(record, outs, im_w, im_h, thresh, record.get("darknet_bn", "pjreddie"))
    if nms:
        dets = do_nms_sort(dets, max((len(d.prob) for d in dets), default=0), nms)
    return labelled(dets, im_w, im_h, thresh, names)
