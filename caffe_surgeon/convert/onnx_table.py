"""The ONNX exporter's backend table: one export function per (framework, layer type), or a
stated refusal (``tests/test_backend_coverage.py`` holds it to every registered type).

An export function has the signature ``fn(b, layer) -> None``: it reads its bottoms' ONNX
values from the :class:`~.onnx_builder.OnnxBuilder` ``b`` and adds the nodes that compute
its tops, binding each top with ``b.write``. :data:`DROPPED` marks types that have no place
in a deployed graph (losses, metrics, sinks): the exporter leaves them out, with what only
they read.
"""
from __future__ import annotations

from ..errors import ModelError
from ..layers.backend_table import BackendTable


MODULES = ("onnx_caffe_ops", "onnx_darknet_ops", "onnx_heads")


def _load():
    # the export modules register themselves on import
    import importlib
    for name in MODULES:
        importlib.import_module(f"{__package__}.{name}")


_TABLE = BackendTable("onnx", _load)


def DROPPED(b, layer) -> None:
    """Losses, metrics and sinks: training or evaluation only, not part of the exported net."""


def export(framework: str, *types: str):
    """Decorator registering an export function for the given layer types."""
    def register(fn):
        _TABLE.add(framework, types, fn)
        return fn
    return register


def drop(framework: str, *types: str) -> None:
    """Register ``types`` as left out of exported graphs (see :data:`DROPPED`)."""
    _TABLE.add(framework, types, DROPPED)


def refuse(framework: str, *types: str, reason: str) -> None:
    """State that ONNX export has no mapping for ``types``, and why (one line)."""
    _TABLE.refuse(framework, types, reason)


def tables() -> tuple[dict, dict]:
    """(export functions, refusals): the backend protocol of tests/test_backend_coverage.py."""
    return _TABLE.tables()


def refused(framework: str) -> dict[str, str]:
    """Layer type -> reason, for the types of ``framework`` that cannot be exported."""
    return _TABLE.refused(framework)


def exporter_for(framework: str, layer, file=None):
    """The export function of ``layer``, or a one-line ModelError naming it and why not."""
    fn, why = _TABLE.lookup(framework, layer.type)
    if why is not None:
        raise ModelError(f"{layer.type} cannot be exported to ONNX: {why}", file=file,
                         layer=layer.name)
    if fn is None:
        raise ModelError(f"{framework} layer type '{layer.type}' has no ONNX mapping "
                         f"(exported types: {', '.join(_TABLE.known(framework))})", file=file,
                         layer=layer.name)
    return fn
