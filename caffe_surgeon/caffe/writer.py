"""Graph -> prototxt (+ caffemodel), lossless for whatever was not changed.

prototxt: the original text is replayed segment by segment; a layer whose
definition is unchanged is copied verbatim (comments, field order, fields our
code does not model), a changed or new layer is rendered from its params, a
layer the phase rules left out is copied verbatim, a deleted layer is
dropped. V1 files come out upgraded (new-style ``layer {}`` blocks).

caffemodel: records whose weights are the very arrays that were read are
copied byte for byte, including fork-specific fields we never decode; a
changed record is rebuilt from name, type, bottoms, tops and the new blobs
(the stale embedded layer parameters are dropped: Caffe and OpenCV read
weights by name and take parameters from the prototxt).
"""
from __future__ import annotations

from ..errors import ModelError
from ..fileio import atomic_write
from ..graph import Graph, Layer
from ..layers.registry import infer_shapes, spec_for
from . import caffe_pb2, wire
from .reader import LayerOrigin, NetOrigin, unchanged
from .text import dict_to_message, render


def write_caffe(graph: Graph, prototxt, caffemodel=None) -> None:
    """Write ``graph`` as a prototxt and, if a path is given, a caffemodel.

    Both files are produced in memory first and then each is written through a
    temporary file, so an error leaves no partial output.
    """
    if graph.framework != "caffe":
        raise ModelError(f"cannot write a {graph.framework} graph as a Caffe model "
                         "directly; convert it (caffe-surgeon convert --to caffe, or "
                         "caffe_surgeon.save(graph, 'x.prototxt', 'x.caffemodel'))")
    text = render_prototxt(graph)
    model = None
    if caffemodel is not None:
        _check_blob_shapes(graph)
        model = render_caffemodel(graph)
    atomic_write(prototxt, text)
    if model is not None:
        atomic_write(caffemodel, model)


def write_caffemodel(graph: Graph, caffemodel) -> None:
    """Write only the weights of ``graph`` (a training snapshot pairs with a prototxt the
    user already has), atomically, after the same shape check as :func:`write_caffe`."""
    if graph.framework != "caffe":
        raise ModelError(f"cannot write a {graph.framework} graph as a caffemodel")
    _check_blob_shapes(graph)
    atomic_write(caffemodel, render_caffemodel(graph))


def _check_blob_shapes(graph: Graph) -> None:
    """Refuse weights the written prototxt would not load back (the reader's check, before
    writing): each array's shape must be what the layer's parameters imply."""
    try:
        shapes = infer_shapes(graph)
    except ModelError:
        return  # shapes depend on data the definition cannot tell; the reader checks on load
    if shapes.guessed:
        return
    for layer in graph.layers:
        if not layer.weights:
            continue
        layouts = spec_for("caffe", layer, graph.source_text).weight_layouts(
            layer, shapes.inputs[layer.name])
        layout = next((l for l in layouts if set(l) == set(layer.weights)), None)
        if layout is None:
            continue  # arrays named otherwise (kept as read): written as they are
        for name, array in layer.weights.items():
            if tuple(array.shape) != tuple(layout[name]):
                raise ModelError(f"weights '{name}' have shape {tuple(array.shape)} but the "
                                 f"prototxt implies {tuple(layout[name])}: the written model "
                                 "would not load back", file=graph.source_text, layer=layer.name)


# ------------------------------------------------------------------ text
def _layer_dict(layer: Layer) -> dict:
    name = layer.name
    if isinstance(layer.origin, LayerOrigin) and layer.name == layer.origin.snapshot[0]:
        name = layer.origin.file_name  # undo the suffix that made a duplicate name unique
    d = {"name": name, "type": layer.type}
    if layer.bottoms:
        d["bottom"] = list(layer.bottoms)
    if layer.tops:
        d["top"] = list(layer.tops)
    d.update(layer.params)
    return d


def render_layer(layer: Layer) -> str:
    try:
        msg = dict_to_message(_layer_dict(layer), caffe_pb2.LayerParameter())
    except (TypeError, ValueError) as e:
        raise ModelError(f"cannot write parameters: {e}", layer=layer.name) from None
    except ModelError as e:
        raise e.located(layer=layer.name) from None
    return render("layer", msg)


def _render_block(d: dict) -> str:
    return render("layer", dict_to_message(d, caffe_pb2.LayerParameter()))


def render_header(inputs: dict) -> str:
    lines = []
    for name, shape in inputs.items():
        lines.append(f'input: "{name}"')
        lines.append("input_shape {")
        lines += [f"  dim: {int(d)}" for d in shape]
        lines.append("}")
    return "\n".join(lines)


