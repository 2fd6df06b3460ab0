"""Read and write Darknet models (``.cfg`` + ``.weights``) as a :class:`Graph`.

IR conventions (other modules rely on them):

* ``graph.framework == "darknet"``; ``graph.inputs == {"data": (1, C, H, W)}``
  from ``[net]`` (``(1, inputs, 1, 1)`` for vector nets such as rnn.cfg);
  ``graph.meta`` holds the typed ``[net]`` options.
* Layer ``i`` (0-based, ``[net]`` not counted: the index darknet prints and
  ``ignore_layer=`` uses) is named ``f"{type}_{i}"`` with the canonical section
  name as type; ``tops == [name]``; ``bottoms`` are the input layers' names
  (the previous layer, or the resolved targets of route ``layers=`` /
  shortcut, sam and scale_channels ``from=``; the first layer reads ``data``).
* ``layer.params`` are the typed options of the section, ``layer.weights`` the
  stored arrays in file order (see ``caffe_surgeon.layers.darknet``).

Writing keeps the original text: unchanged sections are copied line for line,
a changed option rewrites only its line, and route/shortcut indices are
recomputed from ``bottoms`` only when layers moved. Both files are written
atomically and only after everything has been checked.
"""
from __future__ import annotations

import math

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caffe_surgeon.errors import ModelError
from caffe_surgeon.fileio import atomic_write
from caffe_surgeon.graph import Graph, Layer
from caffe_surgeon.layers.darknet import UNSUPPORTED, opt_list
from caffe_surgeon.layers.registry import infer_shapes, spec_for

from . import cfg as cfgmod
from .weights import ArraySpec, Header, LayerLayout, default_header, encode_weights, read_weights

__all__ = ["read_darknet", "write_darknet", "weight_layouts", "init_darknet_weights"]

#: option that lists a layer's extra inputs, by section type.
LINK_KEYS = {"route": "layers", "shortcut": "from", "sam": "from", "scale_channels": "from"}


@dataclass
class _LayerOrigin:
    """What the writer needs to reproduce one section: its lines and original options."""

    section: cfgmod.Section
    params: dict[str, Any]


@dataclass
class _GraphOrigin:
    cfg: cfgmod.CfgFile
    net: cfgmod.Section
    meta: dict[str, Any]
    header: Header | None = None


def read_darknet(cfg_path, weights_path=None) -> Graph:
    """Read a Darknet model.

    Args:
        cfg_path: the ``.cfg`` file.
        weights_path: optional ``.weights`` file; its length must match the cfg exactly.

    Returns:
        A Graph following the IR conventions in the module docstring.

    Raises:
        ModelError naming file, line or byte offset and layer for any problem.
    """
    cfg = cfgmod.read_cfg(cfg_path)
    graph = _build_graph(cfg)
    if weights_path is not None:
        graph.source.append(str(weights_path))
        layouts = weight_layouts(graph)
        header, arrays = read_weights(weights_path, layouts)
        for layer, lay, arr in zip(graph.layers, layouts, arrays):
            layer.weights = arr
        graph.origin.header = header
    return graph


def _build_graph(cfg: cfgmod.CfgFile) -> Graph:
    net = cfg.sections[0]
    meta = net.params()
    file = cfg.path
    for k in ("height", "width", "channels"):
        v = meta.get(k, 0)
        if isinstance(v, float) and not math.isfinite(v):
            raise ModelError(f"[net] {k}={v} is not a finite number", file=file)
    h, w, c = (int(meta.get(k, 0)) if isinstance(meta.get(k, 0), (int, float)) else 0
               for k in ("height", "width", "channels"))
    inputs = meta.get("inputs")
    if h and w and c:
        shape = (1, c, h, w)
    elif isinstance(inputs, int) and inputs > 0:
        shape = (1, inputs, 1, 1)
    else:
        raise ModelError(f"[{net.name}] gives neither height, width and channels nor inputs",
                         file=file, line=net.start + 1)
    graph = Graph("darknet", name=Path(file).stem if file else "", inputs={"data": shape},
                  meta=meta, source=[file] if file else [],
                  origin=_GraphOrigin(cfg, net, copy.deepcopy(meta)))
    names: list[str] = []
    for i, sec in enumerate(cfg.sections[1:]):
        if sec.type in UNSUPPORTED:
            raise ModelError(f"section [{sec.name}] (layer {i}) is not supported: "
                             f"{UNSUPPORTED[sec.type]}", file=file, line=sec.start + 1)
        params = sec.params()
        name = f"{sec.type}_{i}"
        prev = names[-1] if names else "data"
        bottoms = [prev]
        key = LINK_KEYS.get(sec.type)
        if key is not None:
            targets = _resolve(sec, i, key, params, file)
            bottoms = [names[t] for t in targets] if sec.type == "route" else \
                [prev] + [names[t] for t in targets]
        layer = Layer(name, sec.type, bottoms, [name], params,
                      origin=_LayerOrigin(sec, copy.deepcopy(params)))
        graph.layers.append(layer)
        names.append(name)
    return graph.refresh()


