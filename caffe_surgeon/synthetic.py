"""Synthetic weights for definitions that ship without any (``caffe-surgeon init``).

Each layer draws from its own generator seeded by (seed, layer index), so
results are identical run to run and do not shift when an unrelated layer
is added elsewhere in the net.
"""
from __future__ import annotations

import numpy as np

from .graph import Graph
from .layers.registry import infer_shapes, spec_for


def init_weights(graph: Graph, seed: int = 0, input_shapes=None) -> Graph:
    """Give every weighted layer fresh weights (in place); returns the graph."""
    shapes = infer_shapes(graph, input_shapes)
    for index, layer in enumerate(graph.layers):
        spec = spec_for(graph.framework, layer, graph.source_text)
        rng = np.random.default_rng([seed, index])
        weights = spec.init_weights(layer, shapes.inputs[layer.name], rng)
        layer.weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    return graph
