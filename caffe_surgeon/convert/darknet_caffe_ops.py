"""Darknet -> Caffe, one converter per Darknet section type (the DARKNET_TO_CAFFE table).

Every registered Darknet type is here either converted or refused with a one-line reason
(``tests/test_backend_coverage.py`` holds the table to that). A converter has the signature
``fn(layer, b: CaffeBuilder) -> str | None``: it appends Caffe layers to ``b`` and returns
the Caffe blob that holds the Darknet layer's output (None for a detector head, which ends
the Caffe net; its decoding parameters go to ``b.heads``).

Exactness, layer by layer (what the tests check against OpenCV and our engine):

* BatchNorm: Caffe divides by ``sqrt(var + eps)``; pjreddie darknet by ``sqrt(var) + 1e-6``.
  The difference is folded into the Scale (or Xilinx BatchNorm) gamma,
  ``gamma * sqrt(var + eps) / (sqrt(var) + 1e-6)``, so the stored statistics stay darknet's.
* maxpool: darknet starts window ``i`` at ``i*stride - padding/2`` and sizes the output
  ``(w + padding - size)/stride + 1``; Caffe pads symmetrically and rounds up. The Caffe pad
  is chosen so that some run of Caffe windows starts exactly where darknet's do; a leading
  surplus window (size 2 stride 1: pad 1 gives w + 1 windows, darknet's are the last w) is
  cut by a Crop whose reference is the pooling's own input, which has the output's size.
* upsample (BVLC): a depthwise Deconvolution, kernel = stride = the factor, weights 1, no
  bias: every output pixel receives exactly one input pixel times 1.0. Xilinx: DeephiResize
  NEAREST (caffe-xilinx has no Upsample layer; PROTO_NOTES section 2).
* reorg: darknet's ``reorg_cpu`` (non-reverse) is a space-to-depth of its input read as a
  (c/s^2, h*s, w*s) array, output channel ``(dy*s + dx) * c/s^2 + k``. BVLC has no Permute
  (that is the SSD fork), so the space-to-depth is a stride-s Convolution whose weights are
  one-hot: each output value is one input value times 1.0 plus zeros. Reshapes wrap it.
  Xilinx runs darknet's ``[reorg]`` natively as Reorg.
"""
from __future__ import annotations

import numpy as np

from ..layers.backend_table import BackendTable
from ..layers.caffe_geometry import pool_out
from ..layers.darknet import opt_float, opt_int
from ..layers.darknet.structure import reorg_walk
from ..layers.registry import spec_for
from .caffe_builder import CaffeBuilder

F64 = np.float64
#: pjreddie normalize_cpu's epsilon (added to sqrt(var)); AlexeyAB adds 1e-5 under the root
PJREDDIE_BN_EPS = 1e-6
#: the eps written into every Caffe BatchNorm (Caffe's default; AlexeyAB's own value)
CAFFE_BN_EPS = float(np.float32(1e-5))

DARKNET_TO_CAFFE = BackendTable("darknet->caffe", lambda: None)


def tables() -> tuple[dict, dict]:
    """(converters, refusals) keyed by (framework, type), for tests/test_backend_coverage.py."""
    return DARKNET_TO_CAFFE.tables()


def converts(*types: str):
    def register(fn):
        DARKNET_TO_CAFFE.add("darknet", types, fn)
        return fn
    return register


def input_layer(b: CaffeBuilder, name: str, shape) -> str:
    """The Input layer that declares the [net] shape (what OpenCV and Caffe read)."""
    return b.add(name, "Input", [], tops=[name], params={
        "input_param": {"shape": [{"dim": [int(d) for d in shape]}]}})


# ------------------------------------------------------------------ activations
def _relu(slope: float = 0.0):
    return ("ReLU", {"relu_param": {"negative_slope": slope}} if slope else {})


