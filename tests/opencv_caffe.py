"""Running Caffe models in OpenCV 4.x, and explaining why OpenCV refuses a file.

What to know about OpenCV's importer is in oracle_caffe.py's docstring; that module
(the oracle) uses these helpers and re-exports them.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

Shape = tuple[int, ...]


# ------------------------------------------------------------------ OpenCV
def _cv2():
    import cv2
    return cv2


def opencv_net(prototxt, caffemodel=None):
    """``cv2.dnn.readNetFromCaffe`` on the plain CPU backend (raises ``cv2.error``)."""
    cv2 = _cv2()
    args = [str(prototxt)] + ([str(caffemodel)] if caffemodel is not None else [])
    net = cv2.dnn.readNetFromCaffe(*args)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return net


def load_checked(prototxt, caffemodel=None):
    """:func:`opencv_net`, then instantiate every layer so that an unknown type
    raises ``cv2.error`` ("Can't create layer ...") instead of crashing later."""
    net = opencv_net(prototxt, caffemodel)
    for name in net.getLayerNames():
        net.getLayer(net.getLayerId(name))
    return net


def opencv_error_text(err: BaseException) -> str:
    """The informative part of a ``cv2.error``, on one line (no source path, no function)."""
    text = str(err)
    head, _, rest = text.partition("error: ")
    body = rest or head
    lines = body.split("\n")
    first = re.sub(r" in function '[^']*'", "", lines[0]).strip()
    more = [l[2:].strip() for l in lines[1:] if l.startswith("> ")]
    return " ".join([first] + more).strip()


def input_order(net, names: Iterable[str]) -> list[str]:
    """``names`` sorted into the OpenCV net's input order (the input layer's output index).

    Raises KeyError naming an input the OpenCV net does not have.
    """
    data = net.getLayer(0)
    index = {}
    for name in names:
        i = data.outputNameToIndex(name)
        if i < 0:
            raise KeyError(f"OpenCV net has no input named {name!r}")
        index[name] = i
    return sorted(index, key=index.get)


def opencv_layer_shapes(prototxt, caffemodel, input_shapes: Mapping[str, Sequence[int]]
                        ) -> dict[str, list[Shape]]:
    """Output shapes of every layer as OpenCV computes them.

    Args:
        prototxt, caffemodel: the model. OpenCV needs the weights to size
            Convolution/InnerProduct outputs.
        input_shapes: every network input blob -> shape.

    Returns:
        ``{OpenCV layer name: [shape of each output]}`` (see the module notes
        on names); the input pseudo-layer is left out.
    """
    return shapes_of(load_checked(prototxt, caffemodel), input_shapes)


def shapes_of(net, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, list[Shape]]:
    """:func:`opencv_layer_shapes` on a net from :func:`load_checked`."""
    order = input_order(net, input_shapes)
    ids, _, outs = net.getLayersShapes([np.array(input_shapes[n], dtype=np.int32) for n in order])
    result: dict[str, list[Shape]] = {}
    for lid, out in zip(np.ravel(ids), outs):
        if int(lid) != 0:
            result[net.getLayer(int(lid)).name] = [tuple(int(d) for d in np.ravel(s)) for s in out]
    return result


def opencv_forward(prototxt, caffemodel, inputs: Mapping[str, np.ndarray],
                   outputs: Sequence[str] | None = None) -> dict[str, list[np.ndarray]]:
    """One forward pass in OpenCV.

    Args:
        prototxt, caffemodel: the model.
        inputs: network input blob name -> array (converted to float32).
        outputs: OpenCV layer names whose outputs to return (default: the
            layers nothing reads, ``getUnconnectedOutLayersNames``). A layer
            asked for is not fused into its predecessor.

    Returns:
        ``{layer name: [each output, a float32 copy]}``.
    """
    return forward_of(load_checked(prototxt, caffemodel), inputs, outputs)


def forward_of(net, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
               ) -> dict[str, list[np.ndarray]]:
    """:func:`opencv_forward` on an already loaded net."""
    for name in input_order(net, inputs):
        net.setInput(np.ascontiguousarray(inputs[name], dtype=np.float32), name)
    names = list(outputs) if outputs is not None else list(net.getUnconnectedOutLayersNames())
    blobs = net.forwardAndRetrieve(names)
    return {n: [np.array(b, dtype=np.float32, copy=True) for b in outs]
            for n, outs in zip(names, blobs)}


# ------------------------------------------------------------------ explaining OpenCV failures
def _loads_text(text: str) -> str | None:
    """OpenCV's error for a prototxt given as text, or None if it imports."""
    cv2 = _cv2()
    fd, path = tempfile.mkstemp(suffix=".prototxt")
    try:
        os.write(fd, text.encode("utf-8"))
        os.close(fd)
        cv2.dnn.readNetFromCaffe(path)
        return None
    except cv2.error as e:
        return str(e)
    finally:
        os.unlink(path)


def _unknown_in(layer: dict, render_layer: Callable[[dict], str]) -> list[str]:
    """``param.field`` names in ``layer`` that OpenCV's schema lacks.

    OpenCV parses with its own caffe.proto, keeps fields it does not know as
    "unknown fields", then fails on them with a message that names none. A
    one-layer net is imported with one ``*_param`` kept, then with one field
    of it kept: a field that fails alone is one OpenCV does not know. (Fork
    additions sit directly in the ``*_param`` messages; deeper probing is not
    reliable because OpenCV's parser silently drops some unknown scalars.)
    """
    def fails(d):
        err = _loads_text(render_layer(d))
        return err is not None and "UnknownField" in err

    found: list[str] = []
    base = {k: v for k, v in layer.items() if k in ("name", "type")}
    for key, value in layer.items():
        if key in ("name", "type") or not isinstance(value, dict):
            continue
        base[key] = value
        if fails(base):
            bad = []
            for k, v in value.items():
                base[key] = {k: v}
                if fails(base):
                    bad.append(f"{key}.{k}")
            found += bad or [key]
        del base[key]
    return found


def explain_opencv_error(prototxt, err: BaseException) -> str:
    """OpenCV's message for ``err``, plus the fields it chokes on when it does not name them."""
    text = opencv_error_text(err)
    if "UnknownField" not in text:
        return text
    from caffe_surgeon.caffe import caffe_pb2
    from caffe_surgeon.caffe.text import dict_to_message, message_to_dict, parse_net, render

    def render_layer(d):
        return render("layer", dict_to_message(d, caffe_pb2.LayerParameter()))

    net = parse_net(Path(prototxt).read_text(encoding="utf-8"), prototxt)
    seen: dict[str, list[str]] = {}
    for msg in list(net.layer):
        d = message_to_dict(msg)
        for path in _unknown_in(d, render_layer):
            seen.setdefault(f"{d.get('type')}.{path}", []).append(d.get("name", "?"))
    if not seen:
        return text
    parts = [f"{k} (layer '{v[0]}'" + (f" and {len(v) - 1} more)" if len(v) > 1 else ")")
             for k, v in seen.items()]
    return "OpenCV's caffe.proto has no field " + ", ".join(parts)
