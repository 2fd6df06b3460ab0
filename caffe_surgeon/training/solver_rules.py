"""Caffe's ``ComputeUpdateValue``, one function per solver type (BVLC ``src/caffe/solvers/``).

Each rule takes the regularized gradient ``g`` of one parameter (Caffe's ``diff`` after
``Normalize`` and ``Regularize``), its history tensors (updated in place), the solver
config, ``local_rate = rate * lr_mult`` and ``t = iter + 1``, and returns the value
that Caffe's ``Net::Update`` subtracts from the weights. Where Caffe and PyTorch differ,
these follow Caffe:

- SGD's history is ``momentum * h + local_rate * g``: the learning rate is inside the
  history, so a rate change does not rescale past momentum (PyTorch keeps ``g`` only and
  multiplies by the current rate).
- Nesterov steps back then over: ``(1 + momentum) * h_new - momentum * h_old``.
- AdaGrad and RMSProp add ``delta`` to the square root, not inside it.
- AdaDelta's ``momentum`` is the decay of both running averages, and ``delta`` sits inside
  both square roots; the base rate then multiplies the step (Zeiler uses none).
- Adam folds the bias correction into the rate,
  ``local_rate * sqrt(1 - momentum2^t) / (1 - momentum^t)``, and adds ``delta`` to the
  uncorrected ``sqrt(v)``.

The history layout follows Caffe's ``history_``: one tensor per parameter, then, for
AdaDelta and Adam, a second block of one per parameter (squared updates / ``v``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


def _sgd(g, h, cfg, local_rate, t):
    h[0].mul_(cfg.momentum).add_(g, alpha=local_rate)
    return h[0].clone()


def _nesterov(g, h, cfg, local_rate, t):
    previous = h[0].clone()
    h[0].mul_(cfg.momentum).add_(g, alpha=local_rate)
    return h[0] * (1.0 + cfg.momentum) - previous * cfg.momentum


def _adagrad(g, h, cfg, local_rate, t):
    h[0].add_(g * g)
    return g / (h[0].sqrt() + cfg.delta) * local_rate


def _rmsprop(g, h, cfg, local_rate, t):
    h[0].mul_(cfg.rms_decay).add_(g * g, alpha=1.0 - cfg.rms_decay)
    return g / (h[0].sqrt() + cfg.delta) * local_rate


def _adadelta(g, h, cfg, local_rate, t):
    grads_sq, updates_sq = h
    grads_sq.mul_(cfg.momentum).add_(g * g, alpha=1.0 - cfg.momentum)
    step = g * ((updates_sq + cfg.delta) / (grads_sq + cfg.delta)).sqrt()
    updates_sq.mul_(cfg.momentum).add_(step * step, alpha=1.0 - cfg.momentum)
    return step * local_rate


def _adam(g, h, cfg, local_rate, t):
    m, v = h
    beta1, beta2 = cfg.momentum, cfg.momentum2
    m.mul_(beta1).add_(g, alpha=1.0 - beta1)
    v.mul_(beta2).add_(g * g, alpha=1.0 - beta2)
    correction = math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    return m / (v.sqrt() + cfg.delta) * (local_rate * correction)


@dataclass(frozen=True)
class UpdateRule:
    """How one solver type turns a gradient into an update."""

    histories: int      # history tensors per parameter (Caffe's history_ blocks)
    compute: Callable   # (g, [history tensors], config, local_rate, t) -> update


#: solver type (Caffe's registered name) -> its rule
UPDATE_RULES = {
    "SGD": UpdateRule(1, _sgd),
    "Nesterov": UpdateRule(1, _nesterov),
    "AdaGrad": UpdateRule(1, _adagrad),
    "RMSProp": UpdateRule(1, _rmsprop),
    "AdaDelta": UpdateRule(2, _adadelta),
    "Adam": UpdateRule(2, _adam),
}


def new_histories(rule: UpdateRule, weights: list) -> list:
    """Zeroed history tensors in Caffe's layout for ``weights`` (``PreSolve``)."""
    return [torch.zeros_like(w) for _ in range(rule.histories) for w in weights]


def histories_of(rule: UpdateRule, histories: list, index: int, count: int) -> list:
    """The history tensors of parameter ``index`` of ``count``: one per block."""
    return [histories[block * count + index] for block in range(rule.histories)]
