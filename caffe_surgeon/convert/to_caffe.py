"""Darknet graph -> Caffe graph (+ the YOLO heads' decoding parameters), and writing both.

The conversion walks the Darknet layers in order and hands each to its converter in
:data:`.darknet_caffe_ops.DARKNET_TO_CAFFE`. Nothing is written until every layer has
converted: refusals are collected and reported together in one ModelError, naming each
layer, its options and why. Every converted blob's Caffe shape is then checked against the
Darknet shape, so a geometry Caffe cannot reproduce is an error, not a silently wrong net.

Detector heads ([yolo], [region], [detection]) are not Caffe layers: the Caffe net ends at
their inputs, and ``heads`` (written as ``<prototxt stem>.heads.json``) keeps what
``caffe-surgeon detect`` needs to decode those blobs as darknet would.

Example::

    g = cs.load("yolov3-tiny.cfg", "yolov3-tiny.weights")
    caffe, heads = to_caffe(g, "bvlc")
    save_caffe_conversion(caffe, heads, "yolov3-tiny.prototxt", "yolov3-tiny.caffemodel")
"""
from __future__ import annotations

import json
import os
import tempfile
from math import prod
from pathlib import Path

from ..detection.caffe_heads import HEADS_FORMAT, heads_file
from ..errors import ModelError
from ..graph import Graph
from ..layers.registry import infer_shapes, spec_for
from .caffe_builder import FLAVORS, CaffeBuilder, Refused
from .darknet_caffe_ops import DARKNET_TO_CAFFE, input_layer

HEADS_VERSION = 1
INPUT_BLOB = "data"
DARKNET_BN = ("pjreddie", "alexeyab")


def _options(layer) -> str:
    return ", ".join(f"{k}={v}" for k, v in layer.params.items()) or "no options"


def _check_weights(graph: Graph, shapes) -> None:
    for layer in graph.layers:
        need = spec_for("darknet", layer).weight_shapes(layer, shapes.inputs[layer.name])
        if need and not layer.weights:
            raise ModelError("the model has no weights to convert: load it with its .weights "
                             "file (or fill it with cs.init)", file=graph.source_text,
                             layer=layer.name)


def _check_shapes(dk_graph: Graph, dk_shapes, caffe: Graph, blob: dict) -> None:
    """Every converted blob must have the Darknet layer's shape (a (N, C) Caffe blob may
    stand for Darknet's (N, C, 1, 1))."""
    cs = infer_shapes(caffe).blobs
    for layer in dk_graph.layers:
        name = blob.get(layer.tops[0]) if layer.tops else None
        if name is None:
            continue
        want, got = tuple(dk_shapes.outputs[layer.name][0]), tuple(cs[name])
        flat_ok = len(got) == 2 and want[2:] == (1, 1) and prod(got) == prod(want)
        if got != want and not flat_ok:
            raise ModelError(f"the Caffe form of this layer gives {got} where darknet gives "
                             f"{want}", file=dk_graph.source_text, layer=layer.name)


def to_caffe(graph: Graph, flavor: str = "bvlc", *, darknet_bn: str = "pjreddie"
             ) -> tuple[Graph, dict | None]:
    """Convert a Darknet graph (cfg + weights) to a Caffe graph; see :func:`to_caffe_mapped`,
    which also returns where each Darknet layer's output went."""
    caffe, heads, _ = to_caffe_mapped(graph, flavor, darknet_bn=darknet_bn)
    return caffe, heads


