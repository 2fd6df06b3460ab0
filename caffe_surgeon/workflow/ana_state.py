"""The ``ana`` job, its fingerprint, and the state file that records and resumes it.

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
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ModelError
from ..fileio import atomic_write, read_bytes
from ..evaluation.spec import FRAMEWORK_OF, normalize_spec
from ..pruning.criteria import CRITERIA, DATA_CRITERIA, DEFAULT_TAYLOR_BATCHES
from ..pruning.plan import DEFAULT_RATIOS

FORMAT = "caffe-surgeon-ana"
VERSION = 1


# ====================================================================== job and fingerprint
@dataclass
class AnaJob:
    """What to analyse: plain data, so a worker process can rebuild everything from it.

    Attributes:
        framework: "caffe" or "darknet".
        model_files: Caffe ``[train_val.prototxt, model.caffemodel]`` (the TEST phase is
            evaluated); Darknet ``[net.cfg, net.weights]``.
        evaluator: evaluator spec (see :mod:`.evaluators`).
        ratios: fractions of a group's channels to remove, each in (0, 1).
        criterion: channel ranking, a name in :data:`~..pruning.criteria.CRITERIA`.
        criterion_options: what a data criterion is computed with (``taylor``:
            ``{"batches": 8, "seed": 0}``, filled in by :meth:`checked`); empty for the others.
        ignore: layer names whose output channels are never pruned.
        divisor: kept channels are a multiple of it (``channel_divisible``, ``kernel_batch``).
        darknet_bn: Darknet BatchNorm flavour for the forward passes.
        early_stop: None (default: every ratio is evaluated), or a relative metric drop
            ``|baseline - v| / |baseline|``: once a group's drop exceeds it, the group's
            larger ratios are skipped (opt-in; see "Early stop" in :mod:`.ana`).
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
    criterion_options: dict = field(default_factory=dict)

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
        options = _criterion_options(self.criterion, self.criterion_options)
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
                       ignore=sorted(set(ignore)), early_stop=early, criterion_options=options)


def _criterion_options(criterion: str, given) -> dict:
    """``given`` checked for ``criterion``: the Taylor criterion's batch count and seed
    (defaults filled in, so the fingerprint names them); nothing for weight criteria."""
    given = dict(given or {})
    if criterion not in DATA_CRITERIA:
        if given:
            raise ModelError(f"ana: criterion '{criterion}' takes no options, got {given}")
        return {}
    out = {"batches": DEFAULT_TAYLOR_BATCHES, "seed": 0}
    unknown = sorted(set(given) - set(out))
    if unknown:
        raise ModelError(f"ana: criterion '{criterion}' has no option {', '.join(unknown)} "
                         f"(it takes {', '.join(out)})")
    out.update(given)
    for key, low in (("batches", 1), ("seed", 0)):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ModelError(f"ana: criterion '{criterion}': {key} must be an integer >= {low}, "
                             f"got {v!r}")
    return out


def ratio_key(r: float) -> str:
    """How a ratio is spelled in the state file: ``repr(float(r))``."""
    return repr(float(r))


def canonical_json(obj) -> bytes:
    """Sorted keys, no spaces: what the digest hashes (and worker caches are keyed by)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _file_sha256(path) -> str:
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
              "model_files": [{"name": Path(f).name, "sha256": _file_sha256(f)}
                              for f in job.model_files],
              "evaluator": dict(job.evaluator), "ratios": list(job.ratios),
              "criterion": job.criterion, "divisor": job.divisor, "ignore": list(job.ignore)}
    if job.criterion_options:  # only data criteria have them (older state files lack the key)
        inputs["criterion_options"] = dict(job.criterion_options)
    if job.framework == "darknet":
        inputs["darknet_bn"] = job.darknet_bn
    return inputs


def describe_changes(old: dict, new: dict) -> list[str]:
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


def other_inputs_error(path, changes: list[str]) -> ModelError:
    return ModelError("this analysis was made for other inputs: " + "; ".join(changes) +
                      ". Delete the file or rerun with restart=True (command line: -restart) "
                      "to start over", file=path)


# ====================================================================== result and state file
def relative_drop(baseline: float, value: float) -> float:
    """``|baseline - value| / |baseline|`` (the vendor's threshold measure); NaN counts as inf."""
    d = abs(float(baseline) - float(value)) / max(abs(float(baseline)), 1e-12)
    return math.inf if math.isnan(d) else d


def _number_to_json(v):
    """JSON has no NaN or infinities: they are written as strings (see above)."""
    if v is None:
        return None
    v = float(v)
    if math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


def _number_from_json(v, path, where):
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
            "metric": self.metric_name, "baseline": _number_to_json(self.baseline),
            "groups": [{"id": g["id"], "producers": list(g["producers"]),
                        "members": list(g["members"]), "channels": g["channels"]}
                       for g in self.groups],
            "results": {str(gid): {ratio_key(r): _number_to_json(v) for r, v in row.items()}
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
                results[int(gid)] = {float(r): _number_from_json(v, path, f"results[{gid}][{r}]")
                                     for r, v in row.items()}
            early = d.get("early_stop")
            early = None if early is None else _number_from_json(early["drop"], path, "early_stop.drop")
            if early is not None and not (math.isfinite(early) and early > 0):
                raise ModelError(f"early_stop.drop is {early}; it must be a relative drop > 0",
                                 file=path)
            return AnaResult(baseline=_number_from_json(d["baseline"], path, "baseline"),
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


# ====================================================================== resume
def read_resumable(state_path: Path, inputs: dict, restart: bool) -> AnaResult | None:
    """The analysis in ``state_path`` to resume: None when there is none (or ``restart``).

    ModelError when it was made for other ``inputs``: checked before any data is
    decoded, so ``inputs`` has no ``data_sha256`` yet (:func:`start_or_resume` checks it).
    """
    if not state_path.exists() or restart:
        return None
    previous = AnaResult.load(state_path)
    stored = {k: v for k, v in previous.inputs.items() if k != "data_sha256"}
    changes = describe_changes(stored, inputs)
    if changes:
        raise other_inputs_error(state_path, changes)
    return previous


def start_or_resume(previous: AnaResult | None, state_path: Path, job: AnaJob, inputs: dict,
                    groups: list, metric_name: str) -> AnaResult:
    """This run's result: ``previous`` once its data and channel groups match the decoded
    data (``inputs["data_sha256"]``) and ``groups``, else a new empty one."""
    digest = hashlib.sha256(canonical_json(inputs)).hexdigest()
    if previous is not None:
        changes = describe_changes({"data_sha256": previous.inputs.get("data_sha256")},
                                   {"data_sha256": inputs["data_sha256"]})
        if changes:
            raise other_inputs_error(state_path, changes)
        if previous.groups != groups:
            raise other_inputs_error(state_path, ["the channel groups found in the model differ "
                                                  "from the file's (another caffe-surgeon "
                                                  "version?)"])
        result = previous
        result.digest, result.inputs = digest, inputs
    else:
        result = AnaResult(None, metric_name, groups, {}, list(job.ratios), job.criterion, digest,
                           job.divisor, inputs)
    result.path, result.evaluated, result.forward_evaluations = state_path, 0, 0
    result.metric_name = metric_name
    result.early_stop = job.early_stop  # this run's rule; the values do not depend on it
    return result
