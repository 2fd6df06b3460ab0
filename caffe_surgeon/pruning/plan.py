"""Pruning plans: a JSON value saying, per group, which channels stay.

Example (one group, 50% of 8 channels, L1 ranking)::

    {"format": "caffe-surgeon-plan", "version": 1, "framework": "caffe",
     "model": "deploy.prototxt", "criterion": "l1", "reduction": "sum", "divisor": 1,
     "groups": [{"id": 0, "producers": ["conv1"], "members": ["conv1", "bn1", "conv2"],
                 "channels": 8, "ratio": 0.5, "keep": [1, 2, 5, 7],
                 "scores": [0.1, 0.9, 0.8, 0.2, 0.3, 0.7, 0.05, 0.6]}]}

Groups missing from a plan keep every channel. Plans are deterministic: the
ranking breaks ties by channel index and the JSON is written with sorted,
fixed formatting.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ModelError
from ..fileio import atomic_write
from .criteria import class_scores, lowest_first
from .groups import ChannelAnalysis

FORMAT = "caffe-surgeon-plan"
#: the fractions of a group's channels a sensitivity analysis tries (the vendor's 0.1 ... 0.9).
DEFAULT_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class GroupPlan:
    id: int
    producers: list
    members: list
    channels: int
    keep: list
    ratio: float = 0.0
    scores: list | None = None


@dataclass
class Plan:
    framework: str
    model: str
    groups: list = field(default_factory=list)
    criterion: str = "l1"
    reduction: str = "sum"
    divisor: int = 1

    def to_json(self) -> str:
        d = {"format": FORMAT, "version": 1, **asdict(self)}
        return json.dumps(d, indent=1, sort_keys=True) + "\n"

    def save(self, path) -> None:
        atomic_write(path, self.to_json())

    @property
    def removed(self) -> int:
        return sum(g.channels - len(g.keep) for g in self.groups)

    @staticmethod
    def from_json(text: str, source=None) -> "Plan":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelError(f"plan is not valid JSON: {e.msg}", file=source, line=e.lineno) from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ModelError(f"not a pruning plan (expected \"format\": \"{FORMAT}\")", file=source)
        try:
            groups = [GroupPlan(**g) for g in d["groups"]]
            return Plan(d["framework"], d.get("model", ""), groups, d.get("criterion", "l1"),
                        d.get("reduction", "sum"), int(d.get("divisor", 1)))
        except (KeyError, TypeError) as e:
            raise ModelError(f"plan is missing or has an unexpected field: {e}", file=source) from None

    @staticmethod
    def load(path) -> "Plan":
        from ..fileio import read_bytes
        return Plan.from_json(read_bytes(path, "pruning plan").decode("utf-8", "replace"), source=str(path))


def kept_count(channels: int, ratio: float, divisor: int = 1) -> int:
    """Channels left after pruning ``ratio`` of ``channels``, rounded up to a multiple of ``divisor``.

    Example: 64 channels, ratio 0.3, divisor 8 -> ceil(44.8 / 8) * 8 = 48;
    6 channels, ratio 0.9, divisor 4 -> 4 (at least one multiple of the divisor).
    """
    if not 0.0 <= ratio < 1.0:
        raise ModelError(f"ratio {ratio} is outside [0, 1): a ratio is the fraction of a group's "
                         "channels removed, from 0 (none) up to, not including, 1 (every channel)")
    if divisor < 1:
        raise ModelError(f"channel divisor must be >= 1, got {divisor}")
    keep = math.ceil(round(channels * (1.0 - ratio), 6) / divisor) * divisor
    return min(channels, max(keep, divisor, 1))


def slice_segments(analysis: ChannelAnalysis, group) -> list[list[int]]:
    """Class indices of ``group`` in each output of every Slice its channels cross."""
    segments = []
    for i, flow in enumerate(analysis.flows):
        if flow.kind != "slice":
            continue
        for entries in analysis.layer_out[i] or []:
            if entries is None:
                continue
            nodes = np.asarray(entries.nodes, dtype=np.int64)
            mine = nodes[analysis.node_group[nodes] == group.id]
            if len(mine):
                segments.append(sorted({int(c) for c in analysis.node_class[mine]}))
    return segments


def kept_classes(analysis: ChannelAnalysis, group, keep_n: int, order, divisor: int = 1) -> list[int]:
    """The ``keep_n`` classes of ``group`` to keep: the last of ``order`` (least important
    first), except that every Slice output keeps at least ``divisor`` of its channels (all
    if it has fewer), so no slice segment is emptied.

    Example: a 1x1 conv of 12 channels sliced 8 + 4 (a dual-path block), keep 6 with divisor
    2, the 4 of the second part ranked lowest: the best 2 of them stay, in place of the 2
    lowest-ranked kept channels of the first part, which has 6 and needs only 2.
    """
    order = [int(c) for c in order]
    keep = set(order[len(order) - keep_n:])
    segments = slice_segments(analysis, group)
    floor = max(divisor, 1)

    def short(seg):
        return min(len(seg), floor) - len(keep.intersection(seg))
    for seg in segments:
        for c in [c for c in reversed(order) if c in seg and c not in keep][:max(short(seg), 0)]:
            keep.add(c)
            for out in order:  # give back the least important channel no segment needs
                if out in keep and out != c and all(
                        short(s) < 0 or out not in s for s in segments):
                    keep.discard(out)
                    break
    return sorted(keep)


def make_plan(analysis: ChannelAnalysis, ratio: float | None = None, ratios: dict | None = None,
              criterion="l1", reduction: str = "sum", divisor: int = 1,
              model: str = "", scores_cache: dict | None = None) -> Plan:
    """Rank channels and keep the best ``1 - ratio`` of every prunable group.

    Args:
        ratio: one ratio for every prunable group.
        ratios: group id or producer name -> ratio (overrides ``ratio``); naming an
            unprunable group is an error that gives the reason.
        criterion: "l1", "l2", "bn" or a callable (see :mod:`.criteria`).
        divisor: kept channels are a multiple of it (``channel_divisible``, ``kernel_batch``).
        scores_cache: a dict kept by a caller that plans the same analysed weights many
            times (``ana``: every group at every ratio): each group's scores are computed
            once, on the first plan.
    """
    per_group = {}
    for ref, r in (ratios or {}).items():
        g = analysis.group(ref)
        if not g.prunable:
            raise ModelError(f"group {g.id} ({', '.join(g.producers)}) cannot be pruned: "
                             f"{'; '.join(g.reasons)}", file=analysis.graph.source_text)
        if g.id in per_group and per_group[g.id] != r:
            raise ModelError(f"group {g.id} ({', '.join(g.producers)}) is given two ratios: "
                             f"{per_group[g.id]} and {r}")
        per_group[g.id] = float(r)
    groups = []
    for g in analysis.prunable_groups():
        r = per_group.get(g.id, ratio if ratio is not None else 0.0)
        keep_n = kept_count(g.channels, float(r), divisor)
        cached = not hasattr(criterion, "group_scores") and scores_cache is not None
        hit = scores_cache.get((g.id, reduction)) if cached else None
        if hit is not None and (hit[0] is not None or keep_n == g.channels):
            scores, shown = hit
        else:
            try:
                if hasattr(criterion, "group_scores"):  # data-driven, needs the kept count (LASSO)
                    scores = criterion.group_scores(analysis, g, keep_n) if keep_n < g.channels else None
                else:
                    scores = class_scores(analysis, g, criterion, reduction)
            except ModelError:
                if keep_n < g.channels:
                    raise
                scores = None  # an untouched group need not be scorable
            shown = None if scores is None else [float(f"{s:.9g}") for s in scores]
            if cached:
                scores_cache[(g.id, reduction)] = (scores, shown)
        if scores is None:
            keep = list(range(g.channels))
        else:
            keep = kept_classes(analysis, g, keep_n, lowest_first(scores), divisor)
        groups.append(GroupPlan(g.id, list(g.producers), list(g.members), g.channels, keep,
                                float(r), None if shown is None else list(shown)))
    name = criterion if isinstance(criterion, str) else \
        getattr(criterion, "name", getattr(criterion, "__name__", "custom"))
    return Plan(analysis.graph.framework, model or analysis.graph.source_text or "", groups,
                name, reduction, divisor)


def node_keep(analysis: ChannelAnalysis, plan: Plan) -> np.ndarray:
    """Per node, whether it stays; checks that ``plan`` fits the analysed model."""
    keep = np.ones(len(analysis.node_space), bool)
    src = analysis.graph.source_text
    if plan.framework != analysis.graph.framework:
        raise ModelError(f"the plan is for a {plan.framework} model, this is a "
                         f"{analysis.graph.framework} model", file=src)
    seen = set()
    for gp in plan.groups:
        g = next((x for x in analysis.groups if x.producers == list(gp.producers)), None)
        if g is None:
            raise ModelError(f"plan group {gp.id} ({', '.join(gp.producers)}) does not match any "
                             "channel group of this model", file=src)
        if g.channels != gp.channels:
            raise ModelError(f"plan group {gp.id} ({', '.join(gp.producers)}) has {gp.channels} "
                             f"channels, the model has {g.channels}", file=src)
        if g.id in seen:
            raise ModelError(f"plan lists group {g.id} ({', '.join(g.producers)}) twice", file=src)
        seen.add(g.id)
        if not isinstance(gp.keep, (list, tuple)) or \
                not all(isinstance(k, int) and not isinstance(k, bool) for k in gp.keep):
            raise ModelError(f"plan group {gp.id} ({', '.join(gp.producers)}): keep must be a "
                             f"list of channel indices (integers), got {gp.keep!r:.60}", file=src)
        kept = sorted(set(int(k) for k in gp.keep))
        if len(kept) != len(gp.keep) or (kept and not 0 <= kept[0] <= kept[-1] < g.channels):
            raise ModelError(f"plan group {gp.id} ({', '.join(gp.producers)}): keep must list "
                             f"distinct indices in 0..{g.channels - 1}", file=src)
        if not kept:
            raise ModelError(f"plan group {gp.id} ({', '.join(gp.producers)}) keeps no channel; "
                             "a layer cannot be emptied", file=src)
        if len(kept) < g.channels and not g.prunable:
            raise ModelError(f"plan prunes group {g.id} ({', '.join(g.producers)}), which cannot "
                             f"be pruned: {'; '.join(g.reasons)}", file=src)
        drop = np.setdiff1d(np.arange(g.channels), kept)
        for k in drop:
            for s, c in g.classes[int(k)]:
                keep[analysis.spaces[s].first_node + c] = False
    return keep


def read_ratio_file(path, analysis: ChannelAnalysis) -> dict:
    """Per-layer ratios -> per-group ratios.

    Accepts a JSON object ``{"conv1": 0.3, ...}`` or lines ``conv1 0.3`` (``#``
    comments allowed). A layer must be a producer of a prunable group; layers of
    one group must agree.
    """
    from ..fileio import read_bytes
    text = read_bytes(path, "ratio file").decode("utf-8", "replace")
    pairs = []
    if text.lstrip().startswith("{"):
        try:
            pairs = [(k, v, None) for k, v in json.loads(text).items()]
        except (json.JSONDecodeError, AttributeError) as e:
            raise ModelError(f"ratio file is not a JSON object of layer: ratio ({e})", file=path) from None
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.replace(",", " ").replace(":", " ").split()
            if len(parts) != 2:
                raise ModelError(f"expected 'layer ratio', got {line!r}", file=path, line=n)
            pairs.append((parts[0], parts[1], n))
    out = {}
    for layer, value, line in pairs:
        try:
            r = float(value)
        except (TypeError, ValueError):
            raise ModelError(f"ratio of '{layer}' is not a number: {value!r}", file=path, line=line) from None
        g = next((g for g in analysis.groups if layer in g.producers), None)
        if g is None:
            raise ModelError(f"'{layer}' is not a layer whose output channels can be pruned",
                             file=path, line=line)
        if not 0 <= r < 1:
            raise ModelError(f"ratio {r} of '{layer}' is outside [0, 1)", file=path, line=line)
        if g.id in out and out[g.id] != r:
            raise ModelError(f"'{layer}' is pruned together with {', '.join(g.producers)} "
                             f"(group {g.id}) but gets ratio {r} instead of {out[g.id]}",
                             file=path, line=line)
        out[g.id] = r
    return out
