"""What the two vai_p config readers share: text, paths, ratio and rate checks, missing files.

:mod:`.caffe_config` reads ``vai_p_caffe``'s config.prototxt and
:mod:`.darknet_config` the ``[pruning]`` file of ``vai_p_darknet``; both
resolve relative paths against the current directory (as the vendor tools do),
check ``ratios`` and ``rate`` the same way and list every missing input file
in one error.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..fileio import read_bytes

#: how ``ana`` spreads its evaluations (``scheduler`` in both configs).
SCHEDULERS = ("auto", "serial", "process")


def read_text(path: Path, what: str) -> str:
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ModelError(f"{what} is not UTF-8 text (byte {e.start})", file=path,
                         line=line) from None


def resolve_path(raw: str, base: Path) -> Path:
    p = Path(raw)
    return p if p.is_absolute() else base / p


def check_ratios(values: list[float], where: dict, name: str) -> tuple[float, ...]:
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


def check_rate(v: float, where: dict, name: str = "rate") -> float:
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


def missing_inputs(fields, values: dict, raw: dict, lines: dict) -> list[MissingFile]:
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


def raise_missing(file: Path, missing: list[MissingFile]) -> None:
    if missing:
        n = len(missing)
        raise ModelError(f"{n} input file{'s' if n > 1 else ''} missing (paths are relative to "
                         f"the current directory): " + "; ".join(m.describe() for m in missing),
                         file=file)
