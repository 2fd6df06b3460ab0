"""The torch backend's table: one training-capable forward per (framework, layer type).

The trainer's counterpart of the NumPy engine's ``engine/ops.py``: every layer type with a
spec (``layers.registry.REGISTRY``) has here either a forward (:data:`TORCH_OPS`, filled by
:func:`op`) or a stated refusal (:data:`REFUSED`, filled by :func:`refuse`), never both;
``tests/test_backend_coverage.py`` holds every backend to that.

A forward has the signature ``fn(layer, inputs, ctx) -> list[torch.Tensor]``: ``inputs`` are
tensors it must not modify (autograd needs them), ``ctx`` a :class:`TorchContext`. What a
backend may know beyond the forward is declared at registration, not found by type name:

* ``statistics``: the stored arrays that are running statistics, not learned (BatchNorm's
  mean / variance / factor): the module keeps them as buffers, which the forward updates in
  train mode, and never hands them to a solver.
* ``check``: ``fn(layer) -> str``, why this layer's *settings* cannot be trained ("" when they
  can); asked before anything runs, so a STOCHASTIC pooling fails by name at build time.
* ``fuse``: ``fn(layer, next_layer, arrays, next_arrays) -> forward | None``: a forward
  computing this layer and the next one together (BatchNorm then its Scale: one
  ``batch_norm`` kernel, forward and backward), or None where the pair does not fuse. The
  module asks only for an in-place pair (``next_layer`` reads and rewrites this layer's one
  top, no loss weight on either), so no blob anyone could read disappears; ``arrays`` are the
  two layers' stored array names. The fused forward is ``fn(layer, next_layer, inputs, ctx,
  next_arrays) -> [top]``, ``ctx.arrays`` holding this layer's arrays.
* ``darknet``: how pjreddie Darknet trains the section (a ``torch_darknet_train.DarknetRule``:
  its backward is the autograd of this forward, or it is a loss head); None where Darknet
  training refuses it.

Importing this module imports torch: only ``caffe_surgeon.training`` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import ModelError
from ..layers.backend_table import BackendTable

try:  # every forward module needs torch: say so once, with the install line
    import torch  # noqa: F401
except ImportError:
    raise ModuleNotFoundError("the trainer (finetune) needs PyTorch, which is not installed: "
                              "pip install 'caffe-surgeon[finetune]'", name="torch") from None


@dataclass(frozen=True)
class TorchOp:
    """One table entry: the forward and what the module must know to hold the layer's arrays."""

    forward: Callable
    statistics: frozenset = frozenset()
    check: Callable | None = None
    fuse: Callable | None = None
    darknet: object | None = None


def _load():
    # the forward modules register themselves on import
    from . import (torch_caffe_ops, torch_caffe_resize, torch_caffe_structure,  # noqa: F401
                   torch_darknet, torch_darknet_structure, torch_losses, torch_postprocess)
    from . import torch_multibox  # noqa: F401


_TABLE = BackendTable("torch", _load)
TORCH_OPS: dict[tuple[str, str], TorchOp] = _TABLE.entries
#: (framework, type) -> why the trainer cannot run a type that has a spec (one line).
REFUSED: dict[tuple[str, str], str] = _TABLE.refusals
#: framework -> why its graphs run in eval mode only (one line): every type may have a
#: forward and the framework still train by rules the forwards do not hold (Darknet).
TRAINING_REFUSED: dict[str, str] = {}


def op(framework: str, *types: str, statistics=(), check: Callable | None = None,
       fuse: Callable | None = None, darknet=None):
    """Decorator registering a torch forward for the given layer types.

    Args:
        framework: "caffe" or "darknet".
        types: the layer types this forward runs.
        statistics: names of stored arrays that are running statistics (buffers, not learned).
        check: ``fn(layer) -> str``: why these settings cannot be trained ("" if they can).
        fuse: ``fn(layer, next_layer, arrays, next_arrays) -> forward | None`` (module doc).
        darknet: how Darknet trains these sections (module doc); None: it is refused.
    """
    if darknet is not None and framework != "darknet":
        raise RuntimeError(f"a Darknet training rule for {framework} {types}")

    def register(fn):
        _TABLE.add(framework, types, TorchOp(fn, frozenset(statistics), check, fuse, darknet))
        return fn
    return register


def refuse(framework: str, *types: str, reason: str) -> None:
    """State that the trainer has no forward for ``types``, and why (one line, no final stop)."""
    _TABLE.refuse(framework, types, reason)


def refuse_training(framework: str, *, reason: str) -> None:
    """State that graphs of ``framework`` run in eval mode only, and why (one line)."""
    if not reason or "\n" in reason:
        raise RuntimeError(f"torch training refusal of {framework} needs a one-line reason")
    if framework in TRAINING_REFUSED:
        raise RuntimeError(f"{framework} training refused twice in the torch backend")
    TRAINING_REFUSED[framework] = reason


def training_refusal(framework: str) -> str:
    """Why graphs of ``framework`` cannot be trained ("" when they can)."""
    _load()
    return TRAINING_REFUSED.get(framework, "")


def tables() -> tuple[dict, dict]:
    """(:data:`TORCH_OPS`, :data:`REFUSED`) with every forward module loaded (the backend
    protocol of ``tests/test_backend_coverage.py``)."""
    return _TABLE.tables()


def op_for(framework: str, layer, file=None) -> TorchOp:
    """The table entry that trains ``layer``, or a one-line ModelError naming the layer, its
    type and why it cannot be trained."""
    entry, why = _TABLE.lookup(framework, layer.type)
    name = f"[{layer.type}]" if framework == "darknet" else layer.type
    if why is not None:
        raise ModelError(f"{name} cannot be trained: {why}", file=file, layer=layer.name)
    if entry is None:
        raise ModelError(f"no torch implementation for {framework} layer type '{layer.type}' "
                         f"(trainable types: {', '.join(_TABLE.known(framework))})", file=file,
                         layer=layer.name)
    if entry.check is not None:
        why = entry.check(layer)
        if why:
            raise ModelError(f"{name} cannot be trained: {why}", file=file, layer=layer.name)
    return entry


@dataclass
class TorchContext:
    """What a torch forward may need beyond its inputs.

    Attributes:
        training: Caffe's TRAIN phase (batch statistics, dropout) rather than TEST.
        arrays: the running layer's stored arrays by blob name (parameters and buffers).
        feeds: tensors fed by blob name (data layers' tops).
        cache: per-layer constants that depend only on shapes and parameters (index maps,
            prior boxes), keyed by a tuple that starts with the layer name.
        darknet_bn: Darknet BatchNorm flavour (see ``engine.ops.RunContext``).
    """

    training: bool = False
    arrays: dict = field(default_factory=dict)
    feeds: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    darknet_bn: str = "pjreddie"
