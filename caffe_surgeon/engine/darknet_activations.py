"""Darknet's activation functions, by the name a cfg gives them.

Formulas follow ``src/activations.h`` / ``activations.c`` of pjreddie darknet
(2018, the Debian package) and, for the names only AlexeyAB knows (mish, swish,
hard_mish, relu6, gelu, normalize_channels*), AlexeyAB darknet. The two forks
agree wherever both define a name; they differ only in whether a constant is a
float or a double (``.1*x`` vs ``.1f*x``), which moves results by at most one
float32 ulp. Values are computed in float32 except where the C code goes
through ``exp``/``log`` of doubles, where float64 keeps the error below one
float32 ulp.

Darknet itself replaces an unknown activation by ReLU with only a warning on
stderr; a pruned or hand-edited cfg with a typo would then run and give wrong
numbers. :func:`activation` raises a ModelError instead.

Two AlexeyAB quirks are deliberately *not* copied: its CPU ``activate()``
switch has no RELU6 case (returns 0; the GPU path clamps to [0, 6]) and
``[sam]``/``[scale_channels]`` pass mish/swish to that same switch. The
``relu6_activate`` formula of ``activations.h`` is used everywhere instead.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import ModelError
from ..layers.registry import spec_for
from .kernels.logistic import logistic

F32 = np.float32

#: mish's softplus switches to the identity / exp beyond this (AlexeyAB MISH_THRESHOLD).
MISH_THRESHOLD = 20.0
#: the ``sum = eps`` start of AlexeyAB's normalize_channels* activations.
NORM_CHAN_EPS = F32(0.0001)


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=F32)


def _logistic(x):
    # 1/(1+exp(-x)) without overflow warnings: the tanh form is the same function, here
    # float32(0.5 * tanh(0.5 * float64(x)) + 0.5) computed in cache-sized blocks
    return logistic(x)


def _softplus(x64, threshold):
    """AlexeyAB ``softplus_activate``: x above threshold, exp(x) below -threshold."""
    e = np.exp(np.clip(x64, -700.0, threshold))
    return np.where(x64 > threshold, x64, np.where(x64 < -threshold, e, np.log1p(e)))


def _stair(x):
    n = np.floor(x)
    half = np.floor(x / F32(2))
    return _f32(np.where(np.fmod(n, 2) == 0, half, (x - n) + half))


def _plse(x):
    return _f32(np.where(x < -4, F32(.01) * (x + 4),
                         np.where(x > 4, F32(.01) * (x - 4) + 1, F32(.125) * x + F32(.5))))


def _lhtan(x):
    return _f32(np.where(x < 0, F32(.001) * x, np.where(x > 1, F32(.001) * (x - 1) + 1, x)))


def _elu(x):
    x64 = x.astype(np.float64)
    return _f32(np.where(x64 >= 0, x64, np.expm1(np.minimum(x64, 0))))


def _selu(x):
    x64 = x.astype(np.float64)
    return _f32(np.where(x64 >= 0, 1.0507 * x64, 1.0507 * 1.6732 * np.expm1(np.minimum(x64, 0))))


def _gelu(x):
    x64 = x.astype(np.float64)
    return _f32(0.5 * x64 * (1 + np.tanh(0.797885 * x64 + 0.035677 * x64 ** 3)))


def _mish(x):
    x64 = x.astype(np.float64)
    return _f32(x64 * np.tanh(_softplus(x64, MISH_THRESHOLD)))


def _hard_mish(x):
    return _f32(np.where(x > 0, x, np.where(x > -2, x * x / F32(2) + x, F32(0))))


def _swish(x):
    return _f32(x * _logistic(x))


def _norm_channels(x):
    """Per pixel: positive values divided by (1e-4 + their sum over channels), others 0."""
    pos = np.maximum(x, 0)
    total = NORM_CHAN_EPS + pos.sum(axis=1, keepdims=True, dtype=np.float64)
    return _f32(np.where(x > 0, pos / total, 0))


def _norm_channels_softmax(x, use_max):
    x64 = x.astype(np.float64)
    shift = x64.max(axis=1, keepdims=True) if use_max else 0.0
    e = np.exp(x64 - shift)
    return _f32(e / (float(NORM_CHAN_EPS) + e.sum(axis=1, keepdims=True)))


#: name -> function of a float32 array (N, C, H, W) returning a float32 array.
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "logistic": _logistic,
    "loggy": lambda x: _f32(2 * _logistic(x).astype(np.float64) - 1),
    "relu": lambda x: np.maximum(x, F32(0)),
    "relu6": lambda x: np.clip(x, F32(0), F32(6)),
    "elu": _elu,
    "selu": _selu,
    "gelu": _gelu,
    "relie": lambda x: np.where(x > 0, x, F32(.01) * x),
    "ramp": lambda x: _f32(x * (x > 0) + F32(.1) * x),
    "leaky": lambda x: np.where(x > 0, x, F32(.1) * x),
    "revleaky": lambda x: np.where(x > 0, x, F32(.1) * x),  # forward = leaky (AlexeyAB)
    "tanh": lambda x: _f32(np.tanh(x.astype(np.float64))),
    "plse": _plse,
    "stair": _stair,
    "hardtan": lambda x: np.clip(x, F32(-1), F32(1)),
    "lhtan": _lhtan,
    "swish": _swish,
    "mish": _mish,
    "hard_mish": _hard_mish,
    "normalize_channels": _norm_channels,
    "normalize_channels_softmax": lambda x: _norm_channels_softmax(x, False),
    "normalize_channels_softmax_maxval": lambda x: _norm_channels_softmax(x, True),
}

def activation_name(layer) -> str:
    """The layer's ``activation=`` or its section's default (``LayerSpec.default_activation``)."""
    if "activation" in layer.params:
        return str(layer.params["activation"])
    return spec_for("darknet", layer).default_activation


def activation(layer) -> Callable[[np.ndarray], np.ndarray]:
    """The activation function of ``layer`` (its ``activation=`` or the section default).

    Raises:
        ModelError for a name neither darknet knows (darknet would silently use ReLU).
    """
    name = activation_name(layer)
    fn = ACTIVATIONS.get(name)
    if fn is None:
        raise ModelError(f"unknown activation '{name}' (darknet would silently use relu; "
                         f"known: {', '.join(sorted(ACTIVATIONS))})")
    return fn


def apply(layer, x: np.ndarray) -> np.ndarray:
    """``x`` after the layer's activation (may be ``x`` itself, possibly modified in place)."""
    fn = activation(layer)
    return _f32(fn(x))
