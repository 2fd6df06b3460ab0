"""``fold_bn`` for the ONNX exporter: Caffe BatchNorm (and the Scale after it) folded into the
convolution before them, on the exported initializers only (the graph is not changed).

A chain folds when the convolution's output is read by the BatchNorm alone, and the
BatchNorm's by the Scale alone (when there is one): then ``conv -> BN -> Scale`` equals one
convolution with ``W' = W * a * s`` per output channel and ``b' = (b * a + c) * s + t``,
where BN is ``x * a + c`` and Scale ``x * s + t``. Computed in float64, stored as float32.
Darknet's BN lives inside ``[convolutional]`` and is folded there (``onnx_darknet_ops``).
"""
from __future__ import annotations

import numpy as np

from ..layers.caffe_geometry import canonical_axis, sub

#: convolution types whose weights are (out, in/group, kh, kw): the BN's channel is axis 0
CONVOLUTIONS = ("Convolution", "ConvolutionDepthwise", "DepthwiseConvolution", "ConvolutionFixed")
BATCH_NORM, SCALE = "BatchNorm", "Scale"


def _bn(layer):
    eps = float(sub(layer, "batch_norm_param").get("eps", 1e-5))
    w = layer.weights
    if "scale_factor" in w:
        s = float(w["scale_factor"][0])
        f = 0.0 if s == 0 else 1.0 / s
        mean, var = w["mean"].astype(np.float64) * f, w["variance"].astype(np.float64) * f
        gamma, beta = 1.0, 0.0
    else:
        mean, var = w["mean"].astype(np.float64), w["variance"].astype(np.float64)
        gamma, beta = w["scale"].astype(np.float64), w["bias"].astype(np.float64)
    a = gamma / np.sqrt(var + eps)
    return a.reshape(-1), (beta - mean * a).reshape(-1)


def _only_reader(graph, consumers, i):
    """The index of the one layer reading layer ``i``'s output, or None."""
    readers = consumers[i]
    return readers[0][0] if len(readers) == 1 and len(graph.layers[i].tops) == 1 else None


def _per_channel_scale(layer, in_shape) -> bool:
    p = sub(layer, "scale_param")
    return (len(layer.bottoms) == 1 and "scale" in layer.weights
            and canonical_axis(int(p.get("axis", 1)), len(in_shape)) == 1
            and layer.weights["scale"].size == in_shape[1])


def fold_plan(graph, shapes) -> tuple[dict, dict]:
    """({conv name: (weight, bias)}, {BN/Scale name: True}) for every chain that folds."""
    consumers = graph.consumers()
    folded, away = {}, {}
    for i, conv in enumerate(graph.layers):
        if conv.type not in CONVOLUTIONS or len(conv.bottoms) != 1:
            continue
        j = _only_reader(graph, consumers, i)
        if j is None or graph.layers[j].type != BATCH_NORM:
            continue
        bn = graph.layers[j]
        a, c = _bn(bn)
        s, t = np.ones_like(a), np.zeros_like(a)
        k = _only_reader(graph, consumers, j)
        scale = graph.layers[k] if k is not None else None
        if scale is not None and scale.type == SCALE and \
                _per_channel_scale(scale, shapes.inputs[scale.name][0]):
            s = scale.weights["scale"].astype(np.float64).reshape(-1)
            if "bias" in scale.weights:
                t = scale.weights["bias"].astype(np.float64).reshape(-1)
            away[scale.name] = True
        w = conv.weights["weight"].astype(np.float64)
        bias = conv.weights["bias"].astype(np.float64).reshape(-1) if "bias" in conv.weights \
            else np.zeros(w.shape[0])
        w2 = w * (a * s).reshape(-1, 1, 1, 1)
        b2 = (bias * a + c) * s + t
        folded[conv.name] = (w2.astype(np.float32), b2.astype(np.float32))
        away[bn.name] = True
    return folded, away
