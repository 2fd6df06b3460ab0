"""The forward-function registry: one function per (framework, layer type).

Kept beside, not inside, the layer specs so that reading and ``stat`` never
import the numerical code (and with it Numba). A forward function has the
signature ``fn(layer, inputs, ctx) -> list[np.ndarray]`` and must not modify
``inputs`` unless ``ctx.donated(i)`` says input ``i`` is dead after this layer.

This is the NumPy engine's backend table. Every layer type with a spec
(``layers.registry.REGISTRY``) has here either a forward (:data:`OPS`, filled
by :func:`op`) or a stated refusal (:data:`REFUSED`, filled by :func:`refuse`),
never both; ``tests/test_backend_coverage.py`` holds every backend to that.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import ModelError
from ..layers.backend_table import BackendTable

def _load():
    # the forward modules register themselves on import
    from . import (caffe_activation_ops, caffe_norm_ops, caffe_ops, caffe_refused,  # noqa: F401
                   caffe_resize_ops, darknet_ops, ssd_ops)


_TABLE = BackendTable("", _load)
OPS: dict[tuple[str, str], Callable] = _TABLE.entries
#: (framework, type) -> why this engine has no forward for a type that has a spec (one line).
REFUSED: dict[tuple[str, str], str] = _TABLE.refusals


def op(framework: str, *types: str):
    """Decorator registering a forward function for the given layer types."""
    def register(fn):
        _TABLE.add(framework, types, fn)
        return fn
    return register


def refuse(framework: str, *types: str, reason: str) -> None:
    """State that this engine has no forward for ``types``, and why (one line, no final stop)."""
    _TABLE.refuse(framework, types, reason)


def tables() -> tuple[dict, dict]:
    """(:data:`OPS`, :data:`REFUSED`) with every forward module loaded (the backend protocol
    of ``tests/test_backend_coverage.py``)."""
    return _TABLE.tables()


def refused(framework: str) -> dict[str, str]:
    """Layer type -> reason, for the types of ``framework`` this engine refuses to run."""
    return _TABLE.refused(framework)


def op_for(framework: str, layer, file=None) -> Callable:
    fn, why = _TABLE.lookup(framework, layer.type)
    if why is not None:
        name = f"[{layer.type}]" if framework == "darknet" else f"{layer.type}"
        raise ModelError(f"{name} has no forward implementation: {why}", file=file,
                         layer=layer.name)
    if fn is None:
        raise ModelError(f"no forward implementation for {framework} layer type '{layer.type}' "
                         f"(runnable types: {', '.join(_TABLE.known(framework))})", file=file,
                         layer=layer.name)
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
