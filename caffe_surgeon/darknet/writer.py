"""Graph -> Darknet ``.cfg`` (+ ``.weights``).

Writing keeps the original text: unchanged sections are copied line for line,
a changed option rewrites only its line, and route/shortcut indices are
recomputed from ``bottoms`` only when layers moved. Both files are written
atomically and only after everything has been checked.
"""
from __future__ import annotations

from typing import Any

from ..errors import ModelError
from ..fileio import atomic_write
from ..graph import Graph, Layer
from ..layers.darknet import opt_list
from . import cfg as cfgmod
from .reader import GraphOrigin, LayerOrigin, links_of, weight_layouts
from .weights import default_header, encode_weights

__all__ = ["write_darknet"]


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
        origin = graph.origin if isinstance(graph.origin, GraphOrigin) else None
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
        key, replace_previous = links_of(layer.type)
        links = layer.bottoms if replace_previous else layer.bottoms[1:]
        if not replace_previous and (not layer.bottoms or layer.bottoms[0] != prev):
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
    origin = graph.origin if isinstance(graph.origin, GraphOrigin) else None
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
        lo = layer.origin if isinstance(layer.origin, LayerOrigin) else None
        if origin is not None and lo is not None and lo.section.type == layer.type:
            chunk = cfgmod.render_section(origin.cfg, lo.section, lo.params, p)
        else:
            chunk = cfgmod.new_section(layer.type, p, nl)
        if pieces and not pieces[-1].endswith("\n"):
            pieces[-1] += nl
        pieces += chunk
    return "".join(pieces)