def _resolve(sec: cfgmod.Section, i: int, key: str, params: dict, file) -> list[int]:
    """Absolute layer indices of ``layers=``/``from=`` (negative values are relative)."""
    line = sec.option_line(key)
    if key not in params:
        raise ModelError(f"[{sec.name}] (layer {i}) needs {key}=", file=file,
                         line=sec.start + 1)
    out = []
    for v in opt_list(Layer(f"{sec.type}_{i}", sec.type, params=params), key):
        t = i + v if v < 0 else v
        if not 0 <= t < i:
            raise ModelError(f"[{sec.name}] (layer {i}) {key}={v} points to layer {t}, but "
                             f"only layers 0..{i - 1} come before it", file=file,
                             line=(line or sec.start) + 1)
        out.append(t)
    if not out:
        raise ModelError(f"[{sec.name}] (layer {i}) {key}= lists no layers", file=file,
                         line=(line or sec.start) + 1)
    return out


# ------------------------------------------------------------------ weights
def weight_layouts(graph: Graph) -> list[LayerLayout]:
    """What each layer stores in the weights file, in order (needs shape inference)."""
    shapes = infer_shapes(graph)
    out = []
    for i, layer in enumerate(graph.layers):
        spec = spec_for("darknet", layer, graph.source_text)
        try:
            ws = spec.weight_shapes(layer, shapes.inputs[layer.name])
        except ModelError as e:
            raise e.located(file=graph.source_text, layer=layer.name) from None
        arrays = tuple(ArraySpec(n, tuple(int(d) for d in s), spec.transposable(n))
                       for n, s in ws.items())
        out.append(LayerLayout(i, layer.type, arrays))
    return out


