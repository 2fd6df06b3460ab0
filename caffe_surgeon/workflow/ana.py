"""``ana``: sensitivity of the metric to pruning each channel group alone.

As the vendor's ``vai_p_caffe ana`` / ``vai_p_darknet pruner ana`` do: one
baseline evaluation, then for every prunable group and every ratio, a model
with only that group pruned (channels ranked by ``criterion``, kept count a
multiple of ``divisor``; dense surgery with offset folding) is evaluated.

Speed. Pruning a group leaves the kept filters' outputs and every channel-local
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
batch. The reused values are
the same function the pruned model computes, but the kept filters come from a
GEMM of another shape, so metrics can differ from a from-scratch run in the last
float bits; runs of ana itself are bit-identical whatever the worker count.
Ratios whose rounded kept counts coincide share one evaluation, and a ratio that
keeps every channel is the baseline. ``workers=N`` spreads the groups over this
process and N-1 worker processes; ``scheduler="tcp://host:port"`` over a Dask
cluster.

Early stop (opt-in, ``early_stop=D``; off by default, as the vendor evaluates
every ratio). A group's ratios run in increasing order, and once one costs a
relative drop ``|baseline - v| / |baseline|`` above ``D`` the group's larger
ratios are skipped: they are recorded as skipped, never estimated, so every
value in the file is a measurement. This is what cuts the time below the
operation-count bound of exact reuse (pruning more of a group rarely wins the
metric back, but it can: curves are noisy). ``prune`` then chooses only among
the evaluated ratios, and says so when the rate cannot be reached without the
skipped ones. The rule is not part of the inputs: a later run with another
``D`` (or none) keeps every measured value and evaluates what its own rule
still needs, so an early-stopped analysis can be completed later.

The state file (``<workspace>/.ana.regular`` for Caffe, ``ana_out_file`` for
Darknet) is JSON, rewritten atomically after every finished evaluation (after
every finished group when evaluations run in other processes)::

    {"format": "caffe-surgeon-ana", "version": 1,
     "digest": "<sha256 of the canonical JSON of inputs>",
     "inputs": {"framework": "caffe",
                "model_files": [{"name": "train_val.prototxt", "sha256": "..."},
                                {"name": "model.caffemodel", "sha256": "..."}],
                "evaluator": {<the evaluator spec, defaults filled in>},
                "data_sha256": "<decoded evaluation batches and labels>",
                "ratios": [0.1, ...], "criterion": "l1", "divisor": 2, "ignore": [],
                ("darknet_bn": "pjreddie" for Darknet)},
     "metric": "top-1", "baseline": 0.9193,
     "groups": [{"id": 0, "producers": ["conv1"], "members": [...], "channels": 16}, ...],
     "results": {"0": {"0.1": 0.9187, "0.2": 0.9150, ...}, ...},
     "done": {"baseline": true, "evaluations": 12, "total": 54, "complete": false},
     ("early_stop": {"drop": 0.1, "stopped": {"0": 0.4, ...}} and "done": {"skipped": 10, ...}
      only when the run used early stop)}

``groups`` lists the prunable groups only; ``results`` maps a group id and a
ratio (``repr`` of the float) to the metric; a missing entry is not done yet,
or skipped: ``stopped`` gives, for each group with skipped ratios, the ratio
whose drop ended it.
Non-finite metrics are written as the strings "NaN", "Infinity", "-Infinity".
The file is written with sorted keys and Python's shortest float repr, so the
same inputs give the same bytes whatever the order or place the evaluations ran.

A second run with the same job resumes and never repeats a finished
evaluation. A file made for other inputs (model bytes, evaluator, data,
ratios, criterion, divisor, ignore) is refused with the list of what changed;
delete it or pass ``restart=True`` (``-restart`` on the command line).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import ModelError
from ..fileio import atomic_write, make_folder, read_bytes
from ..pruning.criteria import CRITERIA
from ..pruning.plan import DEFAULT_RATIOS
from .evaluators import FRAMEWORK_OF, normalize_spec

FORMAT = "caffe-surgeon-ana"
VERSION = 1
#: bytes of original activations one process keeps as checkpoints (beyond: recomputed)
CACHE_BUDGET = 1 << 30
REPORT_NAMES = ("ana_sensitivity.txt", "ana_sensitivity.csv", "ana_sensitivity.png")


# ====================================================================== job
@dataclass
class AnaJob:
    """What to analyse: plain data, so a worker process can rebuild everything from it.

    Attributes:
        framework: "caffe" or "darknet".
        model_files: Caffe ``[train_val.prototxt, model.caffemodel]`` (the TEST phase is
            evaluated); Darknet ``[net.cfg, net.weights]``.
        evaluator: evaluator spec (see :mod:`.evaluators`).
        ratios: fractions of a group's channels to remove, each in (0, 1).
        criterion: channel ranking, "l1", "l2" or "bn".
        ignore: layer names whose output channels are never pruned.
        divisor: kept channels are a multiple of it (``channel_divisible``, ``kernel_batch``).
        darknet_bn: Darknet BatchNorm flavour for the forward passes.
        early_stop: None (default: every ratio is evaluated), or a relative metric drop
            ``|baseline - v| / |baseline|``: once a group's drop exceeds it, the group's
            larger ratios are skipped (opt-in; see "Early stop" above).
    """

    framework: str
    model_files: list
    evaluator: dict
    ratios: list = field(default_factory=lambda: list(DEFAULT_RATIOS))
    criterion: str = "l1"
    ignore: list = field(default_factory=list)
    divisor: int = 1
    darknet_bn: str = "pjreddie"
    early_stop: float | None = None

    def checked(self) -> "AnaJob":
        """A normalised copy (sorted ratios, evaluator defaults filled in); ModelError if invalid."""
        if self.framework not in ("caffe", "darknet"):
            raise ModelError(f"ana: framework must be 'caffe' or 'darknet', not {self.framework!r}")
        files = [str(f) for f in (self.model_files or [])]
        if len(files) != 2:
            raise ModelError(f"ana: model_files must be [definition, weights], got {files}")
        for f in files:
            if not Path(f).is_file():
                raise ModelError("model file not found", file=f)
        spec = normalize_spec(self.evaluator)
        if FRAMEWORK_OF[spec["kind"]] != self.framework:
            raise ModelError(f"ana: an evaluator of kind '{spec['kind']}' cannot evaluate a "
                             f"{self.framework} model")
        try:
            ratios = [float(r) for r in self.ratios]
        except (TypeError, ValueError):
            raise ModelError(f"ana: ratios must be numbers, got {self.ratios!r}") from None
        bad = [r for r in ratios if not 0.0 < r < 1.0]
        if not ratios or bad:
            raise ModelError(f"ana: every ratio must be in (0, 1), got {ratios}")
        if len(set(ratios)) != len(ratios):
            raise ModelError(f"ana: ratios repeat a value: {ratios}")
        if self.criterion not in CRITERIA:
            raise ModelError(f"ana: criterion must be one of {', '.join(CRITERIA)}, "
                             f"not {self.criterion!r}")
        if isinstance(self.divisor, bool) or not isinstance(self.divisor, int) or self.divisor < 1:
            raise ModelError(f"ana: divisor must be an integer >= 1, got {self.divisor!r}")
        ignore = list(self.ignore or [])
        if not all(isinstance(n, str) for n in ignore):
            raise ModelError(f"ana: ignore must list layer names, got {ignore!r}")
        if self.darknet_bn not in ("pjreddie", "alexeyab"):
            raise ModelError(f"ana: darknet_bn must be 'pjreddie' or 'alexeyab', "
                             f"not {self.darknet_bn!r}")
        early = self.early_stop
        if early is not None:
            try:
                early = float(early)
            except (TypeError, ValueError):
                raise ModelError(f"ana: early_stop must be a number, got {self.early_stop!r}") from None
            if isinstance(self.early_stop, bool) or not (math.isfinite(early) and early > 0):
                raise ModelError(f"ana: early_stop must be a relative metric drop > 0 "
                                 f"(e.g. 0.1 = 10%), got {self.early_stop!r}")
        return replace(self, model_files=files, evaluator=spec, ratios=sorted(ratios),
                       ignore=sorted(set(ignore)), early_stop=early)


def ratio_key(r: float) -> str:
    """How a ratio is spelled in the state file: ``repr(float(r))``."""
    return repr(float(r))


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _sha256_file(path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise ModelError(f"cannot read model file: {e.strerror}", file=path) from None
    return h.hexdigest()


def job_inputs(job: AnaJob) -> dict:
    """The state file's ``inputs`` without ``data_sha256`` (cheap: hashes the model files)."""
    inputs = {"framework": job.framework,
              "model_files": [{"name": Path(f).name, "sha256": _sha256_file(f)}
                              for f in job.model_files],
              "evaluator": dict(job.evaluator), "ratios": list(job.ratios),
              "criterion": job.criterion, "divisor": job.divisor, "ignore": list(job.ignore)}
    if job.framework == "darknet":
        inputs["darknet_bn"] = job.darknet_bn
    return inputs