#: darknet activation -> (Caffe type, params), or None for the identity; per flavour where
#: the targets differ. Swish is in BVLC master (swish_param 147) but not in caffe-xilinx
#: (147 is its tiling_param); neither has Mish.
ACTIVATIONS = {
    "linear": {"bvlc": None, "xilinx": None},
    "relu": {"bvlc": _relu(), "xilinx": _relu()},
    "leaky": {"bvlc": _relu(0.1), "xilinx": _relu(0.1)},
    "revleaky": {"bvlc": _relu(0.1), "xilinx": _relu(0.1)},  # its forward is leaky's
    "logistic": {"bvlc": ("Sigmoid", {}), "xilinx": ("Sigmoid", {})},
    "tanh": {"bvlc": ("TanH", {}), "xilinx": ("TanH", {})},
    "elu": {"bvlc": ("ELU", {}), "xilinx": ("ELU", {})},
    "swish": {"bvlc": ("Swish", {})},
}
#: activations built from two layers: ramp(x) = relu(x) + 0.1 x (darknet ``ramp_activate``)
RAMP = "ramp"


def activation_name(layer) -> str:
    return str(layer.params.get("activation", spec_for("darknet", layer).default_activation))


def activate(layer, b: CaffeBuilder, top: str, in_place: bool) -> str:
    """Apply ``layer``'s activation to ``top``; in place when ``top`` is the layer's own."""
    name = activation_name(layer)
    if name == RAMP:
        relu = b.add(f"{layer.name}_relu", "ReLU", [top])
        return b.add(f"{layer.name}_ramp", "Eltwise", [relu, top],
                     params={"eltwise_param": {"operation": "SUM", "coeff": [1.0, 0.1]}})
    row = ACTIVATIONS.get(name, {})
    if b.flavor not in row:
        where = [f for f in row if row[f] is not None or name == "linear"]
        b.refuse(f"activation={name} has no {b.flavor} Caffe layer"
                 + (f" (only {', '.join(where)} Caffe has one)" if where else ""))
    if row[b.flavor] is None:
        return top
    type_, params = row[b.flavor]
    return b.add(f"{layer.name}_act", type_, [top], in_place=in_place, params=params)


# ------------------------------------------------------------------ batch norm
def _bn_gamma(scales, var, darknet_bn: str) -> np.ndarray:
    """The Caffe gamma that makes ``(x-m)/sqrt(v+eps) * gamma`` darknet's normalisation."""
    scales, var = scales.astype(F64), var.astype(F64)
    if darknet_bn == "alexeyab":  # sqrt(var + .00001f): Caffe's own formula
        return scales
    return scales * np.sqrt(var + CAFFE_BN_EPS) / (np.sqrt(var) + PJREDDIE_BN_EPS)


def batch_norm(name: str, b: CaffeBuilder, top: str, w: dict, in_place: bool) -> str:
    """darknet's BN (rolling statistics, then scales and the biases as shift) as Caffe
    BatchNorm + Scale (BVLC) or one caffe-xilinx BatchNorm with its built-in affine part."""
    mean, var = w["rolling_mean"].reshape(-1), w["rolling_variance"].reshape(-1)
    gamma = _bn_gamma(w["scales"].reshape(-1), var, b.darknet_bn)
    bias = w["biases"].reshape(-1)
    bn_param = {"batch_norm_param": {"use_global_stats": True, "eps": CAFFE_BN_EPS}}
    if b.flavor == "xilinx":
        return b.add(f"{name}_bn", "BatchNorm", [top], in_place=in_place, params=bn_param,
                     weights={"scale": gamma, "bias": bias, "mean": mean, "variance": var,
                              "counter": np.ones(1)})
    top = b.add(f"{name}_bn", "BatchNorm", [top], in_place=in_place, params=bn_param,
                weights={"mean": mean, "variance": var, "scale_factor": np.ones(1)})
    return b.add(f"{name}_scale", "Scale", [top], in_place=True,
                 params={"scale_param": {"bias_term": True}},
                 weights={"scale": gamma, "bias": bias})


def _has_bn(layer) -> bool:
    return bool(opt_int(layer, "batch_normalize", 0))


def _refuse_options(layer, b: CaffeBuilder, why: dict[str, str]) -> None:
    for key, reason in why.items():
        if opt_int(layer, key, 0):
            b.refuse(f"{key}={layer.params[key]}: {reason}")


