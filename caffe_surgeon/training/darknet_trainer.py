"""Train a Darknet graph as pjreddie Darknet (2018, the Debian package) trains it.

:class:`DarknetTrainer` is ``train_network`` (``network.c``) over the torch backend: each
call takes one batch of ``batch`` images, runs ``subdivisions`` forwards of
``batch / subdivisions`` images, backpropagates each head's ``-delta`` (Darknet's delta is the
negative gradient it propagates), and updates the weights with Darknet's SGD
(:mod:`.darknet_solver`) whenever ``seen`` reaches a multiple of ``batch``. BatchNorm trains
with Darknet's statistics (:mod:`.torch_darknet_bn`); the heads' deltas are
:mod:`.torch_yolo_loss` and :mod:`.torch_region_loss`.

Batches are NumPy arrays, the contract with the data loader:
``images`` float32 (N, 3, H, W), RGB in [0, 1]; ``truths`` float32 (N, 90, 5), each row
``x, y, w, h, class`` relative to the image, zero rows padding (``fill_truth_detection``).

Example::

    g = cs.load("pruned.cfg", "pruned.weights")
    t = DarknetTrainer(g)
    for images, truths in batches:            # N = [net] batch
        loss = t.train(images, truths)        # what darknet prints as the batch's loss
    t.save_weights("backup/pruned_final.weights")
"""
from __future__ import annotations

import dataclasses
import io
import json

import numpy as np

from ..darknet.reader import GraphOrigin
from ..darknet.weights import default_header
from ..darknet.writer import write_darknet
from ..errors import ModelError
from ..fileio import atomic_write
from ..graph import Graph
from ..layers.darknet import opt_float, opt_int
from .darknet_solver import DarknetSGD, current_rate, net_settings
from .module import CaffeModule  # first: without torch, its error
from .torch_darknet_train import head_of, overwrites_input_delta, training_refusal
from .torch_ops import TorchContext

import torch  # noqa: E402,I001
from torch import nn  # noqa: E402

#: per-section options of ``parse_network_cfg`` that change loading or skip work in ways
#: this trainer does not reproduce, each refused by name
REFUSED_OPTIONS = {
    "dontload": "dontload=1 (Darknet skips loading this layer's weights)",
    "numload": "numload= (Darknet loads only part of this layer's weights)",
    "dontloadscales": "dontloadscales=1 (Darknet keeps fresh BatchNorm statistics)",
    "onlyforward": "onlyforward=1 is not supported",
    "smooth": "smooth= (label smoothing of a softmax) is not supported",
}
#: how a [region]'s deltas reach the layer below: "gpu" as Darknet's GPU build (logistic
#: derivative on x, y, objectness), "cpu" as its CPU build, whose backward_region_layer is
#: commented out (nothing flows back; only decay and momentum move the weights)
REGION_BACKWARDS = ("gpu", "cpu")
#: IR arrays Darknet decays (``update_convolutional_layer``: weights, not biases or scales)
DECAYED = frozenset({"weights"})
TRUTH_COLUMNS = 5


