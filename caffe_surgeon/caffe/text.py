"""Prototxt text: parsing with the merged schema, block spans, message <-> dict.

The whole file is parsed by protobuf's text_format against proto/caffe.proto
(so every field name is checked, with line and column on error), and a small
tokenizer finds the span of every top-level field so that the writer can copy
untouched layers and comments verbatim.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf import text_format

from ..errors import ModelError
from . import caffe_pb2

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<open>[{<])
  | (?P<close>[}>])
  | (?P<punct>[:;,\[\]])
  | (?P<word>[^\s{}<>:;,\[\]"'\#]+)
""", re.X)


@dataclass
class TopField:
    """A top-level field of a text NetParameter: its name and [start, end) span."""

    name: str
    start: int
    end: int


def top_level_fields(text: str) -> list[TopField]:
    """Spans of the top-level fields, each from its name to the end of its value.

    Only called after text_format accepted the file, so the syntax is valid;
    the scan only needs to track nesting and skip strings and comments.
    """
    fields: list[TopField] = []
    depth = 0
    current: TopField | None = None
    expect_value = False
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind in ("ws", "comment"):
            continue
        if depth == 0:
            if kind == "word" and not expect_value and current is None:
                current = TopField(m.group(), m.start(), m.end())
                expect_value = True
                continue
            if kind == "punct" and m.group() == ":":
                continue
            if kind in ("punct",) and m.group() in ";,":
                if fields and fields[-1].end <= m.start():
                    fields[-1].end = m.end()
                continue
            if kind == "punct" and m.group() == "[":  # list value: name: [a, b]
                depth += 1
                continue
            if kind == "open":
                depth += 1
                continue
            if current is not None and kind in ("word", "string"):
                current.end = m.end()
                fields.append(current)
                current, expect_value = None, False
                continue
        else:
            if kind == "open" or (kind == "punct" and m.group() == "["):
                depth += 1
            elif kind == "close" or (kind == "punct" and m.group() == "]"):
                depth -= 1
                if depth == 0 and current is not None:
                    current.end = m.end()
                    fields.append(current)
                    current, expect_value = None, False
    return fields


def parse_message(text: str, message, file) -> None:
    """Parse ``text`` into ``message``; syntax errors and unknown fields become ModelErrors."""
    try:
        text_format.Parse(text, message, allow_unknown_extension=False)
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        msg = str(e)
        msg = re.sub(r"^\d+:\d+ : ", "", msg)
        msg = msg.replace('Message type "caffe.', 'message "caffe.')
        m = re.search(r'has no field named "([^"]+)"', msg)
        if m:
            msg = f"unknown field '{m.group(1)}' ({msg}); see proto/README.md for the fields each fork defines"
        if "surrogates not allowed" in msg:  # bytes read as not UTF-8, inside a quoted value
            msg = "a quoted value holds bytes that are not UTF-8 (only comments may)"
        raise ModelError(msg, file=file, line=line, column=col) from None


def parse_net(text: str, file) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter()
    parse_message(text, net, file)
    return net


# ------------------------------------------------------------------ dicts
def _repeated(fd) -> bool:
    flag = getattr(fd, "is_repeated", None)
    if flag is not None:
        return flag() if callable(flag) else bool(flag)
    return fd.label == fd.LABEL_REPEATED


def _is_message(fd) -> bool:
    return fd.type == fd.TYPE_MESSAGE


def _is_enum(fd) -> bool:
    return fd.type == fd.TYPE_ENUM


def message_to_dict(msg) -> dict:
    """Set fields of ``msg`` as a plain nested dict (enum values by name, repeated as lists)."""
    out = {}
    for fd, value in msg.ListFields():
        if _repeated(fd):
            out[fd.name] = [_scalar_to_py(fd, v) for v in value]
        else:
            out[fd.name] = _scalar_to_py(fd, value)
    return out


def _scalar_to_py(fd, value):
    if _is_message(fd):
        return message_to_dict(value)
    if _is_enum(fd):
        ev = fd.enum_type.values_by_number.get(value)
        return ev.name if ev is not None else int(value)
    return value


def dict_to_message(data: dict, msg):
    """Fill ``msg`` from a dict made by :func:`message_to_dict` (possibly edited)."""
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in data.items():
        fd = fields.get(key)
        if fd is None:
            raise ModelError(f"message {msg.DESCRIPTOR.full_name} has no field '{key}'")
        if _repeated(fd):
            target = getattr(msg, key)
            for item in value:
                if _is_message(fd):
                    dict_to_message(item, target.add())
                else:
                    target.append(_py_to_scalar(fd, item))
        elif _is_message(fd):
            sub = getattr(msg, key)
            sub.SetInParent()
            dict_to_message(value, sub)
        else:
            setattr(msg, key, _py_to_scalar(fd, value))
    return msg


def _py_to_scalar(fd, value):
    if _is_enum(fd) and isinstance(value, str):
        ev = fd.enum_type.values_by_name.get(value)
        if ev is None:
            raise ModelError(f"field '{fd.name}' has no value '{value}'")
        return ev.number
    return value


def render(field_name: str, msg, indent: str = "") -> str:
    """``field_name { ... }`` in Caffe's usual two-space style."""
    body = text_format.MessageToString(msg, indent=2, as_utf8=True)
    lines = [f"{indent}{field_name} {{"]
    lines += [f"{indent}{line}" for line in body.rstrip("\n").split("\n") if line]
    lines.append(f"{indent}}}")
    return "\n".join(lines)
