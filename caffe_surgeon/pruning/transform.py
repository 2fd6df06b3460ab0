"""transform: a sparse model (original shapes, removed filters all zero) -> the dense model.

The plan is recovered per group: a channel class is removed when the filter
of every producer in it is entirely zero. A class zero in some producers
but not in others cannot be removed without changing the function, so it is
kept and counted in ``mixed`` (the caller reports it). Removed channels still
emit their bias chain's constant (the vendor's sparse files keep biases), so
the dense model folds it into the consumers, exactly as ``apply`` does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Graph
from .criteria import _filter_rows
from .groups import analyse
from .plan import GroupPlan, Plan
from .surgery import apply


@dataclass
class TransformResult:
    plan: Plan
    dense: Graph
    mixed: dict  # group id -> classes zero in only some producers


def recover_plan(graph: Graph, ignore=(), input_shapes=None, analysis=None) -> tuple[Plan, dict]:
    """The plan a sparse model was made with, read off its all-zero filters."""
    a = analysis or analyse(graph, ignore=ignore, input_shapes=input_shapes)
    groups, mixed = [], {}
    for g in a.prunable_groups():
        zero = {}
        for sid in {s for cls in g.classes for s, _ in cls}:
            space = a.spaces[sid]
            if space.layer is not None and a.flows[space.layer].kind == "produce":
                zero[sid] = ~np.any(_filter_rows(a, space), axis=1)
        keep, partial = [], 0
        for k, cls in enumerate(g.classes):
            flags = [bool(zero[s][c]) for s, c in cls if s in zero]
            if not (flags and all(flags)):
                keep.append(k)
                partial += any(flags)
        if not keep:
            keep = [0]  # an all-zero layer still needs one channel to stay a valid layer
        if partial:
            mixed[g.id] = partial
        if len(keep) < g.channels:
            groups.append(GroupPlan(g.id, list(g.producers), list(g.members), g.channels, keep,
                                    round(1 - len(keep) / g.channels, 6)))
    plan = Plan(graph.framework, graph.source_text or "", groups, criterion="recovered")
    return plan, mixed


def transform(graph: Graph, ignore=(), input_shapes=None) -> TransformResult:
    a = analyse(graph, ignore=ignore, input_shapes=input_shapes)
    plan, mixed = recover_plan(graph, analysis=a)
    return TransformResult(plan, apply(graph, plan, "dense", fold=True, analysis=a), mixed)
