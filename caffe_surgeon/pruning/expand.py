"""expand: a trained dense pruned model back into the original shapes (the sparse form).

Finetuning trains the dense model (``apply(original, plan, "dense")``), but the vendor's
iterative loop (prune 0.3 -> finetune -> prune 0.5 -> ...) points the config's
``weights`` at the finetune snapshot, which must pair with the config's ``model``:
original shapes, removed channels exactly zero. :func:`sparse_from_dense` gives that.

It starts from the sparse template ``apply(original, plan, "sparse")`` (so every removed
position holds exactly what pruning left there: zeroed filters and consumer columns,
silenced BatchNorm means and Scale biases) and writes the dense arrays over the kept
positions along every pruned axis. The kept positions are found by the same walk
:func:`~.surgery.apply` makes (:func:`kept_positions`), so that
``sparse_from_dense(g, plan, apply(g, plan, "dense")) == apply(g, plan, "sparse")`` bit
for bit, and ``transform`` of the result gives the dense arrays back.

Example: conv1 (8 filters) -> conv2 (reads 8 channels), plan keeps conv1's channels
[1, 2, 5, 7]. The dense conv1 weight is (4, C, k, k) and conv2's is (O, 4, k, k); the
expanded conv1 weight is (8, C, k, k) with rows 1, 2, 5, 7 the dense rows and rows
0, 3, 4, 6 zero, and conv2's columns 1, 2, 5, 7 are the dense columns.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..graph import Graph
from .groups import ChannelAnalysis, analyse
from .plan import Plan, node_keep
from .surgery import _input_columns, apply


def kept_positions(graph: Graph, analysis: ChannelAnalysis, keep: np.ndarray) -> dict:
    """Per layer and array, the kept positions along each pruned axis.

    Mirrors the slicing of :func:`~.surgery.apply` in dense mode (a test holds the two
    together: expanding ``apply``'s dense output gives ``apply``'s sparse output).

    Args:
        graph: the original (unpruned) model, or its sparse form (same shapes).
        analysis: its channel analysis.
        keep: per node, whether it stays (:func:`~.plan.node_keep`).

    Returns:
        ``{layer_name: {array_name: {axis: bool mask over the original size}}}``; arrays
        not listed keep their shape.
    """
    a = analysis
    out: dict = {}

    def put(layer, axes: dict, mask):
        for name, axis in axes.items():
            if name in layer.weights:
                out.setdefault(layer.name, {}).setdefault(name, {})[axis] = mask

    for i, layer in enumerate(graph.layers):
        flow = a.flows[i]
        if flow.kind == "produce":
            cols = _input_columns(a, keep, i, layer, graph.source_text)
            if cols is not None and not cols.all():
                put(layer, flow.in_axes, cols)
            e = (a.layer_out[i] or [None])[0]
            if e is not None and not keep[e.nodes].all():
                put(layer, flow.out_axes, keep[e.nodes])
        elif flow.kind in ("pass", "join") and a.layer_in[i] is not None:
            m = keep[a.layer_in[i].nodes]
            if not m.all():
                put(layer, flow.out_axes, m)
    return out


def sparse_from_dense(original: Graph, plan: Plan, dense: Graph, *, fold: bool = True,
                      keep_layout: bool = True, analysis: ChannelAnalysis | None = None) -> Graph:
    """The dense pruned model ``dense`` in the shapes of ``original``, removed channels as
    ``apply(original, plan, "sparse")`` leaves them.

    Args:
        original: the model the plan was made for (its weights fill the template's
            removed positions exactly as pruning does; kept positions are overwritten).
        plan: the plan ``dense`` was pruned with.
        dense: the dense pruned model, e.g. after finetuning; matched by layer name
            (a TRAIN-phase graph pairs with a TEST-phase original: data layers carry no
            arrays). Its arrays are cast to the original's dtype.
        fold, keep_layout: as for :func:`~.surgery.apply`; the defaults are the ones
            ``vai_p_caffe prune`` writes ``sparse.caffemodel`` with.
        analysis: ``original``'s channel analysis, if already computed.

    Returns:
        A new graph with ``original``'s layers, parameters and shapes.

    Raises:
        ModelError: ``dense`` does not fit the plan (names the layer, the array and both
            shapes), or lacks a layer with arrays.
    """
    a = analysis or analyse(original)
    keep = node_keep(a, plan)
    sparse = apply(original, plan, "sparse", fold=fold, analysis=a, keep_layout=keep_layout)
    positions = kept_positions(sparse, a, keep)
    by_name = {l.name: l for l in dense.layers}
    src = dense.source_text
    names = {l.name for l in sparse.layers}
    for l in dense.layers:
        if l.weights and l.name not in names:
            raise ModelError(f"the dense model has layer '{l.name}' with arrays, the original "
                             "model has no layer of that name", file=src, layer=l.name)
    for layer in sparse.layers:
        if not layer.weights:
            continue
        d = by_name.get(layer.name)
        if d is None:
            raise ModelError(f"the dense model has no layer '{layer.name}' (it has "
                             f"{len(layer.weights)} array(s) in the original)", file=src,
                             layer=layer.name)
        if list(d.weights) != list(layer.weights):
            raise ModelError(f"the dense model has arrays {list(d.weights)}, the original "
                             f"{list(layer.weights)}", file=src, layer=layer.name)
        kept = positions.get(layer.name, {})
        for name, template in layer.weights.items():
            layer.weights[name] = _expand(template, kept.get(name, {}), d.weights[name],
                                          layer.name, name, src)
    return sparse


def _expand(template: np.ndarray, masks: dict, values: np.ndarray, layer: str, name: str,
            src) -> np.ndarray:
    """``template`` with ``values`` written over the positions ``masks`` keep."""
    index = [np.flatnonzero(masks[ax]) if ax in masks else np.arange(n)
             for ax, n in enumerate(template.shape)]
    want = tuple(len(i) for i in index)
    if tuple(values.shape) != want:
        orig = "" if want == template.shape else f" of the original {tuple(template.shape)}"
        raise ModelError(f"array '{name}' has shape {tuple(values.shape)} in the dense model "
                         f"but the plan keeps {want}{orig}", file=src, layer=layer)
    if not masks:
        return np.ascontiguousarray(values, dtype=template.dtype)
    out = template.copy()
    out[np.ix_(*index)] = values
    return out
