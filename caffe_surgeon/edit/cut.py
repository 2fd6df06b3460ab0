"""cut: keep the subgraph between given blobs (the heads-only YOLO/SSD cut is one use).

A blob names its final value (the last writer of an in-place chain), as
``Graph.producer`` does. Every layer the outputs need is kept, walking back
from them and stopping at the given inputs, which become network inputs with
their inferred shapes; unused network inputs go.
"""
from __future__ import annotations

import difflib

from ..errors import ModelError
from ..graph import Graph
from ..layers.registry import infer_shapes
from .rewire import Report, copy_graph, say


def cut(graph: Graph, outputs, inputs=(), *, input_shapes=None, report: Report = None) -> Graph:
    """Return the part of ``graph`` that computes ``outputs`` from ``inputs``.

    Args:
        outputs: blob names to end at (at least one).
        inputs: blob names to start from (default: the network's own inputs).
        input_shapes: blob -> shape for inputs the definition does not size.
        report: called with one line per change.

    Raises:
        ModelError for a blob the net lacks, or an input the outputs do not need.
    """
    outputs, inputs = list(outputs), list(inputs)
    if not outputs:
        raise ModelError("cut needs at least one output blob", file=graph.source_text)
    last = {}
    for name in outputs + inputs:
        last[name] = _last_writer(graph, name)
    prod = graph.producers()
    keep, stack, used_inputs = set(), [last[o] for o in outputs], set()
    stops = {last[b] for b in inputs}
    for o in outputs:
        if last[o] is None:
            used_inputs.add(o)
    while stack:
        i = stack.pop()
        if i is None or i in keep:
            continue
        if i in stops and _writes_stop(graph, i, inputs):
            continue
        keep.add(i)
        for b, p in zip(graph.layers[i].bottoms, prod[i]):
            if b in inputs and p == last[b]:
                used_inputs.add(b)
            elif p is None:
                used_inputs.add(b)
            else:
                stack.append(p)
    unused = [b for b in inputs if b not in used_inputs]
    if unused:
        raise ModelError(f"input blob(s) {', '.join(repr(b) for b in unused)} are not on the "
                         f"way to {', '.join(repr(o) for o in outputs)}", file=graph.source_text)
    blobs = infer_shapes(graph, input_shapes).blobs if inputs else {}
    out = copy_graph(graph)
    order = inputs + [u for u in graph.inputs if u in used_inputs and u not in inputs]
    new_inputs = {b: graph.inputs[b] if b in graph.inputs else tuple(blobs[b]) for b in order}
    if graph.framework == "darknet" and len(new_inputs) != 1:
        raise ModelError(f"a darknet net reads one input, this cut would read {list(new_inputs)}",
                         file=graph.source_text)
    removed = [l for i, l in enumerate(out.layers) if i not in keep]
    out.layers = [l for i, l in enumerate(out.layers) if i in keep]
    out.inputs = new_inputs
    out.refresh()
    for b in inputs:
        say(report, f"input '{b}' {','.join(map(str, out.inputs[b]))} (was computed)")
    say(report, f"removed {len(removed)} layer(s)" + (
        f": {', '.join(l.name for l in removed[:12])}{' ...' if len(removed) > 12 else ''}"
        if removed else ""))
    missing = [o for o in outputs if o not in out.outputs]
    if missing:  # an output that other kept layers read stays an output all the same
        out.outputs = out.outputs + missing
    say(report, f"outputs: {', '.join(out.outputs)}")
    return out


def _last_writer(graph: Graph, blob: str) -> int | None:
    try:
        layer = graph.producer(blob)
    except ModelError:
        names = list(graph.inputs) + [t for l in graph.layers for t in l.tops]
        near = difflib.get_close_matches(blob, dict.fromkeys(names), n=3)
        hint = f" (did you mean {', '.join(repr(n) for n in near)}?)" if near else ""
        raise ModelError(f"cut: no blob named '{blob}': no layer writes it and it is not a "
                         f"network input{hint}", file=graph.source_text) from None
    return None if layer is None else graph.layers.index(layer)


def _writes_stop(graph: Graph, i: int, inputs) -> bool:
    return any(t in inputs for t in graph.layers[i].tops)
