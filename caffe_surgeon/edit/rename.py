"""rename: new names for Caffe layers and blobs (Darknet names are positions, not text)."""
from __future__ import annotations

from ..errors import ModelError
from ..graph import Graph
from .rewire import Report, copy_graph, say


def rename(graph: Graph, *, layers=None, blobs=None, report: Report = None) -> Graph:
    """Return a copy of ``graph`` with layers and/or blobs renamed.

    Args:
        layers: old layer name -> new name.
        blobs: old blob name -> new name (every bottom, top and input that says it).
        report: called with one line per change.
    """
    layers, blobs = dict(layers or {}), dict(blobs or {})
    if graph.framework != "caffe":
        raise ModelError("rename: darknet layers and blobs are named by their position in the "
                         "cfg; there is no name to change", file=graph.source_text)
    out = copy_graph(graph)
    names = [l.name for l in out.layers]
    for old, new in layers.items():
        if old not in names:
            raise ModelError(f"rename: no layer named '{old}'", file=graph.source_text)
        if new in names and new != old:
            raise ModelError(f"rename: a layer named '{new}' exists already",
                             file=graph.source_text, layer=old)
        layer = out.layers[names.index(old)]
        layer.name = new
        names[names.index(old)] = new
        say(report, f"layer '{old}' -> '{new}'")
    known = set(out.inputs) | {b for l in out.layers for b in (*l.bottoms, *l.tops)}
    for old, new in blobs.items():
        if old not in known:
            raise ModelError(f"rename: no blob named '{old}'", file=graph.source_text)
        if new in known and new != old:
            raise ModelError(f"rename: blob '{new}' exists already; renaming '{old}' to it "
                             "would join two values", file=graph.source_text)
        count = 0
        for layer in out.layers:
            count += layer.bottoms.count(old) + layer.tops.count(old)
            layer.bottoms = [new if b == old else b for b in layer.bottoms]
            layer.tops = [new if t == old else t for t in layer.tops]
        out.inputs = {new if k == old else k: v for k, v in out.inputs.items()}
        out.outputs = [new if o == old else o for o in out.outputs]
        say(report, f"blob '{old}' -> '{new}' ({count} reference(s))")
    return out
