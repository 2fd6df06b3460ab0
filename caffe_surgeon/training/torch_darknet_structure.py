"""Darknet's joins, resampling, elementwise sections and heads in the torch backend, eval mode.

Torch twins of ``engine/darknet_ops.py`` (its docstring explains the fork choices:
pjreddie's strided ``shortcut_cpu`` against AlexeyAB's flat multilayer add, ``reorg``
against ``reorg3d``). The heads give the test-time activations the engine gives (logistic,
softmax, ``scale_x_y``); their losses belong to Darknet training, which is refused as a
whole (``torch_darknet.TRAIN_REASON``). Results are built from slices of the inputs
(clone, then assign), never by writing into an input, so autograd sees every step.
"""
from __future__ import annotations

import math

import torch

from ..engine import darknet_ops as engine_ops
from ..engine.darknet_ops import _flavour, _reorg_index
from ..errors import ModelError
from ..layers.darknet import opt_float, opt_int, opt_list
from ..layers.darknet.structure import reorg_walk
from . import torch_darknet_activations as acts
from .torch_darknet import _shape
from .torch_darknet_train import AUTOGRAD, AUTOGRAD_ASSIGNING, REGION, YOLO, DarknetRule
from .torch_ops import op


# ---------------------------------------------------------------- joins
@op("darknet", "route", darknet=AUTOGRAD)
def route(layer, inputs, ctx):
    groups, gid = max(1, opt_int(layer, "groups", 1)), opt_int(layer, "group_id", 0)
    _shape(layer, *inputs)  # same H x W, divisible C
    parts = [a[:, gid * (a.shape[1] // groups):(gid + 1) * (a.shape[1] // groups)] if groups > 1
             else a for a in inputs]
    return [parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)]


def _shortcut_pjreddie(layer, prev, add):
    """``shortcut_cpu``: out = alpha*out + beta*add over min(C), strided for spatial mismatch:
    ``add`` is read every ``stride`` cells and written every ``sample`` cells of ``prev``."""
    (h2, w2), (h1, w1) = prev.shape[2:], add.shape[2:]
    ratios = {(a // b, b // a) for a, b in ((h1, h2), (w1, w2))}  # (stride, sample) per axis
    if len(ratios) > 1:
        raise ModelError(f"shortcut of a {w1} x {h1} layer onto a {w2} x {h2} layer: darknet "
                         "asserts equal width and height ratios")
    stride, sample = (max(r, 1) for r in ratios.pop())
    mc, mh, mw = min(prev.shape[1], add.shape[1]), min(h1, h2), min(w1, w2)
    src = add[:, :mc, ::stride, ::stride][:, :, :mh, :mw]
    dst = (slice(None), slice(0, mc), slice(0, mh * sample, sample), slice(0, mw * sample, sample))
    alpha, beta = opt_float(layer, "alpha", 1), opt_float(layer, "beta", 1)
    out = prev.clone()
    out[dst] = alpha * prev[dst] + beta * src if (alpha, beta) != (1, 1) else prev[dst] + src
    return out


def _shortcut_weights(layer, arrays, n_in, c, hw):
    """Per input i, the multiplier of every output value (AlexeyAB weights + normalisation),
    normalised in float64 as the engine does."""
    if layer.params.get("weights_type", "none") == "none":
        return None
    w = arrays["weights"].double().reshape(n_in, -1)  # (n+1, 1 or C)
    norm = layer.params.get("weights_normalization", "none")
    if norm in ("relu", "avg_relu"):
        r = torch.clamp(w, min=0.0)
        w = r / (1e-4 + r.sum(dim=0))
    elif norm == "softmax":
        e = torch.exp(w - w.amax(dim=0))
        w = e / (1e-4 + e.sum(dim=0))
    return w.float().repeat_interleave(hw if w.shape[1] == c else c * hw, dim=1)


def _shortcut_alexeyab(layer, prev, adds, arrays):
    """``shortcut_multilayer_cpu``: flat add of each from-layer's first min(size) values."""
    n, size = prev.shape[0], math.prod(prev.shape[1:])
    weights = _shortcut_weights(layer, arrays, len(adds) + 1, prev.shape[1],
                                size // prev.shape[1])
    out = prev.reshape(n, size)
    if weights is not None:
        out = out * weights[0]
    for i, a in enumerate(adds, 1):
        flat = a.reshape(n, -1)
        k = min(flat.shape[1], size)
        term = flat[:, :k] * weights[i, :k] if weights is not None else flat[:, :k]
        out = torch.cat([out[:, :k] + term, out[:, k:]], dim=1)
    return out.reshape(prev.shape)


@op("darknet", "shortcut", check=acts.unknown_activation, darknet=AUTOGRAD)
def shortcut(layer, inputs, ctx):
    prev, adds = inputs[0], inputs[1:]
    alexeyab_only = len(adds) > 1 or layer.params.get("weights_type", "none") != "none"
    if alexeyab_only or _flavour(ctx) == "alexeyab":
        y = _shortcut_alexeyab(layer, prev, adds, ctx.arrays)
    else:
        y = _shortcut_pjreddie(layer, prev, adds[0])
    return [acts.apply(layer, y)]


@op("darknet", "scale_channels", check=acts.unknown_activation)
def scale_channels(layer, inputs, ctx):
    scales, feats = inputs
    _shape(layer, scales, feats)
    return [acts.apply(layer, feats * scales)]  # (C,1,1) or (1,H,W) broadcast


@op("darknet", "sam", check=acts.unknown_activation)
def sam(layer, inputs, ctx):
    _shape(layer, *inputs)
    return [acts.apply(layer, inputs[0] * inputs[1])]


# ---------------------------------------------------------------- resampling
#: a summing [upsample] (negative stride) copies into the delta below
_UPSAMPLE_TRAINING = DarknetRule(assigns_delta=lambda layer: opt_int(layer, "stride", 2) < 0)


@op("darknet", "upsample", darknet=_UPSAMPLE_TRAINING)
def upsample(layer, inputs, ctx):
    """Nearest upsample times ``scale``; a negative stride sums stride x stride blocks
    (``upsample_cpu`` run backwards), reading the input as darknet indexes it."""
    x = inputs[0]
    s, scale = opt_int(layer, "stride", 2), opt_float(layer, "scale", 1)
    n, c, h, w = x.shape
    if s > 0:
        y = x.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
        return [y * scale if scale != 1 else y]
    s = -s
    oh, ow = h // s, w // s
    flat = x.reshape(-1)[: n * c * oh * s * ow * s].reshape(n, c, oh, s, ow, s)
    return [(flat.double().sum(dim=(3, 5)) * scale).float()]


def _reorg_cpu(x, w, h, c, s, forward, out_shape, ctx):
    """``reorg_cpu(x, w, h, c, batch, s, forward, out)``: the engine's index arithmetic as a
    scatter (forward) or a gather."""
    key = ("darknet reorg", w, h, c, s, x.device)
    idx = ctx.cache.get(key)
    if idx is None:
        idx = ctx.cache[key] = tuple(torch.as_tensor(a, device=x.device)
                                     for a in _reorg_index(w, h, c, s))
    in_index, out_index = idx
    src = x.reshape(x.shape[0], -1)
    out = src.new_zeros((x.shape[0], math.prod(out_shape[1:])))
    if forward:
        out = out.index_copy(1, out_index, src[:, in_index])
    else:
        out = out.index_copy(1, in_index, src[:, out_index])
    return out.reshape((x.shape[0],) + tuple(out_shape[1:]))


@op("darknet", "reorg3d")
@op("darknet", "reorg", darknet=AUTOGRAD_ASSIGNING)
def reorg(layer, inputs, ctx):
    x = inputs[0]
    n, c, h, w = x.shape
    how = reorg_walk(layer, tuple(x.shape))
    if how.kind == "extra":
        flat = x.reshape(n, -1)
        return [torch.cat([flat, flat.new_zeros((n, how.out_shape[1] - flat.shape[1]))], dim=1)
                .reshape(n, how.out_shape[1], 1, 1)]
    if how.kind == "flatten":
        y = x.reshape(n, c, h * w) if not how.reverse else x.reshape(n, h * w, c)
        return [y.transpose(1, 2).reshape(how.out_shape)]
    return [_reorg_cpu(x, *how.geometry, how.stride, how.reverse, how.out_shape, ctx)]


@op("darknet", "crop")
def crop(layer, inputs, ctx):
    """Test time (``forward_crop_layer``): centre crop, then x*2-1 unless ``noadjust=1``."""
    x = inputs[0]
    h, w = x.shape[2:]
    ch, cw = opt_int(layer, "crop_height", 1), opt_int(layer, "crop_width", 1)
    if ch > h or cw > w:
        raise ModelError(f"crop {cw} x {ch} is larger than its {w} x {h} input")
    dh, dw = (h - ch) // 2, (w - cw) // 2
    y = x[:, :, dh:dh + ch, dw:dw + cw]
    return [y if opt_int(layer, "noadjust", 0) else y * 2 - 1]


# ---------------------------------------------------------------- heads
def _no_tree(layer) -> str:
    if not layer.params.get("tree"):
        return ""
    return (f"{layer.type} with tree= (hierarchical softmax over a .tree file, YOLO9000) is "
            "not supported")


def _softmax(x, temperature=1.0, dim=-1):
    """darknet ``softmax()``: exp(x/t - max/t) / sum, in float64 as the engine computes it
    (a 1000-class softmax otherwise adds its own float32 rounding to the logits')."""
    x = x.double()
    return torch.softmax(x / temperature if temperature != 1 else x, dim=dim).float()


@op("darknet", "softmax", check=_no_tree)
def softmax(layer, inputs, ctx):
    x = inputs[0]
    groups = max(1, opt_int(layer, "groups", 1))
    flat = x.reshape(x.shape[0], groups, -1)
    return [_softmax(flat, opt_float(layer, "temperature", 1)).reshape(x.shape)]


@op("darknet", "yolo", darknet=YOLO)
def yolo(layer, inputs, ctx):
    """``forward_yolo_layer``: logistic on x, y, objectness and classes; AlexeyAB
    ``scale_x_y`` (x*s - (s-1)/2 on x, y) and ``new_coords`` (no logistic at all)."""
    x = inputs[0]
    n, c, h, w = x.shape
    na = len(opt_list(layer, "mask")) or opt_int(layer, "num", 1)
    raw = x.reshape(n, na, c // na, h, w)
    y = raw.clone()
    if not opt_int(layer, "new_coords", 0):
        y[:, :, 0:2] = torch.sigmoid(raw[:, :, 0:2])
        y[:, :, 4:] = torch.sigmoid(raw[:, :, 4:])
    s = opt_float(layer, "scale_x_y", 1)
    if s != 1:
        y[:, :, 0:2] = y[:, :, 0:2].clone() * s + (-0.5 * (s - 1))
    return [y.reshape(x.shape)]


@op("darknet", "region", check=_no_tree, darknet=REGION)
def region(layer, inputs, ctx):
    """pjreddie ``forward_region_layer`` at test time (no training deltas)."""
    x = inputs[0]
    n, c, h, w = x.shape
    num = opt_int(layer, "num", 1)
    coords, classes = opt_int(layer, "coords", 4), opt_int(layer, "classes", 20)
    background = opt_int(layer, "background", 0)
    raw = x.reshape(n, num, c // num, h, w)
    y = raw.clone()
    y[:, :, 0:2] = torch.sigmoid(raw[:, :, 0:2])
    if not background:
        y[:, :, coords] = torch.sigmoid(raw[:, :, coords])
    if not opt_int(layer, "softmax", 0):
        cls = slice(coords + 1, coords + 1 + classes)
        y[:, :, cls] = torch.sigmoid(raw[:, :, cls])
    else:
        lo = coords + (0 if background else 1)
        part = raw[:, :, lo:lo + classes + background]
        y[:, :, lo:lo + classes + background] = _softmax(part, dim=2)
    return [y.reshape(x.shape)]


@op("darknet", "detection")
def detection(layer, inputs, ctx):
    """YOLOv1 head: the input as is, except a per-cell class softmax when ``softmax=1``."""
    if not opt_int(layer, "softmax", 0):
        return [inputs[0]]
    classes = opt_int(layer, "classes", 1)
    k = opt_int(layer, "side", 7) ** 2 * classes  # the class block leads each image's vector
    flat = inputs[0].reshape(inputs[0].shape[0], -1)
    cls = _softmax(flat[:, :k].reshape(flat.shape[0], -1, classes)).reshape(flat.shape[0], k)
    return [torch.cat([cls, flat[:, k:]], dim=1).reshape(inputs[0].shape)]


# ---------------------------------------------------------------- elementwise
# dropout, cost, empty: the engine's identity serves tensors as it is (see its comment)
op("darknet", "dropout", "cost", "empty")(engine_ops.identity)


@op("darknet", "activation", check=acts.unknown_activation, darknet=AUTOGRAD_ASSIGNING)
def activation(layer, inputs, ctx):
    return [acts.apply(layer, inputs[0])]


@op("darknet", "logistic")
def logistic(layer, inputs, ctx):
    return [torch.sigmoid(inputs[0])]
