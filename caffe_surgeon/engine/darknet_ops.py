"""Forward functions of Darknet sections, with darknet's test-time semantics.

Each function follows the CPU ``forward_*_layer`` of pjreddie darknet (2018,
the Debian package) and, for sections or options only AlexeyAB darknet has,
of AlexeyAB darknet; ``src/`` file names are given where it helps. Arrays are
float32 (N, C, H, W); layers darknet treats as flat vectors give (N, C, 1, 1).

Fork differences and how they are chosen (``ctx`` is the executor's RunContext):

* BatchNorm: ``ctx.darknet_bn == "pjreddie"`` (default) normalises with
  ``(x - mean) / (sqrt(var) + .000001f)`` (pjreddie ``normalize_cpu``);
  ``"alexeyab"`` with ``(x - mean) / sqrt(var + .00001f)``.
* ``[shortcut]`` with inputs of different sizes: pjreddie ``shortcut_cpu``
  adds over min(C) channels and samples with integer stride/sample factors;
  AlexeyAB ``shortcut_multilayer_cpu`` adds the first min(size) values of the
  flattened arrays. The two agree when only C differs. The flavour is
  ``ctx.darknet_flavour`` if set, else the BN flavour; multiple ``from=``
  layers or ``weights_type`` exist only in AlexeyAB and always use its rule.
* ``[reorg]`` is pjreddie's (AlexeyAB calls it REORG_OLD: same code); ``[reorg3d]``
  is AlexeyAB's REORG. Both copy darknet's ``reorg_cpu`` index arithmetic
  literally, including pjreddie's famous mixed-up channel order.

Sections without a forward here raise a ModelError naming the section and why
(``refuse`` entries at the end, kept in :data:`.ops.REFUSED`).
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..layers.darknet import opt_float, opt_int, opt_list
from ..layers.darknet.structure import reorg_walk
from ..layers.registry import REGISTRY
from . import darknet_activations as acts
from .kernels.conv import conv2d, deconv2d, winograd_weights
from .kernels.epilogue import Epilogue
from .kernels.layout import upsample_nearest
from .kernels.logistic import logistic as logistic_values
from .kernels.pooling import avgpool, maxpool
from .ops import op, refuse

F32 = np.float32
#: normalize_cpu epsilons (see module docstring), kept beside the BN layouts.
from ..layers.darknet.base import BN_EPS  # noqa: E402


def _spec(layer):
    return REGISTRY[("darknet", layer.type)]


def _flavour(ctx) -> str:
    return getattr(ctx, "darknet_flavour", None) or ctx.darknet_bn


def _finish(layer, y):
    return [acts.apply(layer, y)]


# ---------------------------------------------------------------- batch norm
def bn_affine(layer, ctx, prefix: str = "", n: int | None = None):
    """(a, c) with BN(x) * scales + biases == a * x + c, per channel, cached per layer.

    pjreddie: a = scales / (sqrt(var) + 1e-6); AlexeyAB: a = scales / sqrt(var + 1e-5).
    Computed in float64 (darknet divides in double), then rounded once to float32.
    """
    names = [prefix + k for k in ("biases", "scales", "rolling_mean", "rolling_variance")]
    arrays = tuple(layer.weights[k] for k in names)
    key = ("bn", layer.name, prefix, ctx.darknet_bn)
    hit = ctx.cache.get(key)
    # keyed on the arrays themselves (kept alive here), so replacing one recomputes
    if hit is not None and all(a is b for a, b in zip(hit[0], arrays)):
        return hit[1]
    bias, scales, mean, var = (a.astype(np.float64).reshape(-1) for a in arrays)
    if ctx.darknet_bn == "pjreddie":
        inv = scales / (np.sqrt(var) + BN_EPS["pjreddie"])
    else:
        inv = scales / np.sqrt(var + BN_EPS["alexeyab"])
    out = (inv.astype(F32), (bias - mean * inv).astype(F32))
    ctx.cache[key] = (arrays, out)
    return out


def _bias_or_bn(layer, ctx, y, prefix=""):
    """Add the biases, or apply BN (whose shift is the biases), in place on (N, C, ...)."""
    shape = (1, -1) + (1,) * (y.ndim - 2)
    if opt_int(layer, "batch_normalize", 0) or opt_int(layer, "cbn", 0):
        a, c = bn_affine(layer, ctx, prefix)
        y *= a.reshape(shape)
        y += c.reshape(shape)
    else:
        y += layer.weights[prefix + "biases"].reshape(shape)
    return y


# ---------------------------------------------------------------- weighted
def _conv_weights(layer, ctx):
    """The layer whose arrays this conv uses: itself, or AlexeyAB ``share_index=``'s target."""
    if "share_index" not in layer.params:
        return layer
    graph = ctx.graph
    i = graph.index(layer.name)
    j = opt_int(layer, "share_index", 0)
    j = j if j >= 0 else i + j
    if not 0 <= j < i or graph.layers[j].type != layer.type:  # only convolutionals share
        raise ModelError(f"share_index={layer.params['share_index']} does not name an earlier "
                         "convolutional layer")
    return graph.layers[j]


