"""Caffe layers that map each channel on its own: BatchNorm, Scale, Bias, activations, pooling."""
from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ..affine import F32, absorb_into_producer, shifted
from ..caffe_geometry import (canonical_axis, pair, pool_out, sub)
from ..fillers import fill
from ..channel_flow import ChannelFlow, blocked, passthrough
from ..registry import Counts, Shape, register
from .base import CaffeSpec, prod


@register
class BatchNorm(CaffeSpec):
    """Two stored forms, told apart by their array count.

    BVLC: [mean*s, var*s, s] with a scalar factor s the engine divides out
    (0 -> 0); gamma/beta live in a following Scale layer.
    caffe-xilinx: [scale, bias, mean, variance, counter] (its batch_norm_layer.cpp):
    the affine part is built in, statistics are stored undivided, and the
    one-element fifth blob is a training counter. vai_p_caffe's 4C+1 parameter
    count is this form's size.
    """

    types = ("BatchNorm",)
    roles = frozenset({"fusion_head", "fusion_follower", "normalizer"})
    BVLC = ("mean", "variance", "scale_factor")
    XILINX = ("scale", "bias", "mean", "variance", "counter")

    @staticmethod
    def channels(inputs) -> int:
        return inputs[0][1] if len(inputs[0]) > 1 else 1

    @staticmethod
    def is_xilinx(layer) -> bool:
        p = sub(layer, "batch_norm_param")
        return (len(layer.weights) == 5 or len(layer.params.get("param", [])) == 4
                or "scale_filler" in p or "bias_filler" in p)

    def weight_layouts(self, layer, inputs):
        c = self.channels(inputs)
        bvlc = {"mean": (c,), "variance": (c,), "scale_factor": (1,)}
        xilinx = {"scale": (c,), "bias": (c,), "mean": (c,), "variance": (c,), "counter": (1,)}
        return [xilinx, bvlc] if self.is_xilinx(layer) else [bvlc, xilinx]

    def weight_shapes(self, layer, inputs):
        return self.weight_layouts(layer, inputs)[0]

    def weight_names(self, layer, count):
        names = {3: self.BVLC, 5: self.XILINX}.get(count)
        return list(names) if names else super().weight_names(layer, count)

    def count(self, layer, inputs, outputs):
        return Counts(params=4 * self.channels(inputs) + 1)  # vai_p_caffe's count (see class doc)

    def channel_flow(self, layer, inputs, outputs):
        if "scale" in layer.weights:  # Xilinx form: affine part built in
            return passthrough(out_axes=dict.fromkeys(("scale", "bias", "mean", "variance"), 0),
                               gamma="scale", silence={"bias": 0.0, "mean": 0.0}, mean="mean")
        return passthrough(out_axes={"mean": 0, "variance": 0}, silence={"mean": 0.0}, mean="mean")

    def channel_affine(self, layer, flavour="pjreddie"):
        p = sub(layer, "batch_norm_param")
        if p.get("use_global_stats", True) is False:
            return None  # normalises by each batch's own statistics even in TEST
        w = layer.weights
        eps = float(p.get("eps", 1e-5))
        if "scale_factor" in w:  # BVLC: statistics stored times a factor (0 means 0)
            s = float(w["scale_factor"].reshape(-1)[0])
            f = 0.0 if s == 0 else 1.0 / s
            mean, var = w["mean"].astype(np.float64) * f, w["variance"].astype(np.float64) * f
            gamma, beta = 1.0, 0.0
        elif {"scale", "bias", "mean", "variance"} <= set(w):  # caffe-xilinx, affine built in
            mean, var = w["mean"].astype(np.float64), w["variance"].astype(np.float64)
            gamma, beta = w["scale"].astype(np.float64), w["bias"].astype(np.float64)
        else:
            return None  # no statistics yet
        a = gamma / np.sqrt(var + eps)
        return a.reshape(-1), (beta - mean * a).reshape(-1)

    def init_weights(self, layer, inputs, rng):
        c = self.channels(inputs)
        if self.is_xilinx(layer):
            p = sub(layer, "batch_norm_param")
            return {"scale": fill(p.get("scale_filler"), (c,), rng, default="around_one"),
                    "bias": fill(p.get("bias_filler"), (c,), rng, default="small"),
                    "mean": (rng.standard_normal(c) * 0.1).astype(np.float32),
                    "variance": rng.uniform(0.5, 1.5, c).astype(np.float32),
                    "counter": np.zeros(1, np.float32)}
        s = np.float32(rng.uniform(0.5, 2.0))  # a non-unit factor exercises the division
        return {"mean": (rng.standard_normal(c) * 0.1 * s).astype(np.float32),
                "variance": (rng.uniform(0.5, 1.5, c) * s).astype(np.float32),
                "scale_factor": np.array([s], np.float32)}


