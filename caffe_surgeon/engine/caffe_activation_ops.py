"""Forwards of the fork activations GELU and HardSigmoid (the BVLC ones are in ``caffe_ops``).

* ``GELU`` (``gelu_layer.cpp`` of the Caffe forks that have it, e.g. caffe-pruning): the
  tanh approximation ``coeff * 0.5 * x * (1 + tanh(0.7978845608 * (x + 0.044715 x^3)))``
  with ``gelu_param.coeff`` (default 1), evaluated in double and stored as float, as the
  C++ does (its constants are double literals). Not the erf form.
* ``HardSigmoid``: ``max(0, min(1, alpha * x + beta))`` in float, ``alpha`` 0.2 and
  ``beta`` 0.5 unless ``hard_sigmoid_param`` (or a fork's ``hardsigmoid_param``) says
  otherwise.
"""
from __future__ import annotations

import numpy as np

from ..layers.caffe_geometry import sub
from .ops import op

F32 = np.float32
SQRT_2_OVER_PI = 0.7978845608  # the forks' literal


@op("caffe", "GELU")
def gelu(layer, inputs, ctx):
    coeff = float(F32(sub(layer, "gelu_param").get("coeff", 1.0)))  # a float field
    x = inputs[0].astype(np.float64)
    t = np.tanh(SQRT_2_OVER_PI * x + SQRT_2_OVER_PI * 0.044715 * x * x * x)
    return [(coeff * 0.5 * x * (1 + t)).astype(F32)]


@op("caffe", "HardSigmoid")
def hard_sigmoid(layer, inputs, ctx):
    p = sub(layer, "hard_sigmoid_param") or sub(layer, "hardsigmoid_param")
    alpha, beta = F32(p.get("alpha", 0.2)), F32(p.get("beta", 0.5))
    return [np.clip(alpha * inputs[0] + beta, F32(0), F32(1)).astype(F32, copy=False)]
