"""ONNX export of Darknet sections, mirroring ``engine/darknet_ops.py`` (test-time semantics).

* Convolution padding is darknet's ``pad``/``padding`` (times the dilation, as AlexeyAB pads);
  maxpool's is ``padding`` (default ``size - 1``) split as ``padding // 2`` before and the
  rest after, which is how darknet's ``-pad/2`` offset and clipped windows come out: a size-2
  stride-1 maxpool keeps 13 x 13 with pads (0, 1).
* BatchNorm follows the chosen fork's formula (``darknet_bn``: pjreddie
  ``(x - mean) / (sqrt(var) + 1e-6)``, AlexeyAB ``/ sqrt(var + 1e-5)``), which ONNX's
  BatchNormalization cannot say for pjreddie: it is kept as a per-channel Mul and Add
  computed in float64 as the engine does, or folded into the convolution (``fold_bn``).
* Activations are composed from standard operators, one per darknet name.
* ``[shortcut]`` adds as the engine's flavour says (pjreddie's strided channel-min add, or
  AlexeyAB's flat add with optional weights); ``[reorg]``/``[reorg3d]`` are one Gather.
* ``[yolo]``/``[region]``/``[detection]`` heads apply their logistic/softmax parts in the graph
  (what the engine's forward gives); box decoding and darknet's NMS follow them in
  :mod:`.onnx_yolo` (the ``detections`` output); ``heads_only`` ends the graph at their inputs.
"""
from __future__ import annotations

import numpy as np

from ..layers.darknet import opt_float, opt_int, opt_list
from ..layers.darknet.structure import reorg_walk
from ..layers.registry import REGISTRY
from . import onnx_gather as gather
from .onnx_caffe_ops import max_pool
from .onnx_table import export, refuse

F32 = np.float32
BN_EPS = {"pjreddie": 1e-6, "alexeyab": 1e-5}


def _spec(layer):
    return REGISTRY[("darknet", layer.type)]


def _scalar(b, v, what="c"):
    return b.const(np.array(v, F32), what)


# ---------------------------------------------------------------- activations
def _where(b, cond, a, c):
    return b.node("Where", [cond, a, c])


def _activate(b, name: str, x):
    """Darknet activation ``name`` of value ``x`` (``engine/darknet_activations.py``)."""
    n = lambda op, *ins, **kw: b.node(op, list(ins), **kw)  # noqa: E731
    s = lambda v: _scalar(b, v, "act")  # noqa: E731
    if name == "linear":
        return x
    if name == "logistic":
        return n("Sigmoid", x)
    if name == "loggy":
        return n("Sub", n("Mul", n("Sigmoid", x), s(2.0)), s(1.0))
    if name == "relu":
        return n("Relu", x)
    if name == "relu6":
        return n("Clip", x, s(0.0), s(6.0))
    if name == "elu":
        return n("Elu", x, alpha=1.0)
    if name == "selu":
        return n("Selu", x, alpha=1.6732, gamma=1.0507)
    if name == "gelu":
        inner = n("Add", n("Mul", x, s(0.797885)), n("Mul", n("Mul", n("Mul", x, x), x), s(0.035677)))
        return n("Mul", n("Mul", x, s(0.5)), n("Add", n("Tanh", inner), s(1.0)))
    if name == "relie":
        return n("LeakyRelu", x, alpha=0.01)
    if name == "ramp":
        return n("Add", n("Relu", x), n("Mul", x, s(0.1)))
    if name in ("leaky", "revleaky"):
        return n("LeakyRelu", x, alpha=0.1)
    if name == "tanh":
        return n("Tanh", x)
    if name == "plse":
        low = n("Mul", n("Add", x, s(4.0)), s(0.01))
        high = n("Add", n("Mul", n("Sub", x, s(4.0)), s(0.01)), s(1.0))
        mid = n("Add", n("Mul", x, s(0.125)), s(0.5))
        return _where(b, n("Less", x, s(-4.0)), low, _where(b, n("Greater", x, s(4.0)), high, mid))
    if name == "stair":
        fl = n("Floor", x)
        half = n("Floor", n("Div", x, s(2.0)))
        even = n("Equal", n("Mod", fl, s(2.0), fmod=1), s(0.0))
        return _where(b, even, half, n("Add", n("Sub", x, fl), half))
    if name == "hardtan":
        return n("Clip", x, s(-1.0), s(1.0))
    if name == "lhtan":
        low, high = n("Mul", x, s(0.001)), n("Add", n("Mul", n("Sub", x, s(1.0)), s(0.001)), s(1.0))
        return _where(b, n("Less", x, s(0.0)), low, _where(b, n("Greater", x, s(1.0)), high, x))
    if name == "swish":
        return n("Mul", x, n("Sigmoid", x))
    if name == "mish":
        return n("Mul", x, n("Tanh", n("Softplus", x)))
    if name == "hard_mish":
        quad = n("Add", n("Div", n("Mul", x, x), s(2.0)), x)
        return _where(b, n("Greater", x, s(0.0)), x,
                      _where(b, n("Greater", x, s(-2.0)), quad, n("Mul", x, s(0.0))))
    if name == "normalize_channels":
        pos = n("Relu", x)
        total = n("Add", n("ReduceSum", pos, b.ints([1], "axes"), keepdims=1), s(0.0001))
        return n("Div", pos, total)
    if name in ("normalize_channels_softmax", "normalize_channels_softmax_maxval"):
        shifted = x if name == "normalize_channels_softmax" else \
            n("Sub", x, b.reduce("ReduceMax", x, [1]))
        e = n("Exp", shifted)
        return n("Div", e, n("Add", n("ReduceSum", e, b.ints([1], "axes"), keepdims=1), s(0.0001)))
    raise b.refusal(f"unknown activation '{name}' (darknet would silently use relu)")


