"""prototxt (+ caffemodel) -> Graph.

Steps: parse the text with the merged schema; upgrade V1 layers; keep the
layers whose include/exclude rules match the requested phase (Caffe's
``StateMeetsRule``); turn the legacy ``input``/``input_dim``/``input_shape``
header into explicit graph inputs; then scan the caffemodel and attach each
record's blobs to the layer of the same name, reshaped to what the layer
expects (legacy 4-D blobs) and checked against it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..fileio import read_bytes
from ..graph import Graph, Layer
from ..layers.registry import infer_shapes, spec_for
from . import caffe_pb2, wire
from .text import message_to_dict, parse_net, top_level_fields
from .upgrade import V1_TYPES, upgrade_v1_layer

PHASES = ("TRAIN", "TEST")
_HEADER_FIELDS = ("input", "input_dim", "input_shape")
_LAYER_KEYS = ("name", "type", "bottom", "top")


@dataclass
class LayerOrigin:
    """What the writer needs to reproduce one layer untouched."""

    key: int                      # position among the file's layer blocks
    text: str | None              # original block text (None: V1, always re-rendered)
    snapshot: tuple               # (name, type, bottoms, tops, params) as read
    file_name: str                # the name in the file (IR names are made unique)
    record: int | None = None     # index of its caffemodel record
    arrays: dict = field(default_factory=dict)  # weights as attached (identity = unchanged)


@dataclass
class NetOrigin:
    """The file as read: text segments around the layer blocks, and the scanned caffemodel."""

    text: str
    segments: list                # ("text", str) | ("layer", key) | ("header", str)
    blocks: dict                  # key -> dict of the (upgraded) layer, for layers not in the graph
    inputs: dict                  # graph.inputs as read
    v1: bool
    block_texts: dict = field(default_factory=dict)   # key -> original text (new-style files)
    included_keys: set = field(default_factory=set)   # blocks the phase rules kept
    model: bytes | None = None
    scanned: wire.ScannedNet | None = None
    owned_records: set = field(default_factory=set)   # records attached to a graph layer


def read_caffe(prototxt, caffemodel=None, *, phase: str = "TEST", stages=(), level: int = 0) -> Graph:
    """Read a Caffe model.

    Args:
        prototxt: the text definition (deploy, or train_val holding both phases).
        caffemodel: optional binary weights.
        phase: "TEST" or "TRAIN": which layers the include/exclude rules keep.
        stages, level: the NetState stages and level for the rules.

    Returns:
        A Graph with framework "caffe".
    """
    if phase not in PHASES:
        raise ModelError(f"phase must be TRAIN or TEST, not {phase!r}")
    text = _read_text(prototxt)
    net = parse_net(text, prototxt)
    if len(net.layer) and len(net.layers):
        raise ModelError("the file mixes new-style 'layer {}' and V1 'layers {}' blocks; "
                         "Caffe accepts only one form", file=prototxt)
    v1 = len(net.layers) > 0
    raw_layers = [message_to_dict(m) for m in (net.layers if v1 else net.layer)]
    if v1:
        raw_layers = [upgrade_v1_layer(d, f"{prototxt}: V1 layer '{d.get('name', i)}': ")
                      for i, d in enumerate(raw_layers)]
    spans = top_level_fields(text)
    block_spans = [s for s in spans if s.name in ("layer", "layers")]
    if len(block_spans) != len(raw_layers):
        raise ModelError(f"found {len(block_spans)} layer blocks in the text but the parser "
                         f"read {len(raw_layers)}", file=prototxt)

    state = {"phase": phase, "level": level, "stage": set(stages)}
    graph = Graph("caffe", name=net.name, source=[str(prototxt)])
    meta = message_to_dict(net)
    for k in ("layer", "layers", *_HEADER_FIELDS):
        meta.pop(k, None)
    meta.pop("name", None)
    graph.meta = meta
    graph.inputs = _header_inputs(net, prototxt)

    segments: list = []
    blocks: dict = {}
    pos = 0
    header_done = False
    layer_keys = iter(range(len(raw_layers)))
    for span in spans:
        if span.name in _HEADER_FIELDS:
            segments.append(("text", text[pos:span.start]))
            if not header_done:
                segments.append(("header", text[span.start:span.end]))
                header_done = True
            else:
                segments.append(("header_more", text[span.start:span.end]))
            pos = span.end
        elif span.name in ("layer", "layers"):
            segments.append(("text", text[pos:span.start]))
            segments.append(("layer", next(layer_keys)))
            pos = span.end
    segments.append(("text", text[pos:]))
    origin = NetOrigin(text, segments, blocks, dict(graph.inputs), v1)

    used: dict[str, int] = {}
    for key, (span, d) in enumerate(zip(block_spans, raw_layers)):
        blocks[key] = d
        if not v1:
            origin.block_texts[key] = text[span.start:span.end]
        if not _included(d, state):
            continue
        origin.included_keys.add(key)
        file_name = d.get("name", f"layer{key}")
        name = file_name
        if name in used:
            used[name] += 1
            name = f"{file_name}_{used[file_name]}"
        used.setdefault(name, 0)
        params = {k: v for k, v in d.items() if k not in _LAYER_KEYS}
        layer = Layer(name, d.get("type", ""), list(d.get("bottom", [])), list(d.get("top", [])), params)
        layer.origin = LayerOrigin(key, None if v1 else text[span.start:span.end],
                                   _snapshot(layer), file_name)
        graph.layers.append(layer)
    graph.origin = origin
    graph.producers()  # every bottom must be produced before use
    if caffemodel is not None:
        attach_caffemodel(graph, caffemodel)
    return graph.refresh()


def _read_text(path) -> str:
    """The prototxt as text. Bytes that are not UTF-8 (a GBK comment, say) are kept as
    surrogates, which the writers turn back into the same bytes; Caffe's parser accepts
    them in comments too. A NUL byte means a binary file."""
    data = read_bytes(path, "prototxt")
    nul = data.find(b"\0", 0, 4096)
    if nul >= 0:
        raise ModelError(f"prototxt holds binary data (a NUL byte at {nul}); is it a binary "
                         "caffemodel?", file=path)
    return data.decode("utf-8", errors="surrogateescape")


def _snapshot(layer: Layer) -> tuple:
    return (layer.name, layer.type, list(layer.bottoms), list(layer.tops), copy.deepcopy(layer.params))


def unchanged(layer: Layer) -> bool:
    """True when the layer's definition is exactly as read (weights aside)."""
    o = layer.origin
    return isinstance(o, LayerOrigin) and o.snapshot == _snapshot(layer)


