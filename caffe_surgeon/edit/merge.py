"""merge: runs of per-channel affine layers joined, identity layers removed.

Two consecutive affine layers (Scale, Bias, Power with power 1), the second the
only reader of the first, become the first with both maps in its arrays;
layers that copy their input (a Concat or route of one input, a Reshape or
Flatten to the same shape, Split, Dropout at test time) are bypassed. Which
layers qualify is each spec's answer (``channel_affine``, ``absorb_affine``,
``identity``).
"""
from __future__ import annotations

from ..graph import Graph
from ..layers.registry import infer_shapes
from .rewire import Report, absorbed, bypass, copy_graph, readers_of, removable, say, spec


def merge(graph: Graph, *, input_shapes=None, report: Report = None) -> Graph:
    """Return a copy of ``graph`` with affine runs merged and identity layers removed.

    Args:
        input_shapes: blob -> shape for inputs the definition does not size.
        report: called with one line per change.
    """
    out = copy_graph(graph)
    i = 0
    while i < len(out.layers):
        if _merge_affine(out, i, report):
            continue
        i += 1
    shapes = infer_shapes(out, input_shapes)  # bypassing an identity changes no shape
    i = 0
    while i < len(out.layers):
        layer = out.layers[i]
        ins, outs = shapes.inputs[layer.name], shapes.outputs[layer.name]
        if spec(out, layer).identity(layer, ins, outs) and not removable(out, i):
            say(report, f"removed {layer.type} '{layer.name}' (its output is its input)")
            bypass(out, i)
            continue
        i += 1
    return out


def _merge_affine(graph: Graph, i: int, report: Report) -> bool:
    """Merge the affine layer at ``i`` into the affine layer it reads, if both allow it."""
    layer = graph.layers[i]
    if "affine" not in spec(graph, layer).roles or removable(graph, i):
        return False
    mine = spec(graph, layer).channel_affine(layer)
    prod = graph.producers()
    p = prod[i][0] if prod[i] else None
    if mine is None or p is None or "affine" not in spec(graph, graph.layers[p]).roles:
        return False
    if readers_of(graph, p, prod) != [i]:
        return False
    edited = absorbed(graph, p, *mine)
    if isinstance(edited, str):
        return False
    head = graph.layers[p]
    graph.layers[p] = edited
    bypass(graph, i)
    say(report, f"merged {layer.type} '{layer.name}' into {head.type} '{head.name}'")
    return True
