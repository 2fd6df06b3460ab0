"""The ``[pruning]`` file of ``vai_p_darknet pruner <command> cfg``, read into a checked
:class:`DarknetPruningConfig`.

The file is a Darknet cfg with one section, so the Darknet cfg reader
(:mod:`caffe_surgeon.darknet.cfg`) reads it: same comments, sections and
``key=value`` lines, and errors naming the file and line. This module checks
the keys and their values.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..darknet import cfg as cfgmod
from ..errors import ModelError
from ..pruning.criteria import CRITERIA
from ..pruning.plan import DEFAULT_RATIOS
from .config_values import (SCHEDULERS, MissingFile, check_rate, check_ratios, missing_inputs,
                            raise_missing, resolve_path)

#: vai_p_darknet's numeric ``criteria`` -> our criterion name. These are the vendor's codes,
#: not a list of our own: the guide only ever shows 0, and we ASSUME 0 = L1 (as vai_p_caffe
#: ranks filters) and 1 = L2. The vendor has no code for ``bn``, so a [pruning] file cannot
#: select it (vai_p_caffe's config names criteria and accepts every one in CRITERIA).
DARKNET_CRITERIA = {0: "l1", 1: "l2"}
assert set(DARKNET_CRITERIA.values()) <= set(CRITERIA)

_VENDOR_KEYS = ("workspace", "datacfg", "modelcfg", "prunedcfg", "ana_out_file",
                "prune_out_weights", "criteria", "kernel_batch", "ignore_layer",
                "yolov3", "yolo_v3v4", "threshold")
_OUR_KEYS = ("rate", "ratios", "workers", "scheduler", "label_free", "early_stop")
_KEYS = _VENDOR_KEYS + _OUR_KEYS
_ALIASES = {"is_yolov3": "yolov3"}  # the guide's prose calls it is_yolov3
_PATHS = ("workspace", "datacfg", "modelcfg", "prunedcfg", "ana_out_file", "prune_out_weights")
#: the file's one section, for the cfg reader
_SECTIONS = {"pruning": "pruning"}


@dataclass
class DarknetPruningConfig:
    """The ``[pruning]`` section of ``vai_p_darknet pruner <command> cfg``.

    The vendor's keys (UG1333):

    - ``workspace`` (required): output folder.
    - ``datacfg`` (required unless ``label_free``): Darknet ``.data`` file
      (``classes``, ``train``, ``valid``, ``names``).
    - ``modelcfg`` (required): the model's ``.cfg``.
    - ``prunedcfg`` (default ``<workspace>/<modelcfg stem>-prune.cfg``),
      ``ana_out_file`` (default ``<workspace>/ana.out``), ``prune_out_weights``
      (default ``<workspace>/weights.prune``): outputs.
    - ``criteria`` (default 0): filter ranking. The guide only ever shows 0 and
      does not publish the codes; we ASSUME 0 = L1 norm (as vai_p_caffe ranks
      filters) and 1 = L2 norm; :attr:`criterion` gives the name.
    - ``kernel_batch`` (default 2): kept channels are a multiple of this
      (keep = ceil(N x (1 - r) / kernel_batch) x kernel_batch in the real logs).
    - ``ignore_layer``: comma list of layer indices (0-based, as darknet
      numbers layers) never pruned; stored sorted, without duplicates.
    - ``yolov3`` / ``yolo_v3v4`` (0 or 1, default 0): YOLOv3 / YOLOv4 model;
      not both. ``is_yolov3`` is read as ``yolov3``.
    - ``threshold`` (default None): pruning strength, >= 0. The vendor does not
      publish its meaning; we read it as the largest relative metric drop
      allowed per layer when ``rate`` is not given.

    Ours: ``rate`` (fraction of operations to remove, in [0, 1); when set the
    threshold is searched for), ``ratios`` (comma list, default 0.1 ... 0.9),
    ``workers`` (default None -> 1; the ``-gpus`` option of the command line
    may set it), ``scheduler`` (``auto``/``process``: worker processes;
    ``serial``: this process only),
    ``label_free`` (0/1/true/false), ``early_stop`` (a relative metric drop > 0:
    ``ana`` skips a group's larger ratios once one drops more; default: none).

    Syntax: a Darknet cfg (read by :func:`caffe_surgeon.darknet.cfg.read_cfg`)
    with one section, ``[pruning]``, of ``key=value`` lines; blank lines and
    lines starting with ``#`` or ``;`` are skipped, and a `` #`` or `` ;``
    comment after a value is dropped (:func:`~caffe_surgeon.darknet.cfg.written_value`). Paths are resolved against the current directory;
    ``raw`` keeps them as written (defaults as derived), ``lines`` gives the
    line of every key that was set.
    """

    file: Path
    workspace: Path
    modelcfg: Path
    prunedcfg: Path
    ana_out_file: Path
    prune_out_weights: Path
    datacfg: Path | None = None
    criteria: int = 0
    kernel_batch: int = 2
    ignore_layer: tuple[int, ...] = ()
    yolov3: bool = False
    yolo_v3v4: bool = False
    threshold: float | None = None
    rate: float | None = None
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    workers: int | None = None
    scheduler: str = "auto"
    label_free: bool = False
    early_stop: float | None = None
    raw: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    @property
    def criterion(self) -> str:
        """``criteria`` as a name: ``"l1"`` or ``"l2"`` (assumed mapping)."""
        return DARKNET_CRITERIA[self.criteria]

    @property
    def worker_count(self) -> int:
        """1 for ``scheduler=serial``, else ``workers`` (default 1)."""
        if self.scheduler == "serial":
            return 1
        return self.workers if self.workers is not None else 1

    def missing_files(self, fields=("modelcfg", "datacfg")) -> list[MissingFile]:
        values = {f: getattr(self, f) for f in fields}
        return missing_inputs(fields, values, self.raw, self.lines)

    def check_files(self, fields=("modelcfg", "datacfg")) -> None:
        """Raise one ModelError listing every missing input file at once."""
        raise_missing(self.file, self.missing_files(fields))



def _number(text: str) -> float | None:
    """A plain decimal number as the cfg reader types it (no ``f`` suffix, no hex), else None."""
    v = cfgmod.parse_value(text)
    return float(v) if isinstance(v, (int, float)) else None


def read_darknet_pruning(path, base_dir=None) -> DarknetPruningConfig:
    """Read the ``[pruning]`` file of ``vai_p_darknet``; see :class:`DarknetPruningConfig`."""
    path = Path(path)
    base = Path(base_dir) if base_dir is not None else Path(os.getcwd())
    cfg = cfgmod.read_cfg(path, what="pruning cfg", sections=_SECTIONS, head="pruning")
    accepted = ", ".join(_KEYS)
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for option in cfg.sections[0].options:
        number = option.line + 1
        key = _ALIASES.get(option.key, option.key)
        if key not in _KEYS:
            raise ModelError(f"unknown key '{key}' in [pruning]; accepted keys: {accepted}",
                             file=path, line=number)
        if key in values:
            raise ModelError(f"key '{key}' is given twice (first at line {lines[key]})",
                             file=path, line=number)
        values[key], lines[key] = cfgmod.written_value(cfg, option), number

    def bad(key, expected):
        raise ModelError(f"key '{key}' is '{values[key]}'; expected {expected}", file=path,
                         line=lines[key])

    def integer(key, minimum):
        v = cfgmod.parse_value(values[key])
        if not isinstance(v, int) or v < minimum:
            bad(key, f"an integer >= {minimum}")
        return v

    def number(key):
        x = _number(values[key])
        if x is None:
            bad(key, "a number")
        if not math.isfinite(x):
            bad(key, "a finite number")
        return x

    def flag(key):
        v = values[key].lower()
        if v in ("1", "true", "yes"):
            return True
        if v in ("0", "false", "no"):
            return False
        bad(key, "0 or 1")

    kw: dict = {}
    raw: dict[str, str] = {}
    for key in _PATHS:
        if key in values:
            if not values[key]:
                bad(key, "a path")
            raw[key] = values[key]
    if "criteria" in values:
        kw["criteria"] = integer("criteria", 0)
        if kw["criteria"] not in DARKNET_CRITERIA:
            bad("criteria", "one of " + ", ".join(f"{k} ({v.upper()} norm)"
                                                  for k, v in DARKNET_CRITERIA.items()))
    if "kernel_batch" in values:
        kw["kernel_batch"] = integer("kernel_batch", 1)
    if "ignore_layer" in values:
        layers = []
        for part in values["ignore_layer"].split(","):
            part = part.strip()
            if not part and not values["ignore_layer"].strip():
                continue
            if not (part.isascii() and part.isdigit()):  # "²".isdigit() is True
                bad("ignore_layer", "layer indices (0-based integers) separated by commas, "
                    "like 80,81,92")
            layers.append(int(part))
        kw["ignore_layer"] = tuple(sorted(set(layers)))
    for key in ("yolov3", "yolo_v3v4", "label_free"):
        if key in values:
            kw[key] = flag(key)
    if kw.get("yolov3") and kw.get("yolo_v3v4"):
        raise ModelError("both yolov3=1 and yolo_v3v4=1; set yolov3=1 for YOLOv3 or "
                         "yolo_v3v4=1 for YOLOv4, not both", file=path, line=lines["yolo_v3v4"])
    if "threshold" in values:
        kw["threshold"] = number("threshold")
        if kw["threshold"] < 0:
            bad("threshold", "a number >= 0")
    if "rate" in values:
        kw["rate"] = check_rate(number("rate"), dict(file=path, line=lines["rate"]))
    if "early_stop" in values:
        kw["early_stop"] = number("early_stop")
        if not kw["early_stop"] > 0:
            bad("early_stop", "a relative metric drop > 0, like 0.1 (10%)")
    if "ratios" in values:
        parts = [p.strip() for p in values["ratios"].split(",")]
        numbers = [_number(p) for p in parts]
        if None in numbers:
            bad("ratios", "numbers in (0, 1) separated by commas, like 0.1,0.2,0.3")
        kw["ratios"] = check_ratios(numbers, dict(file=path, line=lines["ratios"]), "ratios")
    if "workers" in values:
        kw["workers"] = integer("workers", 1)
    if "scheduler" in values:
        v = values["scheduler"].lower()
        if v not in SCHEDULERS:
            bad("scheduler", "one of " + ", ".join(SCHEDULERS))
        kw["scheduler"] = v

    required = ["workspace", "modelcfg"] + ([] if kw.get("label_free") else ["datacfg"])
    absent = [k for k in required if k not in raw]
    if absent:
        extra = "" if kw.get("label_free") else " ('datacfg' may be left out with label_free=1)"
        raise ModelError(f"[pruning] lacks required key{'s' if len(absent) > 1 else ''} "
                         f"{', '.join(absent)}{extra}; accepted keys: {accepted}", file=path)
    stem = Path(raw["modelcfg"]).stem
    for key, default in (("prunedcfg", f"{stem}-prune.cfg"), ("ana_out_file", "ana.out"),
                         ("prune_out_weights", "weights.prune")):
        raw.setdefault(key, os.path.join(raw["workspace"], default))
    for key in _PATHS:
        if key in raw:
            kw[key] = resolve_path(raw[key], base)
    return DarknetPruningConfig(file=path, raw=raw, lines=lines, **kw)