def _finish(b, layer, y):
    from ..engine.darknet_activations import activation_name
    out = _activate(b, activation_name(layer), y)
    b.node("Identity", [out], [b.write(layer.tops[0])])


# ---------------------------------------------------------------- batch norm
def bn_affine(b, layer, n=None):
    """(a, c) with the layer's BN + biases == a * x + c per channel, as ``engine.darknet_ops``."""
    flavour = b.options.get("darknet_bn", "pjreddie")
    bias, scales, mean, var = (layer.weights[k].astype(np.float64).reshape(-1)
                               for k in ("biases", "scales", "rolling_mean", "rolling_variance"))
    if flavour == "pjreddie":
        inv = scales / (np.sqrt(var) + BN_EPS["pjreddie"])
    else:
        inv = scales / np.sqrt(var + BN_EPS["alexeyab"])
    return inv.astype(F32), (bias - mean * inv).astype(F32)


def _has_bn(layer) -> bool:
    return bool(opt_int(layer, "batch_normalize", 0) or opt_int(layer, "cbn", 0))


def _bias_or_bn(b, layer, y, rank=4):
    shape = (1, -1) + (1,) * (rank - 2)
    if _has_bn(layer):
        a, c = bn_affine(b, layer)
        y = b.node("Mul", [y, b.const(a.reshape(shape), "bn_scale")])
        return b.node("Add", [y, b.const(c.reshape(shape), "bn_shift")])
    return b.node("Add", [y, b.const(layer.weights["biases"].reshape(shape), "biases")])