class DarknetTrainer:
    """A Darknet graph (cfg + weights) training by Darknet's rules.

    Args:
        graph: a darknet graph with weights (``read_darknet`` / ``caffe_surgeon.load``).
        region_backward: see :data:`REGION_BACKWARDS`.
        device: torch device to train on ("cpu", "cuda:0", ...).
        dtype: "float32" (Darknet's) or "float64": a reference run that shows how much of a
            difference to Darknet is float32 rounding (the heads' deltas stay float32).

    Raises:
        ModelError: a [net] setting, a section or an option this trainer does not reproduce,
            by name, before anything runs.
    """

    def __init__(self, graph: Graph, *, region_backward: str = "gpu", device: str = "cpu",
                 dtype: str = "float32"):
        file = graph.source_text
        if graph.framework != "darknet":
            raise ModelError(f"DarknetTrainer trains darknet graphs, not {graph.framework}",
                             file=file)
        if region_backward not in REGION_BACKWARDS:
            raise ModelError(f"region_backward must be one of {REGION_BACKWARDS}, not "
                             f"{region_backward!r}", file=file)
        self.graph, self.file, self.region_backward = graph, file, region_backward
        self.settings = net_settings(graph)
        shape = next(iter(graph.inputs.values()))
        self.input_shape = tuple(int(d) for d in shape[1:])
        self.stop = -1
        for i, layer in enumerate(graph.layers):
            why = training_refusal(layer) or _option_refusal(layer)
            if why:
                raise ModelError(f"[{layer.type}] cannot be trained: {why}", file=file,
                                 layer=layer.name)
            if opt_int(layer, "stopbackward", 0):
                self.stop = i
        self.heads = [(i, layer, head_of(layer)) for i, layer in enumerate(graph.layers)
                      if head_of(layer) is not None]
        if not self.heads:
            raise ModelError("the graph has no [yolo] or [region] section to train against",
                             file=file)
        self.rows = max(h.rows for _, _, h in self.heads)
        # layer j -> the layer j + 1 whose backward overwrites j's delta (see
        # overwrites_input_delta): any other reader of j gets j's output detached
        self.overwritten = {i - 1 for i, layer in enumerate(graph.layers)
                            if i and overwrites_input_delta(layer)}
        if dtype not in ("float32", "float64"):
            raise ModelError(f"dtype must be float32 or float64, not {dtype!r}", file=file)
        self.device, self.dtype = torch.device(device), getattr(torch, dtype)
        self.module = CaffeModule(graph).to(self.device, self.dtype)
        # Darknet's own rules train it here; CaffeModule.train() refuses the Caffe solver's
        nn.Module.train(self.module, True)
        params = {}
        for layer, holder in zip(self.module.layers, self.module.arrays):
            scale = opt_float(layer, "learning_rate", 1)
            for name, p in holder._parameters.items():
                params[(layer.name, name)] = (p, name in DECAYED, scale)
        self.sgd = DarknetSGD(self.settings, params)
        origin = graph.origin if isinstance(graph.origin, GraphOrigin) else None
        self.seen = origin.header.seen if origin is not None and origin.header else 0

    # ------------------------------------------------------------------
    @property
    def iteration(self) -> int:
        """``get_current_batch``: updates done, as Darknet counts them from ``seen``."""
        return self.seen // self.settings.batch

    def rate(self) -> float:
        """The learning rate the next update uses (``get_current_rate`` after it is counted)."""
        return current_rate(self.settings, self.iteration)

    def train(self, images: np.ndarray, truths: np.ndarray) -> float:
        """``train_network``: forwards of ``batch / subdivisions`` images over the batch,
        an update whenever ``seen`` reaches a multiple of ``batch``.

        Args:
            images: float32 (N, 3, H, W) RGB in [0, 1]; N a multiple of batch/subdivisions.
            truths: float32 (N, 90, 5), see the module docstring.

        Returns:
            Darknet's value: the heads' mean cost (sum of squared deltas), summed over the
            forwards and divided by N.
        """
        images, truths = self._check(images, truths)
        mini = self.settings.minibatch
        total = np.float32(0)
        for start in range(0, len(images), mini):
            total = np.float32(total + np.float32(self._datum(images[start:start + mini],
                                                              truths[start:start + mini])))
        return float(np.float32(total / np.float32(len(images))))

    def _datum(self, images, truths) -> float:
        """``train_network_datum``: count, forward, deltas, backward, maybe update."""
        s = self.settings
        self.seen += s.minibatch
        blobs = self._forward(images)
        costs, surrogate = [], None
        net_h, net_w = images.shape[2:]  # resize_network: the heads see the batch's size
        for i, layer, head in self.heads:
            output = blobs[layer.tops[0]].detach().cpu().numpy()
            delta, cost = head.deltas(layer, output, truths, self.seen, net_w, net_h)
            costs.append(cost)
            below = blobs[layer.bottoms[0]]
            if head.logistic_backward:
                if self.region_backward == "cpu":
                    continue
                delta = _logistic_gradient(layer, delta, output)
            if below.requires_grad:
                term = -(torch.as_tensor(delta, device=below.device).to(below.dtype) * below).sum()
                surrogate = term if surrogate is None else surrogate + term
        if surrogate is not None:
            surrogate.backward()
        self.sgd.accumulate()
        if (self.seen // s.minibatch) % s.subdivisions == 0:
            self.sgd.apply(self.rate())
        cost = np.float32(0)
        for c in costs:
            cost = np.float32(cost + np.float32(c))
        return float(np.float32(cost / np.float32(len(costs))))

    def _forward(self, images) -> dict:
        """Every blob of one training forward, wired so that autograd's gradient is the delta
        Darknet's backward leaves: readers of an overwritten delta (``self.overwritten``)
        other than the overwriting layer, and everything below a ``stopbackward=1`` layer,
        see detached outputs."""
        m = self.module
        data = torch.as_tensor(images, device=self.device).to(self.dtype)
        blobs, detached = {m.inputs[0]: data}, {}
        ctx = TorchContext(training=True, cache=m.cache)
        producer = {l.tops[0]: i for i, l in enumerate(m.layers)}
        for i, (layer, holder, entry) in enumerate(zip(m.layers, m.arrays, m.ops)):
            args = []
            for b in layer.bottoms:
                j = producer.get(b, -1)
                args.append(detached[b] if j in self.overwritten and i != j + 1 else blobs[b])
            ctx.arrays = {**holder._parameters, **holder._buffers}
            outs = m._run(layer, entry.forward, args, ctx)
            if i == self.stop:  # stopbackward: Darknet's backward loop ends at this layer
                outs = [o.detach() for o in outs]
            blobs[layer.tops[0]] = outs[0]
            if i in self.overwritten:
                detached[layer.tops[0]] = outs[0].detach()
        return blobs

    def _check(self, images, truths):
        images = np.ascontiguousarray(images, np.float32)
        truths = np.ascontiguousarray(truths, np.float32)
        n, mini = images.shape[0] if images.ndim else 0, self.settings.minibatch
        if images.ndim != 4 or images.shape[1] != self.input_shape[0]:
            raise ModelError(f"images are {images.shape}; the network takes (N, "
                             f"{self.input_shape[0]}, H, W) (the cfg's size: "
                             f"{self.input_shape[2]} x {self.input_shape[1]})", file=self.file)
        if truths.ndim != 3 or truths.shape[0] != n or truths.shape[2] != TRUTH_COLUMNS \
                or truths.shape[1] < self.rows:
            raise ModelError(f"truths are {truths.shape}; the batch needs ({n}, >= {self.rows}, "
                             f"{TRUTH_COLUMNS}) rows of x, y, w, h, class", file=self.file)
        if n == 0 or n % mini:
            raise ModelError(f"{n} images is not a positive multiple of batch/subdivisions = "
                             f"{self.settings.batch}/{self.settings.subdivisions} = {mini}",
                             file=self.file)
        from .torch_yolo_loss import check_truths
        for _, layer, head in self.heads:
            check_truths(truths, head.rows, opt_int(layer, "classes", 20), self.file, layer.name)
        return images, truths

    # ------------------------------------------------------------------
    def trained_graph(self) -> Graph:
        """The graph with the trained arrays and ``seen`` in its weights header."""
        g = self.module.write_back(self.graph)
        origin = self.graph.origin if isinstance(self.graph.origin, GraphOrigin) else None
        if origin is not None:
            header = (origin.header or default_header()).with_seen(self.seen)
            g = dataclasses.replace(g, origin=dataclasses.replace(origin, header=header))
        return g

    def save_weights(self, path) -> None:
        """Write the trained ``.weights`` (with ``seen``) atomically."""
        write_darknet(self.trained_graph(), None, path)

    def save_snapshot(self, path, extra: dict | None = None) -> None:
        """Everything a bit-exact resume needs, atomically: every array (statistics too),
        Darknet's updates buffers (its momentum) and ``seen``. ``extra`` is the caller's
        JSON-able state (the data loader's RNG and position), returned by
        :meth:`load_snapshot`; the trainer itself draws no random numbers."""
        arrays = {}
        for layer, holder in zip(self.module.layers, self.module.arrays):
            for name, t in {**holder._parameters, **holder._buffers}.items():
                arrays[f"array/{layer.name}/{name}"] = t.detach().cpu().numpy()
        for (layer, name), u in self.sgd.updates.items():
            arrays[f"updates/{layer}/{name}"] = u.cpu().numpy()
        meta = {"seen": self.seen, "extra": extra}
        arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(path, buf.getvalue())

    def load_snapshot(self, path):
        """Restore :meth:`save_snapshot`'s state; returns its ``extra``."""
        try:
            with np.load(path) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise ModelError(f"not a trainer snapshot: {e}", file=str(path)) from None
        targets = {}
        for layer, holder in zip(self.module.layers, self.module.arrays):
            for name, t in {**holder._parameters, **holder._buffers}.items():
                targets[f"array/{layer.name}/{name}"] = t
        for (layer, name), u in self.sgd.updates.items():
            targets[f"updates/{layer}/{name}"] = u
        if set(targets) | {"meta"} != set(data):
            missing = sorted(set(targets) ^ (set(data) - {"meta"}))
            raise ModelError(f"snapshot does not belong to this network: arrays {missing[:3]} "
                             "are in one and not the other", file=str(path))
        with torch.no_grad():
            for key, t in targets.items():
                if tuple(data[key].shape) != tuple(t.shape):
                    raise ModelError(f"snapshot array {key} is {data[key].shape}, the network's "
                                     f"{tuple(t.shape)}", file=str(path))
                t.copy_(torch.as_tensor(data[key]))
        meta = json.loads(bytes(data["meta"]).decode())
        self.seen = int(meta["seen"])
        return meta["extra"]


def _option_refusal(layer) -> str:
    hit = [why for key, why in REFUSED_OPTIONS.items() if opt_float(layer, key, 0)]
    return hit[0] if hit else ""


def _logistic_gradient(layer, delta, output):
    """``backward_region_layer_gpu``: x, y and (unless ``background``) objectness deltas
    times the logistic's derivative ``(1 - y) * y``, in float32."""
    num = opt_int(layer, "num", 1)
    n, c, h, w = delta.shape
    d = delta.reshape(n, num, c // num, h, w).copy()
    y = output.reshape(d.shape)
    entries = [0, 1] if opt_int(layer, "background", 0) else [0, 1, 4]
    d[:, :, entries] *= (np.float32(1) - y[:, :, entries]) * y[:, :, entries]
    return d.reshape(delta.shape)
