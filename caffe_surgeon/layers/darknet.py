"""Darknet layer specs: output shapes, stored arrays, work counts and synthetic weights.

Shapes follow the ``make_*_layer`` functions of pjreddie darknet (2018, the
Debian package) and AlexeyAB darknet. Where the forks disagree the AlexeyAB
meaning is used, because it is a superset that modern cfgs rely on:
``[route] groups/group_id`` split channels, ``[batchnorm]`` stores biases too,
``[rnn]`` honours ``hidden=`` (pjreddie ignores it and uses ``output``; that is
the default here). ``[gru]`` follows pjreddie, whose layout can be checked here.
Shapes are (N, C, H, W); layers darknet treats as flat vectors give (N, C, 1, 1).

Counting: ``macs`` are multiply-adds; ``ops = 2 * macs``, which is what darknet
prints as BFLOPs (``2 * n * size^2 * c/groups * out_h * out_w`` for a conv) and sums
in ``numops`` (conv, connected, rnn, gru); ``in_total`` is True exactly for those.
Option values are read with C semantics (``atoi``/``atof``): ``stride=2.0`` is 2.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from ..errors import ModelError
from ..graph import Layer
from .channel_flow import ChannelFlow, blocked, passthrough
from .registry import Counts, LayerSpec, Shape, register

_LEAD_NUM = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def opt_float(layer: Layer, key: str, default: float) -> float:
    """``atof`` of the option: lists give their first item, junk gives 0."""
    v = layer.params.get(key)
    if v is None:
        return default
    if isinstance(v, (list, tuple)):
        v = v[0] if v else 0
    if isinstance(v, str):
        m = _LEAD_NUM.match(v)
        return float(m.group(0)) if m else 0.0
    return float(v)


def opt_int(layer: Layer, key: str, default: int) -> int:
    """``atoi`` of the option (truncates ``2.9`` to 2, as darknet does)."""
    return default if layer.params.get(key) is None else int(opt_float(layer, key, default))


def opt_list(layer: Layer, key: str) -> list[int]:
    """Comma-separated integers (``mask``, ``layers``, ``from``); stops at ``#``."""
    v = layer.params.get(key)
    if v is None:
        return []
    if isinstance(v, str):
        return [int(float(m.group(0))) for m in
                (_LEAD_NUM.match(p) for p in v.split("#")[0].split(",")) if m]
    return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]


def cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero), as in darknet's size formulas."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _prod(xs) -> int:
    return math.prod(int(x) for x in xs)


def _bn(layer: Layer) -> bool:
    return opt_int(layer, "batch_normalize", 0) != 0 or opt_int(layer, "cbn", 0) != 0


def _bn_arrays(prefix: str, n: int) -> dict[str, Shape]:
    return {f"{prefix}scales": (n,), f"{prefix}rolling_mean": (n,),
            f"{prefix}rolling_variance": (n,)}


def _producer_flow(layer: Layer, out_axes: dict, in_axes: dict, why: str = "") -> ChannelFlow:
    """Darknet conv/connected: with batch_normalize an input offset folds into the BN mean."""
    bn = _bn(layer)
    return ChannelFlow("produce", out_axes=out_axes, in_axes=in_axes, in_block=why,
                       out_block=why, gamma="scales" if bn else None,
                       offset_into="rolling_mean" if bn else "biases",
                       offset_sign=-1.0 if bn else 1.0, mean="rolling_mean" if bn else None,
                       silence={"weights": 0.0, "biases": 0.0, "rolling_mean": 0.0})


def _connected_arrays(prefix: str, n_in: int, n_out: int, bn: bool) -> dict[str, Shape]:
    """File order of ``save_connected_weights``: biases, weights, then BN arrays."""
    out = {f"{prefix}biases": (n_out,), f"{prefix}weights": (n_out, n_in)}
    if bn:
        out.update(_bn_arrays(prefix, n_out))
    return out


