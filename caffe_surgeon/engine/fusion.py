"""Which layers run inside the previous layer's output pass (Caffe conv -> BN -> Scale -> ReLU).

A *chain* is a head (a convolution, or a BatchNorm / Scale) followed by
consecutive per-channel layers (``caffe_ops.FUSION_FOLLOWERS``) each of which
reads only the previous one's value, that value having no other reader: the
common in-place ``conv1 -> bn1 -> scale1 -> relu1`` on one blob name, or the
same with separate names. The executor then runs the head once with the
followers' stages as an epilogue (:mod:`.kernels.epilogue`), so the
intermediate values are never materialised.

Exactness: the epilogue does the followers' float32 operations in their order,
so a fused chain gives bit-for-bit the value the layers give one by one. A
chain is only fused in a run that does not need its intermediate values: none
of them requested (``outputs`` / ``layer_outputs``) and the whole chain inside
the range being run (``prefix`` stopping mid-chain, or ``run(start=)`` resuming
mid-chain, run the layers one by one).

Weights: each chain's epilogue is built when the Executor is made (where the
weights are already there) and rebuilt whenever a follower's weight arrays are
replaced or its params change (checked by identity / equality on every run).
"""
from __future__ import annotations

import copy
from collections import defaultdict

from . import caffe_ops


def plan(graph, reads) -> dict[int, list[int]]:
    """head layer index -> indices of the layers fused after it (consecutive)."""
    if graph.framework != "caffe":
        return {}
    layers = graph.layers
    readers = defaultdict(set)
    for i, row in enumerate(reads):
        for v in row:
            readers[v].add(i)
    chains = {}
    i = 0
    while i < len(layers):
        if caffe_ops.fusable(layers[i], as_head=True):
            cur, followers, j = (i, layers[i].tops[0]), [], i + 1
            while (j < len(layers) and caffe_ops.fusable(layers[j], as_head=False)
                   and reads[j] == [cur] and readers[cur] == {j}):
                followers.append(j)
                cur = (j, layers[j].tops[0])
                j += 1
            if followers:
                chains[i] = followers
                i = j
                continue
        i += 1
    return chains


def signature(layers) -> list:
    """What an epilogue depends on: weight arrays (by identity) and params (by value)."""
    return [(l.type, list(l.weights.items()), copy.deepcopy(l.params)) for l in layers]


def same_signature(sig, layers) -> bool:
    if len(sig) != len(layers):
        return False
    for (t, items, params), l in zip(sig, layers):
        if t != l.type or len(items) != len(l.weights) or params != l.params:
            return False
        for (k, a), (k2, b) in zip(items, l.weights.items()):
            if k != k2 or a is not b:
                return False
    return True
