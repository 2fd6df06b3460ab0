"""Darknet ``.cfg`` (+ ``.weights``) -> Graph.

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

The reader keeps each section's lines in an origin record so that
:mod:`.writer` can reproduce the file (see there).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from ..errors import ModelError
from ..graph import Graph, Layer
from ..layers.darknet import UNSUPPORTED, opt_list
from ..layers.registry import infer_shapes, spec_for, spec_of_type
from . import cfg as cfgmod
from .weights import ArraySpec, Header, LayerLayout, read_weights

__all__ = ["read_darknet", "weight_layouts", "links_of"]

#: option that lists a layer's extra inputs, by section type.


def links_of(type_name: str) -> tuple[str | None, bool]:
    """(the option naming the layers a section reads, whether they replace the previous
    layer as input) from the type's spec: ``("layers", True)`` for route, ``(None, False)``
    for a section that reads only the layer before it."""
    spec = spec_of_type("darknet", type_name)
    return (spec.link_key, spec.links_replace_previous) if spec else (None, False)


@dataclass
class LayerOrigin:
    """What the writer needs to reproduce one section: its lines and original options."""

    section: cfgmod.Section
    params: dict[str, Any]


@dataclass
class GraphOrigin:
    """The cfg as read, its ``[net]`` section and options, and the weights header."""

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
                  origin=GraphOrigin(cfg, net, copy.deepcopy(meta)))
    names: list[str] = []
    for i, sec in enumerate(cfg.sections[1:]):
        if sec.type in UNSUPPORTED:
            raise ModelError(f"section [{sec.name}] (layer {i}) is not supported: "
                             f"{UNSUPPORTED[sec.type]}", file=file, line=sec.start + 1)
        params = sec.params()
        name = f"{sec.type}_{i}"
        prev = names[-1] if names else "data"
        bottoms = [prev]
        key, replace_previous = links_of(sec.type)
        if key is not None:
            targets = _resolve(sec, i, key, params, file)
            bottoms = [names[t] for t in targets] if replace_previous else \
                [prev] + [names[t] for t in targets]
        layer = Layer(name, sec.type, bottoms, [name], params,
                      origin=LayerOrigin(sec, copy.deepcopy(params)))
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
