"""Caffe layer types that have a shape rule but no forward in the NumPy engine, and why.

Each ``refuse`` entry is what ``op_for`` (and so ``Executor``) reports for such a
layer. The losses here are training-only: they compare a prediction with labels
that an inference pass does not have, so they belong to the trainer (``finetune``).
SoftmaxWithLoss, EuclideanLoss and SigmoidCrossEntropyLoss do have a forward
(``caffe_ops``): the evaluation reads their value as a metric.
"""
from __future__ import annotations

from .ops import refuse

_TRAINING = "a training loss: runs in the trainer (finetune), not in inference"

#: loss type -> what it computes (its reason is _TRAINING, then this; the trainer's
#: refusals reuse the text)
TRAINING_LOSSES = {
    "ContrastiveLoss": "a siamese margin loss over two feature bottoms and a similarity label",
    "HingeLoss": "an L1/L2 hinge over scores and integer labels",
    "InfogainLoss": "a log loss weighted by an infogain matrix read from a file or a third bottom",
    "MultinomialLogisticLoss": "a log loss over probabilities and integer labels",
    "L1Loss": "a fork's L1 regression loss",
    "SmoothL1Loss": "Fast R-CNN's box-regression loss with inside/outside weights",
    "MultiBoxLoss": "SSD's loss: matches priors to ground-truth boxes and mines hard negatives; "
                    "DetectionOutput is its inference counterpart",
}
for _type, _what in TRAINING_LOSSES.items():
    refuse("caffe", _type, reason=f"{_TRAINING} ({_what})")
