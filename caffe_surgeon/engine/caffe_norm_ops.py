"""Forward of Caffe's MVN (BVLC ``mvn_layer.cpp``).

Per image (``across_channels``) or per image and channel, over the rest of the blob:
``y = x - mean``, and with ``normalize_variance`` (default) ``y / (sqrt(var) + eps)``:
Caffe adds ``eps`` (default 1e-9) to the standard deviation, not to the variance.
The variance is the biased mean of squared deviations. Computed in float64.
"""
from __future__ import annotations

import numpy as np

from ..layers.caffe_geometry import sub
from .ops import op


@op("caffe", "MVN")
def mvn(layer, inputs, ctx):
    p = sub(layer, "mvn_param")
    x = inputs[0]
    rows = x.shape[0] if p.get("across_channels", False) else x.shape[0] * x.shape[1]
    flat = x.reshape(rows, -1).astype(np.float64)
    y = flat - flat.mean(axis=1, keepdims=True)
    if p.get("normalize_variance", True):
        std = np.sqrt((y * y).mean(axis=1, keepdims=True))
        y = y / (std + float(p.get("eps", 1e-9)))
    return [y.astype(np.float32).reshape(x.shape)]
