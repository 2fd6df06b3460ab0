"""Incremental evaluation of ``ana``'s variants: one group pruned at each ratio.

Pruning a group leaves the kept filters' outputs and every channel-local
layer after them (BatchNorm, activations, pooling, joins, concat) as they were,
minus the removed channels; the first values that change are the consumers'
(:func:`~caffe_surgeon.pruning.reuse.reusable_values`). So the original model
runs once per batch up to that layer, and each ratio runs only the layers that
change from there on (the consumers and what reads their values), resumed from
those activations sliced to the kept channels (fresh arrays: the executor may
overwrite dying inputs in place). Later layers that read no changed value
(another detector head, a branch that joins only after it is scored) run once
per batch on the original model for all of a group's ratios. Groups run in
order of their first changed layer, and each batch keeps one checkpoint of the
original's activations that the next group's prefix continues from
(:meth:`Executor.advance`), so all prefixes together cost one forward pass per
batch. The reused values are the same function the pruned model computes, but
the kept filters come from a GEMM of another shape, so metrics can differ from a
from-scratch run in the last float bits; runs of ana itself are bit-identical
whatever the worker count. Ratios whose rounded kept counts coincide share one
evaluation, and a ratio that keeps every channel is the baseline.
"""
from __future__ import annotations

from ..errors import ModelError
from .ana_state import AnaJob, relative_drop

#: bytes of original activations one process keeps as checkpoints (beyond: recomputed)
CACHE_BUDGET = 1 << 30


def _total_bytes(values: dict) -> int:
    return sum(int(getattr(a, "nbytes", 0)) for a in values.values())


