"""Sibling layers that read one value with the same geometry run as one (SSD's loc and conf
heads on each feature map: one im2col and one GEMM with the weights stacked along the
outputs, instead of one each; res10 at batch 1: the six head pairs 4.7 -> 3 ms).

A *group* is two or more layers of one type whose spec has the ``stackable`` role, each
with one bottom and one top, reading the same value version, with equal ``spec.stack_key``
(which names the type), none of them a fused chain's head. The executor runs the group when
it reaches its first member, if the whole group is in the range (and in ``only``) being run,
and skips the later members. The group runs as its first member's forward on a stand-in
layer carrying the stacked arrays; each member's output is the slice for its channels
(copied to its own array). Whether a group still stacks is checked on every run (keys from
the current params and weights), and the stacked arrays are rebuilt whenever a member's
arrays are replaced.
"""
from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np

from ..graph import Layer
from ..layers.registry import spec_for


def _key(graph, layer):
    spec = spec_for(graph.framework, layer)
    if "stackable" not in spec.roles:
        return None
    if len(layer.bottoms) != 1 or len(layer.tops) != 1 or layer.tops[0] == layer.bottoms[0]:
        return None
    try:
        key = spec.stack_key(layer)
    except (KeyError, ValueError, TypeError, AttributeError):
        return None
    return key


def plan(graph, reads, chains) -> dict[int, tuple[int, ...]]:
    """first member's index -> the indices of its group, in net order."""
    groups = defaultdict(list)
    for i, layer in enumerate(graph.layers):
        if i in chains:
            continue
        key = _key(graph, layer)
        if key is not None:
            groups[(reads[i][0], key)].append(i)
    return {g[0]: tuple(g) for g in groups.values() if len(g) > 1}


def still_stacks(graph, group) -> bool:
    """Whether the group's members still agree (params or weights may have changed)."""
    keys = [_key(graph, graph.layers[k]) for k in group]
    return keys[0] is not None and all(k == keys[0] for k in keys)


class Stacker:
    """Runs groups, keeping each group's stand-in layer while its members' arrays live."""

    def __init__(self):
        self._stacked: dict[int, tuple] = {}

    def _stand_in(self, layers) -> Layer:
        arrays = [tuple(l.weights.values()) for l in layers]
        hit = self._stacked.get(id(layers[0]))
        if hit is not None and len(hit[0]) == len(arrays) and all(
                len(a) == len(b) and all(x is y for x, y in zip(a, b)) for a, b in zip(hit[0], arrays)):
            return hit[1]
        first = layers[0]
        # the stack key makes every array but the first axis agree
        weights = {name: np.concatenate([np.asarray(l.weights[name], np.float32) for l in layers])
                   for name in first.weights}
        params = copy.deepcopy(first.params)
        for section in params.values():
            if isinstance(section, dict) and "num_output" in section:
                section["num_output"] = int(weights[next(iter(weights))].shape[0])
        stand_in = Layer(name=first.name + "+stacked", type=first.type, bottoms=list(first.bottoms),
                         tops=[first.tops[0]], params=params, weights=weights)
        self._stacked[id(first)] = (arrays, stand_in)
        return stand_in

    def run(self, graph, group, x, ctx, forward) -> list[np.ndarray]:
        """The members' outputs, from ``forward`` (the type's forward function) run once."""
        layers = [graph.layers[k] for k in group]
        y = forward(self._stand_in(layers), [x], ctx)[0]
        outs, o = [], 0
        for layer in layers:
            n = layer.weights[next(iter(layer.weights))].shape[0]
            outs.append(np.ascontiguousarray(y[:, o:o + n]))
            o += n
        return outs