class DarknetSpec(LayerSpec):
    """Base: one output shaped like the first input, nothing stored, no work."""

    framework = "darknet"
    channel_role = "passthrough"
    in_total = False  # whether darknet's numops total includes the type

    def transposable(self, name: str) -> bool:
        """Whether files with the transpose flag store this array as (in, out)."""
        return False

    def count(self, layer, inputs, outputs) -> Counts:
        params = sum(_prod(s) for s in self.weight_shapes(layer, inputs).values())
        macs = self.macs(layer, inputs, outputs)
        return Counts(ops=2 * macs, macs=macs, params=params, in_total=self.in_total)

    def macs(self, layer, inputs, outputs) -> int:
        return 0

    def init_weights(self, layer, inputs, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random but plausible arrays, drawn in file order from ``rng``.

        Weights ~ N(0, sqrt(2 / fan_in)); biases and rolling means small;
        BN scales around 1 and variances in [0.5, 1.5], so forward tests that
        fold or apply batch norm see non-trivial statistics.
        """
        out = {}
        for name, shape in self.weight_shapes(layer, inputs).items():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "weights":
                std = np.sqrt(2.0 / max(1, self.fan_in(shape)))
                a = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
            elif leaf == "scales":
                a = 1 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
            elif leaf == "rolling_variance":
                a = rng.uniform(0.5, 1.5, shape).astype(np.float32)
            else:  # biases, rolling_mean
                a = 0.05 * rng.standard_normal(shape, dtype=np.float32)
            out[name] = np.asarray(a, dtype=np.float32)
        return out

    def fan_in(self, shape: Shape) -> int:
        return _prod(shape[1:])


def _chw(shape: Shape) -> tuple[int, int, int, int]:
    if len(shape) != 4:
        raise ModelError(f"expects a 4-D (N, C, H, W) input, got {tuple(shape)}")
    return tuple(int(d) for d in shape)  # type: ignore[return-value]


# ----------------------------------------------------------------- weighted
class _Windowed(DarknetSpec):
    """Sliding-window layers: ``geometry`` gives batch, filters n, out size and macs."""

    channel_role = "producer"

    def infer(self, layer, inputs):
        g = self.geometry(layer, inputs)
        return [(g["batch"], g["n"], g["oh"], g["ow"])]

    def macs(self, layer, inputs, outputs):
        return self.geometry(layer, inputs)["macs"]

    def geometry(self, layer, inputs) -> dict[str, int]:
        b, c, h, w = _chw(inputs[0])
        size, stride, n = (opt_int(layer, k, 1) for k in ("size", "stride", "filters"))
        padding = size // 2 if opt_int(layer, "pad", 0) else opt_int(layer, "padding", 0)
        return dict(batch=b, c=c, h=h, w=w, n=n, size=size, stride=stride, padding=padding)


@register
class Convolutional(_Windowed):
    types = ("convolutional",)
    in_total = True

    def geometry(self, layer: Layer, inputs: Sequence[Shape]) -> dict[str, int]:
        """Darknet's conv parameters after defaults (``parse_convolutional``)."""
        g = super().geometry(layer, inputs)
        sx, sy = opt_int(layer, "stride_x", -1), opt_int(layer, "stride_y", -1)
        sx, sy = (sx if sx >= 1 else g["stride"]), (sy if sy >= 1 else g["stride"])
        groups, size, c = max(1, opt_int(layer, "groups", 1)), g["size"], g["c"]
        if opt_int(layer, "antialiasing", 0):
            raise ModelError("antialiasing=1 is not supported (AlexeyAB adds a hidden blur "
                             "layer whose weights and shape rules are not modelled)")
        if g["n"] < 1 or size < 1 or sx < 1 or sy < 1:
            raise ModelError(f"filters={g['n']}, size={size}, stride={sx}x{sy} must all be >= 1")
        if c % groups:
            raise ModelError(f"input channels {c} are not divisible by groups={groups}")
        oh = cdiv(g["h"] + 2 * g["padding"] - size, sy) + 1
        ow = cdiv(g["w"] + 2 * g["padding"] - size, sx) + 1
        return dict(g, groups=groups, oh=oh, ow=ow,
                    macs=g["n"] * (c // groups) * size * size * oh * ow)

    def weight_shapes(self, layer, inputs):
        if "share_index" in layer.params:  # AlexeyAB: weights live in the shared layer
            return {}
        g = self.geometry(layer, inputs)
        out = {"biases": (g["n"],)}
        if _bn(layer):
            out.update(_bn_arrays("", g["n"]))
        out["weights"] = (g["n"], g["c"] // g["groups"], g["size"], g["size"])
        return out

    def channel_flow(self, layer, inputs, outputs):
        if "share_index" in layer.params:
            return blocked(f"'{layer.name}' shares its weights with another layer",
                           shares_weights_of=opt_int(layer, "share_index", 0))
        g = self.geometry(layer, inputs)
        per_channel = dict.fromkeys(layer.weights, 0)
        if 1 < g["groups"] == g["c"] == g["n"]:  # depthwise: channel i in, channel i out
            return passthrough(out_axes=per_channel, gamma="scales" if _bn(layer) else None,
                               mean="rolling_mean" if _bn(layer) else None,
                               silence={"weights": 0.0, "biases": 0.0, "rolling_mean": 0.0})
        why = "" if g["groups"] == 1 else (
            f"grouped convolution (groups={g['groups']}) would have to lose the same number "
            "of channels in every group; not supported")
        return _producer_flow(layer, per_channel, {"weights": 1}, why)

    def window(self, layer, inputs):
        """(kernel, stride, pad, dilation) as (h, w) pairs, for patch extraction."""
        g = self.geometry(layer, inputs)
        sx, sy = opt_int(layer, "stride_x", -1), opt_int(layer, "stride_y", -1)
        sx, sy = (sx if sx >= 1 else g["stride"]), (sy if sy >= 1 else g["stride"])
        d = max(1, opt_int(layer, "dilation", 1))
        return (g["size"],) * 2, (sy, sx), (g["padding"],) * 2, (d, d)

    def set_channels(self, layer, n):
        if opt_int(layer, "groups", 1) > 1:
            layer.params["groups"] = n
        layer.params["filters"] = n


@register
class Deconvolutional(_Windowed):
    """pjreddie only. Weights are (c, n, size, size): darknet multiplies W^T by the input."""

    types = ("deconvolutional",)

    def geometry(self, layer, inputs):
        g = super().geometry(layer, inputs)
        oh, ow = ((d - 1) * g["stride"] + g["size"] - 2 * g["padding"] for d in (g["h"], g["w"]))
        return dict(g, oh=oh, ow=ow, macs=g["h"] * g["w"] * g["c"] * g["n"] * g["size"] ** 2)

    def weight_shapes(self, layer, inputs):
        g = self.geometry(layer, inputs)
        out = {"biases": (g["n"],)}
        if _bn(layer):
            out.update(_bn_arrays("", g["n"]))
        out["weights"] = (g["c"], g["n"], g["size"], g["size"])
        return out

    def channel_flow(self, layer, inputs, outputs):
        out_axes = {**dict.fromkeys(layer.weights, 0), "weights": 1}
        return _producer_flow(layer, out_axes, {"weights": 0})

    def set_channels(self, layer, n):
        layer.params["filters"] = n


@register
class Local(_Windowed):
    """Unshared conv: one filter bank per output location; ``pad`` is a flag (size-1 total)."""

    types = ("local",)
    channel_role = "blocker"

    def geometry(self, layer, inputs):
        g = super().geometry(layer, inputs)
        lose = 1 if opt_int(layer, "pad", 0) else g["size"]
        oh, ow = (cdiv(d - lose, g["stride"]) + 1 for d in (g["h"], g["w"]))
        return dict(g, oh=oh, ow=ow, macs=oh * ow * g["n"] * g["c"] * g["size"] ** 2)

    def weight_shapes(self, layer, inputs):
        g = self.geometry(layer, inputs)
        return {"biases": (g["n"], g["oh"], g["ow"]),
                "weights": (g["oh"] * g["ow"], g["n"], g["c"], g["size"], g["size"])}

    def fan_in(self, shape):
        return _prod(shape[2:])


@register
class Connected(DarknetSpec):
    types = ("connected",)
    channel_role = "producer"
    in_total = True

    def infer(self, layer, inputs):
        return [(inputs[0][0], opt_int(layer, "output", 1), 1, 1)]

    def weight_shapes(self, layer, inputs):
        return _connected_arrays("", _prod(inputs[0][1:]), opt_int(layer, "output", 1),
                                 _bn(layer))

    def transposable(self, name):
        return name == "weights"

    def macs(self, layer, inputs, outputs):
        return _prod(inputs[0][1:]) * opt_int(layer, "output", 1)

    def channel_flow(self, layer, inputs, outputs):
        return _producer_flow(layer, dict.fromkeys(layer.weights, 0), {"weights": 1})

    def set_channels(self, layer, n):
        layer.params["output"] = n


@register
class BatchNorm(DarknetSpec):
    """Standalone ``[batchnorm]``; AlexeyAB layout (pjreddie stores no biases)."""

    types = ("batchnorm",)

    def weight_shapes(self, layer, inputs):
        c = _chw(inputs[0])[1]
        return {"biases": (c,), **_bn_arrays("", c)}

    def channel_flow(self, layer, inputs, outputs):
        return passthrough(out_axes=dict.fromkeys(layer.weights, 0), gamma="scales",
                           mean="rolling_mean", silence={"biases": 0.0, "rolling_mean": 0.0})


class _Recurrent(DarknetSpec):
    """Recurrent layers: a flat ``output``-sized vector made by stacked connected layers."""

    channel_role = "blocker"
    in_total = True

    def infer(self, layer, inputs):
        return [(inputs[0][0], opt_int(layer, "output", 1), 1, 1)]

    def transposable(self, name):
        return name.endswith(".weights")

    def macs(self, layer, inputs, outputs):
        return sum(s[0] * s[1] for k, s in self.weight_shapes(layer, inputs).items()
                   if k.endswith(".weights"))


@register
class RNN(_Recurrent):
    """Three connected layers: input (in->hidden), self (hidden->hidden), output (hidden->out)."""

    types = ("rnn",)

    def weight_shapes(self, layer, inputs):
        n_in, out, bn = _prod(inputs[0][1:]), opt_int(layer, "output", 1), _bn(layer)
        hid = opt_int(layer, "hidden", out)
        return {**_connected_arrays("input.", n_in, hid, bn),
                **_connected_arrays("self.", hid, hid, bn),
                **_connected_arrays("output.", hid, out, bn)}


@register
class GRU(_Recurrent):
    """Six connected layers in pjreddie file order: state_z/r/h (out->out, its wz/wr/wh),
    then input_z/r/h (in->out, its uz/ur/uh); checked against libdarknet with a
    transposed file. AlexeyAB writes the input matrices first: the same length,
    but a file from it has its blocks in the other order.
    """

    types = ("gru",)

    def weight_shapes(self, layer, inputs):
        n_in, out, bn = _prod(inputs[0][1:]), opt_int(layer, "output", 1), _bn(layer)
        shapes: dict[str, Shape] = {}
        for part, size in (("state", out), ("input", n_in)):
            for gate in "zrh":
                shapes.update(_connected_arrays(f"{part}_{gate}.", size, out, bn))
        return shapes


# ----------------------------------------------------------------- pooling
class _Pool(DarknetSpec):
    depth_ok = True

    def infer(self, layer, inputs):
        b, c, h, w = _chw(inputs[0])
        stride = opt_int(layer, "stride", 1)
        sx, sy = opt_int(layer, "stride_x", stride), opt_int(layer, "stride_y", stride)
        size = opt_int(layer, "size", stride)
        padding = opt_int(layer, "padding", size - 1)
        if self.depth_ok and opt_int(layer, "antialiasing", 0):
            raise ModelError("antialiasing=1 is not supported (AlexeyAB adds a hidden blur layer)")
        if self.depth_ok and opt_int(layer, "maxpool_depth", 0):
            return [(b, opt_int(layer, "out_channels", 1), h, w)]
        if size < 1 or sx < 1 or sy < 1:
            raise ModelError(f"size={size} and stride={sx}x{sy} must be >= 1")
        return [(b, c, cdiv(h + padding - size, sy) + 1, cdiv(w + padding - size, sx) + 1)]


@register
class MaxPool(_Pool):
    """``out = (w + padding - size) / stride + 1``; size defaults to stride, padding to size-1."""

    types = ("maxpool",)

    def channel_flow(self, layer, inputs, outputs):
        if opt_int(layer, "maxpool_depth", 0):
            return blocked(f"maxpool '{layer.name}' pools across channels (maxpool_depth=1)")
        return passthrough()


@register
class LocalAvgPool(_Pool):
    types = ("local_avgpool",)
    depth_ok = False


@register
class AvgPool(DarknetSpec):
    """Global average pool: always 1 x 1."""

    types = ("avgpool",)

    def infer(self, layer, inputs):
        b, c, h, w = _chw(inputs[0])
        return [(b, c, 1, 1)]


# ----------------------------------------------------------------- joins
@register
class Route(DarknetSpec):
    """Concatenate the listed layers along C; AlexeyAB ``groups``/``group_id`` keep one slice.

    Every input must have the same H and W (darknet would silently give 0 x 0 x 0).
    With groups=2, group_id=1 a 64-channel input yields its channels 32..63.
    """

    types = ("route",)
    channel_role = "coupler"

    def infer(self, layer, inputs):
        groups, group_id = max(1, opt_int(layer, "groups", 1)), opt_int(layer, "group_id", 0)
        if not 0 <= group_id < groups:
            raise ModelError(f"group_id={group_id} is outside 0..{groups - 1}")
        (b, _, h, w), total = _chw(inputs[0]), 0
        for i, s in enumerate(inputs):
            _, c, hh, ww = _chw(s)
            if (hh, ww) != (h, w):
                raise ModelError(f"route input {i} ('{layer.bottoms[i]}') is {ww} x {hh}, but "
                                 f"input 0 ('{layer.bottoms[0]}') is {w} x {h}; darknet "
                                 "concatenates only equal sizes")
            if c % groups:
                raise ModelError(f"route input {i} ('{layer.bottoms[i]}') has {c} channels, "
                                 f"not divisible by groups={groups}")
            total += c
        return [(b, total // groups, h, w)]

    def channel_flow(self, layer, inputs, outputs):
        groups = max(1, opt_int(layer, "groups", 1))
        if groups > 1:
            return blocked(f"route '{layer.name}' keeps channel group {opt_int(layer, 'group_id', 0)}"
                           f" of {groups}: every group would have to lose the same channels")
        return ChannelFlow("concat")


@register
class Shortcut(DarknetSpec):
    """Residual add onto the previous layer; output is the previous layer's shape.

    Inputs are [previous layer, from...]. Channel counts may differ by design
    (darknet adds the overlapping channels). AlexeyAB ``weights_type`` stores
    one weight per input (per_feature) or per input and channel (per_channel).
    """

    types = ("shortcut",)
    channel_role = "coupler"

    def weight_shapes(self, layer, inputs):
        kind = layer.params.get("weights_type", "none")
        n = len(inputs) - 1
        if kind == "none":
            return {}
        if kind in ("per_feature", "per_layer"):
            return {"weights": (n + 1,)}
        if kind == "per_channel":
            return {"weights": (n + 1, _chw(inputs[0])[1])}
        raise ModelError(f"weights_type={kind} is not one of none, per_feature, per_channel")

    def channel_flow(self, layer, inputs, outputs):
        counts = [_chw(s)[1] for s in inputs]
        if len(set(counts)) > 1:
            return blocked(f"shortcut '{layer.name}' adds inputs with different channel counts "
                           f"{counts}: darknet adds only the overlapping channels")
        per_channel = {"weights": 1} if layer.params.get("weights_type") == "per_channel" else {}
        return ChannelFlow("join", out_axes=per_channel)

    def init_weights(self, layer, inputs, rng):
        return {k: rng.uniform(0.5, 1.5, s).astype(np.float32)
                for k, s in self.weight_shapes(layer, inputs).items()}


@register
class ScaleChannels(DarknetSpec):
    """Inputs [scales (previous layer), features (from)]; output shaped like the features."""

    types = ("scale_channels",)
    channel_role = "coupler"

    def infer(self, layer, inputs):
        (_, c, h, w), (b2, c2, h2, w2) = _chw(inputs[0]), _chw(inputs[-1])
        need = (1, h2, w2) if opt_int(layer, "scale_wh", 0) else (c2, 1, 1)
        if len(inputs) != 2 or (c, h, w) != need:
            raise ModelError(f"scale_channels needs scales of C x H x W = {need} for the "
                             f"{(c2, h2, w2)} from= layer, got {(c, h, w)}")
        return [(b2, c2, h2, w2)]

    def channel_flow(self, layer, inputs, outputs):
        if opt_int(layer, "scale_wh", 0):
            return blocked(f"scale_channels '{layer.name}' with scale_wh=1 scales by a 1-channel map")
        return ChannelFlow("join", inputs=(1, 0))  # output carries the features' channels


@register
class Sam(DarknetSpec):
    """Spatial attention: elementwise product of the previous layer and the from= layer."""

    types = ("sam",)
    channel_role = "coupler"

    def infer(self, layer, inputs):
        if len(inputs) != 2 or tuple(inputs[0][1:]) != tuple(inputs[1][1:]):
            raise ModelError(f"sam needs two inputs of equal shape, got {[tuple(s) for s in inputs]}")
        return [tuple(inputs[1])]

    def channel_flow(self, layer, inputs, outputs):
        return ChannelFlow("join", inputs=(1, 0))


# ----------------------------------------------------------------- resampling
@register
class Upsample(DarknetSpec):
    """Nearest upsample by ``stride`` (default 2); a negative stride downsamples."""

    types = ("upsample",)

    def infer(self, layer, inputs):
        (b, c, h, w), s = _chw(inputs[0]), opt_int(layer, "stride", 2)
        if s == 0:
            raise ModelError("stride=0 is not allowed")
        return [(b, c, h // -s, w // -s)] if s < 0 else [(b, c, h * s, w * s)]


@register
class Reorg(DarknetSpec):
    """Space-to-depth. ``[reorg]`` (pjreddie REORG, AlexeyAB REORG_OLD) and ``[reorg3d]``.

    The two orders of elements differ but the shapes are the same. pjreddie's
    ``extra=`` turns the output into a flat vector of inputs + extra values.
    """

    types = ("reorg", "reorg3d")
    channel_role = "blocker"

    def infer(self, layer, inputs):
        (b, c, h, w), s = _chw(inputs[0]), max(1, opt_int(layer, "stride", 1))
        extra = opt_int(layer, "extra", 0) if layer.type == "reorg" else 0
        if extra:
            return [(b, c * h * w + extra, 1, 1)]
        if opt_int(layer, "reverse", 0):
            if c % (s * s):
                raise ModelError(f"reverse reorg needs channels ({c}) divisible by stride^2 ({s * s})")
            return [(b, c // (s * s), h * s, w * s)]
        return [(b, c * s * s, h // s, w // s)]


@register
class Crop(DarknetSpec):
    types = ("crop",)

    def infer(self, layer, inputs):
        b, c, h, w = _chw(inputs[0])
        return [(b, c, opt_int(layer, "crop_height", 1), opt_int(layer, "crop_width", 1))]


# ----------------------------------------------------------------- heads
class _Head(DarknetSpec):
    """Detection heads: output = input, but the channel count must match the head's options.

    Subclasses give ``expect(layer) -> (needed count, explanation)``.
    """

    channel_role = "sink"
    flat = False  # True when darknet checks the flat size rather than the channels

    def channel_flow(self, layer, inputs, outputs):
        need, why = self.expect(layer)
        return blocked(f"{layer.type} head '{layer.name}' fixes the channels of its input to {why}")

    def infer(self, layer, inputs):
        need, why = self.expect(layer)
        got = _prod(inputs[0][1:]) if self.flat else _chw(inputs[0])[1]
        if got != need:
            what = "values" if self.flat else "channels"
            raise ModelError(f"{layer.type} needs {why} = {need} {what} from the layer before, "
                             f"but it gives {got} (check filters= of the layer before)")
        return [tuple(inputs[0])]


@register
class Yolo(_Head):
    types = ("yolo",)
    extra = 5

    def expect(self, layer):
        classes = opt_int(layer, "classes", 20)
        n = len(opt_list(layer, "mask")) or opt_int(layer, "num", 1)
        return n * (classes + self.extra), f"anchors {n} x (classes {classes} + {self.extra})"


@register
class GaussianYolo(Yolo):
    types = ("Gaussian_yolo",)
    extra = 9


@register
class Region(_Head):
    types = ("region",)

    def expect(self, layer):
        num, classes = opt_int(layer, "num", 1), opt_int(layer, "classes", 20)
        coords = opt_int(layer, "coords", 4)
        return num * (classes + coords + 1), \
            f"num {num} x (classes {classes} + coords {coords} + 1)"


@register
class Detection(_Head):
    """YOLOv1 head on a flat vector: side^2 x ((1 + coords) x num + classes)."""

    types = ("detection",)
    flat = True

    def expect(self, layer):
        side, num = opt_int(layer, "side", 7), opt_int(layer, "num", 1)
        coords, classes = opt_int(layer, "coords", 1), opt_int(layer, "classes", 1)
        return side * side * ((1 + coords) * num + classes), \
            f"side {side}^2 x ((1 + coords {coords}) x num {num} + classes {classes})"


@register
class ISeg(_Head):
    types = ("iseg",)

    def expect(self, layer):
        classes, ids = opt_int(layer, "classes", 20), opt_int(layer, "ids", 32)
        return classes + ids, f"classes {classes} + ids {ids}"


@register
class Softmax(DarknetSpec):
    types = ("softmax",)
    channel_role = "sink"

    def infer(self, layer, inputs):
        groups = max(1, opt_int(layer, "groups", 1))
        n = _prod(inputs[0][1:])
        if n % groups:
            raise ModelError(f"softmax over {n} values is not divisible into groups={groups}")
        return [tuple(inputs[0])]


@register
class Cost(DarknetSpec):
    types = ("cost",)
    channel_role = "sink"


# ----------------------------------------------------------------- elementwise
@register
class Elementwise(DarknetSpec):
    """Layers that keep the shape and store nothing."""

    types = ("dropout", "normalization", "activation", "logistic", "l2norm", "empty")

    def channel_flow(self, layer, inputs, outputs):
        if layer.type in ("normalization", "l2norm"):
            return blocked(f"{layer.type} '{layer.name}' normalises across channels")
        return passthrough()


#: sections both darknets know but this package does not model, and why.
_UNUSED = "and no known cfg uses it"
UNSUPPORTED = {
    "lstm": f"pjreddie and AlexeyAB store its eight matrices in different orders {_UNUSED}",
    "crnn": f"pjreddie and AlexeyAB give it different options and arrays {_UNUSED}",
    "conv_lstm": f"AlexeyAB-only; its arrays depend on peephole/bottleneck {_UNUSED}",
    "history": f"AlexeyAB-only time-stacking layer {_UNUSED}",
    "contrastive": "AlexeyAB-only training loss tied to a [yolo] layer, no inference role",
    "implicit": f"AlexeyAB-only learned constant (YOLOR) {_UNUSED}",
}
