"""Sibling layers that read one value with the same geometry run as one (SSD's loc and conf
heads on each feature map: one im2col and one GEMM with the weights stacked along the
outputs, instead of one each; res10 at batch 1: the six head pairs 4.7 -> 3 ms).

A *group* is two or more layers whose specs have the ``stackable`` role, each with one
bottom and one top, reading the same value version, with equal keys
(:mod:`.caffe_siblings`), none of them a fused chain's head. The executor runs the group
when it reaches its first member, if the whole group is in the range (and in ``only``)
being run, and skips the later members. Each member's output is the slice of the stacked
output for its channels (copied to its own array). Whether a group still stacks is checked
on every run (keys from the current params and weights), and the stacked weights are
rebuilt whenever a member's arrays are replaced.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..layers.registry import spec_for
from . import caffe_siblings


def _key(graph, layer):
    if graph.framework != "caffe" or "stackable" not in spec_for(graph.framework, layer).roles:
        return None
    if len(layer.bottoms) != 1 or len(layer.tops) != 1 or layer.tops[0] == layer.bottoms[0]:
        return None
    fn = caffe_siblings.KEYS.get(layer.type)
    try:
        return None if fn is None else (layer.type, fn(layer))
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


def plan(graph, reads, chains) -> dict[int, tuple[int, ...]]:
    """first member's index -> the indices of its group, in net order."""
    groups = defaultdict(list)
    for i, layer in enumerate(graph.layers):
        if i in chains:
            continue
        key = _key(graph, layer)
        if key is not None and key[1] is not None:
            groups[(reads[i][0], key)].append(i)
    return {g[0]: tuple(g) for g in groups.values() if len(g) > 1}


def still_stacks(graph, group) -> bool:
    """Whether the group's members still agree (params or weights may have changed)."""
    keys = [_key(graph, graph.layers[k]) for k in group]
    return keys[0] is not None and keys[0][1] is not None and all(k == keys[0] for k in keys)


class Stacker:
    """Runs groups, keeping each group's stacked weights while its members' arrays live."""

    def __init__(self):
        self._stacked: dict[int, tuple] = {}

    def run(self, graph, group, x, ctx) -> list[np.ndarray]:
        layers = [graph.layers[k] for k in group]
        arrays = [(l.weights["weight"], l.weights.get("bias")) for l in layers]
        hit = self._stacked.get(group[0])
        if hit is None or len(hit[0]) != len(arrays) or not all(
                a is c and b is d for (a, b), (c, d) in zip(hit[0], arrays)):
            w = np.concatenate([np.asarray(a, np.float32) for a, _ in arrays])
            b = None if arrays[0][1] is None else np.concatenate(
                [np.asarray(b, np.float32).reshape(-1) for _, b in arrays])
            hit = (arrays, (w, b))
            self._stacked[group[0]] = hit
        return caffe_siblings.RUN[layers[0].type](layers, x, ctx, hit[1])
