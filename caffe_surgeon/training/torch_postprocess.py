"""Gradient-free Caffe layers, run through the NumPy engine's own forwards.

PriorBox (a constant of the shapes), DetectionOutput and DetectionEvaluate (NMS and
matching), ArgMax (indices) and DummyData (constants) have no backward in Caffe either
(``NOT_IMPLEMENTED`` or nothing to propagate); a net may still be trained with them present
as long as no loss depends on them, exactly as in Caffe. One implementation serves both
backends: the inputs are detached, handed to the engine's op as float32 arrays, and the
outputs come back as tensors on the input's device.
"""
from __future__ import annotations

import numpy as np
import torch

from ..engine.ops import RunContext
from ..engine.ops import op_for as engine_op
from .torch_ops import op

_DELEGATED = ("PriorBox", "DetectionOutput", "DetectionEvaluate", "ArgMax", "DummyData")


@op("caffe", *_DELEGATED)
def through_engine(layer, inputs, ctx):
    fn = engine_op("caffe", layer)
    run = ctx.cache.get((layer.name, "engine"))
    if run is None:
        run = ctx.cache[(layer.name, "engine")] = RunContext()
    arrays = [x.detach().to("cpu", torch.float32).numpy() for x in inputs]
    device = inputs[0].device if inputs else torch.device("cpu")
    return [torch.as_tensor(np.ascontiguousarray(y, dtype=np.float32), device=device)
            for y in fn(layer, arrays, run)]
