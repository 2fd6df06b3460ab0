"""Which layers run inside the previous layer's output pass (Caffe conv -> BN -> Scale -> ReLU).

A *chain* is a head (a layer whose spec has the ``fusion_head`` role: a
convolution, BatchNorm or Scale) followed by consecutive ``fusion_follower`` layers
(their steps are in :mod:`.caffe_epilogues`) each of which
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

import numpy as np

from ..layers.registry import spec_for
from . import caffe_epilogues
from .kernels.epilogue import Epilogue


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
        if fusable(graph, layers[i], as_head=True):
            cur, followers, j = (i, layers[i].tops[0]), [], i + 1
            while (j < len(layers) and fusable(graph, layers[j], as_head=False)
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


def fusable(graph, layer, as_head: bool) -> bool:
    """Whether ``layer`` can head a fused chain / be fused into one (static checks only)."""
    # a head may join several inputs (Eltwise: the ReLU after a residual sum)
    if len(layer.tops) != 1 or (len(layer.bottoms) != 1 and not as_head) or not layer.bottoms:
        return False
    if ("fusion_head" if as_head else "fusion_follower") not in spec_for(graph.framework, layer).roles:
        return False
    fits = caffe_epilogues.FITS.get(layer.type)
    return fits is None or fits(layer)


def head_channels(graph, layer, inputs) -> int | None:
    """The channel count of a fusion head's output, or None when it cannot take an epilogue."""
    x = inputs[0]
    if x.ndim < 2:
        return None
    if spec_for(graph.framework, layer).channel_role == "produce":
        w = layer.weights.get("weight")
        return None if w is None or w.ndim != 4 else int(w.shape[0])
    if any(np.size(a) != x.shape[1] for a in layer.weights.values() if np.ndim(a) == 1
           and np.size(a) > 1):
        return None
    return int(x.shape[1])


def epilogue_of(layers, ctx, channels) -> Epilogue | None:
    """The stages of ``layers`` (fusion followers, in order) as one Epilogue with exactly the
    float32 operations their forward functions do, or None if one of them does not fit."""
    ep = Epilogue(channels)
    for layer in layers:
        stage = caffe_epilogues.STAGES.get(layer.type)
        if stage is None or not stage(layer, ctx, ep, channels):
            return None
    return ep