def render_prototxt(graph: Graph) -> str:
    o = graph.origin
    if not isinstance(o, NetOrigin):
        return _render_fresh(graph)
    in_graph = {l.origin.key: l for l in graph.layers if isinstance(l.origin, LayerOrigin)}
    read_keys = o.included_keys
    followers: dict = {}  # origin key (or None) -> new layers placed after it
    prev = None
    for layer in graph.layers:
        if isinstance(layer.origin, LayerOrigin):
            prev = layer.origin.key
        else:
            followers.setdefault(prev, []).append(layer)
    inputs_changed = graph.inputs != o.inputs
    parts: list[str] = []
    header_written = False
    placed_leading = False
    for kind, value in o.segments:
        if kind == "text":
            parts.append(value)
        elif kind in ("header", "header_more"):
            if not inputs_changed:
                parts.append(value)
            elif kind == "header" and graph.inputs:
                parts.append(render_header(graph.inputs))
            header_written = True
        else:
            key = value
            if not placed_leading:
                placed_leading = True
                if inputs_changed and not header_written and graph.inputs:
                    parts.append(render_header(graph.inputs) + "\n")
                parts += [render_layer(l) + "\n" for l in followers.get(None, [])]
            layer = in_graph.get(key)
            if layer is not None:
                parts.append(layer.origin.text if (layer.origin.text is not None and unchanged(layer))
                             else render_layer(layer))
            elif key not in read_keys:  # left out by the phase rules: keep as it was
                parts.append(o.block_texts.get(key) or _render_block(o.blocks[key]))
            parts += ["\n" + render_layer(l) for l in followers.get(key, [])]
    if not placed_leading:
        parts += [render_layer(l) + "\n" for l in followers.get(None, [])]
    return "".join(parts)


def _render_fresh(graph: Graph) -> str:
    parts = []
    if graph.name:
        parts.append(f'name: "{graph.name}"')
    if graph.meta:
        meta = dict_to_message(graph.meta, caffe_pb2.NetParameter())
        from google.protobuf import text_format
        parts.append(text_format.MessageToString(meta, as_utf8=True).rstrip("\n"))
    if graph.inputs:
        parts.append(render_header(graph.inputs))
    parts += [render_layer(l) for l in graph.layers]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------ binary
def _weights_unchanged(layer: Layer) -> bool:
    o = layer.origin
    return (list(layer.weights) == list(o.arrays)
            and all(layer.weights[k] is o.arrays[k] for k in o.arrays))


def _record(layer: Layer) -> bytes:
    d = _layer_dict(layer)
    body = wire.encode_string(wire.LAYER_NAME, d["name"]) + wire.encode_string(wire.LAYER_TYPE, layer.type)
    body += b"".join(wire.encode_string(wire.LAYER_BOTTOM, b) for b in layer.bottoms)
    body += b"".join(wire.encode_string(wire.LAYER_TOP, t) for t in layer.tops)
    body += b"".join(wire.encode_len(wire.LAYER_BLOBS, wire.encode_blob(a)) for a in layer.weights.values())
    return wire.encode_len(wire.NET_LAYER, body)


def render_caffemodel(graph: Graph) -> bytes:
    o = graph.origin
    scanned = o.scanned if isinstance(o, NetOrigin) else None
    parts: list[bytes] = []
    written: set[int] = set()
    if scanned is not None and not any(r.v1 for r in scanned.records):
        buf = o.model
        holder = {l.origin.record: l for l in graph.layers
                  if isinstance(l.origin, LayerOrigin) and l.origin.record is not None}
        for kind, i in scanned.order:
            if kind == "other":
                start, end = scanned.other_fields[i]
                parts.append(bytes(buf[start:end]))
                continue
            rec = scanned.records[i]
            layer = holder.get(i)
            if layer is None:
                if i not in o.owned_records:  # a layer outside this phase, or unknown to the prototxt
                    parts.append(bytes(buf[rec.start:rec.end]))
                continue  # its layer was deleted from the graph
            written.add(id(layer))
            if _weights_unchanged(layer) and layer.name == layer.origin.snapshot[0]:
                parts.append(bytes(buf[rec.start:rec.end]))
            else:
                parts.append(_record(layer))
    else:
        name = graph.name or (scanned.name if scanned else "")
        if name:
            parts.append(wire.encode_string(wire.NET_NAME, name))
    parts += [_record(l) for l in graph.layers if l.weights and id(l) not in written]
    return b"".join(parts)
