"""Darknet ``.cfg`` reader and line-preserving writer.

Darknet reads a cfg line by line (``src/parser.c`` ``read_cfg``): it removes
every whitespace character, skips empty lines and lines starting with ``#`` or
``;``, opens a section on ``[name]`` and otherwise splits ``key=value`` at the
first ``=``. Later duplicates of a key are ignored (``option_find`` returns the
first match). This module follows those rules but also keeps every original
line, so that writing an unchanged cfg reproduces the file byte for byte and
changing one option rewrites only that line. That matters because users diff
pruned cfgs against the original and keep comments that document the model.

Worked example: ``filters = 255\\r\\n`` changed to 75 becomes ``filters = 75\\r\\n``
(the spacing before the value and the CRLF ending are kept).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelError
from ..fileio import read_bytes

#: section spelling -> canonical name. Union of pjreddie (2018) and AlexeyAB
#: ``string_to_layer_type``. AlexeyAB maps ``[reorg]`` to REORG_OLD and
#: ``[reorg3d]`` to REORG; both keep their own canonical name here.
SECTION_ALIASES = {
    "net": "net", "network": "net",
    "conv": "convolutional", "convolutional": "convolutional",
    "deconv": "deconvolutional", "deconvolutional": "deconvolutional",
    "conn": "connected", "connected": "connected",
    "max": "maxpool", "maxpool": "maxpool",
    "avg": "avgpool", "avgpool": "avgpool",
    "local_avg": "local_avgpool", "local_avgpool": "local_avgpool",
    "soft": "softmax", "softmax": "softmax",
    "lrn": "normalization", "normalization": "normalization",
    "empty": "empty", "silence": "empty",
    **{name: name for name in (
        "shortcut", "scale_channels", "sam", "crop", "cost", "detection", "region", "yolo",
        "Gaussian_yolo", "iseg", "local", "activation", "logistic", "l2norm", "crnn", "gru",
        "lstm", "conv_lstm", "history", "rnn", "reorg", "reorg3d", "dropout", "batchnorm",
        "contrastive", "route", "upsample", "implicit")},
}

KNOWN_SECTIONS = tuple(sorted(SECTION_ALIASES))

_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")
_LINES = re.compile(r"[^\n]*\n|[^\n]+")


@dataclass
class Option:
    """One ``key=value`` line; ``line`` is the 0-based index into CfgFile.lines."""

    key: str
    value: str
    line: int


@dataclass
class Section:
    """One ``[name]`` block: header line ``start`` up to (not including) ``end``.

    The block owns the comment and blank lines that follow its options, so
    moving or deleting a section moves or deletes them with it.
    """

    name: str
    type: str
    start: int
    end: int
    options: list[Option] = field(default_factory=list)

    def params(self) -> dict[str, Any]:
        """Typed option values, first occurrence of a key winning (as in darknet)."""
        out: dict[str, Any] = {}
        for opt in self.options:
            out.setdefault(opt.key, parse_value(opt.value))
        return out

    def option_line(self, key: str) -> int | None:
        for opt in self.options:
            if opt.key == key:
                return opt.line
        return None


@dataclass
class CfgFile:
    """A parsed cfg: the raw lines (each with its own line ending) and the sections."""

    path: str | None
    lines: list[str]
    sections: list[Section]
    preamble_end: int  # lines before the first section (comments, blank lines)


def parse_value(text: str) -> Any:
    """Type an option value: int, float, list of numbers, else the string.

    ``"16"`` -> 16, ``".5"`` -> 0.5, ``"-1,61"`` -> [-1, 61], ``"leaky"`` -> "leaky".
    A single number stays a scalar, so ``layers=-1`` gives -1, not [-1].
    """
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    if "," in text:
        parts = text.split(",")
        if all(_INT.match(p) or _FLOAT.match(p) for p in parts):
            return [int(p) if _INT.match(p) else float(p) for p in parts]
    return text


def format_value(value: Any) -> str:
    """Inverse of :func:`parse_value` for values a user or a pruner sets."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    if "int" in type(value).__name__:
        return str(int(value))
    if _is_float(value):
        return repr(float(value))
    return str(value)


