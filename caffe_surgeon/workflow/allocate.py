"""Per-group pruning ratios that remove a target fraction of operations.

Both allocators read the sensitivity curves of ``ana`` (metric after pruning one
group at each ratio) and return {group id: ratio} whose pruned model has
``(1 - rate) x baseline`` operations within ``tolerance`` (relative to the
baseline). Operations are counted exactly (vendor convention, ``stat``) on the
model with the kept channel counts, never estimated.

- ``threshold`` (the vendor's method): per group, the largest ratio whose
  relative metric drop stays within t; t is bisected.
- ``lagrangian`` (default): per group, the ratio maximising
  ``mu x ops saved - metric drop`` (the drop of that group alone, from its curve;
  ops saved by that group alone); the multiplier mu is bisected. Groups
  that cost little accuracy per operation are pruned first, which is what the
  threshold rule ignores (a cheap-to-prune but large layer and an expensive
  small one get the same t).

Grid steps are coarse (0.1), so the final step interpolates the ratios of
the groups that differ between the two bracketing solutions until the exact
operation count is within tolerance.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from ..errors import ModelError
from ..graph import Graph
from ..layers.registry import LayerSpec, spec_for
from ..opcount import stat
from ..pruning.groups import ChannelAnalysis
from ..pruning.plan import kept_count

ALLOCATORS = ("lagrangian", "threshold")


@dataclass
class Allocation:
    ratios: dict  # group id -> ratio
    ops: int
    baseline_ops: int
    predicted_drop: float  # sum of single-group metric drops (additive estimate)
    method: str

    @property
    def reduction(self) -> float:
        return 1.0 - self.ops / self.baseline_ops


class OpsCounter:
    """Exact operation count of the model with given per-group ratios (no weights needed)."""

    def __init__(self, graph: Graph, analysis: ChannelAnalysis, divisor: int, input_shapes=None):
        self.graph, self.a, self.divisor = graph, analysis, divisor
        self.input_shapes = input_shapes
        self.bare = copy.copy(graph)
        self.bare.layers = [copy.copy(l) for l in graph.layers]
        for layer in self.bare.layers:
            layer.weights = {}
        self._cache: dict = {}

    def keep_mask(self, ratios: dict) -> np.ndarray:
        keep = np.ones(len(self.a.node_space), bool)
        for g in self.a.groups:
            r = ratios.get(g.id, 0.0)
            if r <= 0:
                continue
            n = kept_count(g.channels, r, self.divisor)
            for cls in g.classes[n:]:  # which channels go does not change the count
                for s, c in cls:
                    keep[self.a.spaces[s].first_node + c] = False
        return keep

    def ops(self, ratios: dict) -> int:
        key = tuple(sorted((k, kept_count(self._ch(k), v, self.divisor))
                           for k, v in ratios.items() if v > 0))
        if key not in self._cache:
            self._cache[key] = self._count(self.keep_mask(ratios))
        return self._cache[key]

    def _ch(self, gid) -> int:
        return self.a.groups[gid].channels

    def _count(self, keep) -> int:
        g = self.bare
        layers = []
        for i, layer in enumerate(g.layers):
            flow = self.a.flows[i]
            new = copy.copy(layer)
            new.params = copy.deepcopy(layer.params)
            spec = spec_for(g.framework, layer)
            out = (self.a.layer_out[i] or [None])[0]
            if flow.kind == "produce" and out is not None:
                spec.set_channels(new, int(keep[out.nodes].sum()))
            elif flow.kind == "pass" and self.a.layer_in[i] is not None and \
                    type(spec).set_channels is not LayerSpec.set_channels and flow.out_axes:
                spec.set_channels(new, int(keep[self.a.layer_in[i].nodes].sum()))
            elif flow.kind == "slice" and new.params.get("slice_param", {}).get("slice_point"):
                sizes = [int(keep[e.nodes].sum()) for e in self.a.layer_out[i]]
                new.params["slice_param"]["slice_point"] = list(np.cumsum(sizes)[:-1].tolist())
            layers.append(new)
        h = copy.copy(g)
        h.layers = layers
        return stat(h, self.input_shapes).total.ops


def metric_drop(curve: dict, baseline: float, ratio: float, higher_is_better: bool = True) -> float:
    """Drop of the metric at ``ratio``, linearly interpolated on the measured grid (0 at ratio 0)."""
    xs = [0.0] + sorted(curve)
    ys = [baseline] + [curve[r] for r in sorted(curve)]
    v = float(np.interp(ratio, xs, ys))
    return (baseline - v) if higher_is_better else (v - baseline)


def allocate(counter: OpsCounter, curves: dict, baseline: float, rate: float,
             method: str = "lagrangian", higher_is_better: bool = True,
             tolerance: float = 0.01) -> Allocation:
    """Choose per-group ratios removing ``rate`` of the operations.

    Args:
        curves: group id -> {ratio: metric after pruning that group alone}.
        baseline: the unpruned metric.
        rate: fraction of operations to remove (vendor ``rate``), 0 <= rate < 1.
    """
    if method not in ALLOCATORS:
        raise ModelError(f"allocator must be one of {', '.join(ALLOCATORS)}, not {method!r}")
    if not 0 <= rate < 1:
        raise ModelError(f"rate {rate} is outside [0, 1)")
    base_ops = counter.ops({})
    target = (1 - rate) * base_ops
    if rate == 0 or not curves:
        return Allocation({}, base_ops, base_ops, 0.0, method)
    grids = {gid: sorted(c) for gid, c in curves.items()}
    drops = {gid: {r: metric_drop(c, baseline, r, higher_is_better) for r in grids[gid]}
             for gid, c in curves.items()}
    full = {gid: grids[gid][-1] for gid in grids}
    if counter.ops(full) > target * (1 + tolerance):
        raise ModelError(f"rate {rate} cannot be reached: pruning every group at its largest "
                         f"analysed ratio leaves {counter.ops(full) / base_ops:.1%} of the "
                         "operations; analyse larger ratios or lower the rate")
    if method == "threshold":
        def pick(t):
            out = {}
            for gid, g in drops.items():
                ok = [r for r in grids[gid] if g[r] / max(abs(baseline), 1e-12) <= t]
                if ok:
                    out[gid] = max(ok)
            return out
        lo, hi = -1.0, 1.0 + max(max(d.values()) for d in drops.values()) / max(abs(baseline), 1e-12)
    else:
        saved = {gid: {r: base_ops - counter.ops({gid: r}) for r in grids[gid]} for gid in grids}

        def pick(mu):
            out = {}
            for gid in grids:
                best, best_r = 0.0, 0.0
                for r in grids[gid]:
                    v = mu * saved[gid][r] - drops[gid][r]
                    if v > best + 1e-15:
                        best, best_r = v, r
                if best_r > 0:
                    out[gid] = best_r
            return out
        span = max(max(abs(x) for x in d.values()) for d in drops.values()) + 1e-12
        lo, hi = 0.0, span / max(1.0, min(s for d in saved.values() for s in d.values() if s > 0))
        while counter.ops(pick(hi)) > target:
            hi *= 4
    # bisection: ``lo`` prunes too little (ops above target), ``hi`` enough
    for _ in range(60):
        mid = (lo + hi) / 2
        if counter.ops(pick(mid)) > target:
            lo = mid
        else:
            hi = mid
    few, many = pick(lo), pick(hi)
    ratios = _interpolate(counter, few, many, target, base_ops, tolerance)
    pred = sum(metric_drop(curves[g], baseline, r, higher_is_better) for g, r in ratios.items())
    return Allocation(ratios, counter.ops(ratios), base_ops, pred, method)


def _interpolate(counter, few, many, target, base_ops, tolerance) -> dict:
    """Move the differing groups together from ``few`` to ``many`` until ops hit the target."""
    if abs(counter.ops(many) - target) <= tolerance * base_ops:
        return many
    keys = sorted(set(few) | set(many))

    def at(s):
        return {k: few.get(k, 0.0) + s * (many.get(k, 0.0) - few.get(k, 0.0)) for k in keys}
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if counter.ops(at(mid)) > target:
            lo = mid
        else:
            hi = mid
        if abs(counter.ops(at(hi)) - target) <= tolerance * base_ops / 4:
            break
    return {k: round(v, 6) for k, v in at(hi).items() if v > 0}