@op("darknet", "convolutional")
def convolutional(layer, inputs, ctx):
    x = inputs[0]
    if opt_int(layer, "xnor", 0) or opt_int(layer, "binary", 0):
        raise ModelError("xnor=1 / binary=1 convolutions (binarised weights and inputs) are not "
                         "supported")
    g = _spec(layer).geometry(layer, [x.shape])
    src = _conv_weights(layer, ctx)
    w = src.weights["weights"]
    if opt_int(layer, "flipped", 0):  # load_convolutional_weights: stored (c*k*k, n), transposed
        w = np.ascontiguousarray(w.reshape(-1, g["n"]).T).reshape(w.shape)
    stride = (opt_int(layer, "stride_y", -1), opt_int(layer, "stride_x", -1))
    stride = tuple(s if s >= 1 else g["stride"] for s in stride)
    dil = max(1, opt_int(layer, "dilation", 1)) if g["size"] > 1 else 1
    # AlexeyAB pads by pad*dilation but sizes the output without the dilation.
    p = g["padding"] * dil
    ep, fused_act = _conv_epilogue(layer, src, ctx, w.shape[0])
    u = winograd_weights(ctx.cache, ("winograd", layer.name), w, stride, (dil, dil), g["groups"])
    y = conv2d(x, w, None, stride, (p, p), (dil, dil), g["groups"], epilogue=ep, winograd_u=u)
    if y.shape[2:] != (g["oh"], g["ow"]):
        raise ModelError(f"dilation={dil} with padding={g['padding']} gives a {y.shape[3]} x "
                         f"{y.shape[2]} output where darknet allocates {g['ow']} x {g['oh']}")
    return [y] if fused_act else _finish(layer, y)


#: activations the conv epilogue applies itself (same float32 operations as ACTIVATIONS)
_EPILOGUE_ACTS = {"linear": lambda e: e, "relu": lambda e: e.relu(),
                  "leaky": lambda e: e.leaky(.1), "revleaky": lambda e: e.leaky(.1),
                  "relu6": lambda e: e.clip(0, 6)}


def _conv_epilogue(layer, src, ctx, channels):
    """(Epilogue, whether it includes the activation): the bias or BN, then, when the
    activation is a simple one, the activation, all in the conv's output pass."""
    name = acts.activation_name(layer)
    bn = bool(opt_int(src, "batch_normalize", 0) or opt_int(src, "cbn", 0))
    arrays = ((src.weights["biases"],) if not bn else
              tuple(src.weights[k] for k in ("biases", "scales", "rolling_mean", "rolling_variance")))
    key = ("conv_epilogue", layer.name, ctx.darknet_bn)
    hit = ctx.cache.get(key)
    if hit is not None and hit[1] == (name, bn, channels) and all(a is b for a, b in zip(hit[0], arrays)):
        return hit[2], hit[3]
    ep = Epilogue(channels)
    if bn:
        a, c = bn_affine(src, ctx)
        ep.mul(a).add(c)
    else:
        ep.add(src.weights["biases"])
    fused = name in _EPILOGUE_ACTS
    if fused:
        _EPILOGUE_ACTS[name](ep)
    ctx.cache[key] = (arrays, (name, bn, channels), ep, fused)
    return ep, fused