def _header_inputs(net, file) -> dict:
    names = list(net.input)
    if not names:
        if len(net.input_shape) or len(net.input_dim):
            raise ModelError("input_shape/input_dim given without an 'input:' name", file=file)
        return {}
    if len(net.input_shape):
        if len(net.input_shape) != len(names):
            raise ModelError(f"{len(names)} 'input' names but {len(net.input_shape)} input_shape blocks",
                             file=file)
        return {n: tuple(int(d) for d in s.dim) for n, s in zip(names, net.input_shape)}
    dims = list(net.input_dim)
    if len(dims) != 4 * len(names):
        raise ModelError(f"{len(names)} 'input' names need {4 * len(names)} input_dim values, "
                         f"found {len(dims)}", file=file)
    return {n: tuple(int(d) for d in dims[4 * i:4 * i + 4]) for i, n in enumerate(names)}


def _meets(rule: dict, state: dict) -> bool:
    if "phase" in rule and rule["phase"] != state["phase"]:
        return False
    if "min_level" in rule and state["level"] < rule["min_level"]:
        return False
    if "max_level" in rule and state["level"] > rule["max_level"]:
        return False
    if any(s not in state["stage"] for s in rule.get("stage", [])):
        return False
    return not any(s in state["stage"] for s in rule.get("not_stage", []))


def _included(layer: dict, state: dict) -> bool:
    """Caffe's Net::FilterNet: include rules select, otherwise exclude rules remove."""
    include, exclude = layer.get("include", []), layer.get("exclude", [])
    if include:
        return any(_meets(r, state) for r in include)
    return not any(_meets(r, state) for r in exclude)


# ------------------------------------------------------------------ weights
_V1_ENUM = None


def _v1_type_name(number: int) -> str:
    global _V1_ENUM
    if _V1_ENUM is None:
        _V1_ENUM = caffe_pb2.V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"]
    ev = _V1_ENUM.values_by_number.get(number)
    return V1_TYPES.get(ev.name, "") if ev is not None else ""