def _changes(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two ``inputs`` records."""
    out = []
    keys = sorted(set(old) | set(new))
    for k in keys:
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if k == "model_files" and isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b), 1):
                if x == y:
                    continue
                if isinstance(x, dict) and isinstance(y, dict) and x.get("name") != y.get("name"):
                    out.append(f"model file {i} is now {y.get('name')!r} (was {x.get('name')!r})")
                if isinstance(x, dict) and isinstance(y, dict) and x.get("sha256") != y.get("sha256"):
                    out.append(f"the contents of model file {i} ({y.get('name')}) changed "
                               f"(sha256 {str(x.get('sha256'))[:12]}... -> {str(y.get('sha256'))[:12]}...)")
        elif k == "evaluator" and isinstance(a, dict) and isinstance(b, dict):
            for f in sorted(set(a) | set(b)):
                if a.get(f) != b.get(f):
                    out.append(f"evaluator field '{f}' changed from {a.get(f)!r} to {b.get(f)!r}")
        elif k == "data_sha256":
            out.append(f"the evaluation data changed (decoded images/labels sha256 "
                       f"{str(a)[:12]}... -> {str(b)[:12]}...)")
        else:
            out.append(f"{k} changed from {a!r} to {b!r}")
    return out


def _mismatch(path, changes: list[str]) -> ModelError:
    return ModelError("this analysis was made for other inputs: " + "; ".join(changes) +
                      ". Delete the file or rerun with restart=True (command line: -restart) "
                      "to start over", file=path)


# ====================================================================== result / state file
def relative_drop(baseline: float, value: float) -> float:
    """``|baseline - value| / |baseline|`` (the vendor's threshold measure); NaN counts as inf."""
    d = abs(float(baseline) - float(value)) / max(abs(float(baseline)), 1e-12)
    return math.inf if math.isnan(d) else d


def _enc(v):
    if v is None:
        return None
    v = float(v)
    if math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


def _dec(v, path, where):
    if v is None or isinstance(v, bool):
        if v is None:
            return None
        raise ModelError(f"{where} is not a number: {v!r}", file=path)
    if isinstance(v, (int, float)):
        return float(v)
    if v in ("NaN", "Infinity", "-Infinity"):
        return float(v.replace("Infinity", "inf"))
    raise ModelError(f"{where} is not a number: {v!r}", file=path)


@dataclass
class AnaResult:
    """The analysis: baseline and, per group and ratio, the metric with that group pruned.

    Attributes:
        baseline: metric of the unpruned model (None until evaluated).
        metric_name: what the metric is ("top-1", "loss", "mAP@0.5 agreement", ...).
        groups: prunable groups, dicts with id, producers, members, channels.
        results: group id -> {ratio: metric}.
        ratios, criterion, divisor, digest, inputs: as in the state file.
        path: the state file, when read from or written to one.
        evaluated: (group, ratio) results computed by the call that returned this object.
        forward_evaluations: forward evaluations that call ran (baseline included); lower
            than ``evaluated`` when ratios share a kept count.
        early_stop: the relative drop after which a group's larger ratios are skipped
            (None: none are).
    """

    baseline: float | None
    metric_name: str
    groups: list
    results: dict
    ratios: list
    criterion: str
    digest: str
    divisor: int = 1
    inputs: dict = field(default_factory=dict)
    path: Path | None = None
    evaluated: int = 0
    forward_evaluations: int = 0
    early_stop: float | None = None

    @property
    def total(self) -> int:
        return len(self.groups) * len(self.ratios)

    @property
    def done(self) -> int:
        return sum(len(v) for v in self.results.values())

    @property
    def skipped_count(self) -> int:
        return sum(len(self.skipped(g["id"])) for g in self.groups)

    @property
    def complete(self) -> bool:
        return self.baseline is not None and self.done + self.skipped_count == self.total

    def stopped_at(self, gid: int) -> float | None:
        """With ``early_stop``: the smallest evaluated ratio of group ``gid`` whose relative
        drop exceeds it (the group's larger ratios are skipped), else None."""
        if self.early_stop is None or self.baseline is None:
            return None
        for r in self.ratios:
            v = self.metric(gid, r)
            if v is not None and relative_drop(self.baseline, v) > self.early_stop:
                return r
        return None

    def skipped(self, gid: int) -> list:
        """Ratios of group ``gid`` that early stop leaves out (not evaluated): those keeping
        fewer channels than the ratio that stopped it (ratios sharing its kept count share
        its value, whether or not a killed run got to record them)."""
        from ..pruning.plan import kept_count
        stop = self.stopped_at(gid)
        if stop is None:
            return []
        n = next(g["channels"] for g in self.groups if g["id"] == int(gid))
        last = kept_count(n, stop, self.divisor)
        return [r for r in self.ratios if self.metric(gid, r) is None
                and kept_count(n, r, self.divisor) < last]

    def metric(self, gid: int, ratio: float) -> float | None:
        """The metric with group ``gid`` pruned by ``ratio``, or None if not evaluated."""
        row = self.results.get(int(gid), {})
        if float(ratio) in row:
            return row[float(ratio)]
        for r, v in row.items():
            if abs(r - float(ratio)) < 1e-9:
                return v
        return None

    def missing(self, gid: int) -> list:
        """Ratios of group ``gid`` still to evaluate (not done, not skipped by early stop)."""
        skipped = set(self.skipped(gid))
        return [r for r in self.ratios if self.metric(gid, r) is None and r not in skipped]

    def to_dict(self) -> dict:
        d = {
            "format": FORMAT, "version": VERSION, "digest": self.digest, "inputs": self.inputs,
            "metric": self.metric_name, "baseline": _enc(self.baseline),
            "groups": [{"id": g["id"], "producers": list(g["producers"]),
                        "members": list(g["members"]), "channels": g["channels"]}
                       for g in self.groups],
            "results": {str(gid): {ratio_key(r): _enc(v) for r, v in row.items()}
                        for gid, row in self.results.items() if row},
            "done": {"baseline": self.baseline is not None, "evaluations": self.done,
                     "total": self.total, "complete": self.complete},
        }
        if self.early_stop is not None:
            stops = {str(g["id"]): self.stopped_at(g["id"]) for g in self.groups
                     if self.skipped(g["id"])}
            d["early_stop"] = {"drop": self.early_stop, "stopped": stops}
            d["done"]["skipped"] = self.skipped_count
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False) + "\n"

    def save(self, path=None) -> None:
        path = Path(path or self.path)
        atomic_write(path, self.to_json())

    @staticmethod
    def from_json(text: str, path=None) -> "AnaResult":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelError(f"not an analysis file: invalid JSON ({e.msg})", file=path,
                             line=e.lineno, column=e.colno) from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ModelError(f"not an analysis file (expected \"format\": \"{FORMAT}\")", file=path)
        if d.get("version") != VERSION:
            raise ModelError(f"analysis file version {d.get('version')!r}; this caffe-surgeon "
                             f"reads version {VERSION}: delete it (or restart) to analyse again",
                             file=path)
        try:
            inputs = d["inputs"]
            ratios = [float(r) for r in inputs["ratios"]]
            groups = [{"id": int(g["id"]), "producers": list(g["producers"]),
                       "members": list(g["members"]), "channels": int(g["channels"])}
                      for g in d["groups"]]
            known = {g["id"] for g in groups}
            results = {}
            for gid, row in d["results"].items():
                if int(gid) not in known:
                    raise ModelError(f"results name group {gid}, which 'groups' does not list",
                                     file=path)
                results[int(gid)] = {float(r): _dec(v, path, f"results[{gid}][{r}]")
                                     for r, v in row.items()}
            early = d.get("early_stop")
            early = None if early is None else _dec(early["drop"], path, "early_stop.drop")
            if early is not None and not (math.isfinite(early) and early > 0):
                raise ModelError(f"early_stop.drop is {early}; it must be a relative drop > 0",
                                 file=path)
            return AnaResult(baseline=_dec(d["baseline"], path, "baseline"),
                             metric_name=str(d["metric"]), groups=groups, results=results,
                             ratios=ratios, criterion=str(inputs["criterion"]),
                             digest=str(d["digest"]), divisor=int(inputs["divisor"]),
                             inputs=inputs, path=Path(path) if path else None,
                             early_stop=early)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelError(f"analysis file is missing or has a malformed field: {e!r}",
                             file=path) from None

    @staticmethod
    def load(path) -> "AnaResult":
        """Read a state file (complete or not)."""
        text = read_bytes(path, "analysis file").decode("utf-8", "replace")
        return AnaResult.from_json(text, path)

    def to_table(self):
        """The results as a :class:`~.report.SensitivityTable` (NaN where not evaluated)."""
        from .report import SensitivityRow, SensitivityTable
        rows = []
        for g in self.groups:
            values = [self.metric(g["id"], r) for r in self.ratios]
            rows.append(SensitivityRow(g["producers"][0],
                                       [float("nan") if v is None else v for v in values],
                                       tuple(g["producers"]), g["channels"]))
        base = float("nan") if self.baseline is None else self.baseline
        note = ""
        if self.early_stop is not None:
            stopped = [g["producers"][0] for g in self.groups if self.skipped(g["id"])]
            note = (f"early stop at a relative drop of {self.early_stop:g}: "
                    + (f"{len(stopped)} group(s) stopped ({', '.join(stopped)}); '-' = skipped"
                       if stopped else "no group stopped"))
        return SensitivityTable(self.metric_name, base, list(self.ratios), rows, note)


def write_reports(result: AnaResult, workspace) -> list[Path]:
    """Write ``ana_sensitivity.txt`` (table), ``.csv`` and ``.png`` (if matplotlib is
    installed) into ``workspace``, atomically; return the paths written."""
    from .report import write_sensitivity_csv, write_sensitivity_plot, write_sensitivity_table
    folder = Path(workspace)
    make_folder(folder)
    table = result.to_table()
    txt, csv_, png = (folder / n for n in REPORT_NAMES)
    write_sensitivity_table(table, txt)
    write_sensitivity_csv(table, csv_)
    written = [txt, csv_]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return written
    write_sensitivity_plot(table, png)
    written.append(png)
    return written


# ====================================================================== evaluation context
def _nbytes(values: dict) -> int:
    return sum(int(getattr(a, "nbytes", 0)) for a in values.values())


class _Context:
    """One process's model, evaluator and channel analysis, built once and reused."""

    def __init__(self, job: AnaJob, show_progress: bool = False, cache_budget: int = CACHE_BUDGET,
                 reference=None):
        from ..engine import Executor
        from ..pruning import analyse
        from .evaluators import build_evaluator, data_digest, load_eval_graph
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
        # Per batch, the original model's values at one layer (what later layers read, and
        # every scored value so far): units run in order of their start layer, so each
        # group's prefix continues the previous group's instead of starting from the input.
        self.checkpoints: dict[int, tuple[int, dict]] = {}
        self.checkpoint_bytes = 0
        self.unit_bytes = 0  # the running unit's own cache (_SuffixRunner), same budget
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
        old = _nbytes(cp[1]) if cp is not None else 0
        size = _nbytes(values)
        if self.checkpoint_bytes - old + size + self.unit_bytes <= self.cache_budget:
            self.checkpoints[b] = (start, values)
            self.checkpoint_bytes += size - old
        return values  # over budget: recomputed for the next variant

    def unit(self, gid: int, ratios, baseline: float | None):
        """Evaluate group ``gid`` at each ratio; yields ``(ratio, metric, ran_forward)``.

        Ratios whose plans keep the same channels are evaluated once; a plan keeping
        every channel is the unpruned model, whose metric is ``baseline`` (None when
        the caller fills it in). Each variant runs only its changed layers
        (:func:`~caffe_surgeon.pruning.reuse.reusable_values`) on the original
        model's values of the others, sliced to the kept channels. With the job's
        ``early_stop``, ratios run in increasing order and the unit ends after the
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
            plan = make_plan(a, ratios={gid: r}, criterion=job.criterion, divisor=job.divisor)
            keep = tuple(next(gp.keep for gp in plan.groups if gp.id == gid))
            plans.setdefault(keep, [plan, []])[1].append(r)
        self.unit_bytes = 0
        try:
            yield from self._variants(g, plans, baseline, stop)
        finally:
            self.unit_bytes = 0  # the runners and their caches go with the generator

    def _variants(self, g, plans: dict, baseline, stop):
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

    def start_of(self, gid: int) -> int:
        """The first layer pruning group ``gid`` changes (the same for every ratio)."""
        return self.reuse_of(gid).start

    def reuse_of(self, gid: int):
        """:func:`~caffe_surgeon.pruning.reuse.reusable_values` for pruning some of group
        ``gid``'s channels: which layers change (the same for every ratio)."""
        import numpy as np

        from ..pruning.reuse import reusable_values
        a = self.analysis
        return reusable_values(a, np.asarray(~((a.node_group == gid) & (a.node_class == 0))))


class _SuffixRunner:
    """Runs pruned variants whose changed layers are ``changed`` (the first is ``start``) on
    the original model's values of every other layer."""

    def __init__(self, ctx: _Context, start: int, changed):
        self.ctx, self.start = ctx, start
        ev, graph, ex = ctx.evaluator, ctx.graph, ctx.executor
        self.changed = frozenset(changed)
        # layers after start that read no changed value (another head, a later branch):
        # the original runs them once per batch for all of a unit's variants
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
        write and the variants read or score (kept for the unit while memory allows)."""
        if not self.from_unchanged:
            return {}
        hit = self.unchanged_values.get(b)
        if hit is not None:
            return hit
        ctx = self.ctx
        got = ctx.executor.advance(values, self.start, len(ctx.graph.layers),
                                   keep=self.from_unchanged, only=self.unchanged)
        got = {v: a if a.base is None else a.copy() for v, a in got.items()}  # no hidden bases
        size = _nbytes(got)
        if ctx.checkpoint_bytes + ctx.unit_bytes + size <= ctx.cache_budget:
            self.unchanged_values[b] = got
            ctx.unit_bytes += size
        return got

    def evaluate(self, executor, reuse) -> float:
        """Score ``executor``'s model, whose unchanged values are ``reuse`` of the original's."""
        ev, s = self.ctx.evaluator, self.start
        results = []
        for b, feed in enumerate(ev.feeds):
            if s == 0:  # nothing before the change: the whole pruned model
                res = executor.run(feed, **ev.run_args)
            else:
                values = self.ctx.original_values(b, s)
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


# ====================================================================== worker side
_POOL: dict = {}
_CONTEXTS: dict = {}
_UNIT_LOCK = threading.Lock()


def _payload(job: AnaJob, ctx: _Context, cache_budget: int) -> dict:
    """What a worker needs: the job with absolute paths, what to check it against, and a
    label-free evaluator's reference (so workers do not run the reference model again)."""
    spec = dict(job.evaluator)
    cwd = os.getcwd()
    for k in ("data_file",):
        if spec.get(k):
            spec[k] = os.path.join(cwd, spec[k])
    spec["base_dir"] = os.path.join(cwd, spec["base_dir"]) if spec.get("base_dir") else cwd
    files = [os.path.join(cwd, f) for f in job.model_files]
    return {"job": asdict(replace(job, model_files=files, evaluator=spec)),
            "data_sha256": ctx.data_sha256, "reference": ctx.evaluator.reference_state(),
            "threads": None, "per_host": {}, "cache_budget": cache_budget}


def _configure_threads(threads, one_task_at_a_time: bool) -> None:
    """Run this worker's kernels on ``threads`` Numba threads (None: leave the count).

    Results do not depend on the thread count (the engine's tiling is fixed by
    the layer shapes), so workers on one host share its cores between them.
    TBB and OpenMP threads spin while waiting and then crawl when processes
    oversubscribe the cores, the workqueue layer does not, so a process running
    one task at a time switches to it (before its first parallel kernel; the
    layer never changes results).
    """
    import numba
    if one_task_at_a_time:
        try:
            from numba.np.ufunc import parallel
            started = getattr(parallel, "_is_initialized", False)
        except ImportError:  # pragma: no cover - other numba layouts
            started = True
        if not started:
            numba.config.THREADING_LAYER = "workqueue"
    if threads:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


def _worker_context(payload: dict, one_task_at_a_time: bool = True) -> _Context:
    key = hashlib.sha256(_canonical({k: payload[k] for k in ("job", "data_sha256")})).hexdigest()
    ctx = _CONTEXTS.get(key)
    if ctx is not None:
        return ctx
    _configure_threads(payload.get("threads"), one_task_at_a_time)
    ctx = _Context(AnaJob(**payload["job"]), cache_budget=payload["cache_budget"],
                   reference=payload.get("reference"))
    if ctx.data_sha256 != payload["data_sha256"]:
        raise ModelError("a worker decoded different evaluation data than the process that "
                         "started ana (other files at the same paths?): "
                         f"sha256 {ctx.data_sha256[:12]}... vs {payload['data_sha256'][:12]}...")
    _CONTEXTS.clear()  # one job per worker process at a time
    _CONTEXTS[key] = ctx
    return ctx


def _run_unit(ctx: _Context, gid: int, ratios, baseline: float):
    values, forwards = {}, 0
    for r, metric, ran in ctx.unit(gid, ratios, baseline):
        values[r] = metric
        forwards += ran
    return gid, values, forwards


def _pool_init(payload: dict) -> None:
    _POOL["payload"] = payload
    try:
        _POOL["ctx"] = _worker_context(payload)
    except Exception as e:  # reported with the first unit, which names it
        _POOL["error"] = e


def _pool_unit(gid: int, ratios, baseline: float):
    if "error" in _POOL:
        raise _POOL["error"]
    return _run_unit(_POOL["ctx"], gid, ratios, baseline)


def _dask_unit(payload: dict, gid: int, ratios, baseline: float):
    """A Dask task: the context is built once per worker process and kept for later units.

    A process evaluates one unit at a time (its context and executor are not shared
    between threads), on its host's cores divided by the worker processes there.
    """
    try:
        from distributed import get_worker
        worker = get_worker()
        state = getattr(worker, "state", worker)
        single = int(getattr(state, "nthreads", 1)) == 1
        procs = len(payload["per_host"].get(_host_of(worker.address), [])) or 1
        threads = max(1, (os.cpu_count() or 1) // procs)
    except (ImportError, ValueError):
        single, threads = False, None  # not inside a worker: the thread-safe default layer
    with _UNIT_LOCK:
        ctx = _worker_context(dict(payload, threads=threads), single)
        _configure_threads(threads, False)  # Numba's thread count is per calling thread
        return _run_unit(ctx, gid, ratios, baseline)


def _host_of(address: str) -> str:
    return address.split("://")[-1].rsplit(":", 1)[0]


# ====================================================================== driver
def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # optional: no bar, same results
        return None
    return tqdm(total=total, initial=initial, desc="ana", unit="eval", dynamic_ncols=True)


def _check_scheduler(workers, scheduler):
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ModelError(f"ana: workers must be an integer >= 1, got {workers!r}")
    if scheduler is None or isinstance(scheduler, str) and scheduler in ("", "auto", "serial",
                                                                        "process"):
        return None
    if isinstance(scheduler, str):
        if "://" not in scheduler:
            raise ModelError(f"ana: scheduler must be a Dask address like tcp://host:8786, "
                             f"got {scheduler!r}")
        return scheduler
    if hasattr(scheduler, "submit") or hasattr(scheduler, "scheduler_address"):
        return scheduler  # a distributed Client or cluster object
    raise ModelError(f"ana: scheduler must be a Dask address or Client, got {scheduler!r}")


def run_ana(job: AnaJob, state_path, workers: int = 1, scheduler=None, progress: bool = True,
            restart: bool = False, on_result=None, cache_budget: int = CACHE_BUDGET) -> AnaResult:
    """Run (or resume) the sensitivity analysis of ``job``; returns the complete result.

    Args:
        state_path: the state file; created (with its folder), resumed, or refused when it
            belongs to other inputs (``restart=True`` discards it instead).
        workers: local evaluators sharing this process's Numba threads: this process
            and ``workers - 1`` worker processes. Those are spawned, so a script calling
            this with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
        scheduler: a Dask scheduler address ``tcp://host:port`` (or a ``distributed.Client``):
            the groups are evaluated there; model and data paths must be readable by the
            workers. Each worker process uses its host's cores divided by the worker
            threads on that host. ``workers`` is then ignored. None (or the config
            values "auto", "serial", "process") evaluates locally.
        progress: a tqdm progress bar with ETA on stderr (if tqdm is installed).
        on_result: called as ``on_result(gid, ratio, metric)`` after each result is saved.
        cache_budget: bytes of original activations kept (one checkpoint per batch, carried
            from group to group); batches over it recompute their prefix per variant.
    """
    job = job.checked()
    scheduler = _check_scheduler(workers, scheduler)
    state_path = Path(state_path)
    inputs = job_inputs(job)
    previous = None
    if state_path.exists() and not restart:
        previous = AnaResult.load(state_path)
        stored = {k: v for k, v in previous.inputs.items() if k != "data_sha256"}
        changes = _changes(stored, inputs)
        if changes:
            raise _mismatch(state_path, changes)
    make_folder(state_path.parent)

    ctx = _Context(job, show_progress=False, cache_budget=cache_budget)
    inputs["data_sha256"] = ctx.data_sha256
    reference = ctx.evaluator.reference_state()
    if reference is not None:  # for a prune from other weights (label-free scores)
        from .reference_file import save_reference
        save_reference(state_path, reference, ctx.data_sha256)
    digest = hashlib.sha256(_canonical(inputs)).hexdigest()
    groups = ctx.group_records()
    if previous is not None:
        changes = _changes({"data_sha256": previous.inputs.get("data_sha256")},
                           {"data_sha256": ctx.data_sha256})
        if changes:
            raise _mismatch(state_path, changes)
        if previous.groups != groups:
            raise _mismatch(state_path, ["the channel groups found in the model differ from the "
                                         "file's (another caffe-surgeon version?)"])
        result = previous
        result.digest, result.inputs = digest, inputs
    else:
        result = AnaResult(None, ctx.evaluator.metric_name, groups, {}, list(job.ratios),
                           job.criterion, digest, job.divisor, inputs)
    result.path, result.evaluated, result.forward_evaluations = state_path, 0, 0
    result.metric_name = ctx.evaluator.metric_name
    result.early_stop = job.early_stop  # this run's rule; the values do not depend on it

    bar = _progress_bar(progress, result.total + 1 - result.skipped_count,
                        result.done + (result.baseline is not None))
    state = _Progress(result, bar, on_result)
    try:
        if job.early_stop is not None:  # units judge their drops against it
            state.baseline(ctx)
            if not math.isfinite(result.baseline) or result.baseline == 0:
                raise ModelError(f"early stop measures drops relative to the baseline "
                                 f"{result.metric_name} = {result.baseline}, which cannot be "
                                 "done for a baseline that is 0 or not finite; run ana without "
                                 "early stop")
        units = [(g["id"], result.missing(g["id"])) for g in groups]
        units = [(gid, rs) for gid, rs in units if rs]
        units.sort(key=lambda u: (ctx.start_of(u[0]), u[0]))  # longest suffixes first
        if scheduler is not None:
            _run_dask(scheduler, job, ctx, state, units, cache_budget)
        elif workers > 1 and len(units) > 1:
            _run_pool(workers, job, ctx, state, units, cache_budget)
        else:
            state.baseline(ctx)
            for gid, rs in units:
                for r, metric, ran in ctx.unit(gid, rs, result.baseline):
                    state.finish(gid, {r: metric}, int(ran))
        result.save()
    finally:
        if bar is not None:
            bar.close()
    return result


class _Progress:
    """Records finished evaluations: result, state file, progress bar, callback."""

    def __init__(self, result: AnaResult, bar, on_result):
        self.result, self.bar, self.on_result = result, bar, on_result

    def baseline(self, ctx: _Context) -> None:
        result = self.result
        if result.baseline is None:
            result.baseline = ctx.baseline()
            result.forward_evaluations += 1
            if self.bar is not None:
                self.bar.update(1)
        result.save()

    def finish(self, gid: int, values: dict, forwards: int) -> None:
        """``values``: ratio -> metric, None for "keeps every channel" (= the baseline)."""
        result = self.result
        row = result.results.setdefault(gid, {})
        for r in sorted(values):
            v = values[r]
            row[float(r)] = float(result.baseline if v is None else v)
            result.evaluated += 1
        result.forward_evaluations += forwards
        result.save()
        if self.bar is not None:
            if result.early_stop is not None:
                self.bar.total = result.total + 1 - result.skipped_count
            self.bar.update(len(values))
        if self.on_result is not None:
            for r in sorted(values):
                self.on_result(gid, r, row[float(r)])


def _run_pool(workers, job, ctx, state: _Progress, units, cache_budget):
    """``workers`` evaluators: this process (it has the model and data already) and
    ``workers - 1`` spawned processes, each taking the next unit when it is free."""
    import multiprocessing
    import queue
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    import numba
    n = min(workers, len(units))
    threads = max(1, numba.get_num_threads() // n)  # this host's cores, shared
    payload = _payload(job, ctx, cache_budget)
    payload["threads"] = threads
    # spawn: a fresh interpreter per worker (forking a process with running Numba/TBB
    # threads is unsafe)
    pool = ProcessPoolExecutor(max_workers=n - 1,
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=_pool_init, initargs=(payload,))
    pending, lock = deque(units), threading.Lock()
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    baseline = state.result.baseline  # known first with early stop, else None

    def take():
        with lock:
            return pending.popleft() if pending else None

    def submit() -> int:
        unit = take()
        if unit is None:
            return 0
        fut = pool.submit(_pool_unit, unit[0], unit[1], baseline)
        fut.add_done_callback(lambda f: events.put(("unit", f)))
        return 1

    def evaluate_here():  # this process's share, one ratio at a time (saved as it comes)
        try:
            numba.set_num_threads(threads)  # per calling thread
            while not cancel.is_set() and (unit := take()) is not None:
                for r, metric, ran in ctx.unit(unit[0], unit[1], baseline):
                    events.put(("ratio", (unit[0], {r: metric}, int(ran))))
                    if cancel.is_set():
                        return
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            events.put(("error", e))
        finally:
            events.put(("done", None))

    in_flight, here = 0, None
    try:
        # Workers set up (decode, reference run) while this process evaluates the baseline.
        for _ in range(n - 1):
            in_flight += submit()
        state.baseline(ctx)
        here = threading.Thread(target=evaluate_here, name="ana-evaluate-here", daemon=True)
        here.start()
        running_here = True
        while in_flight or running_here:
            kind, item = events.get()
            if kind == "unit":
                in_flight -= 1
                try:
                    gid, values, forwards = item.result()
                except BrokenProcessPool as e:
                    raise ModelError(f"an ana worker process died ({e}); if run_ana is called from "
                                     "a script, guard the call with if __name__ == '__main__': "
                                     "(worker processes are spawned and import the main module), "
                                     "and check memory: each worker holds the model and the "
                                     "decoded data") from None
                state.finish(gid, values, forwards)
                in_flight += submit()
            elif kind == "ratio":
                state.finish(*item)
            elif kind == "error":
                raise item
            else:
                running_here = False
    except BaseException:
        cancel.set()
        if here is not None:
            here.join()  # its current ratio ends first: no kernel left running behind the caller
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _run_dask(scheduler, job, ctx, state: _Progress, units, cache_budget):
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ModelError("a Dask scheduler was given but the 'distributed' package is not "
                         "installed (pip install distributed)") from None
    payload = _payload(job, ctx, cache_budget)
    own = not isinstance(scheduler, Client)
    if own:
        address = getattr(scheduler, "scheduler_address", scheduler)
        try:
            client = Client(address, timeout="30s", set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ModelError(f"cannot reach the Dask scheduler at {address}: {e}") from None
    else:
        client = scheduler
    try:
        hosts: dict[str, list] = {}
        for address in client.scheduler_info().get("workers", {}):
            hosts.setdefault(_host_of(address), []).append(address)
        payload["per_host"] = hosts
        run = uuid.uuid4().hex[:12]  # fresh keys: never a stale result of an earlier run
        baseline = state.result.baseline  # known first with early stop, else None
        # the payload goes with every unit: scattering it first would need workers up now
        futures = [client.submit(_dask_unit, payload, gid, rs, baseline, pure=False,
                                 key=f"ana-{run}-group-{gid}")
                   for gid, rs in units]
        state.baseline(ctx)
        for fut in as_completed(futures, loop=client.loop):
            gid, values, forwards = fut.result()
            state.finish(gid, values, forwards)
    except BaseException:
        for fut in futures if "futures" in locals() else []:
            fut.cancel()
        raise
    finally:
        if own:
            client.close()


__all__ = ["AnaJob", "AnaResult", "run_ana", "write_reports", "job_inputs", "ratio_key",
           "relative_drop",
           "DEFAULT_RATIOS", "FORMAT", "VERSION"]