# ------------------------------------------------------------------ weighted
@converts("convolutional")
def convolutional(layer, b: CaffeBuilder):
    _refuse_options(layer, b, {
        "xnor": "binarised weights and inputs have no Caffe layer",
        "binary": "binarised weights have no Caffe layer",
        "flipped": "transposed weight storage is not converted",
        "antialiasing": "AlexeyAB's hidden blur layer is not converted",
        "cbn": "cross-iteration BatchNorm is not converted"})
    if "share_index" in layer.params:
        b.refuse("share_index= (weights shared with another layer) has no Caffe form "
                 "(Caffe shares by param name, which this converter does not write)")
    if opt_int(layer, "dilation", 1) > 1:
        b.refuse("dilation>1: AlexeyAB pads by pad*dilation but sizes the output without it")
    g = spec_for("darknet", layer).geometry(layer, b.in_shapes(layer))
    sx, sy = opt_int(layer, "stride_x", -1), opt_int(layer, "stride_y", -1)
    sx, sy = (sx if sx >= 1 else g["stride"]), (sy if sy >= 1 else g["stride"])
    p = {"num_output": g["n"], "kernel_size": [g["size"]], "pad": [g["padding"]]}
    p.update({"stride": [sx]} if sx == sy else {"stride_h": sy, "stride_w": sx})
    if g["groups"] > 1:
        p["group"] = g["groups"]
    return _weighted(layer, b, "Convolution", "convolution_param", p)


def _weighted(layer, b: CaffeBuilder, caffe_type: str, param_key: str, p: dict):
    """The Caffe layer of a weighted Darknet section, then its BatchNorm (the biases then
    live in the BN's shift, so the Caffe layer has none) and its activation, in place."""
    bn = _has_bn(layer)
    weights = {"weight": layer.weights["weights"]}
    if bn:
        p["bias_term"] = False
    else:
        weights["bias"] = layer.weights["biases"]
    top = b.add(layer.name, caffe_type, b.bottoms(layer), params={param_key: p}, weights=weights)
    if bn:
        top = batch_norm(layer.name, b, top, layer.weights, in_place=True)
    return activate(layer, b, top, in_place=True)


@converts("deconvolutional")
def deconvolutional(layer, b: CaffeBuilder):
    """pjreddie's transposed convolution: its (c, n, k, k) weights are Caffe Deconvolution's
    layout, its output ``(h-1)*stride + size - 2*padding`` Caffe's."""
    g = spec_for("darknet", layer).geometry(layer, b.in_shapes(layer))
    p = {"num_output": g["n"], "kernel_size": [g["size"]], "stride": [g["stride"]],
         "pad": [g["padding"]]}
    return _weighted(layer, b, "Deconvolution", "convolution_param", p)


@converts("connected")
def connected(layer, b: CaffeBuilder):
    p = {"num_output": opt_int(layer, "output", 1)}
    return _weighted(layer, b, "InnerProduct", "inner_product_param", p)


@converts("batchnorm")
def batchnorm(layer, b: CaffeBuilder):
    w = dict(layer.weights)
    top = batch_norm(layer.name, b, b.bottoms(layer)[0], w, in_place=False)
    return top


# ------------------------------------------------------------------ pooling
def caffe_pool_window(size: int, stride: int, padding: int, n: int, out: int):
    """(caffe pad, leading windows to drop) reproducing darknet's windows along one axis.

    Darknet window ``i`` (0 <= i < out) starts at ``i*stride - padding//2``; Caffe window
    ``j`` at ``j*stride - pad``. With ``pad = padding//2 + skip*stride`` Caffe window
    ``i + skip`` is darknet window ``i``; the smallest ``skip`` whose Caffe output (ceil
    rounding, pad < kernel as Caffe requires) covers ``skip + out`` windows wins. None when
    no such pad exists. Example: size 2, stride 1, padding 1, n = 13 -> (1, 1).
    """
    for skip in range(size):
        pad = padding // 2 + skip * stride
        if pad >= size:
            break
        if pool_out(n, size, stride, pad, ceil=True) - skip == out:
            return pad, skip
    return None