def to_caffe_mapped(graph: Graph, flavor: str = "bvlc", *, darknet_bn: str = "pjreddie"
                    ) -> tuple[Graph, dict | None, dict[str, str]]:
    """Convert a Darknet graph (cfg + weights) to a Caffe graph.

    Args:
        graph: the Darknet model, weights loaded.
        flavor: "bvlc" (layers BVLC Caffe and OpenCV run) or "xilinx" (caffe-xilinx:
            BatchNorm with its affine part, DeephiResize, Reorg).
        darknet_bn: whose BatchNorm the Caffe net reproduces: "pjreddie" (the Debian
            darknet binary, default) or "alexeyab".

    Returns:
        (Caffe graph with an Input layer of the [net] shape and its weights filled, heads,
        blob map): ``heads`` is a JSON-able dict of the detector heads' decoding parameters,
        or None when the net has no head; the blob map gives, for each Darknet blob, the
        Caffe blob whose final value is its output (heads map to nothing).

    Raises:
        ModelError: a layer the target cannot express (all such layers in one message),
            a graph without weights, or a wrong flavour.
    """
    if graph.framework != "darknet":
        raise ModelError(f"to_caffe converts Darknet models; this is a {graph.framework} model",
                         file=graph.source_text)
    if flavor not in FLAVORS:
        raise ModelError(f"unknown Caffe flavour {flavor!r}: expected one of {', '.join(FLAVORS)}")
    if darknet_bn not in DARKNET_BN:
        raise ModelError(f"darknet_bn must be one of {', '.join(DARKNET_BN)}, not {darknet_bn!r}")
    shapes = infer_shapes(graph)
    _check_weights(graph, shapes)
    if list(graph.inputs) != [INPUT_BLOB]:
        raise ModelError(f"expected one network input '{INPUT_BLOB}', got {list(graph.inputs)}",
                         file=graph.source_text)
    b = CaffeBuilder(shapes, flavor, darknet_bn)
    n, c, h, w = shapes.blobs[INPUT_BLOB]
    b.blob[INPUT_BLOB] = input_layer(b, INPUT_BLOB, (n, c, h, w))
    refusals = []
    for layer in graph.layers:
        convert, why = DARKNET_TO_CAFFE.lookup("darknet", layer.type)
        out = layer.name  # stands in for a refused layer's output, so later layers still run
        try:
            if any(b.blob.get(x, "") is None for x in layer.bottoms):
                raise Refused("it reads the output of a detector head, where the Caffe net ends")
            if convert is None:
                raise Refused(why)
            out = convert(layer, b)
        except Refused as e:
            refusals.append(f"layer '{layer.name}' [{layer.type}] ({_options(layer)}): {e}")
        except ModelError as e:
            raise e.located(file=graph.source_text, layer=layer.name) from None
        for t in layer.tops:
            b.blob[t] = out
    if refusals:
        raise ModelError(f"cannot convert to {flavor} Caffe: " + "; ".join(refusals),
                         file=graph.source_text)
    caffe = Graph("caffe", name=graph.name, layers=b.layers, source=list(graph.source))
    caffe.refresh()
    _check_shapes(graph, shapes, caffe, b.blob)
    heads = None
    if b.heads:
        heads = {"format": HEADS_FORMAT, "version": HEADS_VERSION, "input": INPUT_BLOB,
                 "net": {"width": int(w), "height": int(h), "channels": int(c)},
                 "darknet_bn": darknet_bn, "heads": b.heads}
    return caffe, heads, {k: v for k, v in b.blob.items() if v is not None}


def save_caffe_conversion(caffe_graph: Graph, heads: dict | None, prototxt_path,
                          caffemodel_path) -> None:
    """Write the prototxt, the caffemodel and (when ``heads``) ``<stem>.heads.json``.

    All three are rendered in memory first, then written to temporary files in their
    folders and renamed into place only once every one of them is complete: an error
    leaves none of the outputs behind.
    """
    from ..caffe.writer import render_caffemodel, render_prototxt
    texts = {Path(prototxt_path): render_prototxt(caffe_graph).encode("utf-8"),
             Path(caffemodel_path): render_caffemodel(caffe_graph)}
    if heads is not None:
        try:
            texts[heads_file(prototxt_path)] = (json.dumps(heads, indent=1) + "\n").encode()
        except (TypeError, ValueError) as e:
            raise ModelError(f"the heads parameters are not JSON: {e}",
                             file=heads_file(prototxt_path)) from None
    _write_all(texts)


def _write_all(files: dict[Path, bytes]) -> None:
    """Write every file through a temporary beside it; rename only when all are written."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            folder = path.parent if str(path.parent) else Path(".")
            if not folder.is_dir():
                raise ModelError(f"output folder '{folder}' does not exist", file=path)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        for tmp, path in temps:
            os.replace(tmp, path)
    except OSError as e:
        raise ModelError(f"cannot write the converted model: {e.strerror or e}",
                         file=getattr(e, "filename", None)) from None
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
