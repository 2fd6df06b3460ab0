"""Label-free finetuning: the pruned model learns the unpruned model's outputs.

For users with images but no labelled training set. Both nets run on the same TRAIN
batch; the teacher (the model ``prune`` started from) in eval mode without gradients,
the student (the pruned model) in train mode. The TRAIN net's own losses are dropped, so
no label is read (:class:`~.train_data.TrainData` with ``labelled=False``). What is
matched, per blob the losses and metrics read (found through the layer roles):

- a classifier's scores (the first bottom of a layer whose spec ``reads_class_scores``:
  SoftmaxWithLoss, Accuracy): ``T^2 x KL(softmax(t / T) || softmax(s / T))`` over axis 1,
  averaged over the batch and any positions (Hinton et al. 2015; ``T`` is the
  temperature, default :data:`~.finetune.DEFAULT_TEMPERATURE`, which says why 4);
- any other blob a loss reads (a regression output, a detector's location and confidence
  maps): the mean squared difference over all its values.

The total is the sum over the matched blobs. :class:`DistillModule` has the trainer's
module contract, so the solver, snapshots and tests run unchanged.
"""
from __future__ import annotations

import dataclasses

from ..errors import ModelError
from ..graph import Graph
from ..layers.registry import spec_for
from .finetune import DEFAULT_TEMPERATURE
from .module import Forward

import torch  # noqa: E402,I001  (after .module: without torch, its one-line error)
from torch import nn  # noqa: E402

SOFTMAX, SQUARED = "softened softmax", "squared difference"


def distillation_net(graph: Graph) -> tuple[Graph, list[tuple[str, str]]]:
    """``graph`` without its losses and metrics, and the blobs distillation matches.

    Args:
        graph: a TRAIN (or TEST) phase net.

    Returns:
        ``(net, targets)``: the net whose data layers keep only the tops some remaining
        layer reads (the labels go), and ``[(blob, SOFTMAX or SQUARED), ...]`` in net order.
    """
    file = graph.source_text
    specs = [spec_for(graph.framework, l, file) for l in graph.layers]
    fed = set(graph.inputs) | {t for l, s in zip(graph.layers, specs)
                               if s.has_role("data_source") for t in l.tops}
    kinds: dict[str, str] = {}
    for layer, spec in zip(graph.layers, specs):
        if not (spec.has_role("loss") or spec.has_role("metric")):
            continue
        if spec.reads_class_scores and layer.bottoms and layer.bottoms[0] not in fed:
            kinds[layer.bottoms[0]] = SOFTMAX
        elif spec.has_role("loss"):
            for b in layer.bottoms:
                if b not in fed:
                    kinds.setdefault(b, SQUARED)
    if not kinds:
        raise ModelError("distillation matches the outputs the losses read, but this net has no "
                         "loss or Accuracy layer reading a computed blob", file=file)
    kept = [(l, s) for l, s in zip(graph.layers, specs)
            if not (s.has_role("loss") or s.has_role("metric"))]
    read = {b for l, _ in kept for b in l.bottoms}
    layers = []
    for layer, spec in kept:
        if spec.has_role("data_source"):
            label_tops = [t for t in layer.tops[1:] if t in read]
            if label_tops:
                raise ModelError(f"distillation reads no labels, but the data layer's top "
                                 f"'{label_tops[0]}' is read by a layer that is not a loss or "
                                 "metric", file=file, layer=layer.name)
            layer = dataclasses.replace(layer, tops=layer.tops[:1])
        layers.append(layer)
    order = {}
    for i, layer in enumerate(layers):
        for t in layer.tops:
            order.setdefault(t, i)
    targets = sorted(kinds.items(), key=lambda kv: order.get(kv[0], len(layers)))
    return dataclasses.replace(graph, layers=layers, outputs=[b for b, _ in targets]), targets


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str,
                      temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """One blob's term (see the module docstring); a 0-d tensor.

    ``SOFTMAX``: ``T^2 * mean over batch and positions of sum_c p_t (log p_t - log p_s)``
    with ``p = softmax(x / T)`` over axis 1. ``SQUARED``: ``mean((s - t)^2)``.
    """
    if tuple(student.shape) != tuple(teacher.shape):
        raise ModelError(f"the student's output is {tuple(student.shape)} and the teacher's "
                         f"{tuple(teacher.shape)}: the pruned model must keep the outputs' shapes")
    if kind == SQUARED:
        return ((student - teacher) ** 2).mean()
    if student.dim() < 2:
        raise ModelError(f"class scores of shape {tuple(student.shape)}: a softmax over axis 1 "
                         "needs (N, classes, ...)")
    t = float(temperature)
    log_s = torch.log_softmax(student / t, dim=1)
    log_t = torch.log_softmax(teacher / t, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=1)
    return kl.mean() * (t * t)


class DistillModule(nn.Module):
    """The student trained on the teacher's outputs, with the trainer's module contract.

    Args:
        student: the pruned net's :class:`~.module.CaffeModule`, built from
            :func:`distillation_net`'s net; what is trained and written back.
        teacher: the unpruned net's module, likewise; kept in eval mode, never trained.
        targets: from :func:`distillation_net` (of the student's net).
        temperature: > 0.
    """

    def __init__(self, student, teacher, targets, temperature: float = DEFAULT_TEMPERATURE):
        super().__init__()
        if not float(temperature) > 0:
            raise ModelError(f"the distillation temperature must be > 0, got {temperature}")
        self.student, self.teacher = student, teacher.eval()
        self.targets, self.temperature = list(targets), float(temperature)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "DistillModule":
        self.training = mode
        self.student.train(mode)
        self.teacher.eval()  # the teacher's outputs are those of the model as deployed
        return self

    def forward(self, feeds: dict) -> Forward:
        with torch.no_grad():
            taught = self.teacher(feeds).blobs
        out = self.student(feeds)
        losses = {}
        for blob, kind in self.targets:
            if blob not in taught:
                raise ModelError(f"the teacher net computes no blob '{blob}' to match")
            losses[blob] = distillation_loss(out.blobs[blob], taught[blob], kind, self.temperature)
        return Forward(sum(losses.values()), out.blobs, losses)

    def caffe_params(self):
        return self.student.caffe_params()

    def write_back(self, graph: Graph) -> Graph:
        return self.student.write_back(graph)