@converts("maxpool")
def maxpool(layer, b: CaffeBuilder):
    if opt_int(layer, "maxpool_depth", 0):
        b.refuse("maxpool_depth=1 (a max across channels) has no Caffe layer")
    stride = opt_int(layer, "stride", 1)
    sx, sy = opt_int(layer, "stride_x", stride), opt_int(layer, "stride_y", stride)
    size = opt_int(layer, "size", stride)
    padding = opt_int(layer, "padding", size - 1)
    (_, _, h, w), (_, _, oh, ow) = b.in_shapes(layer)[0], b.out_shape(layer)
    if (oh, ow) == (1, 1) and padding // 2 <= 0 and size - padding // 2 >= max(h, w):
        # one window over the whole input (a kernel larger than a 1 x 1 input): OpenCV
        # cannot size a Caffe window larger than its padded input, a global pool is the same
        return b.add(layer.name, "Pooling", b.bottoms(layer),
                     params={"pooling_param": {"pool": "MAX", "global_pooling": True}})
    rows = caffe_pool_window(size, sy, padding, h, oh)
    cols = caffe_pool_window(size, sx, padding, w, ow)
    if rows is None or cols is None or rows[1] != cols[1]:
        b.refuse(f"no Caffe pad reproduces darknet's {ow} x {oh} windows of size {size}, "
                 f"stride {sx}x{sy}, padding {padding} on {w} x {h}")
    (pad_h, skip), (pad_w, _) = rows, cols
    # PoolingParameter's kernel_size, stride and pad are single values, not repeated
    p = {"pool": "MAX", "kernel_size": size}
    p.update({"stride": sx} if sx == sy else {"stride_h": sy, "stride_w": sx})
    p.update({"pad": pad_h} if pad_h == pad_w else {"pad_h": pad_h, "pad_w": pad_w})
    bottom = b.bottoms(layer)[0]
    if not skip:
        return b.add(layer.name, "Pooling", [bottom], params={"pooling_param": p})
    if (oh, ow) != (h, w):
        b.refuse(f"darknet's {ow} x {oh} windows are Caffe's after the first {skip}, and only "
                 f"an output the size of the input ({w} x {h}) has a Crop reference")
    top = b.add(f"{layer.name}_pool", "Pooling", [bottom], params={"pooling_param": p})
    return b.add(layer.name, "Crop", [top, bottom],
                 params={"crop_param": {"axis": 2, "offset": [skip]}})


@converts("avgpool")
def avgpool(layer, b: CaffeBuilder):
    return b.add(layer.name, "Pooling", b.bottoms(layer),
                 params={"pooling_param": {"pool": "AVE", "global_pooling": True}})


# ------------------------------------------------------------------ joins
def _channel_slice(name: str, b: CaffeBuilder, blob: str, bounds: list[int], keep: int) -> str:
    """Channels ``bounds[keep]:bounds[keep+1]`` of ``blob`` (a Slice; other parts unused)."""
    tops = [b.unique(f"{name}_part{i}") for i in range(len(bounds) - 1)]
    b.add(name, "Slice", [blob], tops=tops,
          params={"slice_param": {"axis": 1, "slice_point": bounds[1:-1]}})
    return tops[keep]


