"""A Graph as a ``torch.nn.Module`` that trains with Caffe's semantics.

:class:`CaffeModule` runs the graph's layers in net order over a dict of blobs, through
the torch backend's table (:mod:`.torch_ops`); in-place tops simply rebind the name, so
``conv -> bn -> relu`` on one blob behaves as in Caffe. Every type is looked up when the
module is built, so a type (or a setting) that cannot be trained is a one-line
:class:`ModelError` naming the layer before anything runs.

Stored arrays become ``nn.Parameter`` s, except the running statistics a table entry
declares (BatchNorm's), which are buffers: the solver never sees them and train mode
updates them as Caffe does. :meth:`CaffeModule.caffe_params` lists the learnable ones in
Caffe's order with their ``param { lr_mult decay_mult }``; :meth:`CaffeModule.write_back`
returns the graph with the trained arrays, ready for ``caffe_surgeon.save``.

Example::

    g = cs.load("train_val.prototxt", "pruned.caffemodel", phase="TRAIN")
    m = CaffeModule(g).train()
    out = m({"data": images, "label": labels})
    out.loss.backward()          # sum of loss_weight x top over every top
    cs.save(m.write_back(g), "net.prototxt", "trained.caffemodel")
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from ..errors import ModelError
from ..graph import Graph
from ..layers.registry import spec_for
from .torch_ops import TorchContext, op_for, training_refusal  # first: without torch, its error

import torch  # noqa: E402,I001
from torch import nn  # noqa: E402


class CaffeParam(NamedTuple):
    """One learnable array, as Caffe's ``Net::learnable_params`` lists it."""

    layer: str
    blob_index: int
    blob_name: str
    param: nn.Parameter
    lr_mult: float
    decay_mult: float


class Forward(NamedTuple):
    """What one pass gives.

    Attributes:
        loss: the total weighted loss, sum over every top of ``loss_weight x sum(top)``
            (a 0-d tensor; 0 when no top carries a weight).
        blobs: every top by name, as the last layer writing that name left it.
        losses: layer name -> its weighted contribution to ``loss`` (only weighted layers).
    """

    loss: torch.Tensor
    blobs: dict
    losses: dict


class _Arrays(nn.Module):
    """One layer's stored arrays, registered under their blob names."""


def _loss_weights(layer, spec, file) -> list[float]:
    """Per top (or per output of a loss without a top), Caffe's ``Layer::SetLossWeights``:
    the prototxt's ``loss_weight`` list, once per top; a loss layer without one weighs its
    first top 1 (``LossLayer::LayerSetUp``), everything else 0."""
    n = max(1, len(layer.tops)) if spec.has_role("loss") else len(layer.tops)
    given = layer.params.get("loss_weight")
    if given is None or given == []:
        return ([1.0] if spec.has_role("loss") else [0.0]) + [0.0] * (n - 1) if n else []
    given = [float(w) for w in (given if isinstance(given, list) else [given])]
    if len(given) != n:
        raise ModelError(f"{len(given)} loss_weight value(s) for {n} top(s): Caffe needs none "
                         "or one per top", file=file, layer=layer.name)
    return given


