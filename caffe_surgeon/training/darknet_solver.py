"""Darknet's ``[net]`` training settings and its SGD update, as pjreddie Darknet (2018) has them.

Sources (pjreddie/darknet at 61c9d02e, the Debian package's commit): ``parse_net_options``
(``parser.c``) reads the settings; ``get_current_rate`` (``network.c``) the learning-rate
schedule; ``update_convolutional_layer`` (``convolutional_layer.c``) the update. Darknet
keeps one "updates" array per learned array that is both the accumulated step and the
momentum buffer; here it is :class:`DarknetSGD`'s state, and the arithmetic is done in
float32 in the same order so that weights agree with ``libdarknet.so`` after many steps.

Quirks kept on purpose, because they are what Darknet does:

* ``batch`` in the update is ``batch`` as written in the cfg (the images of one update),
  while each forward sees ``batch / subdivisions`` images; the rate is divided by it and the
  decay multiplied by it.
* the ``sigmoid`` policy computes ``batch_num - step`` in unsigned ``size_t``: before ``step``
  the difference wraps to about 1.8e19, ``exp`` overflows and the rate is exactly 0.
* burn-in is ``learning_rate * (batch_num / burn_in) ** power`` with the ratio in float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ModelError
from ..graph import Graph

POLICIES = ("constant", "step", "steps", "exp", "poly", "sigmoid")
#: [net] options this trainer does not implement: option -> (its harmless value, why)
REFUSED_NET = {
    "adam": (0, "adam=1 is not supported (this Darknet's CPU update ignores it; a silent "
                "SGD would surprise)"),
    "time_steps": (1, "time_steps (recurrent training) is not supported"),
    "notruth": (0, "notruth=1 (truth-free training) is not supported"),
}
_F32 = np.float32
_SIZE_T = 1 << 64


@dataclass(frozen=True)
class NetSettings:
    """The ``[net]`` options that drive training, with Darknet's defaults.

    Attributes:
        batch: images per weight update (the cfg's ``batch``).
        subdivisions: forwards per update; each forward sees ``minibatch`` images.
        learning_rate, momentum, decay: SGD settings (decay is multiplied by ``batch``).
        policy: one of :data:`POLICIES`.
        burn_in, power: warm-up length in updates and its exponent (also ``poly``'s).
        step, scale: ``step`` policy (and ``sigmoid``'s midpoint).
        steps, scales: ``steps`` policy.
        gamma: ``exp`` and ``sigmoid`` policies.
        max_batches: ``poly`` horizon and the training length.
    """

    batch: int = 1
    subdivisions: int = 1
    learning_rate: float = .001
    momentum: float = .9
    decay: float = .0001
    policy: str = "constant"
    burn_in: int = 0
    power: float = 4.0
    step: int = 1
    scale: float = 1.0
    steps: tuple = ()
    scales: tuple = ()
    gamma: float = 1.0
    max_batches: int = 0

    @property
    def minibatch(self) -> int:
        """Images per forward: Darknet's ``net->batch`` after ``batch /= subdivisions``."""
        return self.batch // self.subdivisions


def _num(meta, key, default, kind, file):
    v = meta.get(key, default)
    if isinstance(v, (list, tuple)):
        v = v[0] if v else default
    try:
        return kind(float(v)) if kind is int else float(v)
    except (TypeError, ValueError):
        raise ModelError(f"[net] {key}={v!r} is not a number", file=file) from None


def _list(meta, key, kind, file) -> tuple:
    v = meta.get(key)
    items = v if isinstance(v, (list, tuple)) else str(v).split(",")
    try:
        return tuple(kind(float(x)) if kind is int else float(x) for x in items)
    except (TypeError, ValueError):
        raise ModelError(f"[net] {key}={v!r} is not a list of numbers", file=file) from None


def net_settings(graph: Graph) -> NetSettings:
    """The training settings of ``graph``'s ``[net]`` section (``parse_net_options``).

    Raises:
        ModelError: an option this trainer refuses (:data:`REFUSED_NET`), an unknown policy,
            ``batch`` not a multiple of ``subdivisions``, or ``steps``/``scales`` that differ
            in length.
    """
    meta, file = graph.meta, graph.source_text
    for key, (harmless, why) in REFUSED_NET.items():
        if key in meta and _num(meta, key, harmless, float, file) != harmless:
            raise ModelError(f"[net] {key}={meta[key]} cannot be trained: {why}", file=file)
    policy = str(meta.get("policy", "constant")).strip()
    if policy not in POLICIES:
        why = ("it draws from rand() and cannot be reproduced" if policy == "random" else
               "Darknet would warn and silently train with constant")
        raise ModelError(f"[net] policy={policy} is not supported: {why} (supported: "
                         f"{', '.join(POLICIES)})", file=file)
    batch, subdivisions = _num(meta, "batch", 1, int, file), _num(meta, "subdivisions", 1, int, file)
    if subdivisions < 1 or batch < subdivisions or batch % subdivisions:
        raise ModelError(f"[net] batch={batch} is not a positive multiple of "
                         f"subdivisions={subdivisions} (Darknet would drop "
                         f"{batch % max(subdivisions, 1)} image(s) of every update)", file=file)
    extra = {}
    if policy == "steps":
        if "steps" not in meta or "scales" not in meta:
            raise ModelError("[net] policy=steps needs both steps= and scales=", file=file)
        steps, scales = _list(meta, "steps", int, file), _list(meta, "scales", float, file)
        if len(steps) != len(scales):
            raise ModelError(f"[net] steps= has {len(steps)} values and scales= has "
                             f"{len(scales)} (Darknet reads past the shorter list)", file=file)
        extra = dict(steps=steps, scales=scales)
    return NetSettings(
        batch=batch, subdivisions=subdivisions,
        learning_rate=_num(meta, "learning_rate", .001, float, file),
        momentum=_num(meta, "momentum", .9, float, file),
        decay=_num(meta, "decay", .0001, float, file),
        policy=policy, burn_in=_num(meta, "burn_in", 0, int, file),
        power=_num(meta, "power", 4, float, file),
        step=_num(meta, "step", 1, int, file), scale=_num(meta, "scale", 1, float, file),
        gamma=_num(meta, "gamma", 1, float, file),
        max_batches=_num(meta, "max_batches", 0, int, file), **extra)


def current_rate(s: NetSettings, batch_num: int) -> float:
    """``get_current_rate``: the learning rate at update number ``batch_num``
    (``seen / batch``), in the float32 Darknet returns (a Python float holding it)."""
    lr = _F32(s.learning_rate)
    if batch_num < s.burn_in:
        ratio = _F32(batch_num) / _F32(s.burn_in)
        return float(_F32(float(lr) * math.pow(float(ratio), float(_F32(s.power)))))
    if s.policy == "constant":
        return float(lr)
    if s.policy == "step":
        return float(_F32(float(lr) * math.pow(float(_F32(s.scale)), batch_num // s.step)))
    if s.policy == "steps":
        rate = lr
        for step, scale in zip(s.steps, s.scales):
            if step > batch_num:
                return float(rate)
            rate = _F32(rate * _F32(scale))
        return float(rate)
    if s.policy == "exp":
        return float(_F32(float(lr) * _pow(float(_F32(s.gamma)), batch_num)))
    if s.policy == "poly":
        base = _F32(1) - _F32(batch_num) / _F32(s.max_batches)
        return float(_F32(float(lr) * _pow(float(base), float(_F32(s.power)))))
    # sigmoid: gamma * (size_t)(batch_num - step), a float32 product
    arg = _F32(s.gamma) * _F32((batch_num - s.step) % _SIZE_T)
    return float(_F32(float(lr) * (1. / (1. + _exp(float(arg))))))


def _pow(base: float, exponent: float) -> float:
    try:
        return math.pow(base, exponent)
    except (OverflowError, ValueError):
        return float(np.power(np.float64(base), np.float64(exponent)))  # inf / nan as C gives


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


class DarknetSGD:
    """Darknet's update of one network's learned arrays (``update_convolutional_layer``).

    Each learned array has an "updates" buffer: backward *adds* ``-gradient`` to it (Darknet's
    ``weight_updates += delta x input``), and at every update

    * biases and scales (no decay): ``x += rate/batch * u``; ``u *= momentum``
    * weights: ``u += -decay*batch * w``; ``w += rate/batch * u``; ``u *= momentum``

    with ``rate`` the schedule's times the layer's ``learning_rate=`` scale. All in float32.

    Args:
        settings: the [net] settings.
        params: name -> (tensor, decays, rate scale); tensors are updated in place.
    """

    def __init__(self, settings: NetSettings, params: dict):
        import torch
        self.settings = settings
        self.params = params
        self.updates = {k: torch.zeros_like(p) for k, (p, _, _) in params.items()}

    def accumulate(self) -> None:
        """Move every gradient into its updates buffer (``u -= grad``) and clear it."""
        for k, (p, _, _) in self.params.items():
            if p.grad is not None:
                self.updates[k].sub_(p.grad)
                p.grad = None

    def apply(self, rate: float) -> None:
        """One ``update_network`` at learning rate ``rate``."""
        import torch
        s = self.settings
        momentum = float(_F32(s.momentum))
        neg_decay = float(_F32(-_F32(s.decay) * _F32(s.batch)))  # -decay*batch, a float argument
        with torch.no_grad():
            for k, (p, decays, scale) in self.params.items():
                u = self.updates[k]
                step = float(_F32(_F32(_F32(rate) * _F32(scale)) / _F32(s.batch)))
                if decays:
                    u.add_(p, alpha=neg_decay)
                p.add_(u, alpha=step)
                u.mul_(momentum)