@converts("route")
def route(layer, b: CaffeBuilder):
    groups, gid = max(1, opt_int(layer, "groups", 1)), opt_int(layer, "group_id", 0)
    parts = b.bottoms(layer)
    if groups > 1:
        parts = [_channel_slice(f"{layer.name}_split{i}", b, blob,
                                [k * (s[1] // groups) for k in range(groups + 1)], gid)
                 for i, (blob, s) in enumerate(zip(parts, b.in_shapes(layer)))]
    if len(parts) == 1:
        return parts[0]  # a single input is only a new name for it
    return b.add(layer.name, "Concat", parts, params={"concat_param": {"axis": 1}})


@converts("shortcut")
def shortcut(layer, b: CaffeBuilder):
    if layer.params.get("weights_type", "none") != "none":
        b.refuse(f"weights_type={layer.params['weights_type']} (learned input weights with "
                 "normalisation) is not converted")
    shapes = b.in_shapes(layer)
    prev, adds = b.bottoms(layer)[0], b.bottoms(layer)[1:]
    (_, c, h, w) = shapes[0]
    alpha, beta = opt_float(layer, "alpha", 1), opt_float(layer, "beta", 1)
    if (alpha, beta) != (1, 1) and len(adds) > 1:
        b.refuse("alpha/beta with several from= layers (AlexeyAB ignores them there)")
    mc = min(s[1] for s in shapes)
    head = prev
    if c > mc:  # only the first mc channels of the previous layer receive the sum
        head = _channel_slice(f"{layer.name}_head", b, prev, [0, mc, c], 0)
        rest = b.layers[-1].tops[1]
    cut = []
    for i, (a, s) in enumerate(zip(adds, shapes[1:])):
        if s[1] != mc:
            a = _channel_slice(f"{layer.name}_from{i}", b, a, [0, mc, s[1]], 0)
        if tuple(s[2:]) != (h, w):
            a = _subsample(f"{layer.name}_sample{i}", b, a, mc, tuple(s[2:]), (h, w), len(adds))
        cut.append(a)
    p = {"operation": "SUM"}
    if (alpha, beta) != (1, 1):
        p["coeff"] = [alpha, beta]
    top = b.add(f"{layer.name}_sum" if c > mc else layer.name, "Eltwise", [head, *cut],
                params={"eltwise_param": p})
    if c > mc:
        top = b.add(layer.name, "Concat", [top, rest], params={"concat_param": {"axis": 1}})
    return activate(layer, b, top, in_place=True)


def _subsample(name, b: CaffeBuilder, blob: str, c: int, size, target, n_from: int) -> str:
    """pjreddie ``shortcut_cpu`` reads a larger from= layer at every ``stride``-th row and
    column (ResNet's downsampling blocks). A depthwise 1x1 Convolution of weight 1 and that
    stride picks exactly those values (x * 1.0, no bias)."""
    (h1, w1), (h2, w2) = size, target
    s = w1 // w2
    if n_from > 1 or b.darknet_bn != "pjreddie" or s < 1 or h1 // h2 != s or \
            (h1 - 1) // s + 1 != h2 or (w1 - 1) // s + 1 != w2:
        b.refuse(f"adding a {w1} x {h1} layer onto a {w2} x {h2} one: only pjreddie's strided "
                 "read of one larger from= layer is converted (AlexeyAB adds flat prefixes)")
    return b.add(name, "Convolution", [blob], params={"convolution_param": {
        "num_output": c, "kernel_size": [1], "stride": [s], "group": c, "bias_term": False}},
        weights={"weight": np.ones((c, 1, 1, 1), np.float32)})


@converts("scale_channels")
def scale_channels(layer, b: CaffeBuilder):
    """Squeeze-and-excite: features (from=) times per-channel scales (previous layer, N x C x
    1 x 1). Caffe's two-input Scale wants the scales shaped like the features' leading
    axes, so they are flattened to (N, C) and applied from axis 0."""
    if opt_int(layer, "scale_wh", 0):
        b.refuse("scale_wh=1 (one scale per pixel) is not converted")
    scales, feats = b.bottoms(layer)
    flat = b.add(f"{layer.name}_scales", "Flatten", [scales])
    top = b.add(layer.name, "Scale", [feats, flat],
                params={"scale_param": {"axis": 0, "bias_term": False}})
    return activate(layer, b, top, in_place=True)


@converts("sam")
def sam(layer, b: CaffeBuilder):
    top = b.add(layer.name, "Eltwise", b.bottoms(layer),
                params={"eltwise_param": {"operation": "PROD"}})
    return activate(layer, b, top, in_place=True)


# ------------------------------------------------------------------ resampling
@converts("upsample")
def upsample(layer, b: CaffeBuilder):
    s, scale = opt_int(layer, "stride", 2), opt_float(layer, "scale", 1)
    if s < 1:
        b.refuse(f"stride={s} (a summing downsample) has no Caffe layer")
    if scale != 1:
        b.refuse(f"scale={scale} (upsample times a constant) is not converted")
    c = b.in_shapes(layer)[0][1]
    if b.flavor == "xilinx":
        return b.add(layer.name, "DeephiResize", b.bottoms(layer), params={
            "deephi_resize_param": {"resize_type": "NEAREST", "scale_h": float(s),
                                    "scale_w": float(s)}})
    return b.add(layer.name, "Deconvolution", b.bottoms(layer), params={"convolution_param": {
        "num_output": c, "kernel_size": [s], "stride": [s], "group": c, "bias_term": False}},
        weights={"weight": np.ones((c, 1, s, s), np.float32)})


def space_to_depth_weights(c: int, s: int) -> np.ndarray:
    """One-hot (c*s*s, c, s, s) weights: output channel ``(dy*s + dx)*c + k`` copies input
    channel k at kernel offset (dy, dx) (darknet reorg_cpu's channel order)."""
    w = np.zeros((c * s * s, c, s, s), np.float32)
    for dy in range(s):
        for dx in range(s):
            for k in range(c):
                w[(dy * s + dx) * c + k, k, dy, dx] = 1
    return w


def _reshape(name: str, b: CaffeBuilder, blob: str, shape) -> str:
    return b.add(name, "Reshape", [blob],
                 params={"reshape_param": {"shape": {"dim": [0, *(int(d) for d in shape)]}}})


@converts("reorg", "reorg3d")
def reorg(layer, b: CaffeBuilder):
    shape = b.in_shapes(layer)[0]
    how = reorg_walk(layer, shape)
    if how.kind != "reorg_cpu" or how.reverse:
        what = {"extra": "extra=", "flatten": "flatten=1"}.get(how.kind, "reverse=1")
        b.refuse(f"{what} is not converted (no cfg in the zoo uses it)")
    (gw, gh, gc), s = how.geometry, how.stride
    bottom = b.bottoms(layer)[0]
    if b.flavor == "xilinx" and (gw, gh, gc) == (shape[3], shape[2], shape[1]):
        # the YOLOv2 Caffe ports' reorg_layer: darknet's reorg_cpu over the input geometry
        return b.add(layer.name, "Reorg", [bottom], params={"reorg_param": {"stride": s}})
    k = gc // (s * s)
    x = _reshape(f"{layer.name}_in", b, bottom, (k, gh * s, gw * s))
    y = b.add(f"{layer.name}_s2d", "Convolution", [x], params={"convolution_param": {
        "num_output": gc, "kernel_size": [s], "stride": [s], "bias_term": False}},
        weights={"weight": space_to_depth_weights(k, s)})
    return _reshape(layer.name, b, y, how.out_shape[1:])


def _window(name: str, b: CaffeBuilder, blob: str, axis: int, start: int, size: int,
            total: int) -> str:
    """Elements ``start:start+size`` of ``blob`` along ``axis`` (a Slice; the rest unused)."""
    if (start, size) == (0, total):
        return blob
    points = [p for p in (start, start + size) if 0 < p < total]
    tops = [b.unique(f"{name}_part{i}") for i in range(len(points) + 1)]
    b.add(name, "Slice", [blob], tops=tops,
          params={"slice_param": {"axis": axis, "slice_point": points}})
    return tops[1 if start else 0]


@converts("crop")
def crop(layer, b: CaffeBuilder):
    """darknet's test-time crop: the centre crop_height x crop_width, then x*2 - 1 unless
    noadjust=1 (Slices along H and W, then Power)."""
    (_, _, h, w), (_, _, ch, cw) = b.in_shapes(layer)[0], b.out_shape(layer)
    if ch > h or cw > w:
        b.refuse(f"crop {cw} x {ch} is larger than its {w} x {h} input")
    top = _window(f"{layer.name}_rows", b, b.bottoms(layer)[0], 2, (h - ch) // 2, ch, h)
    top = _window(f"{layer.name}_cols", b, top, 3, (w - cw) // 2, cw, w)
    if opt_int(layer, "noadjust", 0):
        return top
    return b.add(layer.name, "Power", [top],
                 params={"power_param": {"scale": 2.0, "shift": -1.0}})


# ------------------------------------------------------------------ elementwise
@converts("dropout")
def dropout(layer, b: CaffeBuilder):
    # identity at test time in both; kept so the converted net reads like the cfg
    return b.add(layer.name, "Dropout", b.bottoms(layer), params={
        "dropout_param": {"dropout_ratio": opt_float(layer, "probability", .5)}})


@converts("cost", "empty")
def passthrough(layer, b: CaffeBuilder):
    # cost: a loss only when training; empty/silence: a no-op in darknet
    return b.bottoms(layer)[0]


@converts("activation")
def activation(layer, b: CaffeBuilder):
    return activate(layer, b, b.bottoms(layer)[0], in_place=False)


@converts("logistic")
def logistic(layer, b: CaffeBuilder):
    return b.add(layer.name, "Sigmoid", b.bottoms(layer))


@converts("softmax")
def softmax(layer, b: CaffeBuilder):
    if layer.params.get("tree"):
        b.refuse(f"tree={layer.params['tree']} (a hierarchical softmax) has no Caffe layer")
    if max(1, opt_int(layer, "groups", 1)) > 1:
        b.refuse(f"groups={layer.params['groups']} (softmax over channel groups) is not converted")
    bottom = b.bottoms(layer)[0]
    t = opt_float(layer, "temperature", 1)
    if t != 1:  # darknet: exp(x/t - max/t)
        bottom = b.add(f"{layer.name}_temperature", "Power", [bottom],
                       params={"power_param": {"scale": 1.0 / t}})
    shape = b.in_shapes(layer)[0]
    if len(shape) == 4 and shape[2] * shape[3] > 1:  # darknet: one softmax over C*H*W
        bottom = b.add(f"{layer.name}_flat", "Flatten", [bottom])
    return b.add(layer.name, "Softmax", [bottom])


# ------------------------------------------------------------------ heads
@converts("yolo", "region", "detection")
def head(layer, b: CaffeBuilder):
    """The Caffe net ends at the head's input; the decoding parameters go to the heads file."""
    if layer.params.get("tree"):
        b.refuse(f"tree={layer.params['tree']} (YOLO9000's softmax hierarchy) is decoded "
                 "neither by our engine nor by detect, so the heads file could not be used")
    b.heads.append({"name": layer.name, "type": layer.type, "input": b.bottoms(layer)[0],
                    "input_shape": list(b.in_shapes(layer)[0]), "params": dict(layer.params)})
    return None


# ------------------------------------------------------------------ refused
DARKNET_TO_CAFFE.refuse("darknet", ["local"], "unshared (locally connected) convolution has no "
                        "Caffe layer")
DARKNET_TO_CAFFE.refuse("darknet", ["local_avgpool"], "AlexeyAB divides by the cells inside the "
                        "image, Caffe's AVE pooling by the padded window")
DARKNET_TO_CAFFE.refuse("darknet", ["Gaussian_yolo"], "AlexeyAB head that neither our engine "
                        "nor detect decodes, so the heads file could not be used")
DARKNET_TO_CAFFE.refuse("darknet", ["rnn", "gru"], "recurrent layers carry state across calls; "
                        "Caffe's RNN/LSTM layers have other gates and arrays")
DARKNET_TO_CAFFE.refuse("darknet", ["normalization"], "pjreddie's running-sum LRN leaves "
                        "channel size/2 out of its first window; Caffe's LRN does not")
DARKNET_TO_CAFFE.refuse("darknet", ["l2norm"], "BVLC has no L2 normalisation layer; the SSD "
                        "fork's Normalize adds an epsilon darknet does not")
DARKNET_TO_CAFFE.refuse("darknet", ["iseg"], "instance segmentation training head with no "
                        "inference form in Caffe")