def _axis_flow(layer, inputs, key, gamma=None) -> ChannelFlow:
    """Scale/Bias: per-channel when the learned blob (or second input) starts at axis 1."""
    axis = canonical_axis(int(sub(layer, key).get("axis", 1)), len(inputs[0]))
    if axis != 1:
        return blocked(f"{layer.type} '{layer.name}' works along axis {axis}, not channels")
    if len(inputs) == 2:
        return ChannelFlow("join", inputs=(0, 1))
    return passthrough(out_axes=dict.fromkeys(layer.weights, 0), gamma=gamma,
                       silence={"bias": 0.0})


class _AxisParam(CaffeSpec):
    """Scale and Bias: a learned blob spanning ``num_axes`` axes from ``axis``."""

    param_key = ""

    def blob_shape(self, layer, inputs) -> Shape:
        p = sub(layer, self.param_key)
        x = inputs[0]
        axis = canonical_axis(int(p.get("axis", 1)), len(x))
        num = int(p.get("num_axes", 1))
        return tuple(x[axis:] if num == -1 else x[axis:axis + num])

    def count(self, layer, inputs, outputs):
        return Counts(params=sum(prod(s) for s in self.weight_shapes(layer, inputs).values()),
                      in_total=False)


    def per_channel(self, layer) -> bool:
        """One learned value per channel: axis 1, one axis, a single bottom."""
        p = sub(layer, self.param_key)
        return (len(layer.bottoms) == 1 and int(p.get("axis", 1)) == 1
                and int(p.get("num_axes", 1)) == 1)


@register
class Scale(_AxisParam):
    types = ("Scale",)
    roles = frozenset({"fusion_head", "fusion_follower", "affine"})
    param_key = "scale_param"

    def channel_affine(self, layer, flavour="pjreddie"):
        if not self.per_channel(layer) or "scale" not in layer.weights:
            return None
        a = layer.weights["scale"].astype(np.float64).reshape(-1)
        c = layer.weights["bias"].astype(np.float64).reshape(-1) if "bias" in layer.weights \
            else np.zeros(1)
        return a, c

    def absorb_affine(self, layer, a, c):
        if self.channel_affine(layer) is None:
            return "a Scale that is not one learned value per channel cannot take it"
        return absorb_into_producer(layer, a, c, "scale", "bias", 0, ("scale_param", "bias_term"))

    def weight_shapes(self, layer, inputs):
        p = sub(layer, "scale_param")
        shape = self.blob_shape(layer, inputs) if len(inputs) == 1 else tuple(inputs[1])
        shapes = {"scale": shape} if len(inputs) == 1 else {}
        if p.get("bias_term", False):
            shapes["bias"] = shape
        return shapes

    def weight_names(self, layer, count):
        return ["scale", "bias"][:count] if count <= 2 else super().weight_names(layer, count)

    def channel_flow(self, layer, inputs, outputs):
        return _axis_flow(layer, inputs, "scale_param", gamma="scale")

    def init_weights(self, layer, inputs, rng):
        p = sub(layer, "scale_param")
        out = {}
        for name, shape in self.weight_shapes(layer, inputs).items():
            given = p.get("filler" if name == "scale" else "bias_filler")
            out[name] = fill(given, shape, rng, default="around_one" if name == "scale" else "small")
        return out


@register
class Bias(_AxisParam):
    types = ("Bias",)
    roles = frozenset({"fusion_follower", "affine"})
    param_key = "bias_param"

    def channel_affine(self, layer, flavour="pjreddie"):
        if not self.per_channel(layer) or "bias" not in layer.weights:
            return None
        return np.ones(1), layer.weights["bias"].astype(np.float64).reshape(-1)

    def absorb_affine(self, layer, a, c):
        if self.channel_affine(layer) is None or np.any(np.asarray(a) != 1):
            return "a Bias layer can take a shift but not a scale"
        b = layer.weights["bias"]
        layer.weights = {**layer.weights, "bias": shifted(b, 1.0, c, b.size)}
        return ""

    def weight_shapes(self, layer, inputs):
        return {"bias": self.blob_shape(layer, inputs)} if len(inputs) == 1 else {}

    def channel_flow(self, layer, inputs, outputs):
        return _axis_flow(layer, inputs, "bias_param")

    def init_weights(self, layer, inputs, rng):
        return {n: fill(sub(layer, "bias_param").get("filler"), s, rng, default="small")
                for n, s in self.weight_shapes(layer, inputs).items()}


@register
class PReLU(CaffeSpec):
    types = ("PReLU",)

    def weight_shapes(self, layer, inputs):
        shared = sub(layer, "prelu_param").get("channel_shared", False)
        return {"slope": (1,) if shared else (inputs[0][1],)}

    def channel_flow(self, layer, inputs, outputs):
        shared = sub(layer, "prelu_param").get("channel_shared", False)
        return passthrough(out_axes={} if shared else {"slope": 0})

    def init_weights(self, layer, inputs, rng):
        return {n: fill(sub(layer, "prelu_param").get("filler"), s, rng, default="prelu")
                for n, s in self.weight_shapes(layer, inputs).items()}