class IncrementalEvaluator:
    """Evaluates a job's variants (one group pruned at some ratios) from the original
    model's activations: one process's model, evaluator and channel analysis, built once
    and reused for every group that process evaluates."""

    def __init__(self, job: AnaJob, show_progress: bool = False, cache_budget: int = CACHE_BUDGET,
                 reference=None):
        from ..engine import Executor
        from ..pruning import analyse
        from ..pruning.criteria import criterion_for
        from ..evaluation.spec import build_evaluator, data_digest, load_eval_graph
        self.job = job
        self.graph = load_eval_graph(job.framework, job.model_files, job.evaluator)
        names = {l.name for l in self.graph.layers}
        unknown = [n for n in job.ignore if n not in names]
        if unknown:  # before any image is decoded
            raise ModelError(f"ignore names layers the model does not have: {', '.join(unknown)}",
                             file=job.model_files[0])
        self.evaluator = build_evaluator(job.evaluator, self.graph, darknet_bn=job.darknet_bn,
                                         show_progress=show_progress, reference=reference)
        self.data_sha256 = data_digest(self.evaluator)
        self.analysis = analyse(self.graph, job.ignore,
                                input_shapes=getattr(self.evaluator, "input_shapes", None))
        self.executor = Executor(self.graph, darknet_bn=job.darknet_bn)
        self.cache_budget = cache_budget
        self.criterion = criterion_for(job.criterion, job.model_files, job.criterion_options)
        self.scores: dict = {}  # make_plan's per-group scores of the original weights
        # Per batch, the original model's values at one layer (what later layers read, and
        # every scored value so far): groups run in order of their start layer, so each
        # group's prefix continues the previous group's instead of starting from the input.
        self.checkpoints: dict[int, tuple[int, dict]] = {}
        self.checkpoint_bytes = 0
        self.group_cache_bytes = 0  # the running group's own cache (_SuffixRunner), same budget
        args, ex = self.evaluator.run_args, self.executor
        self.scored = {ex.version_of(o) for o in args["outputs"]} | {
            (self.graph.index(l), t) for l in args["layer_outputs"]
            for t in self.graph.layers[self.graph.index(l)].tops}

    def group_records(self) -> list[dict]:
        return [{"id": g.id, "producers": list(g.producers), "members": list(g.members),
                 "channels": g.channels} for g in self.analysis.prunable_groups()]

    def baseline(self) -> float:
        return float(self.evaluator.evaluate(self.graph, self.executor))

    def original_values(self, b: int, start: int) -> dict:
        """The original model's values for batch ``b`` that layers >= ``start`` read, and
        its scored values computed before ``start`` (keyed by version)."""
        ex = self.executor
        cp = self.checkpoints.get(b)
        if cp is not None and cp[0] == start:
            return cp[1]
        keep = [v for v in self.scored if 0 <= v[0] < start]
        if cp is not None and cp[0] < start:
            values = ex.advance(cp[1], cp[0], start, keep)
        else:
            values = ex.prefix(self.evaluator.feeds[b], start, keep)
        old = _total_bytes(cp[1]) if cp is not None else 0
        size = _total_bytes(values)
        if self.checkpoint_bytes - old + size + self.group_cache_bytes <= self.cache_budget:
            self.checkpoints[b] = (start, values)
            self.checkpoint_bytes += size - old
        return values  # over budget: recomputed for the next variant

    def evaluate_group(self, gid: int, ratios, baseline: float | None):
        """Evaluate group ``gid`` at each ratio; yields ``(ratio, metric, ran_forward)``.

        Ratios whose plans keep the same channels are evaluated once; a plan keeping
        every channel is the unpruned model, whose metric is ``baseline`` (None when
        the caller fills it in). Each variant runs only its changed layers
        (:func:`~caffe_surgeon.pruning.reuse.reusable_values`) on the original
        model's values of the others, sliced to the kept channels. With the job's
        ``early_stop``, ratios run in increasing order and the group ends after the
        first whose relative drop from ``baseline`` exceeds it.
        """
        from ..pruning import make_plan
        job, a = self.job, self.analysis
        g = a.group(gid)
        stop = job.early_stop
        if stop is not None and baseline is None:
            raise ValueError("early stop needs the baseline before the groups run")
        plans: dict[tuple, list] = {}
        for r in sorted(ratios):
            plan = make_plan(a, ratios={gid: r}, criterion=self.criterion, divisor=job.divisor,
                             scores_cache=self.scores)
            keep = tuple(next(gp.keep for gp in plan.groups if gp.id == gid))
            plans.setdefault(keep, [plan, []])[1].append(r)
        self.group_cache_bytes = 0
        try:
            yield from self._evaluate_variants(g, plans, baseline, stop)
        finally:
            self.group_cache_bytes = 0  # the runners and their caches go with the generator

    def _evaluate_variants(self, g, plans: dict, baseline, stop):
        from ..engine import Executor
        from ..pruning import apply, node_keep
        from ..pruning.reuse import reusable_values
        from ..pruning.surgery import constants_stand_alone, removed_constants
        job, graph, a = self.job, self.graph, self.analysis
        runners: dict[tuple, _SuffixRunner] = {}
        constants = None
        for keep, (plan, rs) in plans.items():
            if len(keep) == g.channels:
                for r in rs:
                    yield r, baseline, False
                continue
            if constants is None and constants_stand_alone(a):
                # what every channel of the group folds as once removed: one dead-model
                # pass for all ratios, the same values apply() finds for each
                constants = removed_constants(graph, a, a.node_group != g.id)
            reuse = reusable_values(a, node_keep(a, plan))
            key = (reuse.start, reuse.changed)
            runner = runners.get(key)
            if runner is None:
                runner = runners[key] = _SuffixRunner(self, reuse.start, reuse.changed)
            pruned = apply(graph, plan, "dense", fold=True, analysis=a, constants=constants)
            metric = runner.evaluate(Executor(pruned, darknet_bn=job.darknet_bn), reuse)
            for k, r in enumerate(rs):
                yield r, metric, k == 0
            if stop is not None and relative_drop(baseline, metric) > stop:
                return

    def first_changed_layer(self, gid: int) -> int:
        """The first layer pruning group ``gid`` changes (the same for every ratio)."""
        return self.changed_layers(gid).start

    def changed_layers(self, gid: int):
        """:func:`~caffe_surgeon.pruning.reuse.reusable_values` for pruning some of group
        ``gid``'s channels: which layers change (the same for every ratio)."""
        import numpy as np

        from ..pruning.reuse import reusable_values
        a = self.analysis
        return reusable_values(a, np.asarray(~((a.node_group == gid) & (a.node_class == 0))))


