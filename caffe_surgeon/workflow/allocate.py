"""Per-group pruning ratios that remove a target fraction of operations.

Both allocators read the sensitivity curves of ``ana`` (metric after pruning one
group at each ratio) and return {group id: ratio} whose pruned model has
``(1 - rate) x baseline`` operations within ``tolerance`` (relative to the
baseline). Operations are counted exactly (vendor convention, ``stat``) on the
model with the kept channel counts, never estimated.

- ``threshold`` (the vendor's method): per group, the largest ratio whose
  relative metric drop stays within t; t is bisected.
- ``greedy`` (default): repeatedly take the move (one group to a larger analysed
  ratio) with the least predicted metric drop per operation saved, the saving
  counted exactly on the current configuration (so neighbouring groups that
  share a layer are not double counted). Groups that cost little accuracy per
  operation go first, which the threshold rule ignores (a cheap-to-prune large
  layer and an expensive small one get the same t). For convex curves this is
  the optimal marginal allocation.

Grid steps are coarse (0.1), so a final step moves single groups by one
``divisor`` of channels until the exact operation count is within tolerance.
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
from ..pruning.plan import kept_classes, kept_count

ALLOCATORS = ("greedy", "threshold")


@dataclass
class Allocation:
    ratios: dict  # group id -> ratio
    ops: int
    baseline_ops: int
    predicted_drop: float  # sum of single-group metric drops: assumes groups do not interact
    method: str
    rate: float = 0.0
    tolerance: float = 0.01
    divisor_hint: int = 1  # kept channels are multiples of it (for the note)
    cut_short: bool = False  # some curves ended early (ana's early stop)

    @property
    def reduction(self) -> float:
        return 1.0 - self.ops / self.baseline_ops

    @property
    def on_target(self) -> bool:
        """Operations within ``tolerance`` (of the baseline) of ``(1 - rate)`` x baseline."""
        return abs(self.reduction - self.rate) <= self.tolerance + 1e-12

    def off_target_note(self) -> str:
        """'' when on target, else a line saying how far off and why."""
        if self.on_target:
            return ""
        return (f"note: operations change by {-self.reduction:+.2%} instead of {-self.rate:+.2%}: "
                f"settling by steps of {self.divisor_hint} channel(s) found no choice within "
                f"{self.tolerance:.0%} of the target on this model"
                + (" (without the ratios early stop skipped)" if self.cut_short else ""))


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
            # which channels go barely changes the count, but no slice output may be emptied
            kept = set(kept_classes(self.a, g, n, range(g.channels - 1, -1, -1), self.divisor))
            for k, cls in enumerate(g.classes):
                if k not in kept:
                    for s, c in cls:
                        keep[self.a.spaces[s].first_node + c] = False
        return keep

    def kept_counts(self, ratios: dict) -> tuple:
        """(group id, kept channels) of the pruned groups: equal for allocations that give one model."""
        return tuple(sorted((k, kept_count(self._ch(k), v, self.divisor))
                            for k, v in ratios.items() if v > 0))

    def ops(self, ratios: dict) -> int:
        key = self.kept_counts(ratios)
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
             method: str = "greedy", higher_is_better: bool = True,
             tolerance: float = 0.01, cut_short=()) -> Allocation:
    """Choose per-group ratios removing ``rate`` of the operations.

    Args:
        curves: group id -> {ratio: metric after pruning that group alone}.
        baseline: the unpruned metric.
        rate: fraction of operations to remove (vendor ``rate``), 0 <= rate < 1.
        cut_short: groups whose curves end early (ana's early stop): never pruned
            beyond their largest measured ratio, where nothing is known.
    """
    if method not in ALLOCATORS:
        raise ModelError(f"allocator must be one of {', '.join(ALLOCATORS)}, not {method!r}")
    if not 0 <= rate < 1:
        raise ModelError(f"rate {rate} is outside [0, 1)")
    base_ops = counter.ops({})
    target = (1 - rate) * base_ops
    if rate == 0:
        return Allocation({}, base_ops, base_ops, 0.0, method, rate, tolerance, counter.divisor)
    if not curves:
        raise ModelError(f"rate {rate} cannot be reached: the analysis has no prunable group "
                         "(every convolution excluded, or none whose channels can go)")
    grids = {gid: sorted(c) for gid, c in curves.items()}
    drops = {gid: {r: metric_drop(c, baseline, r, higher_is_better) for r in grids[gid]}
             for gid, c in curves.items()}
    full = {gid: grids[gid][-1] for gid in grids}
    if counter.ops(full) > target * (1 + tolerance):
        raise ModelError(f"rate {rate} cannot be reached: pruning every group at its largest "
                         f"analysed ratio leaves {counter.ops(full) / base_ops:.1%} of the "
                         "operations; analyse larger ratios or lower the rate")
    if method == "greedy":
        ratios = _greedy(counter, grids, drops, target)
    else:
        ratios = _threshold(counter, grids, drops, baseline, target, base_ops, tolerance)
    limits = {gid: max(curves[gid]) for gid in cut_short if curves.get(gid)}
    ratios = _settle(counter, ratios, target, base_ops, tolerance,
                     lambda g, r: metric_drop(curves[g], baseline, r, higher_is_better) if r > 0 else 0.0,
                     limits)
    pred = sum(metric_drop(curves[g], baseline, r, higher_is_better) for g, r in ratios.items())
    return Allocation(ratios, counter.ops(ratios), base_ops, pred, method, rate, tolerance,
                      counter.divisor, bool(limits))


def allocate_at_threshold(counter: OpsCounter, curves: dict, baseline: float, threshold: float,
                          higher_is_better: bool = True) -> Allocation:
    """The vendor's per-group rule at a given t (Darknet's ``threshold`` key, when no ``rate``
    is given): each group at its largest analysed ratio whose relative metric drop is at
    most t. The operations removed are whatever that gives (``Allocation.rate``)."""
    if not threshold >= 0:
        raise ModelError(f"threshold {threshold} must be a relative metric drop >= 0")
    if not curves:
        raise ModelError("threshold pruning found no prunable group in the analysis")
    scale = max(abs(baseline), 1e-12)
    ratios = {}
    for gid, c in curves.items():
        ok = [r for r in sorted(c) if metric_drop(c, baseline, r, higher_is_better) / scale <= threshold]
        if ok:
            ratios[gid] = max(ok)
    base_ops, ops = counter.ops({}), counter.ops(ratios)
    pred = sum(metric_drop(curves[g], baseline, r, higher_is_better) for g, r in ratios.items())
    return Allocation(ratios, ops, base_ops, pred, "threshold", 1.0 - ops / base_ops,
                      divisor_hint=counter.divisor)


def neighbour_allocations(counter: OpsCounter, curves: dict, baseline: float, alloc: Allocation,
                          higher_is_better: bool = True, cut_short=()) -> list[Allocation]:
    """Allocations one grid step away from ``alloc`` that still meet its operations target.

    For every ordered pair of groups (a, b): a goes up to its next analysed ratio, b down
    to its previous one (or to 0), and single ``divisor`` steps then settle the count
    within the tolerance (:func:`_settle`). Candidates are distinct in kept channels,
    off-target ones are left out, and they come cheapest predicted drop first (ties by
    the pair's group ids), so a budget of N tries the N most promising.

    Example: greedy keeps conv1 at 0.3 and conv2 at 0.6; the pair (conv1, conv2) gives
    conv1 0.4, conv2 0.5, then a few steps of 2 channels bring the count back on target.
    """
    grids = {gid: sorted(c) for gid, c in curves.items()}
    limits = {gid: max(curves[gid]) for gid in cut_short if curves.get(gid)}
    base_ops = counter.ops({})
    target = (1 - alloc.rate) * base_ops

    def drop(g, r):
        return metric_drop(curves[g], baseline, r, higher_is_better) if r > 0 else 0.0

    kept = counter.kept_counts
    seen = {kept(alloc.ratios)}
    found = []
    for up in sorted(grids):
        higher = [r for r in grids[up] if r > alloc.ratios.get(up, 0.0) + 1e-9]
        if not higher:
            continue
        for down in sorted(grids):
            lower = [r for r in grids[down] if r < alloc.ratios.get(down, 0.0) - 1e-9]
            if down == up or not alloc.ratios.get(down, 0.0) > 0:
                continue
            trial = dict(alloc.ratios)
            trial[up], trial[down] = higher[0], (lower[-1] if lower else 0.0)
            ratios = _settle(counter, trial, target, base_ops, alloc.tolerance, drop, limits)
            if kept(ratios) in seen or abs(counter.ops(ratios) - target) > alloc.tolerance * base_ops:
                continue
            seen.add(kept(ratios))
            pred = sum(drop(g, r) for g, r in ratios.items())
            found.append((pred, up, down, Allocation(
                ratios, counter.ops(ratios), base_ops, pred, alloc.method, alloc.rate,
                alloc.tolerance, counter.divisor, bool(limits))))
    found.sort(key=lambda x: (x[0], x[1], x[2]))
    return [a for *_, a in found]


def _threshold(counter, grids, drops, baseline, target, base_ops, tolerance) -> dict:
    """The vendor's rule: per group the largest ratio within relative drop t; bisect t."""
    def pick(t):
        out = {}
        for gid, g in drops.items():
            ok = [r for r in grids[gid] if g[r] / max(abs(baseline), 1e-12) <= t]
            if ok:
                out[gid] = max(ok)
        return out
    lo = -1.0
    hi = 1.0 + max(max(d.values()) for d in drops.values()) / max(abs(baseline), 1e-12)
    for _ in range(60):  # ``lo`` prunes too little (ops above target), ``hi`` enough
        mid = (lo + hi) / 2
        if counter.ops(pick(mid)) > target:
            lo = mid
        else:
            hi = mid
    return _interpolate(counter, pick(lo), pick(hi), target, base_ops, tolerance)


def _greedy(counter, grids, drops, target) -> dict:
    """Repeatedly take the move (one group to a larger analysed ratio) that costs the least
    predicted metric per operation saved, counting the saving exactly on the current model.

    Lazy evaluation: a popped move is re-priced on the current configuration and
    taken only if it still beats the next best; otherwise it goes back on the heap.
    """
    import heapq
    state = {gid: 0.0 for gid in grids}

    def best_move(gid):
        now = counter.ops({g: r for g, r in state.items() if r > 0})
        cur = state[gid]
        best = None
        for r in (x for x in grids[gid] if x > cur):
            # any larger analysed ratio, priced by its average cost: walking the lower
            # convex hull of (ops saved, drop) copes with noisy, non-monotone curves
            trial = {g: v for g, v in state.items() if v > 0}
            trial[gid] = r
            saved = now - counter.ops(trial)
            if saved <= 0:
                continue
            cost = (drops[gid][r] - (drops[gid][cur] if cur > 0 else 0.0)) / saved
            if best is None or cost < best[0]:
                best = (cost, r)
        return best

    heap = []
    for gid in sorted(grids):
        m = best_move(gid)
        if m:
            heapq.heappush(heap, (m[0], gid, m[1]))
    while heap and counter.ops({g: r for g, r in state.items() if r > 0}) > target:
        cost, gid, r = heapq.heappop(heap)
        fresh = best_move(gid)
        if fresh is None:
            continue
        if heap and fresh[0] > heap[0][0] + 1e-15:
            heapq.heappush(heap, (fresh[0], gid, fresh[1]))
            continue
        state[gid] = fresh[1]
        nxt = best_move(gid)
        if nxt:
            heapq.heappush(heap, (nxt[0], gid, nxt[1]))
    return {g: r for g, r in state.items() if r > 0}


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


def _steps(counter, ratios, groups, limits):
    """Every single move of one group by one ``divisor`` of channels: (gid, new ratio)."""
    for gid, g in groups.items():
        n = g.channels
        keep = kept_count(n, ratios.get(gid, 0.0), counter.divisor)
        for k in (keep - counter.divisor, keep + counter.divisor):
            if not counter.divisor <= k <= n:
                continue
            r = round(1 - k / n, 6)
            if limits and r > limits.get(gid, 1.0) + 1e-9:
                continue  # past the end of a curve cut short: nothing is known there
            yield gid, r


def _settle(counter, ratios, target, base_ops, tolerance, drop, limits=None) -> dict:
    """Nudge groups by one divisor step at a time until the count is within tolerance.

    Joint interpolation and greedy jumps can land off target when a few big
    groups change together; single steps of ``divisor`` channels are the finest
    moves there are. Among the moves that close the gap, the one losing the
    least predicted metric per operation moved wins. When every single step
    overshoots the window (small models, where one step is over 1% of the
    operations), one group steps up and another down together.
    """
    groups = {g.id: g for g in counter.a.prunable_groups()}
    ratios = dict(ratios)
    for _ in range(500):
        now = counter.ops(ratios)
        if abs(now - target) <= tolerance * base_ops:
            break
        best = None
        singles = []
        for gid, r in _steps(counter, ratios, groups, limits):
            trial = dict(ratios)
            trial[gid] = r
            ops = counter.ops(trial)
            singles.append((gid, r, ops - now))
            moved = abs(now - ops)
            if not moved or abs(ops - target) >= abs(now - target):
                continue
            # pruning more: cheapest drop per op saved; pruning less: most drop won back
            # (the most negative change per op): the smallest cost either way
            cost = (drop(gid, r) - drop(gid, ratios.get(gid, 0.0))) / moved
            if best is None or cost < best[0]:
                best = (cost, trial)
        if best is None:
            best = _pair_move(counter, ratios, now, target, base_ops, tolerance, drop, singles)
        if best is None:
            break
        ratios = best[1]
    return {k: v for k, v in ratios.items() if v > 0}


def _pair_move(counter, ratios, now, target, base_ops, tolerance, drop, singles):
    """Two single steps of different groups together, closest to the target first.

    Pairs are ranked by their summed operation changes (exact counts checked for
    the 32 closest; groups sharing a layer do not add up exactly); among those
    landing within tolerance the least predicted drop wins, else the nearest.
    """
    gap = abs(now - target)
    pairs = sorted(((abs(now + da + db - target), i, j)
                    for i, (ga, _, da) in enumerate(singles)
                    for j, (gb, _, db) in enumerate(singles) if i < j and ga != gb))
    best = None
    for _, i, j in pairs[:32]:
        (ga, ra, _), (gb, rb, _) = singles[i], singles[j]
        trial = dict(ratios)
        trial[ga], trial[gb] = ra, rb
        off = abs(counter.ops(trial) - target)
        if off >= gap:
            continue
        cost = sum(drop(g, r) - drop(g, ratios.get(g, 0.0)) for g, r in ((ga, ra), (gb, rb)))
        key = (0, cost) if off <= tolerance * base_ops else (1, off)
        if best is None or key < best[0]:
            best = (key, trial)
    return best