def attach_caffemodel(graph: Graph, caffemodel) -> None:
    """Scan ``caffemodel`` and attach blobs to the graph's layers by name."""
    data = read_bytes(caffemodel, "caffemodel")
    if not data:
        raise ModelError("caffemodel is empty", file=caffemodel)
    scanned = wire.scan_net(data, caffemodel)
    graph.origin.model = data
    graph.origin.scanned = scanned
    graph.source.append(str(caffemodel))
    by_name: dict[str, Layer] = {}
    for layer in graph.layers:
        by_name.setdefault(layer.origin.file_name, layer)
    try:
        shapes = infer_shapes(graph)
    except ModelError:
        shapes = None  # e.g. a Data layer whose size only the database knows
    for i, rec in enumerate(scanned.records):
        layer = by_name.get(rec.name)
        if layer is None or layer.origin.record is not None:
            continue
        graph.origin.owned_records.add(i)
        if not rec.blobs:
            layer.origin.record = i
            continue
        rec_type = _v1_type_name(rec.type) if rec.v1 else rec.type
        if rec_type and rec_type != layer.type:
            raise ModelError(f"caffemodel layer '{rec.name}' is a {rec_type} but the prototxt says "
                             f"{layer.type}", file=caffemodel, layer=layer.name)
        spec = spec_for("caffe", layer, graph.source_text)
        expected = None
        if shapes is not None:
            layouts = spec.weight_layouts(layer, shapes.inputs[layer.name])
            expected = next((l for l in layouts if len(l) == len(rec.blobs)), layouts[0])
        try:
            layer.weights = _shape_blobs(rec, layer, spec, expected, caffemodel)
        except ModelError:
            if expected is None or not shapes.guessed:
                raise
            # a database's channel count was guessed (3): the layers that see it keep the
            # stored shapes, checked against the real data when the net runs
            layer.weights = _shape_blobs(rec, layer, spec, None, caffemodel)
        layer.origin.record = i
        layer.origin.arrays = dict(layer.weights)


def _shape_blobs(rec, layer, spec, expected, file) -> dict:
    names = list(expected) if expected else spec.weight_names(layer, len(rec.blobs))
    if expected is not None and len(rec.blobs) != len(expected):
        raise ModelError(f"caffemodel has {len(rec.blobs)} blobs for this {layer.type} layer, "
                         f"the prototxt implies {len(expected)} ({', '.join(expected) or 'none'})",
                         file=file, layer=layer.name)
    out = {}
    for i, blob in enumerate(rec.blobs):
        name = names[i] if i < len(names) else f"blob{i}"
        declared = blob.declared_shape
        if int(np.prod(declared, dtype=np.int64)) != blob.data.size:
            raise ModelError(f"blob {i} ('{name}') declares shape {declared} "
                             f"({int(np.prod(declared))} values) but holds {blob.data.size} values",
                             file=file, layer=layer.name)
        if expected is not None:
            want = tuple(expected[name])
            ok = declared == want or (blob.legacy_shape and _legacy_matches(declared, want))
            if not ok:
                raise ModelError(f"blob {i} ('{name}') has shape {declared} in the caffemodel but the "
                                 f"prototxt implies {want}", file=file, layer=layer.name)
            shape = want
        else:
            shape = _squeeze_legacy(declared) if blob.legacy_shape else declared
        out[name] = blob.data.reshape(shape)
    return out


def _legacy_matches(declared, want) -> bool:
    """Legacy 4-D blobs are right-aligned: (1,1,1,N) is a bias of N, (1,1,M,N) a matrix."""
    if int(np.prod(declared)) != int(np.prod(want)):
        return False
    lead = len(declared) - len(want)
    if lead < 0:
        return tuple(want[-len(declared):]) == tuple(declared) and all(d == 1 for d in want[:-len(declared)])
    return tuple(declared[lead:]) == tuple(want) and all(d == 1 for d in declared[:lead]) \
        or _squeeze_legacy(declared) == _squeeze_legacy(want)


def _squeeze_legacy(shape) -> tuple:
    shape = list(shape)
    while len(shape) > 1 and shape[0] == 1:
        shape.pop(0)
    return tuple(shape)