class _SuffixRunner:
    """Runs pruned variants whose changed layers are ``changed`` (the first is ``start``) on
    the original model's values of every other layer."""

    def __init__(self, evaluation: IncrementalEvaluator, start: int, changed):
        self.evaluation, self.start = evaluation, start
        ev, graph, ex = evaluation.evaluator, evaluation.graph, evaluation.executor
        self.changed = frozenset(changed)
        # layers after start that read no changed value (another head, a later branch):
        # the original runs them once per batch for all of a group's variants
        self.unchanged = frozenset(range(start, len(graph.layers))) - self.changed
        args = ev.run_args
        early_out = [o for o in args["outputs"] if ex.version_of(o)[0] not in self.changed]
        early_layers = [l for l in args["layer_outputs"] if graph.index(l) not in self.changed]
        self.late = {"outputs": [o for o in args["outputs"] if o not in early_out],
                     "layer_outputs": [l for l in args["layer_outputs"] if l not in early_layers]}
        # scored values no changed layer writes: the original's (sliced like any other value)
        self.early = {o: ex.version_of(o) for o in early_out}
        for l in early_layers:
            i = graph.index(l)
            self.early.update({f"{l}:{t}": (i, t) for t in graph.layers[i].tops})
        self.needed = sorted({v for i in self.changed for v in ex.reads[i]
                              if v[0] not in self.changed}, key=str)
        self.from_unchanged = sorted({v for v in list(self.needed) + list(self.early.values())
                                      if v[0] in self.unchanged}, key=str)
        self.unchanged_values: dict[int, dict] = {}

    def _unchanged(self, b: int, values: dict) -> dict:
        """The original's values of batch ``b`` that the unchanged layers after ``start``
        write and the variants read or score (kept for the group while memory allows)."""
        if not self.from_unchanged:
            return {}
        hit = self.unchanged_values.get(b)
        if hit is not None:
            return hit
        evaluation = self.evaluation
        got = evaluation.executor.advance(values, self.start, len(evaluation.graph.layers),
                                          keep=self.from_unchanged, only=self.unchanged)
        got = {v: a if a.base is None else a.copy() for v, a in got.items()}  # no hidden bases
        size = _total_bytes(got)
        held = evaluation.checkpoint_bytes + evaluation.group_cache_bytes
        if held + size <= evaluation.cache_budget:
            self.unchanged_values[b] = got
            evaluation.group_cache_bytes += size
        return got

    def evaluate(self, executor, reuse) -> float:
        """Score ``executor``'s model, whose unchanged values are ``reuse`` of the original's."""
        ev, s = self.evaluation.evaluator, self.start
        results = []
        for b, feed in enumerate(ev.feeds):
            if s == 0:  # nothing before the change: the whole pruned model
                res = executor.run(feed, **ev.run_args)
            else:
                values = self.evaluation.original_values(b, s)
                values = {**values, **self._unchanged(b, values)}
                # new arrays: the executor may overwrite inputs that die in place
                cache = {v: reuse.take(v, values[v]) for v in self.needed}
                res = executor.run(None, start=s, cache=cache, only=self.changed, donate_cache=True,
                                   **self.late) \
                    if s < len(executor.graph.layers) else {}
                res.update({name: reuse.take(v, values[v] if v in values else feed[v[1]])
                            for name, v in self.early.items()})
            results.append(res)
        return ev.score(results)

