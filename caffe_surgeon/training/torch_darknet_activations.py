"""Darknet's activation functions on tensors, by the name a cfg gives them.

The torch twins of ``engine/darknet_activations.py`` (same names, same formulas, same
fork choices: AlexeyAB's mish threshold, ``normalize_channels*`` epsilon, the
``activations.h`` relu6 everywhere). Written with differentiable torch operations so
that the same table serves Darknet training when it lands; where the C code goes
through ``exp``/``log`` of doubles the engine computes in float64, and these compute in
float32, which stays far inside the 1e-5 relative that ``tests/test_torch_darknet.py``
asks of eval mode.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..engine import darknet_activations as engine_acts
from ..errors import ModelError


def _stair(x):
    n = torch.floor(x)
    half = torch.floor(x / 2)
    return torch.where(torch.fmod(n, 2) == 0, half, (x - n) + half)


def _plse(x):
    return torch.where(x < -4, .01 * (x + 4), torch.where(x > 4, .01 * (x - 4) + 1, .125 * x + .5))


def _lhtan(x):
    return torch.where(x < 0, .001 * x, torch.where(x > 1, .001 * (x - 1) + 1, x))


def _expm1_neg(x):
    return torch.expm1(torch.clamp(x, max=0.0))


def _mish(x):
    # AlexeyAB softplus_activate: x above the threshold, exp(x) below -threshold (log1p(exp)
    # of a tiny exp is exp to float32 precision, so torch's softplus matches it)
    return x * torch.tanh(F.softplus(x, threshold=engine_acts.MISH_THRESHOLD))


def _norm_channels(x):
    pos = torch.clamp(x, min=0.0)
    total = float(engine_acts.NORM_CHAN_EPS) + pos.sum(dim=1, keepdim=True)
    return torch.where(x > 0, pos / total, torch.zeros_like(x))


def _norm_channels_softmax(x, use_max):
    shifted = x - x.amax(dim=1, keepdim=True) if use_max else x
    e = torch.exp(shifted)
    return e / (float(engine_acts.NORM_CHAN_EPS) + e.sum(dim=1, keepdim=True))


def _leaky(x):
    return torch.where(x > 0, x, .1 * x)


#: name -> function of a float32 tensor (N, C, H, W); the names of the engine's table
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda x: x,
    "logistic": torch.sigmoid,
    "loggy": lambda x: 2 * torch.sigmoid(x) - 1,
    "relu": F.relu,
    "relu6": lambda x: torch.clamp(x, 0.0, 6.0),
    "elu": lambda x: torch.where(x >= 0, x, _expm1_neg(x)),
    "selu": lambda x: torch.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * _expm1_neg(x)),
    "gelu": lambda x: 0.5 * x * (1 + torch.tanh(0.797885 * x + 0.035677 * x * x * x)),
    "relie": lambda x: torch.where(x > 0, x, .01 * x),
    "ramp": lambda x: x * (x > 0) + .1 * x,
    "leaky": _leaky,
    "revleaky": _leaky,  # forward = leaky (AlexeyAB)
    "tanh": torch.tanh,
    "plse": _plse,
    "stair": _stair,
    "hardtan": lambda x: torch.clamp(x, -1.0, 1.0),
    "lhtan": _lhtan,
    "swish": lambda x: x * torch.sigmoid(x),
    "mish": _mish,
    "hard_mish": lambda x: torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x,
                                                             torch.zeros_like(x))),
    "normalize_channels": _norm_channels,
    "normalize_channels_softmax": lambda x: _norm_channels_softmax(x, False),
    "normalize_channels_softmax_maxval": lambda x: _norm_channels_softmax(x, True),
}


def unknown_activation(layer) -> str:
    """Why ``layer``'s activation cannot run ("" when it can): the engine's own one-line
    refusal of a name darknet would silently replace by relu (a ``check`` of the table)."""
    if engine_acts.activation_name(layer) in ACTIVATIONS:
        return ""
    try:
        engine_acts.activation(layer)
    except ModelError as e:  # the engine's refusal, its message verbatim
        return e.message
    return f"activation '{engine_acts.activation_name(layer)}' has no torch forward"


def apply(layer, x: torch.Tensor) -> torch.Tensor:
    """``x`` after the layer's activation (``activation=`` or the section's default)."""
    return ACTIVATIONS[engine_acts.activation_name(layer)](x)
