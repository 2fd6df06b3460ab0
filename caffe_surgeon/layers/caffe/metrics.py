"""Caffe layers that score or train a net (metrics and losses) and sinks."""
from __future__ import annotations

from ..channel_flow import ChannelFlow
from ..registry import NEEDS_EVERY_CHANNEL, register
from .base import CaffeSpec


class _Scalar(CaffeSpec):
    """Metrics and losses: one scalar per top, reading every channel of their inputs."""

    channel_role = "block"
    block_reason = NEEDS_EVERY_CHANNEL

    def infer(self, layer, inputs):
        return [()] * len(layer.tops)


@register
class Loss(_Scalar):
    types = ("EuclideanLoss", "SigmoidCrossEntropyLoss", "ContrastiveLoss",
             "MultiBoxLoss", "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss", "L1Loss",
             "SmoothL1Loss")
    roles = frozenset({"loss"})


@register
class SoftmaxLoss(Loss):
    """Softmax cross-entropy: its first bottom is a classifier's scores (logits)."""

    types = ("SoftmaxWithLoss",)
    reads_class_scores = True


@register
class Accuracy(_Scalar):
    """Top-k accuracy; an optional second top holds the per-class accuracies (C)."""

    types = ("Accuracy",)
    roles = frozenset({"metric"})
    metric_kind = "mean"
    reads_class_scores = True

    def infer(self, layer, inputs):
        out = [(), (inputs[0][1],)] + [()] * len(layer.tops)
        return out[: len(layer.tops)]


@register
class DetectionEvaluate(_Scalar):
    """SSD's per-batch detection rows for the solver's mAP (one row block per top)."""

    types = ("DetectionEvaluate",)
    roles = frozenset({"metric"})
    metric_kind = "detection_map"


@register
class Silence(CaffeSpec):
    types = ("Silence",)
    channel_role = "shape_only"
    roles = frozenset({"no_top"})

    def channel_flow(self, layer, inputs, outputs):
        return ChannelFlow("shape_only")

    def infer(self, layer, inputs):
        return []
