"""The forward-function registry: one function per (framework, layer type).

Kept beside, not inside, the layer specs so that reading and ``stat`` never
import the numerical code (and with it Numba). A forward function has the
signature ``fn(layer, inputs, ctx) -> list[np.ndarray]`` and must not modify
``inputs`` unless ``ctx.donated(i)`` says input ``i`` is dead after this layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import ModelError

OPS: dict[tuple[str, str], Callable] = {}


def op(framework: str, *types: str):
    """Decorator registering a forward function for the given layer types."""
    def register(fn):
        for t in types:
            if (framework, t) in OPS:
                raise RuntimeError(f"forward for {framework} {t} registered twice")
            OPS[(framework, t)] = fn
        return fn
    return register


def _load():
    from . import caffe_ops, darknet_ops, ssd_ops  # noqa: F401  (they register themselves)


def op_for(framework: str, layer, file=None) -> Callable:
    _load()
    fn = OPS.get((framework, layer.type))
    if fn is None:
        known = sorted(t for f, t in OPS if f == framework)
        raise ModelError(f"no forward implementation for {framework} layer type '{layer.type}' "
                         f"(runnable types: {', '.join(known)})", file=file, layer=layer.name)
    return fn


@dataclass
class RunContext:
    """What a forward function may need beyond its inputs.

    Attributes:
        darknet_bn: "pjreddie" ((x-mean)/(sqrt(var)+1e-6)) or "alexeyab"
            ((x-mean)/sqrt(var+1e-5)).
        cache: per-layer prepared constants (e.g. folded BatchNorm), keyed by layer name.
        donate: for the running layer, whether each input may be overwritten (or a function
            returning that list, called on the first ``donated`` query).
        epilogue: for the running layer, per-channel stages of the layers fused into it
            (an ``kernels.epilogue.Epilogue``) that it must apply to its output, or None.
            Set by the executor only for layers with the ``fusion_head`` role.
    """

    darknet_bn: str = "pjreddie"
    darknet_flavour: str | None = None  # shortcut semantics; defaults to the BN flavour's fork
    cache: dict = field(default_factory=dict)
    donate: list = field(default_factory=list)
    graph: object = None
    epilogue: object = None

    def donated(self, i: int) -> bool:
        if callable(self.donate):  # the executor's, worked out on first use
            self.donate = self.donate()
        return i < len(self.donate) and self.donate[i]
