"""Darknet layers with learned arrays: convolutional, deconvolutional, local, connected, batchnorm."""
from __future__ import annotations

from typing import Sequence

from ...errors import ModelError
from ...graph import Layer
from ..channel_flow import blocked, passthrough
from ..registry import Shape, register
from ..affine import absorb_into_producer
from .base import (DarknetSpec, bn_arrays, bn_affine64, chw, connected_arrays, fold_own_bn, has_bn,
                   prod, producer_flow)
from .options import cdiv, opt_int


# ----------------------------------------------------------------- weighted
class _Windowed(DarknetSpec):
    """Sliding-window layers: ``geometry`` gives batch, filters n, out size and macs."""

    channel_role = "produce"
    default_activation = "logistic"  # parser.c's default for every windowed layer
    activation_option = "activation"
    #: the filters' output-channel axis
    weights_out_axis = 0

    def fold_own_norm(self, layer, flavour="pjreddie"):
        return fold_own_bn(layer, flavour, self.weights_out_axis)

    def absorb_affine(self, layer, a, c):
        if has_bn(layer):  # scales and biases are the last affine step: fold into them
            w = layer.weights
            layer.weights = {**w, "scales": (w["scales"].astype("f8") * a).astype("f4"),
                             "biases": (w["biases"].astype("f8") * a + c).astype("f4")}
            return ""
        return absorb_into_producer(layer, a, c, "weights", "biases", self.weights_out_axis, None)

    def infer(self, layer, inputs):
        g = self.geometry(layer, inputs)
        return [(g["batch"], g["n"], g["oh"], g["ow"])]

    def macs(self, layer, inputs, outputs):
        return self.geometry(layer, inputs)["macs"]

    def geometry(self, layer, inputs) -> dict[str, int]:
        b, c, h, w = chw(inputs[0])
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
        if has_bn(layer):
            out.update(bn_arrays("", g["n"]))
        out["weights"] = (g["n"], g["c"] // g["groups"], g["size"], g["size"])
        return out

    def channel_flow(self, layer, inputs, outputs):
        if "share_index" in layer.params:
            return blocked(f"'{layer.name}' shares its weights with another layer",
                           shares_weights_of=opt_int(layer, "share_index", 0))
        g = self.geometry(layer, inputs)
        per_channel = dict.fromkeys(layer.weights, 0)
        if 1 < g["groups"] == g["c"] == g["n"]:  # depthwise: channel i in, channel i out
            return passthrough(out_axes=per_channel, gamma="scales" if has_bn(layer) else None,
                               mean="rolling_mean" if has_bn(layer) else None,
                               silence={"weights": 0.0, "biases": 0.0, "rolling_mean": 0.0})
        why = "" if g["groups"] == 1 else (
            f"grouped convolution (groups={g['groups']}) would have to lose the same number "
            "of channels in every group; not supported")
        return producer_flow(layer, per_channel, {"weights": 1}, why)

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
    weights_out_axis = 1

    def geometry(self, layer, inputs):
        g = super().geometry(layer, inputs)
        oh, ow = ((d - 1) * g["stride"] + g["size"] - 2 * g["padding"] for d in (g["h"], g["w"]))
        return dict(g, oh=oh, ow=ow, macs=g["h"] * g["w"] * g["c"] * g["n"] * g["size"] ** 2)

    def weight_shapes(self, layer, inputs):
        g = self.geometry(layer, inputs)
        out = {"biases": (g["n"],)}
        if has_bn(layer):
            out.update(bn_arrays("", g["n"]))
        out["weights"] = (g["c"], g["n"], g["size"], g["size"])
        return out

    def channel_flow(self, layer, inputs, outputs):
        out_axes = {**dict.fromkeys(layer.weights, 0), "weights": 1}
        return producer_flow(layer, out_axes, {"weights": 0})

    def set_channels(self, layer, n):
        layer.params["filters"] = n


@register
class Local(_Windowed):
    """Unshared conv: one filter bank per output location; ``pad`` is a flag (size-1 total)."""

    types = ("local",)
    channel_role = "block"

    def fold_own_norm(self, layer, flavour="pjreddie"):
        return False

    def absorb_affine(self, layer, a, c):
        return "a [local] layer's biases are per location; a per-channel map is not folded"

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
        return prod(shape[2:])


@register
class Connected(DarknetSpec):
    types = ("connected",)
    channel_role = "produce"
    default_activation = "logistic"
    activation_option = "activation"
    in_total = True

    def fold_own_norm(self, layer, flavour="pjreddie"):
        return fold_own_bn(layer, flavour, 0)

    def absorb_affine(self, layer, a, c):
        return _Windowed.absorb_affine(self, layer, a, c)

    def infer(self, layer, inputs):
        return [(inputs[0][0], opt_int(layer, "output", 1), 1, 1)]

    def weight_shapes(self, layer, inputs):
        return connected_arrays("", prod(inputs[0][1:]), opt_int(layer, "output", 1),
                                 has_bn(layer))

    def transposable(self, name):
        return name == "weights"

    def macs(self, layer, inputs, outputs):
        return prod(inputs[0][1:]) * opt_int(layer, "output", 1)

    def channel_flow(self, layer, inputs, outputs):
        return producer_flow(layer, dict.fromkeys(layer.weights, 0), {"weights": 1})

    def set_channels(self, layer, n):
        layer.params["output"] = n


@register
class BatchNorm(DarknetSpec):
    """Standalone ``[batchnorm]``; AlexeyAB layout (pjreddie stores no biases)."""

    types = ("batchnorm",)
    roles = frozenset({"normalizer"})

    def channel_affine(self, layer, flavour="pjreddie"):
        w = layer.weights
        if not {"biases", "scales", "rolling_mean", "rolling_variance"} <= set(w):
            return None
        return bn_affine64(w["scales"], w["rolling_mean"], w["rolling_variance"], w["biases"],
                           flavour)

    def weight_shapes(self, layer, inputs):
        c = chw(inputs[0])[1]
        return {"biases": (c,), **bn_arrays("", c)}

    def channel_flow(self, layer, inputs, outputs):
        return passthrough(out_axes=dict.fromkeys(layer.weights, 0), gamma="scales",
                           mean="rolling_mean", silence={"biases": 0.0, "rolling_mean": 0.0})
