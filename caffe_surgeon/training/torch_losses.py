"""Caffe's losses and Accuracy in torch, with Caffe's normalisation and label handling.

Each loss returns its value as a 0-d tensor; the module multiplies it by the top's
``loss_weight`` (1 on a loss layer's first top unless the prototxt says otherwise) and
autograd's gradient is then Caffe's ``Backward_cpu`` (``loss_weight / normalizer`` times the
per-element derivative). Labels are read as integers (Caffe's ``static_cast<int>``).

Normalisation (``loss_param``; BVLC ``LossLayer::GetNormalizer``), for ``outer`` =
product of the dims before the softmax axis and ``inner`` = of those after it::

    FULL        outer * inner
    VALID       the number of labels that are not ``ignore_label``
    BATCH_SIZE  outer
    NONE        1

and the result is at least 1. Without ``normalization``, the legacy ``normalize`` decides
(true: VALID, false: BATCH_SIZE); without either, SoftmaxWithLoss uses VALID and
SigmoidCrossEntropyLoss BATCH_SIZE (its BVLC default, which keeps the older loss / num).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ModelError
from ..layers.caffe_geometry import canonical_axis, sub
from ..engine.caffe_refused import TRAINING_LOSSES
from .torch_ops import TORCH_OPS, op, refuse

_FLT_MIN = float(np.finfo(np.float32).tiny)
_MODES = ("FULL", "VALID", "BATCH_SIZE", "NONE")


def normalization(layer, default: str) -> str:
    """The layer's normalisation mode, legacy ``normalize`` included (see module doc)."""
    lp = sub(layer, "loss_param")
    mode = lp.get("normalization")
    if mode is None and "normalize" in lp:
        mode = "VALID" if lp["normalize"] else "BATCH_SIZE"
    mode = {0: "FULL", 1: "VALID", 2: "BATCH_SIZE", 3: "NONE"}.get(mode, mode) or default
    if mode not in _MODES:
        raise ModelError(f"loss_param.normalization {mode!r} is not one of {', '.join(_MODES)}")
    return mode


def normalizer(mode: str, outer: int, inner: int, valid) -> torch.Tensor | float:
    """Caffe's ``GetNormalizer``, at least 1; ``valid`` is the count of kept labels (a tensor)."""
    if mode == "VALID":
        return torch.clamp(valid.to(torch.float32), min=1.0)
    return float(max(1, {"FULL": outer * inner, "BATCH_SIZE": outer, "NONE": 1}[mode]))


def _ignore(layer, param="loss_param"):
    p = sub(layer, param)
    return int(p["ignore_label"]) if "ignore_label" in p else None


def _labels(layer, scores, labels, axis, ignore):
    """(scores as rows x classes, integer labels, kept mask, outer, inner) with the labels
    checked against the class count (Caffe only DCHECKs; a wrong label is a one-line error)."""
    outer = math.prod(scores.shape[:axis])
    inner = math.prod(scores.shape[axis + 1:])
    classes = scores.shape[axis]
    rows = scores.movedim(axis, -1).reshape(-1, classes)
    lab = labels.reshape(-1).to(torch.int64)
    if lab.numel() != rows.shape[0]:
        raise ModelError(f"{layer.type} got {rows.shape[0]} predictions ({outer} x {inner}) and "
                         f"{lab.numel()} labels")
    keep = lab != ignore if ignore is not None else torch.ones_like(lab, dtype=torch.bool)
    bad = keep & ((lab < 0) | (lab >= classes))
    if bool(bad.any()):
        raise ModelError(f"{layer.type} got label {int(lab[bad][0])} for {classes} classes "
                         f"(labels must be in 0..{classes - 1} or the ignore_label)")
    return rows, lab, keep, outer, inner


@op("caffe", "SoftmaxWithLoss")
def softmax_loss(layer, inputs, ctx):
    """BVLC ``softmax_loss_layer.cpp``: -log(max(p[label], FLT_MIN)) summed over kept labels,
    over the normaliser; the gradient is (p - onehot) / normaliser at kept positions and 0 at
    ignored ones (the FLT_MIN floor does not cut the gradient, as in Caffe)."""
    scores = inputs[0]
    axis = canonical_axis(int(sub(layer, "softmax_param").get("axis", 1)), scores.ndim)
    rows, lab, keep, outer, inner = _labels(layer, scores, inputs[1], axis, _ignore(layer))
    logp = torch.log_softmax(rows, dim=1)
    picked = logp.gather(1, torch.where(keep, lab, 0)[:, None])[:, 0]
    floored = picked + (torch.clamp(picked, min=math.log(_FLT_MIN)) - picked).detach()
    total = torch.where(keep, -floored, torch.zeros_like(floored)).sum()
    out = [total / normalizer(normalization(layer, "VALID"), outer, inner, keep.sum())]
    if len(layer.tops) > 1:
        out.append(torch.softmax(scores, dim=axis))
    return out