def decode(data: bytes) -> str:
    """Bytes -> text that encodes back to the same bytes, whatever the encoding."""
    return data.decode("utf-8", errors="surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def read_cfg(path, *, what: str = "cfg file", sections=None, head: str = "net") -> CfgFile:
    """Read and parse a cfg file; raises ModelError naming file and line on bad input.

    ``what`` names the file in messages; ``sections`` and ``head`` are as in
    :func:`parse_cfg`.
    """
    return parse_cfg(decode(read_bytes(path, what)), path, sections=sections, head=head)


def parse_cfg(text: str, path=None, *, sections=None, head: str = "net") -> CfgFile:
    """Parse cfg text (see module docstring for the rules).

    Args:
        sections: the section spellings this kind of file accepts -> canonical
            name (default :data:`SECTION_ALIASES`, a model cfg). The vai_p_darknet
            ``[pruning]`` file is read with ``{"pruning": "pruning"}``.
        head: the canonical name of the section that must come first, once.
    """
    file = str(path) if path is not None else None
    aliases = SECTION_ALIASES if sections is None else sections
    heads = [k for k, v in aliases.items() if v == head]
    lines = _LINES.findall(text)
    found: list[Section] = []
    for i, raw in enumerate(lines):
        s = "".join(raw.split())
        if not s or s[0] in "#;":
            continue
        if s[0] == "[":
            if not s.endswith("]"):
                raise ModelError(f"section header {s!r} is not closed with ']'", file=file,
                                 line=i + 1)
            name = s[1:-1]
            canonical = aliases.get(name)
            if canonical is None:
                raise ModelError(f"unknown section {s} (known sections: "
                                 f"{', '.join('[' + k + ']' for k in sorted(aliases))})",
                                 file=file, line=i + 1)
            if canonical == head and found:
                raise ModelError(f"a second {s} section: {s} may only be the first section (the "
                                 f"first was [{found[0].name}] on line {found[0].start + 1})",
                                 file=file, line=i + 1)
            if canonical != head and not found:
                raise ModelError(f"the first section must be "
                                 f"{' or '.join('[' + k + ']' for k in heads)}, not {s}",
                                 file=file, line=i + 1)
            if found:
                found[-1].end = i
            found.append(Section(name, canonical, i, len(lines)))
            continue
        if "=" not in s:
            raise ModelError(f"option line '{s}' has no '=' (expected key=value, got "
                             f"{raw.strip()!r})", file=file, line=i + 1)
        key, value = s.split("=", 1)
        if not found:
            where = f"the [{heads[0]}] section header" if set(aliases.values()) == {head} \
                else "any [section]"
            raise ModelError(f"'{key}' comes before {where}", file=file, line=i + 1)
        if not key:
            raise ModelError(f"option line '{s}' has an empty name", file=file, line=i + 1)
        found[-1].options.append(Option(key, value, i))
    if not found:
        raise ModelError(f"no [{heads[0]}] section: the file has no sections (it should start "
                         f"with [{heads[0]}])", file=file)
    return CfgFile(file, lines, found, found[0].start)


def written_value(cfg: CfgFile, option: Option) -> str:
    """The value as written on its line: inner spaces kept, a `` #`` or `` ;`` comment dropped.

    Darknet itself removes every space and keeps a trailing comment as part of
    the value; vai_p_darknet's ``[pruning]`` files put comments after values
    (``rate=0.5   # half the ops``) and may name paths with spaces.
    """
    value = cfg.lines[option.line].split("=", 1)[1].strip()
    m = re.search(r"\s[#;]", value)
    return value[:m.start()].rstrip() if m else value


def line_ending(line: str) -> str:
    return "\r\n" if line.endswith("\r\n") else "\n"


def rewrite_option_line(line: str, value_text: str) -> str:
    """Replace the value of ``key = value`` in ``line``, keeping spacing and line ending."""
    eq = line.index("=")
    head = line[: eq + 1]
    rest = line[eq + 1:]
    lead = rest[: len(rest) - len(rest.lstrip())]
    body = rest.rstrip()
    tail = rest[len(body):] if body else rest[len(lead):]
    return head + lead + value_text + tail


def render_section(cfg: CfgFile, section: Section, old: dict[str, Any],
                   new: dict[str, Any]) -> list[str]:
    """The section's original lines with only the options that differ rewritten.

    A changed key rewrites its first line (the one darknet reads), a removed key
    drops every line of that key (so a later duplicate cannot take over), and an
    added key goes after the last option line, before trailing comments.
    """
    lines = list(cfg.lines[section.start:section.end])
    nl = line_ending(lines[0])
    drop: set[int] = set()
    for key, value in new.items():
        if key in old and _same(old[key], value):
            continue
        idx = section.option_line(key)
        if idx is not None:
            lines[idx - section.start] = rewrite_option_line(cfg.lines[idx], format_value(value))
    for opt in section.options:
        if opt.key not in new:
            drop.add(opt.line - section.start)
    added = [f"{k}={format_value(v)}{nl}" for k, v in new.items() if k not in old]
    last = max([o.line - section.start for o in section.options], default=0)
    if added and not lines[last].endswith("\n"):
        lines[last] += nl
    out = []
    for j, line in enumerate(lines):
        if j not in drop:
            out.append(line)
        if j == last:
            out.extend(added)
    return out


def new_section(type_: str, params: dict[str, Any], nl: str = "\n") -> list[str]:
    """Text of a section that has no original lines (a layer a user added)."""
    return [f"[{type_}]{nl}"] + [f"{k}={format_value(v)}{nl}" for k, v in params.items()] + [nl]


def _same(a: Any, b: Any) -> bool:
    """Typed equality: 1 and 1.0 differ (the text would change), numpy scalars match."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
                and len(a) == len(b) and all(map(_same, a, b)))
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return a == b and _is_float(a) == _is_float(b)


def _is_float(x: Any) -> bool:
    return isinstance(x, float) or "float" in type(x).__name__
