"""Caffe's weight fillers, for synthetic weights (``caffe-surgeon init``).

A filler given in the definition is honoured exactly as Caffe would run it
(including Caffe's own default type, ``constant``). When the definition gives
none, a named default keeps the network alive (He/Xavier scaling, small
non-zero biases) so that forward tests exercise every weight.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ModelError


def _fans(shape) -> tuple[float, float]:
    count = int(np.prod(shape)) if shape else 1
    fan_in = count / shape[0] if shape else 1.0
    fan_out = count / shape[1] if len(shape) > 1 else float(count)
    return fan_in, fan_out


def _norm(p: dict, shape) -> float:
    fan_in, fan_out = _fans(shape)
    mode = p.get("variance_norm", "FAN_IN")
    return {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2}[mode]


def bilinear(shape) -> np.ndarray:
    """Caffe's BilinearFiller: the same upsampling kernel in every (out, in) slot."""
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ModelError(f"bilinear filler needs a square 4-D blob, got {tuple(shape)}")
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    x = np.arange(k)
    w1 = 1 - np.abs(x / f - c)
    return np.broadcast_to(np.outer(w1, w1), shape).astype(np.float32).copy()


def fill(filler: dict | None, shape, rng: np.random.Generator, default: str) -> np.ndarray:
    """One blob filled per a FillerParameter dict, or per ``default`` when none is given."""
    shape = tuple(int(d) for d in shape)
    if filler is None:
        return _default(default, shape, rng)
    kind = filler.get("type", "constant")
    if kind == "constant":
        out = np.full(shape, float(filler.get("value", 0.0)))
    elif kind == "uniform":
        out = rng.uniform(float(filler.get("min", 0.0)), float(filler.get("max", 1.0)), shape)
    elif kind == "gaussian":
        out = rng.normal(float(filler.get("mean", 0.0)), float(filler.get("std", 1.0)), shape)
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _norm(filler, shape))
        out = rng.uniform(-scale, scale, shape)
    elif kind == "msra":
        out = rng.normal(0.0, math.sqrt(2.0 / _norm(filler, shape)), shape)
    elif kind == "bilinear":
        return bilinear(shape)
    elif kind == "positive_unitball":
        out = rng.uniform(0.0, 1.0, shape)
        rows = out.reshape(shape[0], -1)
        out = (rows / rows.sum(axis=1, keepdims=True)).reshape(shape)
    else:
        raise ModelError(f"unknown filler type '{kind}' (supported: constant, uniform, gaussian, "
                         "xavier, msra, bilinear, positive_unitball)")
    return np.asarray(out, dtype=np.float32)


def _default(kind: str, shape, rng) -> np.ndarray:
    if kind == "msra":
        out = rng.normal(0.0, math.sqrt(2.0 / _fans(shape)[0]), shape)
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _fans(shape)[0])
        out = rng.uniform(-scale, scale, shape)
    elif kind == "small":
        out = rng.normal(0.0, 0.1, shape)
    elif kind == "around_one":
        out = rng.uniform(0.5, 1.5, shape)
    elif kind == "prelu":
        out = np.full(shape, 0.25)
    else:
        raise ValueError(f"no default filler '{kind}'")
    return np.asarray(out, dtype=np.float32)
