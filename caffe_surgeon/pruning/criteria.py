"""Importance criteria: one score per channel class of a group (higher = more important).

A criterion scores every channel of every producer in the group
(:func:`channel_scores`), and the scores of the channels tied into one class
are combined with an explicit reduction (``sum``, ``mean`` or ``max``).

Criteria are plain callables ``(analysis, space) -> per-channel scores``; a
data-driven criterion (LASSO, Taylor) carries its data in an object:
:func:`criterion_for` turns a name into what :func:`class_scores` calls.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import ModelError
from .groups import ChannelAnalysis, Group

REDUCTIONS = {"sum": np.sum, "mean": np.mean, "max": np.max}


def _filter_rows(analysis: ChannelAnalysis, space) -> np.ndarray:
    """The producer's filters as (channels, fan-in) rows (biases and BN arrays left out)."""
    layer = analysis.graph.layers[space.layer]
    flow = analysis.flows[space.layer]
    rows = []
    for name in flow.in_axes:  # arrays with an input axis are the filters
        if name not in layer.weights:
            raise ModelError(f"weights '{name}' are missing; load the model with its weights "
                             "to score channels", file=analysis.graph.source_text, layer=layer.name)
        w = np.moveaxis(layer.weights[name], flow.out_axes[name], 0)
        rows.append(w.reshape(w.shape[0], -1))
    return np.concatenate(rows, axis=1) if len(rows) > 1 else rows[0]


def l1_norm(analysis: ChannelAnalysis, space) -> np.ndarray:
    """Sum of |w| of each output filter (Li et al. 2017; the vendor's ranking)."""
    return np.abs(_filter_rows(analysis, space)).sum(axis=1, dtype=np.float64)


def l2_norm(analysis: ChannelAnalysis, space) -> np.ndarray:
    rows = _filter_rows(analysis, space).astype(np.float64)
    return np.sqrt((rows * rows).sum(axis=1))


def bn_gamma(analysis: ChannelAnalysis, space) -> np.ndarray | None:
    """|gamma| of the batch-norm scale right after the producer (network slimming, Liu et al. 2017)."""
    g = analysis.graph
    i = space.layer
    flow = analysis.flows[i]
    if flow.gamma and flow.gamma in g.layers[i].weights:  # Darknet conv with batch_normalize
        return np.abs(g.layers[i].weights[flow.gamma].astype(np.float64))
    first = space.first_node
    for j in range(i + 1, len(g.layers)):
        f = analysis.flows[j]
        e = analysis.layer_in[j]
        if f.kind == "pass" and f.gamma and e is not None and first in e.nodes and \
                f.gamma in g.layers[j].weights:
            start = e.nodes.index(first)
            return np.abs(g.layers[j].weights[f.gamma][start:start + space.size].astype(np.float64))
    return None  # no multiplier: the group's other members decide


CHANNEL_CRITERIA: dict[str, Callable] = {"l1": l1_norm, "l2": l2_norm, "bn": bn_gamma}
#: criteria scored from the TRAIN net's batches and gradients (the PyTorch extra):
#: ``taylor``, first-order Taylor importance (:mod:`caffe_surgeon.training.taylor`)
DATA_CRITERIA: tuple[str, ...] = ("taylor",)
#: the criteria a name selects: every user (ana, the vai_p configs, the CLI) reads this list.
CRITERIA: tuple[str, ...] = tuple(CHANNEL_CRITERIA) + DATA_CRITERIA
#: TRAIN batches the Taylor criterion accumulates when not told (``--taylor-batches``)
DEFAULT_TAYLOR_BATCHES = 8


def criterion_for(name: str, model_files=(), options: dict | None = None):
    """What :func:`class_scores` / ``make_plan`` should be given for criterion ``name``.

    Args:
        name: a name in :data:`CRITERIA`.
        model_files: ``[train_val.prototxt, weights]`` of the model being pruned (the
            data criteria read its TRAIN phase).
        options: for ``taylor``: ``{"batches": N, "seed": S}`` (defaults 8 and 0).

    Returns:
        ``name`` itself for a weight criterion, else a callable carrying its data that
        scores on first use (so the TRAIN batches are read only if a group is pruned).
    """
    if name not in DATA_CRITERIA:
        return name
    from ..training.finetune import backend
    backend(f"--criterion {name}")  # the one-line error without torch, before anything runs
    from ..training.taylor import TaylorCriterion
    return TaylorCriterion(list(model_files), **dict(options or {}))


def class_scores(analysis: ChannelAnalysis, group: Group, criterion="l1",
                 reduction: str = "sum") -> np.ndarray:
    """One score per class of ``group``.

    Args:
        criterion: a name in :data:`CHANNEL_CRITERIA` or a callable
            ``(analysis, space) -> per-channel scores``.
        reduction: how the scores of tied channels (one per producer in a join) combine.
    """
    if reduction not in REDUCTIONS:
        raise ModelError(f"unknown reduction '{reduction}' (choose from {', '.join(REDUCTIONS)})")
    if criterion in DATA_CRITERIA:
        raise ModelError(f"criterion '{criterion}' scores from training batches: pass "
                         "criterion_for(name, model_files) instead of its name")
    fn = CHANNEL_CRITERIA.get(criterion) if isinstance(criterion, str) else criterion
    if fn is None:
        raise ModelError(f"unknown criterion '{criterion}' (choose from "
                         f"{', '.join(CHANNEL_CRITERIA)})")
    per_space = {}
    for sid in {s for cls in group.classes for s, _ in cls}:
        space = analysis.spaces[sid]
        if space.layer is not None and analysis.flows[space.layer].kind == "produce":
            scores = fn(analysis, space)
            if scores is not None:
                per_space[sid] = np.asarray(scores, np.float64)
    red = REDUCTIONS[reduction]
    out = np.empty(group.channels, np.float64)
    for k, cls in enumerate(group.classes):
        vals = [per_space[s][c] for s, c in cls if s in per_space]
        if not vals:
            raise ModelError(f"criterion '{criterion}' cannot score group {group.id} "
                             f"({', '.join(group.producers)}): no BatchNorm/Scale multiplier "
                             "follows its producers; use l1 or l2", file=analysis.graph.source_text)
        out[k] = red(vals)
    return out


def lowest_first(scores: np.ndarray) -> np.ndarray:
    """Class indices from least to most important; ties broken by index (deterministic)."""
    return np.lexsort((np.arange(len(scores)), scores))