@op("darknet", "deconvolutional")
def deconvolutional(layer, inputs, ctx):
    """pjreddie: W^T x by GEMM then col2im, i.e. a transposed conv with weights (c, n, k, k)."""
    g = _spec(layer).geometry(layer, [inputs[0].shape])
    s, p = g["stride"], g["padding"]
    y = deconv2d(inputs[0], layer.weights["weights"], None, (s, s), (p, p), (1, 1), 1)
    return _finish(layer, _bias_or_bn(layer, ctx, y))


@op("darknet", "connected")
def connected(layer, inputs, ctx):
    x = inputs[0]
    y = x.reshape(x.shape[0], -1) @ layer.weights["weights"].T
    return _finish(layer, _bias_or_bn(layer, ctx, y.reshape(y.shape + (1, 1))))


@op("darknet", "local")
def local(layer, inputs, ctx):
    """Unshared conv (``local_layer.c``): im2col with pad = the *flag* (0/1), one GEMM per location."""
    x = inputs[0]
    g = _spec(layer).geometry(layer, [x.shape])
    k, s, pad = g["size"], g["stride"], opt_int(layer, "pad", 0)
    N, C, H, W = x.shape
    ch, cw = (H + 2 * pad - k) // s + 1, (W + 2 * pad - k) // s + 1
    if (ch, cw) != (g["oh"], g["ow"]):
        raise ModelError(f"size={k}, pad={pad} gives {cw} x {ch} im2col columns but darknet "
                         f"allocates {g['ow']} x {g['oh']} locations (it would read past them)")
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    # cols[n, c, i, j, y, x] = xp[n, c, y*s + i, x*s + j]
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(N, ch * cw, C * k * k)  # (N, L, C*k*k)
    wts = layer.weights["weights"].reshape(ch * cw, g["n"], C * k * k)      # (L, n, C*k*k)
    y = np.einsum("nlk,lok->nol", cols, wts, optimize=True).reshape(N, g["n"], ch, cw)
    y = y.astype(F32) + layer.weights["biases"].reshape(1, g["n"], ch, cw)
    return _finish(layer, y)


@op("darknet", "batchnorm")
def batchnorm(layer, inputs, ctx):
    x = inputs[0]
    a, c = bn_affine(layer, ctx)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return [x * a.reshape(shape) + c.reshape(shape)]