@op("caffe", "SigmoidCrossEntropyLoss")
def sigmoid_cross_entropy_loss(layer, inputs, ctx):
    """BVLC ``sigmoid_cross_entropy_loss_layer.cpp``: max(x, 0) - x t + log(1 + exp(-|x|))
    summed over targets that are not ``ignore_label``; gradient (sigmoid(x) - t) / normaliser."""
    x = inputs[0]
    t = inputs[1].reshape(x.shape).to(x.dtype)
    ignore = _ignore(layer)
    keep = t != ignore if ignore is not None else torch.ones_like(t, dtype=torch.bool)
    loss = torch.clamp(x, min=0) - x * t + torch.log1p(torch.exp(-torch.abs(x)))
    total = torch.where(keep, loss, torch.zeros_like(loss)).sum()
    outer, inner = x.shape[0], x.numel() // max(1, x.shape[0])
    return [total / normalizer(normalization(layer, "BATCH_SIZE"), outer, inner, keep.sum())]


@op("caffe", "EuclideanLoss")
def euclidean_loss(layer, inputs, ctx):
    """BVLC ``euclidean_loss_layer.cpp``: sum((a - b)^2) / num / 2; both bottoms get a gradient."""
    a, b = inputs
    if a.numel() != b.numel():
        raise ModelError(f"EuclideanLoss inputs have {a.numel()} and {b.numel()} values")
    d = a - b.reshape(a.shape)
    return [(d * d).sum() / a.shape[0] / 2.0]


@op("caffe", "SmoothL1Loss")
def smooth_l1_loss(layer, inputs, ctx):
    """Fast R-CNN ``smooth_L1_loss_layer``: d = w_in (b0 - b1); 0.5 (sigma d)^2 where
    |d| < 1 / sigma^2, else |d| - 0.5 / sigma^2; times w_out; summed over num."""
    if len(inputs) not in (2, 4):
        raise ModelError(f"SmoothL1Loss takes 2 bottoms (or 4 with inside and outside weights), "
                         f"got {len(inputs)}")
    sigma2 = float(sub(layer, "smooth_l1_loss_param").get("sigma", 1.0)) ** 2
    a, b = inputs[0], inputs[1].reshape(inputs[0].shape)
    d = a - b
    if len(inputs) == 4:
        d = d * inputs[2].reshape(a.shape)
    ad = torch.abs(d)
    loss = torch.where(ad < 1.0 / sigma2, 0.5 * sigma2 * d * d, ad - 0.5 / sigma2)
    if len(inputs) == 4:
        loss = loss * inputs[3].reshape(a.shape)
    return [loss.sum() / a.shape[0]]


@op("caffe", "Accuracy")
def accuracy(layer, inputs, ctx):
    """BVLC ``accuracy_layer.cpp``: a hit when fewer than ``top_k`` classes score >= the
    label's score besides the label itself (ties count against); over the kept labels, 0
    when none. The optional second top holds the per-class accuracies. No gradient."""
    p = sub(layer, "accuracy_param")
    with torch.no_grad():
        scores = inputs[0]
        axis = canonical_axis(int(p.get("axis", 1)), scores.ndim)
        rows, lab, keep, _, _ = _labels(layer, scores, inputs[1], axis, _ignore(layer, "accuracy_param"))
        rows, lab = rows[keep], lab[keep]
        mine = rows.gather(1, lab[:, None])
        hit = ((rows >= mine).sum(dim=1) - 1 < int(p.get("top_k", 1))).to(torch.float32)
        count = lab.numel()
        out = [hit.sum() / count if count else hit.new_zeros(())]
        if len(layer.tops) > 1:
            classes = scores.shape[axis]
            hits = torch.zeros(classes, device=hit.device).index_add_(0, lab, hit)
            seen = torch.zeros(classes, device=hit.device).index_add_(0, lab, torch.ones_like(hit))
            out.append(torch.where(seen > 0, hits / torch.clamp(seen, min=1.0), torch.zeros_like(hits)))
    return out


# Losses with a forward in a module of their own (registered when that module loads)
_ELSEWHERE = frozenset({"MultiBoxLoss"})  # torch_multibox.py

# The losses the trainer does not implement yet, described once (the engine's refusal table)
for _type, _what in TRAINING_LOSSES.items():
    if ("caffe", _type) not in TORCH_OPS and _type not in _ELSEWHERE:
        refuse("caffe", _type, reason=f"not implemented in the trainer yet: {_what}")