# ---------------------------------------------------------------- weighted
@export("darknet", "convolutional")
def convolutional(b, layer):
    if opt_int(layer, "xnor", 0) or opt_int(layer, "binary", 0):
        raise b.refusal("xnor=1 / binary=1 convolutions (binarised weights and inputs) have no "
                        "engine forward")
    g = _spec(layer).geometry(layer, [b.in_shape()])
    src = layer
    if "share_index" in layer.params:
        i = b.graph.index(layer.name)
        j = opt_int(layer, "share_index", 0)
        j = j if j >= 0 else i + j
        if not 0 <= j < i or b.graph.layers[j].type != layer.type:
            raise b.refusal(f"share_index={layer.params['share_index']} does not name an earlier "
                            "convolutional layer")
        src = b.graph.layers[j]
    w = src.weights["weights"]
    if opt_int(layer, "flipped", 0):
        w = np.ascontiguousarray(w.reshape(-1, g["n"]).T).reshape(w.shape)
    stride = (opt_int(layer, "stride_y", -1), opt_int(layer, "stride_x", -1))
    stride = tuple(s if s >= 1 else g["stride"] for s in stride)
    dil = max(1, opt_int(layer, "dilation", 1)) if g["size"] > 1 else 1
    p = g["padding"] * dil
    ends = [(o - 1) * s + dil * (g["size"] - 1) + 1 - (d + p)
            for o, s, d in zip((g["oh"], g["ow"]), stride, (g["h"], g["w"]))]
    if min(ends) < 0:
        raise b.refusal(f"dilation={dil} with padding={g['padding']} does not give darknet's "
                        f"{g['ow']} x {g['oh']} output")
    attrs = dict(kernel_shape=[g["size"]] * 2, strides=list(stride), dilations=[dil, dil],
                 pads=[p, p, ends[0], ends[1]], group=g["groups"])
    if b.options.get("fold_bn") or not _has_bn(src):
        a, c = bn_affine(b, src) if _has_bn(src) else (None, src.weights["biases"])
        wf = w if a is None else (w.astype(np.float64) * a.reshape(-1, 1, 1, 1)).astype(F32)
        y = b.node("Conv", [b.inputs()[0], b.const(wf, "weights"), b.const(c, "biases")], **attrs)
        return _finish(b, layer, y)
    y = b.node("Conv", [b.inputs()[0], b.const(w, "weights")], **attrs)
    _finish(b, layer, _bias_or_bn(b, src, y))


@export("darknet", "deconvolutional")
def deconvolutional(b, layer):
    g = _spec(layer).geometry(layer, [b.in_shape()])
    s, p = g["stride"], g["padding"]
    y = b.node("ConvTranspose", [b.inputs()[0], b.const(layer.weights["weights"], "weights")],
               kernel_shape=[g["size"]] * 2, strides=[s, s], pads=[p, p, p, p])
    _finish(b, layer, _bias_or_bn(b, layer, y))


@export("darknet", "connected")
def connected(b, layer):
    flat = b.node("Flatten", [b.inputs()[0]], axis=1)
    y = b.node("Gemm", [flat, b.const(layer.weights["weights"], "weights")], transB=1)
    y = _bias_or_bn(b, layer, y, rank=2)
    _finish(b, layer, b.node("Unsqueeze", [y, b.ints([2, 3], "axes")]))


@export("darknet", "local")
def local(b, layer):
    """Unshared weights: the k*k shifted windows of the padded input, stacked as im2col
    columns, then one Einsum with the (locations, filters, C*k*k) weights."""
    n_, c, h, w = b.in_shape()
    g = _spec(layer).geometry(layer, [b.in_shape()])
    k, s, pad = g["size"], g["stride"], opt_int(layer, "pad", 0)
    ch, cw = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    if (ch, cw) != (g["oh"], g["ow"]):
        raise b.refusal(f"size={k}, pad={pad} gives {cw} x {ch} locations but darknet allocates "
                        f"{g['ow']} x {g['oh']}")
    x = b.inputs()[0]
    if pad:
        x = b.node("Pad", [x, b.ints([0, 0, pad, pad, 0, 0, pad, pad])])
    cols = []
    for i in range(k):
        for j in range(k):
            win = b.node("Slice", [x, b.ints([i, j]), b.ints([i + (ch - 1) * s + 1, j + (cw - 1) * s + 1]),
                                   b.ints([2, 3]), b.ints([s, s])])
            cols.append(b.node("Unsqueeze", [win, b.ints([2], "axes")]))  # (N, C, 1, ch, cw)
    col = b.node("Concat", cols, axis=2)                                  # (N, C, k*k, ch, cw)
    col = b.node("Reshape", [col, b.ints([0, c * k * k, ch * cw])])       # (N, C*k*k, L)
    wts = layer.weights["weights"].reshape(ch * cw, g["n"], c * k * k)
    y = b.node("Einsum", [col, b.const(wts, "weights")], equation="nkl,lok->nol")
    y = b.node("Reshape", [y, b.ints([0, g["n"], ch, cw])])
    y = b.node("Add", [y, b.const(layer.weights["biases"].reshape(1, g["n"], ch, cw), "biases")])
    _finish(b, layer, y)


@export("darknet", "batchnorm")
def batchnorm(b, layer):
    a, c = bn_affine(b, layer)
    y = b.node("Mul", [b.inputs()[0], b.const(a.reshape(1, -1, 1, 1), "bn_scale")])
    b.node("Add", [y, b.const(c.reshape(1, -1, 1, 1), "bn_shift")], [b.write(layer.tops[0])])