class CaffeModule(nn.Module):
    """The graph as a module; ``forward(feeds) -> Forward``.

    Args:
        graph: a Caffe graph with weights (a pruned one trains as the dense net it is).
        darknet_bn: Darknet BatchNorm flavour, for when Darknet types train.

    Feeds are the network inputs and the data layers' tops, by blob name (arrays or
    tensors; labels as numbers). ``.train()`` is Caffe's TRAIN phase, ``.eval()`` TEST.
    A framework whose training the backend refuses (Darknet, today) starts in eval mode,
    and ``.train()`` raises a one-line ModelError saying why.
    """

    def __init__(self, graph: Graph, *, darknet_bn: str = "pjreddie"):
        super().__init__()
        file = graph.source_text
        self.framework, self.file = graph.framework, file
        self.layers = [dataclasses.replace(l, weights={}) for l in graph.layers]  # structure only
        self.inputs = list(graph.inputs)
        self.ops = [op_for(graph.framework, l, file) for l in graph.layers]
        self.weights = [_loss_weights(l, spec_for(graph.framework, l, file), file)
                        for l in graph.layers]
        self.arrays = nn.ModuleList()
        self._learnable: list[CaffeParam] = []
        shared: dict[str, tuple[nn.Parameter, str]] = {}
        for layer, entry in zip(graph.layers, self.ops):
            holder = _Arrays()
            specs = layer.params.get("param") or []
            specs = specs if isinstance(specs, list) else [specs]
            for i, (name, arr) in enumerate(layer.weights.items()):
                spec = specs[i] if i < len(specs) else {}
                value = torch.tensor(np.asarray(arr, np.float32))
                if name in entry.statistics:
                    if float(spec.get("lr_mult", 0.0)) != 0.0:
                        raise ModelError(f"param {i} ({name}) has lr_mult {spec['lr_mult']}: "
                                         f"{layer.type} statistics are not learnable (Caffe "
                                         "refuses them as layer parameters; use lr_mult: 0)",
                                         file=file, layer=layer.name)
                    holder.register_buffer(name, value)
                    continue
                lr, decay = float(spec.get("lr_mult", 1.0)), float(spec.get("decay_mult", 1.0))
                owner = shared.get(spec.get("name")) if spec.get("name") else None
                if owner is not None:  # Caffe's shared parameter: one array, listed once
                    if tuple(owner[0].shape) != tuple(value.shape):
                        raise ModelError(f"shared param '{spec['name']}' is {tuple(value.shape)} "
                                         f"here and {tuple(owner[0].shape)} in layer '{owner[1]}'",
                                         file=file, layer=layer.name)
                    holder.register_parameter(name, owner[0])
                    continue
                param = nn.Parameter(value, requires_grad=lr != 0.0)
                holder.register_parameter(name, param)
                if spec.get("name"):
                    shared[spec["name"]] = (param, layer.name)
                self._learnable.append(CaffeParam(layer.name, i, name, param, lr, decay))
            self.arrays.append(holder)
        self.blob_names = [[n for n, _ in l.weights.items()] for l in graph.layers]
        self.fused = self._fusions()
        self.cache: dict = {}
        self.darknet_bn = darknet_bn
        if training_refusal(self.framework):
            self.eval()

    def train(self, mode: bool = True) -> "CaffeModule":
        """Caffe's TRAIN phase (``mode``) or TEST; refused, by a one-line ModelError, for a
        framework the backend runs in eval mode only."""
        if mode:
            _refuse_training(self.framework, self.file)
        return super().train(mode)

    # ------------------------------------------------------------------
    def caffe_params(self) -> list[CaffeParam]:
        """The learnable arrays in Caffe's order (net order, then blob order), each with its
        ``lr_mult`` and ``decay_mult`` (defaults 1, 1); statistics and the second and later
        users of a shared parameter are not listed. A parameter with ``lr_mult: 0`` is listed
        and has ``requires_grad`` false (Caffe computes no update for it either)."""
        return list(self._learnable)

    def write_back(self, graph: Graph) -> Graph:
        """``graph`` with every stored array replaced by this module's, as float32 NumPy.

        Layers are matched by name, so the TEST phase of the net the module was built from
        (its TRAIN phase) takes the trained arrays too; a layer of ``graph`` that stores arrays
        must be one of the module's.

        Args:
            graph: the graph the module was built from, or another phase of the same net;
                it is not modified.

        Returns:
            A new Graph; pass it to ``caffe_surgeon.save``.
        """
        mine = {l.name: (holder, names) for l, holder, names in
                zip(self.layers, self.arrays, self.blob_names)}
        layers = []
        for layer in graph.layers:
            if layer.name not in mine:
                if layer.weights:
                    raise ModelError(f"write_back: the module has no layer '{layer.name}', "
                                     f"whose arrays {list(layer.weights)} it should give",
                                     file=graph.source_text, layer=layer.name)
                layers.append(layer)
                continue
            holder, names = mine[layer.name]
            if list(layer.weights) != names:
                raise ModelError(f"write_back: arrays {list(layer.weights)} here, "
                                 f"{names} in the module", file=graph.source_text, layer=layer.name)
            weights = {}
            for name in names:
                arr = getattr(holder, name).detach().to("cpu", torch.float32).numpy().copy()
                if arr.shape != layer.weights[name].shape:
                    raise ModelError(f"write_back: array {name} is {layer.weights[name].shape} "
                                     f"here and {arr.shape} in the module",
                                     file=graph.source_text, layer=layer.name)
                weights[name] = arr
            layers.append(dataclasses.replace(layer, weights=weights))
        return dataclasses.replace(graph, layers=layers)

    def _fusions(self) -> dict:
        """Layer index -> the table's forward running that layer and the next one together
        (BatchNorm + Scale), for in-place pairs without loss weights (the table's ``fuse``)."""
        fused, i = {}, 0
        while i + 1 < len(self.layers):
            a, b, entry = self.layers[i], self.layers[i + 1], self.ops[i]
            fn = None
            if entry.fuse is not None and len(a.tops) == 1 and b.bottoms == a.tops == b.tops \
                    and not any(self.weights[i]) and not any(self.weights[i + 1]):
                fn = entry.fuse(a, b, self.blob_names[i], self.blob_names[i + 1])
            if fn is not None:
                fused[i] = fn
            i += 2 if fn is not None else 1
        return fused

    # ------------------------------------------------------------------
    def _tensor(self, value) -> torch.Tensor:
        device = next(iter(self.buffers()), next(iter(self.parameters()), torch.empty(0))).device
        return torch.as_tensor(np.asarray(value, np.float32) if not torch.is_tensor(value)
                               else value, dtype=torch.float32, device=device)

    def forward(self, feeds: dict, tap=None) -> Forward:
        """One pass over ``feeds`` (blob name -> array or tensor).

        Args:
            tap: None, or ``tap(layer, outputs) -> outputs``, called after every layer;
                later layers read what it returns. Taylor importance
                (:mod:`.taylor`) multiplies a producer's output by a gate of ones there,
                whose gradient is the sum of activation x gradient per channel.
        """
        feeds = {name: self._tensor(v) for name, v in feeds.items()}
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise ModelError(f"no value given for network input(s) {missing}", file=self.file)
        blobs = {n: feeds[n] for n in self.inputs}
        ctx = TorchContext(training=self.training, feeds=feeds, cache=self.cache,
                           darknet_bn=self.darknet_bn)
        total, losses = None, {}
        i, layers = 0, self.layers
        while i < len(layers):
            layer, holder = layers[i], self.arrays[i]
            try:
                args = [blobs[b] for b in layer.bottoms]
            except KeyError as e:
                raise ModelError(f"bottom {e.args[0]!r} is not produced by an earlier layer",
                                 file=self.file, layer=layer.name) from None
            ctx.arrays = {**holder._parameters, **holder._buffers}  # direct: no generators
            fused = self.fused.get(i) if tap is None else None  # a tap sees every layer's output
            if fused is None:
                outs = self._run(layer, self.ops[i].forward, args, ctx)
                if tap is not None:
                    outs = tap(layer, outs)
            else:  # layers i and i + 1 in one forward, in place: layer i + 1's top is the result
                after = self.arrays[i + 1]
                outs = self._run(layer, lambda l, a, c: fused(l, layers[i + 1], a, c, {
                    **after._parameters, **after._buffers}), args, ctx)
            for t, y in zip(layer.tops, outs):
                blobs[t] = y
            for w, y in zip(self.weights[i], outs):
                if w:
                    term = w * y.sum()
                    losses[layer.name] = losses[layer.name] + term if layer.name in losses else term
                    total = term if total is None else total + term
            i += 1 if fused is None else 2
        if total is None:
            total = self._tensor(0.0)
        return Forward(total, blobs, losses)

    def _run(self, layer, forward, args, ctx):
        try:
            return forward(layer, args, ctx)
        except ModelError as e:
            raise e.located(file=self.file, layer=layer.name) from None
        except KeyError as e:
            raise ModelError(f"this {layer.type} has no stored array {e.args[0]!r} (read the "
                             "weights, or fill them with caffe_surgeon.init)",
                             file=self.file, layer=layer.name) from None
        except (RuntimeError, ValueError, IndexError) as e:
            shapes = [tuple(a.shape) for a in args]
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"{layer.type} failed on inputs of shapes {shapes}: {first}",
                             file=self.file, layer=layer.name) from None


def _refuse_training(framework: str, file) -> None:
    why = training_refusal(framework)
    if why:
        raise ModelError(f"{framework} models cannot be trained yet: {why}", file=file)


def build_module(graph: Graph, phase: str = "TRAIN", **options) -> CaffeModule:
    """``graph`` as a :class:`CaffeModule` in Caffe's ``phase`` ("TRAIN": ``.train()``)."""
    if phase not in ("TRAIN", "TEST"):
        raise ModelError(f"phase must be TRAIN or TEST, not {phase!r}", file=graph.source_text)
    if phase == "TRAIN":  # before building: the refusal does not depend on the layers
        _refuse_training(graph.framework, graph.source_text)
    module = CaffeModule(graph, **options)
    return module.train() if phase == "TRAIN" else module.eval()
