"""Darknet option values read as darknet reads them (``atoi``/``atof``, comma lists)."""
from __future__ import annotations

import re

from ...graph import Layer


_LEAD_NUM = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def opt_float(layer: Layer, key: str, default: float) -> float:
    """``atof`` of the option: lists give their first item, junk gives 0."""
    v = layer.params.get(key)
    if v is None:
        return default
    if isinstance(v, (list, tuple)):
        v = v[0] if v else 0
    if isinstance(v, str):
        m = _LEAD_NUM.match(v)
        return float(m.group(0)) if m else 0.0
    return float(v)


def opt_int(layer: Layer, key: str, default: int) -> int:
    """``atoi`` of the option (truncates ``2.9`` to 2, as darknet does)."""
    return default if layer.params.get(key) is None else int(opt_float(layer, key, default))


def opt_list(layer: Layer, key: str) -> list[int]:
    """Comma-separated integers (``mask``, ``layers``, ``from``); stops at ``#``."""
    v = layer.params.get(key)
    if v is None:
        return []
    if isinstance(v, str):
        return [int(float(m.group(0))) for m in
                (_LEAD_NUM.match(p) for p in v.split("#")[0].split(",")) if m]
    return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]


def cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero), as in darknet's size formulas."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q
