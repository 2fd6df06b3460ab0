"""Darknet layer types in the torch backend: refused until Darknet training semantics land.

Darknet trains differently from Caffe in ways a forward alone does not capture (its
BatchNorm rolling statistics with momentum 0.01 and its own epsilon per fork, the
[yolo]/[region] losses, ``burn_in`` and ``subdivisions``); the detector finetune issue
brings them together. Until then every Darknet type is refused by name here, so a cfg
handed to the trainer fails before anything runs instead of training with Caffe's rules.
"""
from __future__ import annotations

from ..layers.registry import supported_types
from .torch_ops import refuse

REASON = ("Darknet training (its BatchNorm statistics, [yolo]/[region] losses, burn_in) "
          "arrives with the detector finetune; finetune the Caffe model instead")

refuse("darknet", *supported_types("darknet"), reason=REASON)
