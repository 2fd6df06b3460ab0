"""The vendor's pruning config files, read into checked dataclasses.

- :func:`read_caffe_config` reads ``vai_p_caffe -config config.prototxt``
  (protobuf text format, ``#`` comments) into a :class:`CaffeConfig`.
- :func:`read_darknet_pruning` reads the ``[pruning]`` section of the INI
  file given to ``vai_p_darknet pruner <command> cfg`` into a
  :class:`DarknetPruningConfig`.

Both accept every field the vendor's user guide (UG1333) and the real configs
in ``zoo/caffe/xilinx_pruning`` use, plus a few of our own with plain names.
Every problem is a :class:`~caffe_surgeon.errors.ModelError` naming the file,
the line (and column for the prototxt) and the field, and listing what is
accepted there. Relative paths are resolved against the current directory, as
the vendor tools do; the text as written is kept in ``raw``.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError
from ..fileio import read_bytes

DEFAULT_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CRITERIA = ("l1", "l2")
SCHEDULERS = ("auto", "serial", "process")
PRUNER_METHODS = ("REGULAR",)
SSD_AP_VERSIONS = ("11point", "MaxIntegral", "Integral")
# vai_p_darknet's numeric ``criteria`` -> our criterion name (0 = L1 is an assumption, see
# DarknetPruningConfig).
DARKNET_CRITERIA = {0: "l1", 1: "l2"}


# ====================================================================== shared checks
def _read_text(path: Path, what: str) -> str:
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ModelError(f"{what} is not UTF-8 text (byte {e.start})", file=path,
                         line=line) from None


def _resolve(raw: str, base: Path) -> Path:
    p = Path(raw)
    return p if p.is_absolute() else base / p


def _check_ratio_list(values: list[float], where: dict, name: str) -> tuple[float, ...]:
    for v in values:
        if not 0.0 < v < 1.0:
            raise ModelError(f"field '{name}': ratio {v:g} is outside (0, 1); ratios are the "
                             "fractions of a group's channels removed in 'ana', e.g. 0.1 ... 0.9",
                             **where)
    seen = set()
    for v in values:
        if v in seen:
            raise ModelError(f"field '{name}': ratio {v:g} is listed twice", **where)
        seen.add(v)
    if not values:
        raise ModelError(f"field '{name}' is empty; give at least one ratio in (0, 1)", **where)
    return tuple(sorted(values))


def _check_rate(v: float, where: dict, name: str = "rate") -> float:
    if not 0.0 <= v < 1.0:
        raise ModelError(f"field '{name}' is {v:g}; it must be in [0, 1): the fraction of the "
                         "baseline's operations to remove (0.5 -> about -50% ops)", **where)
    return v


@dataclass
class MissingFile:
    """One input named in a config that is not a readable file."""

    field: str
    raw: str
    path: Path
    line: int | None
    problem: str            # "not found" or "is a directory"

    def describe(self) -> str:
        at = f" (line {self.line})" if self.line else ""
        shown = self.raw if self.raw == str(self.path) else f"{self.raw}' -> '{self.path}"
        return f"{self.field}{at}: '{shown}' {self.problem}"


def _missing(fields, values: dict, raw: dict, lines: dict) -> list[MissingFile]:
    out = []
    for name in fields:
        path = values.get(name)
        if path is None:
            continue
        if path.is_dir():
            out.append(MissingFile(name, raw[name], path, lines.get(name), "is a directory"))
        elif not path.is_file():
            out.append(MissingFile(name, raw[name], path, lines.get(name), "not found"))
    return out


def _raise_missing(file: Path, missing: list[MissingFile]) -> None:
    if missing:
        n = len(missing)
        raise ModelError(f"{n} input file{'s' if n > 1 else ''} missing (paths are relative to "
                         f"the current directory): " + "; ".join(m.describe() for m in missing),
                         file=file)


# ====================================================================== text format
_TOKEN = re.compile(r"""
    (?P<nl>\n)
  | (?P<ws>[ \t\r\f\v]+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<punct>[:{}<>\[\],;])
  | (?P<word>[A-Za-z0-9_.+\-]+)
  | (?P<bad>.)