# ---------------------------------------------------------------- pooling
def _pool_geometry(b, layer):
    stride = opt_int(layer, "stride", 1)
    sx, sy = opt_int(layer, "stride_x", stride), opt_int(layer, "stride_y", stride)
    size = opt_int(layer, "size", stride)
    padding = opt_int(layer, "padding", size - 1)
    return (size, size), (sy, sx), (padding // 2, padding // 2), b.out_shape()[2:]


def _dark_pool(b, x, k, s, pb, out_hw, mode):
    """Darknet windows: start at ``-pb``, clipped to the image (max ignores, the local average
    excludes what lies outside)."""
    _, _, h, w = b.in_shape()
    ends = [(o - 1) * st + kk - (size + p) for o, st, kk, size, p in zip(out_hw, s, k, (h, w), pb)]
    if min(ends) < 0:
        keep = [size + min(e, 0) for size, e in zip((h, w), ends)]
        x = b.node("Slice", [x, b.ints([0, 0]), b.ints(keep), b.ints([2, 3])])
        ends = [max(e, 0) for e in ends]
    if mode == "MAX":
        return max_pool(b, x, k, s, [pb[0], pb[1], ends[0], ends[1]])
    if any(e >= kk for e, kk in zip(ends, k)) or any(p >= kk for p, kk in zip(pb, k)):
        raise b.refusal("some windows lie wholly outside the input (an average over nothing)")
    return b.node("AveragePool", [x], kernel_shape=list(k), strides=list(s),
                  pads=[pb[0], pb[1], ends[0], ends[1]], count_include_pad=0)


@export("darknet", "maxpool")
def maxpool(b, layer):
    x = b.inputs()[0]
    if opt_int(layer, "maxpool_depth", 0):
        oc = opt_int(layer, "out_channels", 1)
        n, c, h, w = b.in_shape()
        groups = -(-c // oc)
        if c != groups * oc:  # pad channels with the lowest float so max ignores them
            fill = b.node("Mul", [b.node("Slice", [x, b.ints([0]), b.ints([1]), b.ints([1])]),
                                  _scalar(b, 0.0)])
            low = b.node("Add", [fill, _scalar(b, -np.finfo(F32).max)])
            x = b.node("Concat", [x] + [low] * (groups * oc - c), axis=1)
        y = b.node("Reshape", [x, b.ints([0, groups, oc, h, w])])
        y = b.reduce("ReduceMax", y, [1], keepdims=0)
        return b.node("Identity", [y], [b.write(layer.tops[0])])
    k, s, p, hw = _pool_geometry(b, layer)
    b.node("Identity", [_dark_pool(b, x, k, s, p, hw, "MAX")], [b.write(layer.tops[0])])


@export("darknet", "local_avgpool")
def local_avgpool(b, layer):
    k, s, p, hw = _pool_geometry(b, layer)
    y = _dark_pool(b, b.inputs()[0], k, s, p, hw, "AVE")
    b.node("Identity", [y], [b.write(layer.tops[0])])


@export("darknet", "avgpool")
def avgpool(b, layer):
    b.node("GlobalAveragePool", b.inputs(), [b.write(layer.tops[0])])


# ---------------------------------------------------------------- joins
@export("darknet", "route")
def route(b, layer):
    groups, gid = max(1, opt_int(layer, "groups", 1)), opt_int(layer, "group_id", 0)
    _spec(layer).infer(layer, [b.in_shape(i) for i in range(len(layer.bottoms))])
    parts = []
    for i, x in enumerate(b.inputs()):
        if groups > 1:
            c = b.in_shape(i)[1] // groups
            x = b.node("Slice", [x, b.ints([gid * c]), b.ints([(gid + 1) * c]), b.ints([1])])
        parts.append(x)
    if len(parts) == 1:
        return b.node("Identity", parts, [b.write(layer.tops[0])])
    b.node("Concat", parts, [b.write(layer.tops[0])], axis=1)


def _shortcut_pjreddie(b, layer, prev, add):
    (_, c2, h2, w2), (_, c1, h1, w1) = b.in_shape(0), b.in_shape(1)
    stride, sample = w1 // w2, w2 // w1
    if stride != h1 // h2 or sample != h2 // h1:
        raise b.refusal(f"shortcut of a {w1} x {h1} layer onto a {w2} x {h2} layer: darknet "
                        "asserts equal width and height ratios")
    if sample > 1:
        raise b.refusal(f"shortcut from a smaller {w1} x {h1} layer onto {w2} x {h2} adds to "
                        "every {sample}th value only, a scatter the exporter does not build")
    stride = max(stride, 1)
    mc, mh, mw = min(c1, c2), min(h1, h2), min(w1, w2)
    alpha, beta = opt_float(layer, "alpha", 1), opt_float(layer, "beta", 1)
    src = add
    if (c1, h1, w1) != (mc, mh, mw) or stride > 1:
        src = b.node("Slice", [add, b.ints([0, 0, 0]), b.ints([mc, mh * stride, mw * stride]),
                               b.ints([1, 2, 3]), b.ints([1, stride, stride])])
    if (alpha, beta) != (1, 1):
        prev = b.node("Mul", [prev, _scalar(b, alpha)])
        src = b.node("Mul", [src, _scalar(b, beta)])
    if (mc, mh, mw) != (c2, h2, w2):  # only the overlap is added: zeros elsewhere
        src = b.node("Pad", [src, b.ints([0, 0, 0, 0, 0, c2 - mc, h2 - mh, w2 - mw])])
    return b.node("Add", [prev, src])


def _shortcut_alexeyab(b, layer, prev, adds):
    from ..engine.darknet_ops import _shortcut_weights
    shape = b.in_shape(0)
    size = int(np.prod(shape[1:]))
    weights = _shortcut_weights(layer, len(adds) + 1, shape[1], size // shape[1])
    out = b.node("Flatten", [prev], axis=1)
    if weights is not None:
        out = b.node("Mul", [out, b.const(weights[0].reshape(1, -1), "weights")])
    for i, a in enumerate(adds, 1):
        flat = b.node("Flatten", [a], axis=1)
        k = min(int(np.prod(b.in_shape(i)[1:])), size)
        if k != int(np.prod(b.in_shape(i)[1:])):
            flat = b.node("Slice", [flat, b.ints([0]), b.ints([k]), b.ints([1])])
        if weights is not None:
            flat = b.node("Mul", [flat, b.const(weights[i, :k].reshape(1, -1), "weights")])
        if k < size:
            flat = b.node("Pad", [flat, b.ints([0, 0, 0, size - k])])
        out = b.node("Add", [out, flat])
    return b.node("Reshape", [out, b.ints([0] + list(shape[1:]))])


@export("darknet", "shortcut")
def shortcut(b, layer):
    ins = b.inputs()
    prev, adds = ins[0], ins[1:]
    alexeyab_only = len(adds) > 1 or layer.params.get("weights_type", "none") != "none"
    flavour = b.options.get("darknet_flavour") or b.options.get("darknet_bn", "pjreddie")
    if alexeyab_only or flavour == "alexeyab":
        y = _shortcut_alexeyab(b, layer, prev, adds)
    else:
        y = _shortcut_pjreddie(b, layer, prev, adds[0])
    _finish(b, layer, y)


@export("darknet", "scale_channels", "sam")
def scale_channels(b, layer):
    _spec(layer).infer(layer, [b.in_shape(i) for i in range(len(layer.bottoms))])
    _finish(b, layer, b.node("Mul", b.inputs()))  # (C,1,1) or (1,H,W) broadcast, as the engine


# ---------------------------------------------------------------- resampling
@export("darknet", "upsample")
def upsample(b, layer):
    x = b.inputs()[0]
    s, scale = opt_int(layer, "stride", 2), opt_float(layer, "scale", 1)
    n, c, h, w = b.in_shape()
    if s > 0:
        y = gather.repeat_hw(b, x, s, s)
    else:
        s = -s
        oh, ow = h // s, w // s
        if (oh * s, ow * s) != (h, w):
            raise b.refusal(f"a negative stride {-s} needs height and width divisible by it "
                            f"(darknet then reads across rows), got {w} x {h}")
        y = b.node("Reshape", [x, b.ints([0, c, oh, s, ow, s])])
        y = b.node("ReduceSum", [y, b.ints([3, 5], "axes")], keepdims=0)
    if scale != 1:
        y = b.node("Mul", [y, _scalar(b, scale, "scale")])
    b.node("Identity", [y], [b.write(layer.tops[0])])


@export("darknet", "reorg", "reorg3d")
def reorg(b, layer):
    reorg_walk(layer, b.in_shape())  # the engine's checks
    b.node("Identity", [gather.permutation(b, layer, b.inputs()[0])], [b.write(layer.tops[0])])


@export("darknet", "crop")
def crop(b, layer):
    _, _, h, w = b.in_shape()
    ch, cw = opt_int(layer, "crop_height", 1), opt_int(layer, "crop_width", 1)
    if ch > h or cw > w:
        raise b.refusal(f"crop {cw} x {ch} is larger than its {w} x {h} input")
    dh, dw = (h - ch) // 2, (w - cw) // 2
    y = b.node("Slice", [b.inputs()[0], b.ints([dh, dw]), b.ints([dh + ch, dw + cw]), b.ints([2, 3])])
    if not opt_int(layer, "noadjust", 0):
        y = b.node("Sub", [b.node("Mul", [y, _scalar(b, 2.0)]), _scalar(b, 1.0)])
    b.node("Identity", [y], [b.write(layer.tops[0])])


# ---------------------------------------------------------------- normalisation
@export("darknet", "softmax")
def softmax(b, layer):
    if layer.params.get("tree"):
        raise b.refusal("tree= (hierarchical softmax, darknet9000) has no engine forward")
    groups = max(1, opt_int(layer, "groups", 1))
    t = opt_float(layer, "temperature", 1)
    y = b.node("Reshape", [b.inputs()[0], b.ints([0, groups, -1])])
    if t != 1:
        y = b.node("Div", [y, _scalar(b, t, "temperature")])
    y = b.node("Softmax", [y], axis=-1)
    b.node("Reshape", [y, b.ints([0] + list(b.out_shape()[1:]))], [b.write(layer.tops[0])])


@export("darknet", "dropout", "cost", "empty")
def identity(b, layer):
    b.node("Identity", b.inputs()[:1], [b.write(layer.tops[0])])


@export("darknet", "activation")
def activation(b, layer):
    _finish(b, layer, b.inputs()[0])


@export("darknet", "logistic")
def logistic(b, layer):
    b.node("Sigmoid", b.inputs(), [b.write(layer.tops[0])])


@export("darknet", "l2norm")
def l2norm(b, layer):
    x = b.inputs()[0]
    norm = b.node("Sqrt", [b.node("ReduceSum", [b.node("Mul", [x, x]), b.ints([1], "axes")], keepdims=1)])
    b.node("Div", [x, norm], [b.write(layer.tops[0])])


def _running_window(c: int, size: int) -> np.ndarray:
    """(C, C) 0/1 matrix: row k sums the squares ``engine.darknet_ops.normalization``'s running
    recurrence has added for channel k (its first window leaves channel size/2 out)."""
    m = np.zeros((c, c), F32)
    running = np.zeros(c, F32)
    running[: size // 2] = 1
    m[0] = running
    for k in range(1, c):
        prev, nxt = k - (size - 1) // 2 - 1, k + size // 2
        if prev >= 0:
            running[prev] -= 1
        if nxt < c:
            running[nxt] += 1
        m[k] = running
    return m


@export("darknet", "normalization")
def normalization(b, layer):
    size = opt_int(layer, "size", 5)
    alpha, beta = opt_float(layer, "alpha", .0001), opt_float(layer, "beta", .75)
    kappa = opt_float(layer, "kappa", 1)
    c = b.in_shape()[1]
    x = b.inputs()[0]
    m = _running_window(c, size).reshape(c, c, 1, 1)
    acc = b.node("Conv", [b.node("Mul", [x, x]), b.const(m, "window")], kernel_shape=[1, 1])
    norms = b.node("Add", [b.node("Mul", [acc, _scalar(b, alpha)]), _scalar(b, kappa)])
    b.node("Mul", [x, b.node("Pow", [norms, _scalar(b, -beta)])], [b.write(layer.tops[0])])


# ---------------------------------------------------------------- heads
def _split_apply(b, x, layer, groups: int, parts):
    """Reshape (N, C, H, W) to (N, groups, C/groups, H, W), apply ``fn`` to channel ranges
    [lo, hi) of axis 2 (``parts``: (lo, hi, fn or None)), and put it back."""
    n, c, h, w = b.in_shape()
    y = b.node("Reshape", [x, b.ints([0, groups, c // groups, h, w])])
    pieces = []
    for lo, hi, fn in parts:
        if hi <= lo:
            continue
        piece = b.node("Slice", [y, b.ints([lo]), b.ints([hi]), b.ints([2])])
        pieces.append(fn(piece) if fn else piece)
    y = b.node("Concat", pieces, axis=2) if len(pieces) > 1 else pieces[0]
    b.node("Reshape", [y, b.ints([0, c, h, w])], [b.write(layer.tops[0])])


@export("darknet", "yolo")
def yolo(b, layer):
    c = b.in_shape()[1]
    na = len(opt_list(layer, "mask")) or opt_int(layer, "num", 1)
    per = c // na
    s = opt_float(layer, "scale_x_y", 1)
    logistic = not opt_int(layer, "new_coords", 0)

    def xy(v):
        v = b.node("Sigmoid", [v]) if logistic else v
        if s != 1:
            v = b.node("Add", [b.node("Mul", [v, _scalar(b, s)]), _scalar(b, -0.5 * (s - 1))])
        return v

    rest = (lambda v: b.node("Sigmoid", [v])) if logistic else None
    _split_apply(b, b.inputs()[0], layer, na, [(0, 2, xy), (2, 4, None), (4, per, rest)])


@export("darknet", "region")
def region(b, layer):
    if layer.params.get("tree"):
        raise b.refusal("tree= (YOLO9000 softmax tree over data/9k.tree) has no engine forward")
    c = b.in_shape()[1]
    num = opt_int(layer, "num", 1)
    coords, classes = opt_int(layer, "coords", 4), opt_int(layer, "classes", 20)
    background = opt_int(layer, "background", 0)
    per = c // num
    sig = lambda v: b.node("Sigmoid", [v])  # noqa: E731
    parts = [(0, 2, sig), (2, coords, None)]
    if background:
        parts.append((coords, coords, None))
    else:
        parts.append((coords, coords + 1, sig))
    lo = coords + (0 if background else 1)
    if opt_int(layer, "softmax", 0):
        hi = lo + classes + background
        parts = [p for p in parts if p[1] <= lo] + [(lo, hi, lambda v: b.node("Softmax", [v], axis=2))]
        parts.append((hi, per, None))
    else:
        parts += [(coords + 1, coords + 1 + classes, sig), (coords + 1 + classes, per, None)]
    parts = [p for p in parts if p[1] > p[0]]
    _split_apply(b, b.inputs()[0], layer, num, parts)


@export("darknet", "detection")
def detection(b, layer):
    if not opt_int(layer, "softmax", 0):
        return b.node("Identity", b.inputs(), [b.write(layer.tops[0])])
    side, classes = opt_int(layer, "side", 7), opt_int(layer, "classes", 1)
    shape = b.in_shape()
    total = int(np.prod(shape[1:]))
    flat = b.node("Flatten", [b.inputs()[0]], axis=1)
    cls = b.node("Slice", [flat, b.ints([0]), b.ints([side * side * classes]), b.ints([1])])
    cls = b.node("Softmax", [b.node("Reshape", [cls, b.ints([0, side * side, classes])])], axis=-1)
    parts = [b.node("Flatten", [cls], axis=1)]
    if total > side * side * classes:
        parts.append(b.node("Slice", [flat, b.ints([side * side * classes]), b.ints([total]), b.ints([1])]))
    y = b.node("Concat", parts, axis=1) if len(parts) > 1 else parts[0]
    b.node("Reshape", [y, b.ints([0] + list(shape[1:]))], [b.write(layer.tops[0])])


refuse("darknet", "rnn", "gru",
       reason="recurrent: darknet carries the hidden state from one call to the next, which a "
              "stateless graph cannot")
refuse("darknet", "Gaussian_yolo", reason="the engine has no forward for it (its test-time "
       "activations are unchecked against a reference)")
refuse("darknet", "iseg", reason="instance-segmentation head with no test-time semantics in "
       "either darknet")
