"""strip: remove what a deployed net does not run.

Losses, metrics, sinks (Silence) and test-time identities (Dropout) go; data
layers that read a database become plain network inputs with the shape they
produced (their label tops must then be unread). With ``keep_phase`` the
blocks of the other phase, which the Caffe writer otherwise keeps verbatim so
a train_val stays a train_val, are dropped too: a deploy file.
"""
from __future__ import annotations

import dataclasses

from ..errors import ModelError
from ..graph import Graph
from ..layers.caffe_geometry import sub
from ..layers.registry import infer_shapes
from .rewire import Report, bypass, copy_graph, drop, readers_of, removable, say, spec

#: roles of layers a deployed net never runs (they produce no value a later layer needs)
TRAINING_ROLES = ("loss", "metric", "no_top")


def strip(graph: Graph, *, keep_phase: str | None = None, input_shapes=None,
          report: Report = None) -> Graph:
    """Return a copy of ``graph`` with only what deployment runs.

    Args:
        keep_phase: ``"TEST"`` or ``"TRAIN"`` (Caffe): the phase the graph was read in;
            the other phase's layers are dropped from the written file.
        input_shapes: blob -> shape for data layers whose shape only their database knows.
        report: called with one line per change.
    """
    out = copy_graph(graph)
    if keep_phase is not None:
        _keep_phase(out, keep_phase, report)
    sinks = [i for i, l in enumerate(out.layers) if set(spec(out, l).roles) & set(TRAINING_ROLES)]
    for i in sinks:
        say(report, f"removed {out.layers[i].type} '{out.layers[i].name}'")
    drop(out, sinks)
    i = 0
    while i < len(out.layers):
        layer = out.layers[i]
        ins = [()] * len(layer.bottoms)
        if "test_identity" in spec(out, layer).roles and spec(out, layer).identity(layer, ins, ins):
            why = removable(out, i)
            if why:
                say(report, f"kept {layer.type} '{layer.name}': {why}")
                i += 1
                continue
            say(report, f"removed {layer.type} '{layer.name}' (the identity at test time)")
            bypass(out, i)
            continue
        i += 1
    _data_to_inputs(out, dict(input_shapes or {}), report)
    return out


def _keep_phase(graph: Graph, phase: str, report: Report) -> None:
    if phase not in ("TEST", "TRAIN"):
        raise ModelError(f"keep_phase must be TEST or TRAIN, not {phase!r}")
    if graph.framework != "caffe":
        raise ModelError("keep_phase: only Caffe definitions have phases", file=graph.source_text)
    for layer in graph.layers:  # the graph must be the phase asked for
        rules = [(r, True) for r in layer.params.get("include", [])] + \
                [(r, False) for r in layer.params.get("exclude", [])]
        for rule, include in rules:
            if "phase" in rule and (rule["phase"] == phase) != include:
                raise ModelError(f"the model was read in the other phase than {phase} (this "
                                 f"layer's rule {rule} says so); read it with phase={phase}",
                                 file=graph.source_text, layer=layer.name)
    origin = graph.origin
    keys = getattr(origin, "segments", None)
    if keys is None:
        return  # rendered from the IR: only the graph's own layers are written anyway
    every = {value for kind, value in keys if kind == "layer"}
    left_out = every - origin.included_keys
    if left_out:
        names = [origin.blocks[k].get("name", "?") for k in sorted(left_out)]
        say(report, f"dropped {len(names)} layer(s) of the other phase: {', '.join(names)}")
    # The writer drops a block that was read but is no longer in the graph.
    graph.origin = dataclasses.replace(origin, included_keys=every)


def _data_to_inputs(graph: Graph, given: dict, report: Report) -> None:
    sources = [i for i, l in enumerate(graph.layers)
               if "data_source" in spec(graph, l).roles and not spec(graph, l).declared_input]
    if not sources:
        return
    shapes = infer_shapes(graph, given or None)
    prod = graph.producers()
    for i in sources:
        layer = graph.layers[i]
        readers = [graph.layers[j] for j in readers_of(graph, i, prod)]
        for t in layer.tops[1:]:
            still = [r.name for r in readers if t in r.bottoms]
            if still:
                raise ModelError(f"its top '{t}' (labels) is still read by "
                                 f"{', '.join(repr(n) for n in still)}; a deploy input gives "
                                 "images only", file=graph.source_text, layer=layer.name)
        top = layer.tops[0]
        if top in shapes.guessed and top not in given:
            p = sub(layer, spec(graph, layer).data_param or "") if spec(graph, layer).data_param else {}
            raise ModelError(f"its shape comes from its database ({p.get('source', 'not named')});"
                             " give it (--input-shape NAME=N,C,H,W)", file=graph.source_text,
                             layer=layer.name)
        shape = tuple(int(d) for d in shapes.outputs[layer.name][0])
        graph.inputs[top] = shape
        say(report, f"replaced {layer.type} '{layer.name}' by the input '{top}' "
                    f"{','.join(map(str, shape))}")
    graph.layers = [l for i, l in enumerate(graph.layers) if i not in set(sources)]
    graph.refresh()
