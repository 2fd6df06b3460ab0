"""The NumPy engine's stacked runs for Caffe: sibling layers computed by one call.

A layer whose spec has the ``stackable`` role has one entry in ``KEYS``:
``key(layer) -> hashable | None``, what must be equal among siblings for their
weights to stack (None: this one cannot take part), and one in ``RUN``:
``run(layers, x, ctx, stacked) -> [array per layer]``. ``tests/test_layer_knowledge.py``
checks the roles and these tables agree.
"""
from __future__ import annotations

import numpy as np

from ..layers.caffe_geometry import conv_geometry, sub
from .kernels.conv import conv2d, winograd_weights


def _conv_key(layer):
    p = sub(layer, "convolution_param")
    w = layer.weights.get("weight")
    if w is None or getattr(w, "ndim", 0) != 4 or int(p.get("group", 1)) != 1:
        return None
    kernel, stride, pad, dilation = conv_geometry(p)
    if tuple(w.shape[2:]) != tuple(kernel):
        return None  # the layer reports the disagreement when it runs alone
    return ("conv", int(w.shape[1]), kernel, stride, pad, dilation, "bias" in layer.weights)


def _conv_run(layers, x, ctx, stacked):
    w, b = stacked
    _, _, _, stride, pad, dilation, _ = _conv_key(layers[0])
    u = winograd_weights(ctx.cache, ("winograd-stacked", layers[0].name), w, stride, dilation, 1)
    y = conv2d(x, w, b, stride, pad, dilation, 1, winograd_u=u)
    outs, o = [], 0
    for layer in layers:
        n = layer.weights["weight"].shape[0]
        outs.append(np.ascontiguousarray(y[:, o:o + n]))
        o += n
    return outs


KEYS = {"Convolution": _conv_key, "ConvolutionFixed": _conv_key}
RUN = {"Convolution": _conv_run, "ConvolutionFixed": _conv_run}