""", re.X)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INT = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\Z")  # protobuf text: 0... is octal
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fF]?\Z")
_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "a": b"\a", "b": b"\b", "f": b"\f",
            "v": b"\v", "\\": b"\\", "'": b"'", '"': b'"', "?": b"?"}


@dataclass
class _Tok:
    kind: str      # "string", "punct", "word"
    text: str      # source text (strings: decoded value)
    line: int
    col: int


@dataclass
class _Entry:
    name: str
    line: int
    col: int
    kind: str      # "scalar", "list", "message"
    value: object  # _Tok | list[_Tok] | list[_Entry]


def _unquote(body: str, file, line: int, col: int) -> str:
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out += _ESCAPES[nxt]
            i += 2
        elif nxt in "xX":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:])
            if not m:
                raise ModelError("bad \\x escape in string", file=file, line=line, column=col)
            out.append(int(m.group(), 16))
            i += 2 + len(m.group())
        elif nxt in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1:])
            out.append(int(m.group(), 8) & 0xFF)
            i += 1 + len(m.group())
        else:
            raise ModelError(f"unknown escape '\\{nxt}' in string", file=file, line=line,
                             column=col)
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError("string escapes do not form UTF-8 text", file=file, line=line,
                         column=col) from None


def _tokenize(text: str, file) -> list[_Tok]:
    toks: list[_Tok] = []
    line, line_start = 1, 0
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        col = m.start() - line_start + 1
        if kind == "nl":
            line, line_start = line + 1, m.end()
        elif kind in ("ws", "comment"):
            continue
        elif kind == "bad":
            ch = m.group()
            if ch in "\"'":
                raise ModelError(f"string opened with {ch} is not closed on this line",
                                 file=file, line=line, column=col)
            raise ModelError(f"unexpected character {ch!r}", file=file, line=line, column=col)
        elif kind == "string":
            toks.append(_Tok("string", _unquote(m.group()[1:-1], file, line, col), line, col))
        else:
            toks.append(_Tok(kind, m.group(), line, col))
    return toks


class _TextParser:
    """Protobuf text format, schema-free: fields, ``{}``/``<>`` messages, ``[a, b]`` lists."""

    def __init__(self, toks: list[_Tok], file):
        self.toks, self.i, self.file = toks, 0, file

    def _err(self, msg: str, tok: _Tok | None):
        if tok is None:
            raise ModelError(f"{msg} (at the end of the file)", file=self.file)
        raise ModelError(msg, file=self.file, line=tok.line, column=tok.col)

    def _peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _is(self, tok, *puncts) -> bool:
        return tok is not None and tok.kind == "punct" and tok.text in puncts

    def message(self, opener: _Entry | None = None, closing: str | None = None) -> list[_Entry]:
        entries: list[_Entry] = []
        while True:
            t = self._peek()
            if t is None:
                if closing:
                    self._err(f"'{opener.name}' opened at line {opener.line} is not closed "
                              f"with '{closing}'", None)
                return entries
            if self._is(t, closing):
                self.i += 1
                return entries
            if t.kind != "word" or not _IDENT.match(t.text):
                shown = f'"{t.text}"' if t.kind == "string" else f"'{t.text}'"
                self._err(f"expected a field name, found {shown}", t)
            self.i += 1
            entry = _Entry(t.text, t.line, t.col, "scalar", None)
            nxt = self._peek()
            colon = self._is(nxt, ":")
            if colon:
                self.i += 1
                nxt = self._peek()
            if self._is(nxt, "{", "<"):
                self.i += 1
                entry.kind = "message"
                entry.value = self.message(entry, "}" if nxt.text == "{" else ">")
            elif not colon:
                self._err(f"expected ':' or '{{' after field name '{t.text}'", nxt)
            elif self._is(nxt, "["):
                self.i += 1
                entry.kind, entry.value = "list", self._list(entry)
            else:
                entry.value = self._scalar(entry)
            entries.append(entry)
            if self._is(self._peek(), ";", ","):
                self.i += 1

    def _scalar(self, entry: _Entry) -> _Tok:
        t = self._peek()
        if t is None or t.kind == "punct":
            self._err(f"field '{entry.name}' has no value", t)
        self.i += 1
        if t.kind == "string":  # adjacent strings concatenate, as in protobuf
            parts = [t.text]
            while (n := self._peek()) is not None and n.kind == "string":
                parts.append(n.text)
                self.i += 1
            return _Tok("string", "".join(parts), t.line, t.col)
        return t

    def _list(self, entry: _Entry) -> list[_Tok]:
        items: list[_Tok] = []
        if self._is(self._peek(), "]"):
            self.i += 1
            return items
        while True:
            items.append(self._scalar(entry))
            t = self._peek()
            if self._is(t, "]"):
                self.i += 1
                return items
            if not self._is(t, ","):
                self._err(f"expected ',' or ']' in the list of '{entry.name}'", t)
            self.i += 1


# ---------------------------------------------------------------- value conversion
class _Fields:
    """Typed reading of one message's entries, with errors at the value's position."""

    def __init__(self, entries: list[_Entry], schema: dict, file, where: str = ""):
        self.file, self.where = file, where
        self.values: dict[str, list[_Entry]] = {}
        accepted = ", ".join(schema)
        inside = f" in '{where}'" if where else ""
        for e in entries:
            spec = schema.get(e.name)
            if spec is None:
                raise ModelError(f"unknown field '{e.name}'{inside}; accepted fields: {accepted}",
                                 file=file, line=e.line, column=e.col)
            repeated, is_message = spec
            if is_message and e.kind != "message":
                raise ModelError(f"field '{e.name}' is a block: write {e.name} {{ ... }}",
                                 file=file, line=e.line, column=e.col)
            if not is_message and e.kind == "message":
                raise ModelError(f"field '{e.name}' takes a value (name: value), not a "
                                 "{ ... } block", file=file, line=e.line, column=e.col)
            if not repeated and e.kind == "list":
                raise ModelError(f"field '{e.name}' takes one value, not a [ ... ] list",
                                 file=file, line=e.line, column=e.col)
            prev = self.values.setdefault(e.name, [])
            if prev and not repeated:
                raise ModelError(f"field '{e.name}' is given twice (first at line "
                                 f"{prev[0].line}); it takes one value", file=file,
                                 line=e.line, column=e.col)
            prev.append(e)

    def line(self, name: str) -> int | None:
        got = self.values.get(name)
        return got[0].line if got else None

    def has(self, name: str) -> bool:
        return name in self.values

    def entry(self, name: str) -> _Entry | None:
        got = self.values.get(name)
        return got[0] if got else None

    def _bad(self, tok: _Tok, name: str, expected: str):
        shown = f'"{tok.text}"' if tok.kind == "string" else tok.text
        raise ModelError(f"field '{name}' expects {expected}, got {shown}", file=self.file,
                         line=tok.line, column=tok.col)

    def tokens(self, name: str) -> list[_Tok]:
        out = []
        for e in self.values.get(name, []):
            out.extend(e.value if e.kind == "list" else [e.value])
        return out

    def string(self, name: str, tok: _Tok, nonempty: bool = True) -> str:
        if tok.kind != "string":
            self._bad(tok, name, 'a quoted string, like "..."')
        if nonempty and not tok.text.strip():
            raise ModelError(f"field '{name}' is empty", file=self.file, line=tok.line,
                             column=tok.col)
        return tok.text

    def integer(self, name: str, tok: _Tok, minimum: int | None = None) -> int:
        if tok.kind != "word" or not _INT.match(tok.text):
            self._bad(tok, name, "an integer")
        digits = tok.text.lstrip("+-").lower()
        if digits.startswith("0x"):
            v = int(tok.text, 16)
        elif len(digits) > 1 and digits.startswith("0"):  # protobuf text format: 010 is octal
            v = int(tok.text, 8)
        else:
            v = int(tok.text)
        if minimum is not None and v < minimum:
            raise ModelError(f"field '{name}' is {v}; it must be at least {minimum}",
                             file=self.file, line=tok.line, column=tok.col)
        return v

    def number(self, name: str, tok: _Tok) -> float:
        if tok.kind != "word" or not _FLOAT.match(tok.text):
            self._bad(tok, name, "a number")
        return float(tok.text.rstrip("fF"))

    def boolean(self, name: str, tok: _Tok) -> bool:
        text = tok.text if tok.kind == "word" else None
        if text in ("true", "True", "t", "1"):
            return True
        if text in ("false", "False", "f", "0"):
            return False
        self._bad(tok, name, "true or false")

    def choice(self, name: str, tok: _Tok, accepted, case_insensitive=False) -> str:
        text = tok.text
        for a in accepted:
            if text == a or (case_insensitive and text.lower() == a.lower()):
                return a
        shown = f'"{text}"' if tok.kind == "string" else text
        raise ModelError(f"field '{name}' has value {shown}; accepted values: "
                         f"{', '.join(accepted)}", file=self.file, line=tok.line,
                         column=tok.col)


# ====================================================================== vai_p_caffe config
# name -> (repeated, is_message)
_CAFFE_SCHEMA = {
    # the vendor's fields (UG1333 and the real configs)
    "workspace": (False, False), "gpu": (False, False), "test_iter": (False, False),
    "acc_name": (False, False), "model": (False, False), "weights": (False, False),
    "solver": (False, False), "rate": (False, False), "pruner": (False, True),
    "ssd_ap_version": (False, False),
    # ours
    "criterion": (False, False), "channel_divisible": (False, False),
    "ratios": (True, False), "workers": (False, False), "scheduler": (False, False),
    "label_free": (False, False), "early_stop": (False, False),
}
_PRUNER_SCHEMA = {"method": (False, False), "exclude": (True, True)}
_EXCLUDE_SCHEMA = {"layer_top": (True, False)}
_CAFFE_PATHS = ("workspace", "model", "weights", "solver")


@dataclass
class CaffeConfig:
    """``vai_p_caffe -config config.prototxt``.

    The vendor's fields (UG1333; the real configs use all but the last two):

    - ``workspace`` (required): output folder. ``ana`` keeps its results in
      ``<workspace>/.ana.regular`` (:attr:`ana_file`); ``prune`` writes into
      ``<workspace>/regular_rate_<rate>/`` (:meth:`rate_dir`).
    - ``gpu`` (default ``"0"``): device ids ``"0,1,2,3"`` -> ``[0, 1, 2, 3]``.
      We have no GPU: the number of ids is the default worker count
      (:attr:`worker_count`). A bare integer (``gpu: 0``) is accepted too.
    - ``test_iter`` (default 100): test batches per evaluation.
    - ``acc_name`` (required unless ``label_free``): the one top blob holding the
      metric ("top-1", "top-5", "mAP", "detection_eval", "mIoU"). One per
      config, as in every real config and the guide; a second one is an error.
    - ``model`` (required): the prototxt with both TRAIN and TEST phases.
    - ``weights``: caffemodel to analyse/prune (``ana``/``prune`` need it).
    - ``solver``: solver prototxt for ``finetune``.
    - ``rate``: fraction of the baseline's operations to remove, in [0, 1).
      ``prune`` needs it; ``0`` is valid (the real ``config0`` uses it).
    - ``pruner { method: REGULAR  exclude { layer_top: "..." ... } }``:
      ``method`` (only ``REGULAR``, the default) -> :attr:`method`; every
      ``layer_top`` of every ``exclude`` block (convolutions, named by top blob,
      never pruned) -> :attr:`exclude`.
    - ``ssd_ap_version``: ``"11point"``, ``"MaxIntegral"`` or ``"Integral"`` for
      SSD's detection_eval; None keeps the model's own setting.

    Ours (accepted as protobuf text too; enum-like values may be quoted or bare):

    - ``criterion`` (default ``"l1"``): filter ranking, ``l1`` or ``l2`` norm.
    - ``channel_divisible`` (default 2): kept channels are a multiple of this,
      and at least this many.
    - ``ratios`` (default 0.1 ... 0.9): fractions tried per group in ``ana``;
      repeated (``ratios: 0.1 ratios: 0.3``) or a list (``ratios: [0.1, 0.3]``);
      stored sorted, each in (0, 1), no duplicates.
    - ``workers`` (default None -> one per ``gpu`` id): parallel evaluations.
    - ``scheduler`` (default ``"auto"``): ``auto`` or ``process`` - ``ana``
      evaluates in this process and worker processes, one per ``gpu`` id (or
      ``workers``); ``serial`` - in this process only, whatever ``gpu`` lists.
      The command line's ``-workers`` wins over both.
    - ``label_free`` (default false): score candidates by agreement with the
      unpruned model's outputs instead of ``acc_name`` on labelled data.
    - ``early_stop`` (default none: every ratio is evaluated): a relative metric
      drop > 0; ``ana`` skips a group's larger ratios once one drops more
      (``-early_stop`` on the command line overrides it).

    Paths (``workspace``, ``model``, ``weights``, ``solver``) are resolved
    against the current directory at read time, as the vendor tool does;
    ``raw`` keeps them as written and ``lines`` gives the line of every field
    that was set.
    """

    file: Path
    workspace: Path
    model: Path
    acc_name: str | None = None
    weights: Path | None = None
    solver: Path | None = None
    gpu: list[int] = field(default_factory=lambda: [0])
    test_iter: int = 100
    rate: float | None = None
    method: str = "REGULAR"
    exclude: list[str] = field(default_factory=list)
    ssd_ap_version: str | None = None
    criterion: str = "l1"
    channel_divisible: int = 2
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    workers: int | None = None
    scheduler: str = "auto"
    label_free: bool = False
    early_stop: float | None = None
    raw: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    @property
    def worker_count(self) -> int:
        """1 for ``scheduler: serial``, else ``workers`` if set, else one per ``gpu`` id."""
        if self.scheduler == "serial":
            return 1
        return self.workers if self.workers is not None else max(1, len(self.gpu))

    @property
    def ana_file(self) -> Path:
        """``<workspace>/.ana.regular``, where ``ana`` leaves its results for ``prune``."""
        return self.workspace / f".ana.{self.method.lower()}"

    def rate_dir(self, rate: float | None = None) -> Path:
        """``<workspace>/regular_rate_<rate>`` (``rate`` defaults to the config's)."""
        from .report import format_rate
        rate = self.rate if rate is None else rate
        if rate is None:
            self.require("rate")
        return self.workspace / f"{self.method.lower()}_rate_{format_rate(rate)}"

    def require(self, *fields: str, command: str | None = None) -> None:
        """Raise one ModelError listing every named field that the config does not set."""
        absent = [f for f in fields if getattr(self, f) is None]
        if absent:
            who = f"'vai_p_caffe {command}'" if command else "this step"
            raise ModelError(f"{who} needs {', '.join(repr(f) for f in absent)} in the config, "
                             "which does not set it", file=self.file)

    def missing_files(self, fields=("model", "weights", "solver")) -> list[MissingFile]:
        """The input files among ``fields`` (those that are set) that are not files."""
        values = {f: getattr(self, f) for f in fields}
        return _missing(fields, values, self.raw, self.lines)

    def check_files(self, fields=("model", "weights", "solver")) -> None:
        """Raise one ModelError listing every missing input file at once."""
        _raise_missing(self.file, self.missing_files(fields))


def read_caffe_config(path, base_dir=None) -> CaffeConfig:
    """Read a ``vai_p_caffe`` config.prototxt; see :class:`CaffeConfig` for the fields.

    ``base_dir`` (default: the current directory) is what relative paths are
    resolved against.
    """
    path = Path(path)
    base = Path(base_dir) if base_dir is not None else Path(os.getcwd())
    text = _read_text(path, "config file")
    entries = _TextParser(_tokenize(text, path), path).message()
    top = _Fields(entries, _CAFFE_SCHEMA, path)

    raw: dict[str, str] = {}
    lines = {name: top.line(name) for name in _CAFFE_SCHEMA if top.has(name)}
    kw: dict = {}

    def one(name):
        e = top.entry(name)
        return e.value if e is not None else None

    for name in _CAFFE_PATHS:
        tok = one(name)
        if tok is not None:
            raw[name] = top.string(name, tok)
            kw[name] = _resolve(raw[name], base)

    if (tok := one("gpu")) is not None:
        if tok.kind == "word" and _INT.match(tok.text):
            spec = tok.text
        else:
            spec = top.string("gpu", tok)
        ids = []
        for part in spec.split(","):
            part = part.strip()
            if not (part.isascii() and part.isdigit()):  # "²".isdigit() is True
                raise ModelError(f"field 'gpu' is \"{spec}\"; expected device ids separated by "
                                 "commas, like \"0,1,2,3\"", file=path, line=tok.line,
                                 column=tok.col)
            if int(part) in ids:
                raise ModelError(f"field 'gpu' lists device {int(part)} twice", file=path,
                                 line=tok.line, column=tok.col)
            ids.append(int(part))
        kw["gpu"] = ids
    if (tok := one("test_iter")) is not None:
        kw["test_iter"] = top.integer("test_iter", tok, minimum=1)
    if (tok := one("acc_name")) is not None:
        kw["acc_name"] = top.string("acc_name", tok)
    if (tok := one("rate")) is not None:
        kw["rate"] = _check_rate(top.number("rate", tok),
                                 dict(file=path, line=tok.line, column=tok.col))
    if (tok := one("ssd_ap_version")) is not None:
        kw["ssd_ap_version"] = top.choice("ssd_ap_version", tok, SSD_AP_VERSIONS)
    if (tok := one("criterion")) is not None:
        kw["criterion"] = top.choice("criterion", tok, CRITERIA, case_insensitive=True)
    if (tok := one("channel_divisible")) is not None:
        kw["channel_divisible"] = top.integer("channel_divisible", tok, minimum=1)
    if top.has("ratios"):
        toks = top.tokens("ratios")
        first = top.entry("ratios")
        kw["ratios"] = _check_ratio_list([top.number("ratios", t) for t in toks],
                                         dict(file=path, line=first.line, column=first.col),
                                         "ratios")
    if (tok := one("workers")) is not None:
        kw["workers"] = top.integer("workers", tok, minimum=1)
    if (tok := one("scheduler")) is not None:
        kw["scheduler"] = top.choice("scheduler", tok, SCHEDULERS, case_insensitive=True)
    if (tok := one("label_free")) is not None:
        kw["label_free"] = top.boolean("label_free", tok)
    if (tok := one("early_stop")) is not None:
        kw["early_stop"] = top.number("early_stop", tok)
        if not kw["early_stop"] > 0:
            raise ModelError(f"field 'early_stop' is {kw['early_stop']:g}; it is a relative "
                             "metric drop > 0 (e.g. 0.1 = 10%)", file=path, line=tok.line,
                             column=tok.col)

    if (e := top.entry("pruner")) is not None:
        pruner = _Fields(e.value, _PRUNER_SCHEMA, path, "pruner")
        if (m := pruner.entry("method")) is not None:
            kw["method"] = pruner.choice("method", m.value, PRUNER_METHODS)
        excluded: list[str] = []
        for ex in pruner.values.get("exclude", []):
            block = _Fields(ex.value, _EXCLUDE_SCHEMA, path, "pruner.exclude")
            for t in block.tokens("layer_top"):
                name = block.string("layer_top", t)
                if name not in excluded:
                    excluded.append(name)
        kw["exclude"] = excluded

    required = ["workspace", "model"]
    if not kw.get("label_free"):
        required.append("acc_name")
    absent = [r for r in required if r not in kw]
    if absent:
        extra = ("" if kw.get("label_free")
                 else " ('acc_name' may be left out with label_free: true)")
        raise ModelError(f"missing required field{'s' if len(absent) > 1 else ''} "
                         f"{', '.join(repr(a) for a in absent)}{extra}; accepted fields: "
                         f"{', '.join(_CAFFE_SCHEMA)}", file=path)
    return CaffeConfig(file=path, raw=raw, lines=lines, **kw)


# ====================================================================== vai_p_darknet INI
_DARKNET_VENDOR_KEYS = ("workspace", "datacfg", "modelcfg", "prunedcfg", "ana_out_file",
                        "prune_out_weights", "criteria", "kernel_batch", "ignore_layer",
                        "yolov3", "yolo_v3v4", "threshold")
_DARKNET_OUR_KEYS = ("rate", "ratios", "workers", "scheduler", "label_free", "early_stop")
_DARKNET_KEYS = _DARKNET_VENDOR_KEYS + _DARKNET_OUR_KEYS
_DARKNET_ALIASES = {"is_yolov3": "yolov3"}  # the guide's prose calls it is_yolov3
_DARKNET_PATHS = ("workspace", "datacfg", "modelcfg", "prunedcfg", "ana_out_file",
                  "prune_out_weights")


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

    Syntax: ``key=value`` lines under ``[pruning]``; blank lines and lines
    starting with ``#`` or ``;`` are skipped, as is a `` #`` or `` ;`` comment
    after a value. Paths are resolved against the current directory;
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
        return _missing(fields, values, self.raw, self.lines)

    def check_files(self, fields=("modelcfg", "datacfg")) -> None:
        """Raise one ModelError listing every missing input file at once."""
        _raise_missing(self.file, self.missing_files(fields))


def _strip_inline_comment(value: str) -> str:
    m = re.search(r"\s[#;]", value)
    return value[:m.start()].rstrip() if m else value


def read_darknet_pruning(path, base_dir=None) -> DarknetPruningConfig:
    """Read the ``[pruning]`` INI file of ``vai_p_darknet``; see :class:`DarknetPruningConfig`."""
    path = Path(path)
    base = Path(base_dir) if base_dir is not None else Path(os.getcwd())
    text = _read_text(path, "pruning cfg")
    accepted = ", ".join(_DARKNET_KEYS)
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    section: str | None = None
    seen_section = False
    for number, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("["):
            if not s.endswith("]"):
                raise ModelError(f"section header {s!r} is not closed with ']'", file=path,
                                 line=number)
            section = s[1:-1].strip()
            if section.lower() != "pruning":
                raise ModelError(f"unknown section [{section}]; the file takes one [pruning] "
                                 "section", file=path, line=number)
            if seen_section:
                raise ModelError("a second [pruning] section; put every key in one", file=path,
                                 line=number)
            seen_section = True
            continue
        key, eq, value = s.partition("=")
        key, value = key.strip(), _strip_inline_comment(value.strip())
        if not eq:
            raise ModelError(f"expected key=value, got {s!r}; accepted keys: {accepted}",
                             file=path, line=number)
        if section is None:
            raise ModelError(f"'{key}' comes before the [pruning] section header", file=path,
                             line=number)
        key = _DARKNET_ALIASES.get(key, key)
        if key not in _DARKNET_KEYS:
            raise ModelError(f"unknown key '{key}' in [pruning]; accepted keys: {accepted}",
                             file=path, line=number)
        if key in values:
            raise ModelError(f"key '{key}' is given twice (first at line {lines[key]})",
                             file=path, line=number)
        values[key], lines[key] = value, number
    if not seen_section:
        raise ModelError("no [pruning] section; the file should start with [pruning] followed "
                         f"by key=value lines (keys: {accepted})", file=path)

    def bad(key, expected):
        raise ModelError(f"key '{key}' is '{values[key]}'; expected {expected}", file=path,
                         line=lines[key])

    def integer(key, minimum):
        v = values[key]
        if not re.fullmatch(r"[+-]?[0-9]+", v):
            bad(key, f"an integer >= {minimum}")
        if int(v) < minimum:
            bad(key, f"an integer >= {minimum}")
        return int(v)

    def number(key):
        v = values[key]
        if not _FLOAT.match(v) or v.lower().endswith("f"):
            bad(key, "a number")
        x = float(v)
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
    for key in _DARKNET_PATHS:
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
        kw["rate"] = _check_rate(number("rate"), dict(file=path, line=lines["rate"]))
    if "early_stop" in values:
        kw["early_stop"] = number("early_stop")
        if not kw["early_stop"] > 0:
            bad("early_stop", "a relative metric drop > 0, like 0.1 (10%)")
    if "ratios" in values:
        parts = [p.strip() for p in values["ratios"].split(",")]
        if any(not p or not _FLOAT.match(p) for p in parts):
            bad("ratios", "numbers in (0, 1) separated by commas, like 0.1,0.2,0.3")
        kw["ratios"] = _check_ratio_list([float(p) for p in parts],
                                         dict(file=path, line=lines["ratios"]), "ratios")
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
    for key in _DARKNET_PATHS:
        if key in raw:
            kw[key] = _resolve(raw[key], base)
    return DarknetPruningConfig(file=path, raw=raw, lines=lines, **kw)