# ---------------------------------------------------------------- pooling
def _pool_geometry(layer, x):
    stride = opt_int(layer, "stride", 1)
    sx, sy = opt_int(layer, "stride_x", stride), opt_int(layer, "stride_y", stride)
    size = opt_int(layer, "size", stride)
    padding = opt_int(layer, "padding", size - 1)
    out = _spec(layer).infer(layer, [x.shape])[0]
    # darknet: offset = -pad/2 (C division), windows clipped to the image
    return (size, size), (sy, sx), (padding // 2, padding // 2), out[2:]


@op("darknet", "maxpool")
def maxpool_(layer, inputs, ctx):
    x = inputs[0]
    if opt_int(layer, "maxpool_depth", 0):
        # AlexeyAB: output channel g is the max over input channels g, g+out_c, g+2*out_c, ...
        oc = opt_int(layer, "out_channels", 1)
        n, c, h, w = x.shape
        out = np.full((n, oc, h, w), -np.finfo(F32).max, F32)
        for k in range(c):
            np.maximum(out[:, k % oc], x[:, k], out=out[:, k % oc])
        return [out]
    k, s, p, hw = _pool_geometry(layer, x)
    return [maxpool(x, k, s, p, hw)]


@op("darknet", "local_avgpool")
def local_avgpool(layer, inputs, ctx):
    """AlexeyAB: mean over the window's cells that lie inside the image."""
    k, s, p, hw = _pool_geometry(layer, inputs[0])
    return [avgpool(inputs[0], k, s, p, hw, divide_by_padded=False)]


@op("darknet", "avgpool")
def avgpool_(layer, inputs, ctx):
    x = inputs[0]
    return [x.mean(axis=(2, 3), dtype=np.float64, keepdims=True).astype(F32)]


# ---------------------------------------------------------------- joins
@op("darknet", "route")
def route(layer, inputs, ctx):
    groups, gid = max(1, opt_int(layer, "groups", 1)), opt_int(layer, "group_id", 0)
    _spec(layer).infer(layer, [a.shape for a in inputs])  # same H x W, divisible C
    parts = [a[:, gid * (a.shape[1] // groups):(gid + 1) * (a.shape[1] // groups)] if groups > 1
             else a for a in inputs]
    if len(parts) == 1:
        return [parts[0] if groups == 1 else np.ascontiguousarray(parts[0])]
    return [np.concatenate(parts, axis=1)]


def _shortcut_pjreddie(layer, prev, add):
    """``shortcut_cpu``: out = alpha*out + beta*add over min(C), strided for spatial mismatch."""
    out = prev.copy()
    (_, c2, h2, w2), (_, c1, h1, w1) = prev.shape, add.shape
    stride, sample = w1 // w2, w2 // w1
    if stride != h1 // h2 or sample != h2 // h1:
        raise ModelError(f"shortcut of a {w1} x {h1} layer onto a {w2} x {h2} layer: darknet "
                         "asserts equal width and height ratios")
    stride, sample = max(stride, 1), max(sample, 1)
    mc, mh, mw = min(c1, c2), min(h1, h2), min(w1, w2)
    alpha, beta = F32(opt_float(layer, "alpha", 1)), F32(opt_float(layer, "beta", 1))
    dst = (slice(None), slice(0, mc), slice(0, mh * sample, sample), slice(0, mw * sample, sample))
    src = add[:, :mc, 0:mh * stride:stride, 0:mw * stride:stride]
    out[dst] = alpha * out[dst] + beta * src if (alpha, beta) != (1, 1) else out[dst] + src
    return out


def _shortcut_weights(layer, n_in, c, hw):
    """Per input i, the multiplier of every output value (AlexeyAB weights + normalisation)."""
    kind = layer.params.get("weights_type", "none")
    if kind == "none":
        return None
    w = layer.weights["weights"].astype(np.float64).reshape(n_in, -1)  # (n+1, 1 or C)
    norm = layer.params.get("weights_normalization", "none")
    if norm in ("relu", "avg_relu"):
        r = np.maximum(w, 0)
        w = r / (1e-4 + r.sum(axis=0))
    elif norm == "softmax":
        e = np.exp(w - w.max(axis=0))
        w = e / (1e-4 + e.sum(axis=0))
    w = w.astype(F32)
    per = np.repeat(w, hw, axis=1) if w.shape[1] == c else np.repeat(w, c * hw, axis=1)
    return per  # (n+1, C*H*W)


def _shortcut_alexeyab(layer, prev, adds):
    """``shortcut_multilayer_cpu``: flat add of each from-layer's first min(size) values."""
    n, size = prev.shape[0], int(np.prod(prev.shape[1:]))
    weights = _shortcut_weights(layer, len(adds) + 1, prev.shape[1], size // prev.shape[1])
    out = prev.reshape(n, size).copy()
    if weights is not None:
        out *= weights[0]
    for i, a in enumerate(adds, 1):
        flat = a.reshape(n, -1)
        k = min(flat.shape[1], size)
        out[:, :k] += flat[:, :k] * weights[i, :k] if weights is not None else flat[:, :k]
    return out.reshape(prev.shape)


@op("darknet", "shortcut")
def shortcut(layer, inputs, ctx):
    prev, adds = inputs[0], inputs[1:]
    alexeyab_only = len(adds) > 1 or layer.params.get("weights_type", "none") != "none"
    if alexeyab_only or _flavour(ctx) == "alexeyab":
        y = _shortcut_alexeyab(layer, prev, adds)
    else:
        y = _shortcut_pjreddie(layer, prev, adds[0])
    return _finish(layer, y)


@op("darknet", "scale_channels")
def scale_channels(layer, inputs, ctx):
    scales, feats = inputs
    _spec(layer).infer(layer, [scales.shape, feats.shape])
    return _finish(layer, feats * scales)  # (C,1,1) or (1,H,W) broadcast, as the C index math


@op("darknet", "sam")
def sam(layer, inputs, ctx):
    _spec(layer).infer(layer, [a.shape for a in inputs])
    return _finish(layer, inputs[0] * inputs[1])


# ---------------------------------------------------------------- resampling
@op("darknet", "upsample")
def upsample(layer, inputs, ctx):
    """Nearest upsample times ``scale``; a negative stride sums stride x stride blocks
    (``upsample_cpu`` run backwards), reading the input as darknet indexes it."""
    x = inputs[0]
    s, scale = opt_int(layer, "stride", 2), F32(opt_float(layer, "scale", 1))
    n, c, h, w = x.shape
    if s > 0:
        return [upsample_nearest(x, s, scale)]
    s = -s
    oh, ow = h // s, w // s
    # darknet's out_index = b*ow*oh*c*s*s + k*ow*oh*s*s + j*ow*s + i over the flat batch
    flat = x.reshape(-1)[: n * c * oh * s * ow * s].reshape(n, c, oh, s, ow, s)
    return [(flat.sum(axis=(3, 5), dtype=np.float64) * float(scale)).astype(F32)]


def _reorg_index(w, h, c, s):
    """darknet ``reorg_cpu`` over (w, h, c): (in_index, out_index) of one image, flat."""
    if c % (s * s):
        raise ModelError(f"reorg with stride {s} needs channels ({c}) divisible by {s * s}; "
                         "darknet would index outside its buffers")
    oc = c // (s * s)
    k, j, i = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    in_index = i + w * (j + h * k)
    offset = k // oc
    w2, h2 = i * s + offset % s, j * s + offset // s
    out_index = w2 + w * s * (h2 + h * s * (k % oc))
    return in_index.reshape(-1), out_index.reshape(-1)


def _reorg_cpu(x, w, h, c, s, forward, out_shape, ctx):
    """Run ``reorg_cpu(x, w, h, c, batch, s, forward, out)`` with its literal index arithmetic."""
    key = ("reorg", w, h, c, s)
    idx = ctx.cache.get(key)
    if idx is None:
        idx = ctx.cache[key] = _reorg_index(w, h, c, s)
    in_index, out_index = idx
    n = x.shape[0]
    src = x.reshape(n, -1)
    out = np.zeros((n, int(np.prod(out_shape[1:]))), F32)
    if forward:
        out[:, out_index] = src[:, in_index]
    else:
        out[:, in_index] = src[:, out_index]
    return out.reshape((n,) + tuple(out_shape[1:]))


@op("darknet", "reorg", "reorg3d")
def reorg(layer, inputs, ctx):
    x = inputs[0]
    n, c, h, w = x.shape
    how = reorg_walk(layer, x.shape)
    if how.kind == "extra":
        out = np.zeros((n, how.out_shape[1], 1, 1), F32)
        out[:, : c * h * w, 0, 0] = x.reshape(n, -1)
        return [out]
    if how.kind == "flatten":
        flat = x.reshape(n, c, h * w)
        y = flat.transpose(0, 2, 1) if not how.reverse else x.reshape(n, h * w, c).transpose(0, 2, 1)
        return [np.ascontiguousarray(y).reshape(how.out_shape)]
    return [_reorg_cpu(x, *how.geometry, how.stride, how.reverse, how.out_shape, ctx)]


@op("darknet", "crop")
def crop(layer, inputs, ctx):
    """Test time (``forward_crop_layer``): centre crop, then x*2-1 unless ``noadjust=1``."""
    x = inputs[0]
    _, _, h, w = x.shape
    ch, cw = opt_int(layer, "crop_height", 1), opt_int(layer, "crop_width", 1)
    if ch > h or cw > w:
        raise ModelError(f"crop {cw} x {ch} is larger than its {w} x {h} input")
    dh, dw = (h - ch) // 2, (w - cw) // 2
    y = x[:, :, dh:dh + ch, dw:dw + cw]
    if opt_int(layer, "noadjust", 0):
        return [np.ascontiguousarray(y)]
    return [y * F32(2) - F32(1)]


# ---------------------------------------------------------------- heads
def softmax_groups(x, n, temperature=1.0):
    """darknet ``softmax()`` over the last axis of size n: exp(x/t - max/t) / sum."""
    x64 = x.astype(np.float64)
    e = np.exp(x64 / temperature - x64.max(axis=-1, keepdims=True) / temperature)
    return (e / e.sum(axis=-1, keepdims=True)).astype(F32)


@op("darknet", "softmax")
def softmax(layer, inputs, ctx):
    x = inputs[0]
    if layer.params.get("tree"):
        raise ModelError("softmax with tree= (hierarchical softmax, darknet9000) is not supported")
    groups = max(1, opt_int(layer, "groups", 1))
    t = opt_float(layer, "temperature", 1)
    n = x.shape[0]
    flat = x.reshape(n, groups, -1)
    return [softmax_groups(flat, flat.shape[-1], t).reshape(x.shape)]


def _logistic(a):
    return acts.ACTIVATIONS["logistic"](a)


@op("darknet", "yolo")
def yolo(layer, inputs, ctx):
    """``forward_yolo_layer``: logistic on x, y, objectness and classes; AlexeyAB
    ``scale_x_y`` (x*s - (s-1)/2 on x, y) and ``new_coords`` (no logistic at all)."""
    x = inputs[0]
    n, c, h, w = x.shape
    na = len(opt_list(layer, "mask")) or opt_int(layer, "num", 1)
    return [yolo_values(layer, x.reshape(n, na, c // na, h, w), 2).reshape(x.shape)]


def yolo_values(layer, raw: np.ndarray, axis: int) -> np.ndarray:
    """The [yolo] layer's output for its raw input ``raw``, whose entries (x, y, w, h,
    objectness, classes) lie along ``axis``: the whole map, or some cells' entries (an
    evaluator decoding only the cells above its threshold); element by element, so the
    same bits either way."""
    at = (slice(None),) * axis
    if not opt_int(layer, "new_coords", 0):
        # one contiguous pass over all entries, then w and h (2 of each 85) put back raw
        y = logistic_values(raw)
        y[at + (slice(2, 4),)] = raw[at + (slice(2, 4),)]
    else:
        y = np.array(raw, F32)
    s = F32(opt_float(layer, "scale_x_y", 1))
    if s != 1:
        xy = at + (slice(0, 2),)
        y[xy] = y[xy] * s + F32(-0.5 * (float(s) - 1))
    return y


def yolo_objectness(layer, raw: np.ndarray) -> np.ndarray:
    """The [yolo] layer's objectness for raw objectness entries (any shape)."""
    return np.array(raw, F32) if opt_int(layer, "new_coords", 0) else logistic_values(raw)


@op("darknet", "region")
def region(layer, inputs, ctx):
    """pjreddie ``forward_region_layer`` at test time (no training deltas)."""
    x = inputs[0]
    if layer.params.get("tree"):
        raise ModelError("region with tree= (YOLO9000 softmax tree over data/9k.tree) is not "
                         "supported")
    n, c, h, w = x.shape
    num = opt_int(layer, "num", 1)
    coords, classes = opt_int(layer, "coords", 4), opt_int(layer, "classes", 20)
    background = opt_int(layer, "background", 0)
    use_softmax = opt_int(layer, "softmax", 0)
    raw = x.reshape(n, num, c // num, h, w)
    y = raw.copy()
    y[:, :, 0:2] = _logistic(raw[:, :, 0:2])
    if not background:
        y[:, :, coords] = _logistic(raw[:, :, coords])
    if not use_softmax:
        y[:, :, coords + 1:coords + 1 + classes] = _logistic(raw[:, :, coords + 1:coords + 1 + classes])
    else:
        lo = coords + (0 if background else 1)
        part = np.moveaxis(raw[:, :, lo:lo + classes + background], 2, -1)
        y[:, :, lo:lo + classes + background] = np.moveaxis(softmax_groups(part, part.shape[-1]), -1, 2)
    return [y.reshape(x.shape)]


@op("darknet", "detection")
def detection(layer, inputs, ctx):
    """YOLOv1 head: the input as is, except a per-cell class softmax when ``softmax=1``."""
    x = inputs[0]
    if not opt_int(layer, "softmax", 0):
        return [x]
    side, classes = opt_int(layer, "side", 7), opt_int(layer, "classes", 1)
    n = x.shape[0]
    flat = x.reshape(n, -1).copy()
    cls = flat[:, : side * side * classes].reshape(n, side * side, classes)
    flat[:, : side * side * classes] = softmax_groups(cls, classes).reshape(n, -1)
    return [flat.reshape(x.shape)]


# ---------------------------------------------------------------- elementwise
@op("darknet", "dropout", "cost", "empty")
def identity(layer, inputs, ctx):
    # dropout: identity at test time (darknet shares the previous output);
    # cost: computes a loss only when a truth is given; empty/silence: a no-op.
    return [inputs[0]]


@op("darknet", "activation")
def activation(layer, inputs, ctx):
    return _finish(layer, inputs[0].copy())


@op("darknet", "logistic")
def logistic(layer, inputs, ctx):
    return [_logistic(inputs[0])]


@op("darknet", "l2norm")
def l2norm(layer, inputs, ctx):
    """``l2normalize_cpu``: each pixel divided by the L2 norm over channels (no epsilon)."""
    x = inputs[0].astype(np.float64)
    return [(x / np.sqrt((x * x).sum(axis=1, keepdims=True))).astype(F32)]


@op("darknet", "normalization")
def normalization(layer, inputs, ctx):
    """pjreddie LRN with its running-sum recurrence, which leaves channel size/2 out of the
    first window and later subtracts it: norms_k = kappa + alpha * (S_0 + adds - subs)."""
    x = inputs[0].astype(np.float64)
    size = opt_int(layer, "size", 5)
    alpha, beta = opt_float(layer, "alpha", .0001), opt_float(layer, "beta", .75)
    kappa = opt_float(layer, "kappa", 1)
    c = x.shape[1]
    sq = x * x
    acc = np.zeros_like(sq)
    running = sq[:, : size // 2].sum(axis=1)
    acc[:, 0] = running
    for k in range(1, c):
        prev, nxt = k - (size - 1) // 2 - 1, k + size // 2
        if prev >= 0:
            running = running - sq[:, prev]
        if nxt < c:
            running = running + sq[:, nxt]
        acc[:, k] = running
    norms = kappa + alpha * acc
    return [(x * norms ** -beta).astype(F32)]


# ---------------------------------------------------------------- refused
# sections with a shape rule but no forward, and why
refuse("darknet", "rnn", "gru",
       reason="recurrent: darknet carries the hidden state from one network_predict call to "
              "the next, so one stateless forward pass would not match it")
refuse("darknet", "Gaussian_yolo",
       reason="AlexeyAB-only head whose test-time activations (which of its 9 box values "
              "get a logistic) could not be checked against a reference; no cfg here uses it")
refuse("darknet", "iseg",
       reason="instance-segmentation head with no test-time semantics in either darknet")
