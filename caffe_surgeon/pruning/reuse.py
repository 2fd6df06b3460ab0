"""Which values of a densely pruned model are the original model's values, or a channel subset.

Pruning a group removes producer filters; the kept filters still compute
exactly what they computed before, and so does every channel-local layer after
them (BatchNorm, activations, pooling, joins, concat). The first values that
really change are those of the layers that mix the removed channels in (the
consumers). Sensitivity analysis can therefore take everything before the
first changed layer from the original model's activations, sliced to the kept
channels, and recompute only from there.

:func:`reusable_values` works this out from the channel analysis alone; it
never looks at layer types (the per-type facts are the registry's
``channel_flow``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .groups import ChannelAnalysis

CHANNEL_LOCAL = ("pass", "join", "concat", "slice")


@dataclass
class Reuse:
    """The result of :func:`reusable_values`.

    Attributes:
        start: index of the first layer whose output differs from the original's
            (beyond dropping channels); ``len(layers)`` if none does.
        columns: version ``(producer index or -1, blob)`` -> the original channel
            indices the pruned value keeps (axis 1), or None when it is the original
            value unchanged. Versions the changed layers compute are not listed.
        changed: the indices of the layers whose outputs differ (``start`` and
            every later layer that reads a changed value or mixes cut channels),
            ascending; the other layers from ``start`` on keep the original's values.
    """

    start: int
    columns: dict
    changed: tuple = ()

    def take(self, version, original: np.ndarray) -> np.ndarray:
        """The pruned model's value of ``version``, as a new array."""
        idx = self.columns[version]
        return original.copy() if idx is None else np.take(original, idx, axis=1)


_CHANGED = object()


def reusable_values(a: ChannelAnalysis, keep: np.ndarray) -> Reuse:
    """What a dense :func:`~.surgery.apply` with node mask ``keep`` leaves unchanged.

    Args:
        a: the original model's channel analysis.
        keep: per channel node, whether it stays (:func:`~.plan.node_keep`).
    """
    graph = a.graph
    status: dict = {(-1, name): None for name in graph.inputs}
    changed = []
    for i, (layer, row) in enumerate(zip(graph.layers, graph.producers())):
        ins = [status.get((-1 if p is None else p, b), None) for p, b in zip(row, layer.bottoms)]
        flow = a.flows[i]
        outs = a.layer_out[i] or [None] * len(layer.tops)
        if any(s is _CHANGED for s in ins):
            tops = [_CHANGED] * len(layer.tops)
        elif flow.kind == "shape_only":
            tops = [None] * len(layer.tops)
        elif not any(s is not None for s in ins):  # every input as it was
            tops = [_subset(keep, e) for e in outs] if flow.kind == "produce" else \
                [None] * len(layer.tops)
            if any(t is not None for t in tops):  # filters cut: untraced tops shrink too
                tops = [_CHANGED if e is None else t for e, t in zip(outs, tops)]
        elif flow.kind in CHANNEL_LOCAL and not flow.mixes_channels:
            tops = [_CHANGED if e is None else _subset(keep, e) for e in outs]
        else:  # reads fewer channels than before: its values change
            tops = [_CHANGED] * len(layer.tops)
        if any(t is _CHANGED for t in tops):
            changed.append(i)
            tops = [_CHANGED] * len(layer.tops)  # recomputed whole
        for t, s in zip(layer.tops, tops):
            status[(i, t)] = s
    columns = {v: s for v, s in status.items() if s is not _CHANGED}
    return Reuse(changed[0] if changed else len(graph.layers), columns, tuple(changed))


def _subset(keep: np.ndarray, entries):
    """Kept channel indices of a blob, or None when it keeps them all."""
    if entries is None:
        return None
    m = keep[entries.nodes]
    if m.all():
        return None
    if not (np.asarray(entries.widths) == 1).all():
        return _CHANGED  # flattened features: not a plain channel slice
    return np.flatnonzero(m)
