"""``prune`` with a target ``rate``: sensitivity curves -> per-group ratios -> pruned model.

The reference is always the analysed model: its operations and its baseline
metric from the analysis file. Iterative use (vendor flow: prune, finetune,
prune again at a higher rate with ``weights`` pointing at the finetuned
snapshot) therefore keeps the original baseline; the channels are ranked on
the current weights, so channels zeroed by an earlier round rank lowest.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelError
from ..graph import Graph
from ..opcount import stat
from ..pruning import Plan, analyse, apply, make_plan, node_keep
from ..pruning.reconstruct import reconstruct
from ..pruning.transform import transform
from .allocate import (Allocation, OpsCounter, allocate, allocate_at_threshold,
                       neighbour_allocations)
from .refine import Refinement, refine as refine_allocation
from .report import PruneSummary


@dataclass
class PruneOutcome:
    allocation: Allocation
    plan: Plan
    dense: Graph
    sparse: Graph
    summary: PruneSummary
    refitted: list  # layers refitted by least squares (empty without calibration images)
    refinement: Refinement | None = None  # what -refine measured (None without it)
    higher_is_better: bool = True  # False for a loss: a drop is then a rise

    def prediction_note(self) -> str:
        """What the allocator predicted, what it assumed, and what was measured."""
        s = self.summary
        measured = s.acc_baseline - s.acc_compressed
        if not self.higher_is_better:
            measured = -measured
        note = (f"predicted drop {self.allocation.predicted_drop:.4g}: the sum of the drops ana "
                "measured for each group pruned alone, which assumes groups do not interact")
        if s.acc_compressed == s.acc_compressed:  # measured (not NaN)
            note += f"; measured drop {measured:.4g}"
        return note


def higher_is_better(metric_name: str) -> bool:
    """Accuracy-like metrics grow, losses shrink (``acc_name: "loss"``)."""
    return "loss" not in metric_name.lower()


def curves_of(ana, analysis) -> dict:
    """Map the analysis file's groups onto this model's groups (by producers): gid -> {ratio: metric}."""
    ours = {tuple(g.producers): g for g in analysis.prunable_groups()}
    curves = {}
    for grp in ana.groups:
        key = tuple(grp["producers"])
        g = ours.get(key)
        if g is None or g.channels != grp["channels"]:
            raise ModelError(f"the analysis has a group {', '.join(key)} with {grp['channels']} "
                             "channels that this model does not have; the model changed since "
                             "ana ran: run ana again")
        curve = {}
        skipped = set(ana.skipped(grp["id"])) if hasattr(ana, "skipped") else set()
        for r in ana.ratios:
            v = ana.metric(grp["id"], r)
            if v is None and r in skipped:
                continue  # early stop: not measured, so never chosen
            if v is None:
                raise ModelError(f"the analysis is incomplete (group {grp['id']} at ratio {r}); "
                                 "run ana again to finish it")
            curve[float(r)] = float(v)
        curves[g.id] = curve
    return curves


def prune_evaluator(job, ana, state_path, graph: Graph):
    """The evaluator ``prune`` measures with, once the analysis is known to fit it.

    The curves in ``ana`` were measured with one evaluation (settings, data),
    criterion, channel divisor, excluded layers and model definition; prune
    refuses to mix them with others, listing what changed. The weights may
    differ (iterative pruning from a finetuned snapshot). A label-free score then
    still compares with the analysed model: its outputs come from the reference
    file ``ana`` wrote (:mod:`.reference_file`), not from the current weights.
    """
    from .ana_state import describe_changes, job_inputs
    from ..evaluation.spec import build_evaluator, data_digest
    from .reference_file import check_data, load_reference, reference_path
    job = job.checked()
    new, old = job_inputs(job), dict(ana.inputs or {})
    skip = ("model_files", "ratios", "data_sha256")
    where = ("data_file", "base_dir")  # paths: a moved workspace is fine, the data digest decides

    def settings(inputs):
        out = {k: v for k, v in inputs.items() if k not in skip}
        if isinstance(out.get("evaluator"), dict):
            out["evaluator"] = {k: v for k, v in out["evaluator"].items() if k not in where}
        return out
    changes = describe_changes(settings(old), settings(new))
    old_files = old.get("model_files") or [{}, {}]
    changes += describe_changes({"model_files": old_files[:1]},
                                {"model_files": new["model_files"][:1]})
    if changes:
        raise _stale(state_path, changes)
    reference = stored = None
    if job.evaluator.get("label_free") and old_files[-1] != new["model_files"][-1]:
        got = load_reference(state_path)
        if got is None:
            raise ModelError(f"label-free scores compare with the analysed model, but these "
                             f"weights ({new['model_files'][-1]['name']}) are not the ones ana "
                             f"analysed ({old_files[-1].get('name')}) and the analysed model's "
                             f"outputs ({reference_path(state_path).name}) are missing: run ana "
                             "again on the original weights", file=state_path)
        reference, stored = got
    evaluator = build_evaluator(job.evaluator, graph, darknet_bn=job.darknet_bn, reference=reference)
    digest = data_digest(evaluator)
    if old.get("data_sha256") and old["data_sha256"] != digest:
        raise _stale(state_path, describe_changes({"data_sha256": old["data_sha256"]},
                                                  {"data_sha256": digest}))
    if stored is not None:
        check_data(state_path, stored, digest)
    evaluator.print_notes()
    return evaluator


def _stale(state_path, changes) -> ModelError:
    return ModelError("the analysis was measured with other settings than prune's: "
                      + "; ".join(changes) + ". Run ana again with these settings (-restart "
                      "starts it over)", file=state_path)


def prune_to_rate(graph: Graph, ana, rate: float | None, *, evaluator=None, criterion: str = "l1",
                  divisor: int = 2, method: str = "greedy", ignore=(),
                  input_shapes=None, calib: dict | None = None,
                  darknet_bn: str = "pjreddie", threshold: float | None = None,
                  refine: int = 0) -> PruneOutcome:
    """Allocate ratios for ``rate`` from ``ana`` and prune ``graph`` (dense and sparse forms).

    Args:
        graph: the model to prune, as the evaluator runs it (weights may be a
            finetuned snapshot of the analysed model).
        ana: the analysis result (``AnaResult``: baseline, metric_name, groups, ratios, metric()).
        rate: fraction of operations to remove; None with ``threshold``: each group at its
            largest ratio within that relative metric drop (:func:`.allocate_at_threshold`).
        evaluator: if given, the pruned model is evaluated for the summary.
        calib: input blob -> calibration images (:mod:`.calibration`): the layers that lost
            input channels are refitted by least squares (:mod:`..pruning.reconstruct`) in
            the sparse model, and the dense one is what ``transform`` makes of it, so the
            evaluated model is exactly the one the written sparse weights give.
        refine: measure up to this many allocations near the allocator's (each built the
            way the output is, reconstruction included) and keep the best measured one
            (:mod:`.refine`); 0 (default) keeps the allocator's. Needs ``evaluator``.
    """
    a = analyse(graph, ignore=ignore, input_shapes=input_shapes)
    curves = curves_of(ana, a)
    counter = OpsCounter(graph, a, divisor, input_shapes)
    hib = higher_is_better(ana.metric_name)
    if rate is None:
        if threshold is None:
            raise ModelError("prune needs a rate (or a threshold)")
        alloc = allocate_at_threshold(counter, curves, float(ana.baseline), threshold, hib)
        rate = alloc.rate
    else:
        alloc = _allocate(counter, curves, ana, rate, method)
    if refine and evaluator is None:
        raise ModelError("-refine measures allocations: it needs the evaluator")

    def build(allocation):
        plan = make_plan(a, ratios=allocation.ratios, criterion=criterion, divisor=divisor)
        # keep_layout: sparse.caffemodel must still pair with the original prototxt
        sparse = apply(graph, plan, "sparse", fold=True, analysis=a, keep_layout=True)
        refitted = []
        if calib is None:
            dense = apply(graph, plan, "dense", fold=True, analysis=a, keep_layout=True)
        else:
            refitted = reconstruct(graph, sparse, a, node_keep(a, plan), calib,
                                   darknet_bn=darknet_bn, create=False)
            dense = _dense_of(sparse, plan, ignore, input_shapes)
        acc = float(evaluator.evaluate(dense)) if evaluator is not None else float("nan")
        return plan, sparse, dense, refitted, acc

    built = build(alloc)
    refinement = None
    if refine:
        cut = {gid for gid, c in curves.items() if len(c) < len(ana.ratios)}
        refinement = refine_allocation(
            alloc, built[-1], refine,
            lambda at: neighbour_allocations(counter, curves, float(ana.baseline), at, hib, cut),
            lambda at: build(at)[-1], hib, key=lambda at: counter.kept_counts(at.ratios))
        if refinement.best is not alloc:  # built again rather than every candidate kept in memory
            alloc, built = refinement.best, build(refinement.best)
    plan, sparse, dense, refitted, acc = built
    before, after = stat(graph, input_shapes).total, stat(dense, input_shapes).total
    summary = PruneSummary(acc_baseline=float(ana.baseline), acc_compressed=acc,
                           weights_baseline=before.params, weights_compressed=after.params,
                           ops_baseline=before.ops, ops_compressed=after.ops, rate=rate)
    return PruneOutcome(alloc, plan, dense, sparse, summary, refitted, refinement, hib)


def _allocate(counter, curves, ana, rate: float, method: str) -> Allocation:
    cut = {gid for gid, c in curves.items() if len(c) < len(ana.ratios)}
    try:
        return allocate(counter, curves, float(ana.baseline), rate, method,
                        higher_is_better(ana.metric_name), cut_short=cut)
    except ModelError as e:
        if not cut or not 0 < rate < 1:
            raise
        largest = {gid: max(ana.ratios) for gid in curves}
        if counter.ops(largest) > (1 - rate) * counter.ops({}) * 1.01:
            raise  # out of reach even with every skipped ratio
        raise ModelError(f"{e.message}; early stop skipped the larger ratios of {len(cut)} "
                         f"group(s): rerun ana with '-early_stop none' (or a larger drop) to "
                         "evaluate them", file=e.file) from None


def _dense_of(sparse: Graph, plan: Plan, ignore, input_shapes) -> Graph:
    """``transform`` of a refitted sparse model, checked to find the plan it was made with."""
    result = transform(sparse, ignore=ignore, input_shapes=input_shapes)
    found = {g.id: tuple(g.keep) for g in result.plan.groups}
    for g in plan.groups:
        if found.get(g.id, tuple(g.keep)) != tuple(g.keep):
            raise ModelError(f"after reconstruction, group {g.id} of the sparse model reads as "
                             f"keeping {len(found[g.id])} channels where the plan keeps "
                             f"{len(g.keep)}; prune without -reconstruct",
                             file=sparse.source_text)
    return result.dense
