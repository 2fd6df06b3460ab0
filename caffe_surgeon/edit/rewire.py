"""The few graph moves every edit is made of: copy, bypass a layer, drop layers.

Edits never patch edges by hand: a layer is removed by pointing the readers of
what it wrote at what it read (:func:`bypass`), and everything else follows
from ``Graph.producers``, the one producer/consumer index. Darknet sections
read the section before them implicitly, so there a layer can only go when
that stays true (:func:`removable`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import ModelError
from ..graph import Graph, Layer
from ..layers.registry import LayerSpec, spec_for
from ..pruning.surgery import copy_graph

Report = Callable[[str], None] | None

__all__ = ["copy_graph", "absorbed", "bypass", "drop", "removable", "readers_of", "spec", "say", "Report"]


def spec(graph: Graph, layer: Layer) -> LayerSpec:
    return spec_for(graph.framework, layer, graph.source_text)


def say(report: Report, line: str) -> None:
    """Hand one change line to the caller's ``report`` callable (print, list.append)."""
    if report is not None:
        report(line)


def readers_of(graph: Graph, index: int, producers=None) -> list[int]:
    """Indices of the layers reading a value layer ``index`` wrote."""
    prod = graph.producers() if producers is None else producers
    return [j for j, row in enumerate(prod) if index in row]


def removable(graph: Graph, index: int) -> str:
    """"" when layer ``index`` can be bypassed in its format, else why not."""
    layer = graph.layers[index]
    if not layer.bottoms:
        return f"'{layer.name}' reads nothing, so nothing can take its place"
    if graph.framework == "darknet":
        prev = graph.layers[index - 1].tops[0] if index else next(iter(graph.inputs), None)
        if layer.bottoms[0] != prev:
            # the section after it would have to read an earlier section, which darknet's
            # implicit "previous layer" input cannot say
            return (f"'{layer.name}' reads '{layer.bottoms[0]}', not the section before it; "
                    "darknet sections read the one before them")
    return ""


def bypass(graph: Graph, index: int) -> None:
    """Remove layer ``index`` (in place, on an edit's own copy); whoever read what it
    wrote reads its first bottom instead. The caller checks :func:`removable`."""
    layer = graph.layers[index]
    source = layer.bottoms[0]
    prod = graph.producers()
    for j in range(index + 1, len(graph.layers)):
        later = graph.layers[j]
        later.bottoms = [source if p == index else b for b, p in zip(later.bottoms, prod[j])]
    renamed = [t for t in layer.tops if t != source]
    del graph.layers[index]
    if renamed and any(t in graph.outputs for t in renamed):
        graph.outputs = [source if t in renamed else t for t in graph.outputs]
    graph.refresh()


def drop(graph: Graph, indices) -> None:
    """Remove layers nobody else reads (sinks, a cut's far side), in place."""
    gone = set(indices)
    prod = graph.producers()
    for j, row in enumerate(prod):
        if j in gone:
            continue
        for b, p in zip(graph.layers[j].bottoms, row):
            if p in gone:
                raise ModelError(f"'{graph.layers[j].name}' still reads '{b}' from "
                                 f"'{graph.layers[p].name}', which is being removed",
                                 file=graph.source_text, layer=graph.layers[j].name)
    graph.layers = [l for i, l in enumerate(graph.layers) if i not in gone]
    graph.refresh()


def absorbed(graph: Graph, p: int, a: np.ndarray, c: np.ndarray):
    """A copy of layer ``p`` that outputs ``a * y + c``, or why it cannot."""
    head = graph.layers[p]
    edited = copy_graph(Graph(graph.framework, layers=[head])).layers[0]
    try:
        why = spec(graph, head).absorb_affine(edited, a, c)
    except ValueError as e:  # per-channel counts that do not match its outputs
        why = f"{head.type} '{head.name}' has a different channel count ({e})"
    return why or edited