def init_darknet_weights(graph: Graph, seed: int = 0) -> Graph:
    """Fill every layer's weights with deterministic synthetic values (in place).

    Args:
        graph: a darknet graph.
        seed: seed of the numpy Generator; the same seed gives the same bytes.
    Returns:
        The same graph.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    shapes = infer_shapes(graph)
    for layer in graph.layers:
        spec = spec_for("darknet", layer, graph.source_text)
        layer.weights = spec.init_weights(layer, shapes.inputs[layer.name], rng)
    return graph


# ------------------------------------------------------------------ writer
def write_darknet(graph: Graph, cfg_path, weights_path=None) -> None:
    """Write ``graph`` as a cfg (and weights); nothing is written if any check fails.

    Args:
        graph: a darknet graph (from :func:`read_darknet` or built by hand).
        cfg_path: output ``.cfg``, or None to write only the weights.
        weights_path: optional output ``.weights``; every layer's arrays must
            match what its section stores (names, order, shapes).
    """
    if graph.framework != "darknet":
        raise ModelError(f"cannot write a {graph.framework} graph as a darknet model",
                         file=cfg_path or weights_path)
    params = _effective_params(graph)
    probe = Graph("darknet", graph.name, [
        Layer(l.name, l.type, l.bottoms, l.tops, p, l.weights) for l, p in zip(graph.layers, params)],
        dict(graph.inputs), list(graph.outputs), graph.meta, None, list(graph.source))
    layouts = weight_layouts(probe)  # also proves the shapes are consistent
    text = _render_cfg(graph, params)
    blob = None
    if weights_path is not None:
        origin = graph.origin if isinstance(graph.origin, _GraphOrigin) else None
        header = origin.header if origin is not None and origin.header else default_header()
        blob = encode_weights(header, layouts, [l.weights for l in graph.layers],
                              [l.name for l in graph.layers])
    if cfg_path is not None:
        atomic_write(cfg_path, cfgmod.encode(text))
    if blob is not None:
        atomic_write(weights_path, blob)


def _effective_params(graph: Graph) -> list[dict[str, Any]]:
    """Each layer's params with route/shortcut indices re-derived from ``bottoms``.

    Darknet layers implicitly read the previous layer, so any other wiring is
    an error. Indices are rewritten only when they no longer point at the
    right layers, keeping each entry's style (negative = relative).
    """
    index = {}
    for i, layer in enumerate(graph.layers):
        for t in layer.tops:
            index[t] = i
    out = []
    for i, layer in enumerate(graph.layers):
        prev = graph.layers[i - 1].tops[0] if i else next(iter(graph.inputs), "data")
        key = LINK_KEYS.get(layer.type)
        links = layer.bottoms if layer.type == "route" else layer.bottoms[1:]
        if layer.type != "route" and (not layer.bottoms or layer.bottoms[0] != prev):
            raise ModelError(f"darknet layers read the layer before them ('{prev}'), but this "
                             f"one reads {layer.bottoms}", file=graph.source_text, layer=layer.name)
        if key is None:
            if links:
                raise ModelError(f"[{layer.type}] takes one input, got {layer.bottoms}",
                                 file=graph.source_text, layer=layer.name)
            out.append(layer.params)
            continue
        targets = []
        for b in links:
            if b not in index or index[b] >= i:
                raise ModelError(f"input '{b}' is not an earlier layer (darknet {key}= can "
                                 "only name earlier layers)", file=graph.source_text,
                                 layer=layer.name)
            targets.append(index[b])
        current = opt_list(layer, key)
        resolved = [i + v if v < 0 else v for v in current]
        if resolved == targets:
            out.append(layer.params)
            continue
        styled = [t - i if (j < len(current) and current[j] < 0) or
                  (j >= len(current) and (not current or current[-1] < 0)) else t
                  for j, t in enumerate(targets)]
        p = dict(layer.params)
        p[key] = styled[0] if len(styled) == 1 else styled
        out.append(p)
    return out


def _net_options(graph: Graph) -> dict[str, Any]:
    """``graph.meta`` with height/width/channels (or inputs) taken from ``graph.inputs``.

    Changing the input shape of the graph is thereby enough to change the cfg.
    """
    meta = dict(graph.meta)
    shape = next(iter(graph.inputs.values()), None)
    if shape is None or len(shape) != 4:
        return meta
    _, c, h, w = (int(d) for d in shape)
    if "inputs" in meta and not ("height" in meta and "width" in meta):
        if meta["inputs"] != c * h * w:
            meta["inputs"] = c * h * w
        return meta
    for key, value in (("height", h), ("width", w), ("channels", c)):
        if meta.get(key) != value:
            meta[key] = value
    return meta


def _render_cfg(graph: Graph, params: list[dict[str, Any]]) -> str:
    origin = graph.origin if isinstance(graph.origin, _GraphOrigin) else None
    pieces: list[str] = []
    nl = "\n"
    meta = _net_options(graph)
    if origin is not None:
        cfg = origin.cfg
        nl = cfgmod.line_ending(cfg.lines[origin.net.start])
        pieces += cfg.lines[:cfg.preamble_end]
        pieces += cfgmod.render_section(cfg, origin.net, origin.meta, meta)
    else:
        pieces += cfgmod.new_section("net", meta, nl)
    for layer, p in zip(graph.layers, params):
        lo = layer.origin if isinstance(layer.origin, _LayerOrigin) else None
        if origin is not None and lo is not None and lo.section.type == layer.type:
            chunk = cfgmod.render_section(origin.cfg, lo.section, lo.params, p)
        else:
            chunk = cfgmod.new_section(layer.type, p, nl)
        if pieces and not pieces[-1].endswith("\n"):
            pieces[-1] += nl
        pieces += chunk
    return "".join(pieces)