@register
class Normalize(CaffeSpec):
    types = ("Normalize",)

    def weight_shapes(self, layer, inputs):
        shared = sub(layer, "norm_param").get("channel_shared", True)
        return {"scale": (1,) if shared else (inputs[0][1],)}

    def channel_flow(self, layer, inputs, outputs):
        # The norm runs across channels; a removed channel must emit exactly 0,
        # which the sparse output guarantees by silencing it (see pruning/surgery.py).
        shared = sub(layer, "norm_param").get("channel_shared", True)
        return passthrough(out_axes={} if shared else {"scale": 0}, mixes_channels=True)

    def init_weights(self, layer, inputs, rng):
        return {n: fill(sub(layer, "norm_param").get("scale_filler"), s, rng, default="around_one")
                for n, s in self.weight_shapes(layer, inputs).items()}


@register
class Elementwise(CaffeSpec):
    """Each value on its own: output channel i is input channel i."""

    types = ("ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Exp", "Log", "Swish",
             "Mish", "Threshold", "FixedNeuron", "HardSigmoid", "GELU")
    roles = frozenset({"pointwise"})


@register
class Dropout(Elementwise):
    """Scales kept values by 1/(1-p) in training only: at test time the identity."""

    types = ("Dropout",)
    roles = frozenset({"test_identity"})


@register
class Power(Elementwise):
    """``(shift + scale * x) ^ power``: a scalar affine map when power is 1."""

    types = ("Power",)
    roles = frozenset({"pointwise", "affine"})

    def channel_affine(self, layer, flavour="pjreddie"):
        p = sub(layer, "power_param")
        if float(p.get("power", 1.0)) != 1.0:
            return None
        return np.array([float(p.get("scale", 1.0))]), np.array([float(p.get("shift", 0.0))])

    def absorb_affine(self, layer, a, c):
        mine = self.channel_affine(layer)
        a, c = np.asarray(a, np.float64).reshape(-1), np.asarray(c, np.float64).reshape(-1)
        if mine is None or a.size != 1 or c.size != 1:
            return "a Power layer can take one scale and shift for every channel only"
        p = layer.params.setdefault("power_param", {})
        # float32 like the values Caffe stores in the message
        p["scale"] = float(F32(mine[0][0] * a[0]))
        p["shift"] = float(F32(mine[1][0] * a[0] + c[0]))
        return ""


@register
class Clamp(Elementwise):
    """Activations that are a clamp (ReLU with or without a slope, ReLU6, Clip)."""

    types = ("ReLU", "ReLU6", "Clip")
    roles = frozenset({"fusion_follower", "pointwise"})

    def slope_field(self, layer):
        return ("relu_param", "negative_slope") if layer.type == "ReLU" else None


@register
class LRN(CaffeSpec):
    types = ("LRN",)

    def channel_flow(self, layer, inputs, outputs):
        if sub(layer, "lrn_param").get("norm_region", "ACROSS_CHANNELS") == "ACROSS_CHANNELS":
            return blocked(f"LRN '{layer.name}' normalises across neighbouring channels")
        return passthrough()


@register
class Softmax(CaffeSpec):
    types = ("Softmax",)
    channel_role = "block"
    block_reason = "Softmax '{name}' normalises over all channels"


@register
class MVN(CaffeSpec):
    types = ("MVN",)

    def channel_flow(self, layer, inputs, outputs):
        if sub(layer, "mvn_param").get("across_channels", False):
            return blocked(f"MVN '{layer.name}' normalises across channels")
        return passthrough()


@register
class Pooling(CaffeSpec):
    types = ("Pooling",)

    def infer(self, layer, inputs):
        p = sub(layer, "pooling_param")
        x = inputs[0]
        if len(x) != 4:
            raise ModelError(f"Pooling expects a 4-D input, got {tuple(x)}")
        if p.get("global_pooling", False):
            return [(x[0], x[1], 1, 1)]
        k = pair(p, "kernel", 0) if ("kernel_h" in p or "kernel_w" in p) else pair(p, "kernel_size", 0)
        if min(k) <= 0:
            raise ModelError("pooling_param has no kernel_size and global_pooling is off")
        s, pd = pair(p, "stride", 1), pair(p, "pad", 0)
        # round_mode (BVLC) and ceil_mode (fork extension) both select floor rounding.
        ceil = p.get("round_mode", "CEIL") == "CEIL" and p.get("ceil_mode", True)
        return [(x[0], x[1], pool_out(x[2], k[0], s[0], pd[0], ceil), pool_out(x[3], k[1], s[1], pd[1], ceil))]
