"""Caffe layer specs: shapes, weight arrays, counts and synthetic weights.

Shape rules follow BVLC Caffe's ``Reshape`` methods (and the SSD, Xilinx and
darknet2caffe forks for their layers). Counting follows vai_p_caffe's
``net_counter``: conv ops = out_C x out_H x out_W x (2 x in_C/group x kH x kW + 1),
BatchNorm counts 4C + 1 params and no ops, InnerProduct is left out of totals.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import ModelError
from .caffe_geometry import (canonical_axis, conv_geometry, conv_out, deconv_out,
                             pair, pool_out, shape_dims, sub)
from .fillers import fill
from .channel_flow import ChannelFlow, blocked, passthrough
from .registry import Counts, LayerSpec, Shape, register


class CaffeSpec(LayerSpec):
    framework = "caffe"


def _prod(xs) -> int:
    return int(np.prod(xs, dtype=np.int64)) if len(xs) else 1


# ---------------------------------------------------------------- sources
@register
class Input(CaffeSpec):
    types = ("Input",)
    channel_role = "source"

    def infer(self, layer, inputs):
        shapes = [shape_dims(s) for s in sub(layer, "input_param").get("shape", [])]
        if not shapes:
            raise ModelError("Input layer has no input_param { shape { dim ... } }")
        if len(shapes) == 1:
            return shapes * len(layer.tops)
        if len(shapes) != len(layer.tops):
            raise ModelError(f"Input layer has {len(layer.tops)} tops but {len(shapes)} shapes")
        return shapes


@register
class DummyData(CaffeSpec):
    types = ("DummyData",)
    channel_role = "source"

    def infer(self, layer, inputs):
        p = sub(layer, "dummy_data_param")
        shapes = [shape_dims(s) for s in p.get("shape", [])]
        if not shapes and p.get("num"):
            legacy = zip(p.get("num", []), p.get("channels", []), p.get("height", []), p.get("width", []))
            shapes = [tuple(int(v) for v in dims) for dims in legacy]
        if not shapes:
            raise ModelError("DummyData layer declares no shape")
        return shapes * len(layer.tops) if len(shapes) == 1 else shapes


class _DataSpec(CaffeSpec):
    """Database-backed data layers: the image size comes from the transform or resize
    settings; the channel count cannot be read without the database, so colour (3)
    is assumed, grey (1) with force_gray (override with an explicit input shape). It
    stays a guess either way (``guesses_channels``; weights are not checked against
    it): Caffe applies force_gray/force_color only when decoding encoded records,
    while raw records keep the channels they were stored with."""

    channel_role = "source"

    def batch(self, layer) -> int:
        return int(sub(layer, "data_param").get("batch_size", 1))

    def channels(self, layer) -> int:
        return 1 if sub(layer, "transform_param").get("force_gray") else 3

    def guesses_channels(self, layer) -> bool:
        return True

    def image(self, layer) -> tuple[int, int, int]:
        crop = int(sub(layer, "transform_param").get("crop_size", 0))
        if crop:
            return self.channels(layer), crop, crop
        raise ModelError(f"the input size of {layer.type} layer depends on its database; "
                         "give the input shape explicitly (e.g. --input-shape data=1,3,224,224)")

    def infer(self, layer, inputs):
        n = self.batch(layer)
        c, h, w = self.image(layer)
        out = [(n, c, h, w)]
        if len(layer.tops) > 1:
            out.append((n,))
        return out + [(n,)] * (len(layer.tops) - len(out))


@register
class Data(_DataSpec):
    types = ("Data", "WindowData")

    def batch(self, layer):
        p = sub(layer, "data_param") or sub(layer, "window_data_param")
        return int(p.get("batch_size", 1))

    def image(self, layer):
        crop = int(sub(layer, "window_data_param").get("crop_size", 0))
        if crop:
            return self.channels(layer), crop, crop
        return super().image(layer)


@register
class ImageData(_DataSpec):
    types = ("ImageData",)

    def batch(self, layer):
        return int(sub(layer, "image_data_param").get("batch_size", 1))

    def guesses_channels(self, layer) -> bool:
        return False  # is_color says it

    def image(self, layer):
        p = sub(layer, "image_data_param")
        c = 3 if p.get("is_color", True) else 1
        crop = int(sub(layer, "transform_param").get("crop_size", 0))
        if crop:
            return c, crop, crop
        if p.get("new_height") and p.get("new_width"):
            return c, int(p["new_height"]), int(p["new_width"])
        return super().image(layer)


@register
class MemoryData(_DataSpec):
    types = ("MemoryData",)

    def guesses_channels(self, layer) -> bool:
        return False  # memory_data_param states it

    def infer(self, layer, inputs):
        p = sub(layer, "memory_data_param")
        n = int(p.get("batch_size", 1))
        return [(n, int(p.get("channels", 0)), int(p.get("height", 0)), int(p.get("width", 0))), (n,)][: len(layer.tops)]


@register
class AnnotatedData(_DataSpec):
    types = ("AnnotatedData",)

    def image(self, layer):
        r = sub(layer, "transform_param").get("resize_param") or {}
        if r.get("height") and r.get("width"):
            return self.channels(layer), int(r["height"]), int(r["width"])
        return super().image(layer)

    def infer(self, layer, inputs):
        n = self.batch(layer)
        c, h, w = self.image(layer)
        # SSD's label blob holds a variable number of 8-value boxes; one is its reshape size.
        return [(n, c, h, w), (1, 1, 1, 8)][: len(layer.tops)]


@register
class OpaqueSource(CaffeSpec):
    """Layers whose output size only their data file or Python code knows."""

    types = ("HDF5Data", "Python")
    channel_role = "source"

    def infer(self, layer, inputs):
        what = "HDF5 file" if layer.type == "HDF5Data" else "Python code"
        raise ModelError(f"the output shape of a {layer.type} layer is set by its {what}; give it "
                         f"explicitly (e.g. --input-shape {layer.tops[0] if layer.tops else 'data'}=1,3,224,224)")


# ---------------------------------------------------------------- producers
@register
class Convolution(CaffeSpec):
    types = ("Convolution", "ConvolutionDepthwise", "ConvolutionFixed", "DepthwiseConvolution")
    channel_role = "producer"

    def _geom(self, layer, inputs):
        p = sub(layer, "convolution_param")
        if "num_output" not in p:
            raise ModelError(f"{layer.type} has no convolution_param.num_output")
        if len(inputs[0]) != 4:
            raise ModelError(f"{layer.type} expects a 4-D input, got {tuple(inputs[0])}")
        group = int(p.get("group", 1))
        if layer.type in ("ConvolutionDepthwise", "DepthwiseConvolution"):
            group = inputs[0][1]
        return p, int(p["num_output"]), group, conv_geometry(p)

    def infer(self, layer, inputs):
        p, n, group, (k, s, pd, d) = self._geom(layer, inputs)
        c = inputs[0][1]
        if c % group or n % group:
            raise ModelError(f"group {group} does not divide input channels {c} and num_output {n}")
        out = [(x[0], n, conv_out(x[2], k[0], s[0], pd[0], d[0]), conv_out(x[3], k[1], s[1], pd[1], d[1]))
               for x in inputs]
        return out

    def weight_shapes(self, layer, inputs):
        p, n, group, (k, _, _, _) = self._geom(layer, inputs)
        shapes = {"weight": (n, inputs[0][1] // group, k[0], k[1])}
        if p.get("bias_term", True):
            shapes["bias"] = (n,)
        return shapes

    def weight_names(self, layer, count):
        return ["weight", "bias"][:count] if count <= 2 else super().weight_names(layer, count)

    def channel_flow(self, layer, inputs, outputs):
        p, n, group, _ = self._geom(layer, inputs)
        per_channel = {"weight": 0, "bias": 0}  # a bias may be switched on by offset folding
        if group > 1 and group == inputs[0][1] == n:
            # Depthwise: channel i in, channel i out, one filter each.
            return passthrough(out_axes=per_channel, silence={"weight": 0.0, "bias": 0.0})
        if group > 1:
            why = (f"grouped convolution (group={group}) would have to lose the same number of "
                   "channels in every group; not supported")
            return ChannelFlow("produce", out_axes=per_channel, in_axes={"weight": 1},
                               in_block=why, out_block=why)
        return ChannelFlow("produce", out_axes=per_channel, in_axes={"weight": 1},
                           offset_into="bias", silence={"weight": 0.0, "bias": 0.0})

    def window(self, layer, inputs):
        """(kernel, stride, pad, dilation) as (h, w) pairs, for patch extraction."""
        _, _, _, (k, s, pd, d) = self._geom(layer, inputs)
        return tuple(k), tuple(s), tuple(pd), tuple(d)

    def set_channels(self, layer, n):
        p = layer.params.setdefault("convolution_param", {})
        if int(p.get("group", 1)) > 1 and int(p["group"]) == int(p["num_output"]):
            p["group"] = n
        p["num_output"] = n

    def count(self, layer, inputs, outputs):
        p, n, group, (k, _, _, _) = self._geom(layer, inputs)
        out = outputs[0]
        per_out = inputs[0][1] // group * k[0] * k[1]
        bias = bool(p.get("bias_term", True))
        spatial = n * out[2] * out[3]
        return Counts(ops=spatial * (2 * per_out + 1), macs=spatial * per_out,
                      params=n * per_out + (n if bias else 0))

    def init_weights(self, layer, inputs, rng):
        p = sub(layer, "convolution_param")
        return {name: fill(p.get("weight_filler" if name == "weight" else "bias_filler"),
                           shape, rng, default=("msra" if name == "weight" else "small"))
                for name, shape in self.weight_shapes(layer, inputs).items()}


@register
class Deconvolution(Convolution):
    types = ("Deconvolution",)

    def infer(self, layer, inputs):
        p, n, group, (k, s, pd, d) = self._geom(layer, inputs)
        if inputs[0][1] % group or n % group:
            raise ModelError(f"group {group} does not divide input channels {inputs[0][1]} and num_output {n}")
        return [(x[0], n, deconv_out(x[2], k[0], s[0], pd[0], d[0]), deconv_out(x[3], k[1], s[1], pd[1], d[1]))
                for x in inputs]

    def weight_shapes(self, layer, inputs):
        p, n, group, (k, _, _, _) = self._geom(layer, inputs)
        shapes = {"weight": (inputs[0][1], n // group, k[0], k[1])}
        if p.get("bias_term", True):
            shapes["bias"] = (n,)
        return shapes

    def channel_flow(self, layer, inputs, outputs):
        p, n, group, _ = self._geom(layer, inputs)
        out_axes = {"weight": 1, "bias": 0}
        why = "" if group == 1 else f"grouped deconvolution (group={group}) is not pruned"
        return ChannelFlow("produce", out_axes=out_axes, in_axes={"weight": 0},
                           in_block=why, out_block=why, offset_into="bias",
                           silence={"weight": 0.0, "bias": 0.0})

    def set_channels(self, layer, n):
        layer.params.setdefault("convolution_param", {})["num_output"] = n

    def count(self, layer, inputs, outputs):
        p, n, group, (k, _, _, _) = self._geom(layer, inputs)
        x, out = inputs[0], outputs[0]
        macs = x[1] * x[2] * x[3] * (n // group) * k[0] * k[1]
        bias = n * out[2] * out[3] if p.get("bias_term", True) else 0
        params = x[1] * (n // group) * k[0] * k[1] + (n if p.get("bias_term", True) else 0)
        return Counts(ops=2 * macs + bias, macs=macs, params=params)


@register
class InnerProduct(CaffeSpec):
    types = ("InnerProduct", "InnerProductFixed")
    channel_role = "producer"

    def _dims(self, layer, inputs):
        p = sub(layer, "inner_product_param")
        if "num_output" not in p:
            raise ModelError("InnerProduct has no inner_product_param.num_output")
        axis = canonical_axis(int(p.get("axis", 1)), len(inputs[0]))
        return p, axis, _prod(inputs[0][axis:]), int(p["num_output"])

    def infer(self, layer, inputs):
        _, axis, _, n = self._dims(layer, inputs)
        return [tuple(inputs[0][:axis]) + (n,)]

    def weight_shapes(self, layer, inputs):
        p, _, k, n = self._dims(layer, inputs)
        shapes = {"weight": (k, n) if p.get("transpose", False) else (n, k)}
        if p.get("bias_term", True):
            shapes["bias"] = (n,)
        return shapes

    def weight_names(self, layer, count):
        return ["weight", "bias"][:count] if count <= 2 else super().weight_names(layer, count)

    def channel_flow(self, layer, inputs, outputs):
        p, axis, _, _ = self._dims(layer, inputs)
        t = bool(p.get("transpose", False))
        out_axes = {"weight": 1 if t else 0, "bias": 0}
        return ChannelFlow("produce", out_axes=out_axes, in_axes={"weight": 0 if t else 1},
                           in_block="" if axis == 1 else f"InnerProduct over axis {axis}",
                           out_block="" if len(outputs[0]) == 2 else
                           f"InnerProduct output {tuple(outputs[0])} is not (N, C)",
                           offset_into="bias", silence={"weight": 0.0, "bias": 0.0})

    def set_channels(self, layer, n):
        layer.params.setdefault("inner_product_param", {})["num_output"] = n

    def count(self, layer, inputs, outputs):
        p, axis, k, n = self._dims(layer, inputs)
        rows = _prod(inputs[0][1:axis]) if axis > 1 else 1
        bias = p.get("bias_term", True)
        return Counts(ops=rows * n * (2 * k + (1 if bias else 0)), macs=rows * n * k,
                      params=n * k + (n if bias else 0), in_total=False)

    def init_weights(self, layer, inputs, rng):
        p = sub(layer, "inner_product_param")
        return {name: fill(p.get("weight_filler" if name == "weight" else "bias_filler"),
                           shape, rng, default=("xavier" if name == "weight" else "small"))
                for name, shape in self.weight_shapes(layer, inputs).items()}


# ---------------------------------------------------------------- per-channel
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
        return Counts(params=sum(_prod(s) for s in self.weight_shapes(layer, inputs).values()),
                      in_total=False)


@register
class Scale(_AxisParam):
    types = ("Scale",)
    param_key = "scale_param"

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
    param_key = "bias_param"

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
    types = ("ReLU", "ReLU6", "ELU", "Sigmoid", "TanH", "Power", "AbsVal", "BNLL", "Exp",
             "Log", "Swish", "Clip", "Mish", "Threshold", "Dropout", "LRN", "Softmax",
             "FixedNeuron", "MVN", "HardSigmoid", "GELU")

    def channel_flow(self, layer, inputs, outputs):
        if layer.type == "LRN" and sub(layer, "lrn_param").get("norm_region", "ACROSS_CHANNELS") \
                == "ACROSS_CHANNELS":
            return blocked(f"LRN '{layer.name}' normalises across neighbouring channels")
        if layer.type == "Softmax":
            return blocked(f"Softmax '{layer.name}' normalises over all channels")
        if layer.type == "MVN" and sub(layer, "mvn_param").get("across_channels", False):
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


# ---------------------------------------------------------------- structure
@register
class Eltwise(CaffeSpec):
    types = ("Eltwise",)
    channel_role = "coupler"

    def infer(self, layer, inputs):
        for i, s in enumerate(inputs[1:], 1):
            if tuple(s) != tuple(inputs[0]):
                raise ModelError(f"Eltwise input {i} ('{layer.bottoms[i]}') has shape {tuple(s)}, "
                                 f"input 0 ('{layer.bottoms[0]}') has {tuple(inputs[0])}")
        return [tuple(inputs[0])]

    def channel_flow(self, layer, inputs, outputs):
        return ChannelFlow("join")


@register
class Concat(CaffeSpec):
    types = ("Concat",)
    channel_role = "coupler"

    def infer(self, layer, inputs):
        p = sub(layer, "concat_param")
        axis = int(p["concat_dim"]) if "concat_dim" in p else int(p.get("axis", 1))
        axis = canonical_axis(axis, len(inputs[0]))
        out = list(inputs[0])
        for i, s in enumerate(inputs[1:], 1):
            if len(s) != len(out) or any(a != b for j, (a, b) in enumerate(zip(s, inputs[0])) if j != axis):
                raise ModelError(f"Concat input {i} ('{layer.bottoms[i]}') has shape {tuple(s)}, which does not "
                                 f"match input 0 {tuple(inputs[0])} outside axis {axis}")
            out[axis] += s[axis]
        return [tuple(out)]

    def channel_flow(self, layer, inputs, outputs):
        p = sub(layer, "concat_param")
        axis = canonical_axis(int(p["concat_dim"]) if "concat_dim" in p else int(p.get("axis", 1)),
                              len(inputs[0]))
        return ChannelFlow("concat") if axis == 1 else \
            blocked(f"Concat '{layer.name}' joins along axis {axis}, not channels")


@register
class Slice(CaffeSpec):
    types = ("Slice",)
    channel_role = "coupler"

    def infer(self, layer, inputs):
        p = sub(layer, "slice_param")
        x = inputs[0]
        axis = canonical_axis(int(p["slice_dim"]) if "slice_dim" in p else int(p.get("axis", 1)), len(x))
        points = [int(v) for v in p.get("slice_point", [])]
        n = len(layer.tops)
        if points:
            if len(points) != n - 1:
                raise ModelError(f"Slice has {n} tops but {len(points)} slice points")
            bounds = [0] + points + [x[axis]]
        else:
            if x[axis] % n:
                raise ModelError(f"Slice cannot split axis {axis} of size {x[axis]} into {n} equal parts")
            bounds = [i * x[axis] // n for i in range(n + 1)]
        out = []
        for a, b in zip(bounds, bounds[1:]):
            if b <= a:
                raise ModelError(f"Slice points {points} are not increasing within size {x[axis]}")
            out.append(tuple(x[:axis]) + (b - a,) + tuple(x[axis + 1:]))
        return out

    def channel_flow(self, layer, inputs, outputs):
        p = sub(layer, "slice_param")
        axis = canonical_axis(int(p["slice_dim"]) if "slice_dim" in p else int(p.get("axis", 1)),
                              len(inputs[0]))
        if axis != 1:
            return passthrough() if axis >= 2 else \
                blocked(f"Slice '{layer.name}' splits axis {axis}")
        if len(layer.tops) > 1 and not p.get("slice_point"):
            return blocked(f"Slice '{layer.name}' splits channels into equal parts "
                           "(no slice_point), which pruning would have to keep equal")
        return ChannelFlow("slice")


@register
class Split(CaffeSpec):
    types = ("Split",)


@register
class Flatten(CaffeSpec):
    types = ("Flatten",)
    channel_role = "reshape"

    def infer(self, layer, inputs):
        p = sub(layer, "flatten_param")
        x = inputs[0]
        a = canonical_axis(int(p.get("axis", 1)), len(x))
        e = canonical_axis(int(p.get("end_axis", -1)), len(x))
        return [tuple(x[:a]) + (_prod(x[a:e + 1]),) + tuple(x[e + 1:])]

    def channel_flow(self, layer, inputs, outputs):
        p = sub(layer, "flatten_param")
        x = inputs[0]
        a = canonical_axis(int(p.get("axis", 1)), len(x))
        e = canonical_axis(int(p.get("end_axis", -1)), len(x))
        if a == 1 and e == len(x) - 1:
            return ChannelFlow("flatten")
        return blocked(f"Flatten '{layer.name}' over axes {a}..{e} hides the channel axis")


@register
class Reshape(CaffeSpec):
    types = ("Reshape",)
    channel_role = "blocker"

    def infer(self, layer, inputs):
        p = sub(layer, "reshape_param")
        x = list(inputs[0])
        dims = list(shape_dims(p.get("shape", {})))
        axis = int(p.get("axis", 0))
        axis = axis if axis >= 0 else len(x) + axis + 1
        num = int(p.get("num_axes", -1))
        end = len(x) if num == -1 else axis + num
        head, mid, tail = x[:axis], x[axis:end], x[end:]
        out = []
        for i, d in enumerate(dims):
            if d == 0:
                if i >= len(mid):
                    raise ModelError(f"Reshape dim {i} copies an axis the input {tuple(x)} does not have")
                out.append(mid[i])
            else:
                out.append(d)
        if out.count(-1) > 1:
            raise ModelError("Reshape has more than one -1 dim")
        if -1 in out:
            known = _prod([d for d in out if d != -1])
            total = _prod(mid)
            if known == 0 or total % known:
                raise ModelError(f"Reshape cannot infer -1: {_prod(x)} elements into {dims}")
            out[out.index(-1)] = total // known
        result = tuple(head + out + tail)
        if _prod(result) != _prod(x):
            raise ModelError(f"Reshape {tuple(x)} -> {result} changes the element count")
        return [result]


@register
class Permute(CaffeSpec):
    types = ("Permute",)
    channel_role = "blocker"

    def infer(self, layer, inputs):
        x = inputs[0]
        order = [int(o) for o in sub(layer, "permute_param").get("order", [])]
        order += [i for i in range(len(x)) if i not in order]
        if sorted(order) != list(range(len(x))):
            raise ModelError(f"Permute order {order} is not a permutation of {len(x)} axes")
        return [tuple(x[i] for i in order)]


@register
class Crop(CaffeSpec):
    types = ("Crop",)

    def infer(self, layer, inputs):
        if len(inputs) != 2:
            raise ModelError(f"Crop needs 2 inputs, got {len(inputs)}")
        x, ref = inputs
        axis = canonical_axis(int(sub(layer, "crop_param").get("axis", 2)), len(x))
        return [tuple(x[:axis]) + tuple(ref[axis:])]

    def channel_flow(self, layer, inputs, outputs):
        axis = canonical_axis(int(sub(layer, "crop_param").get("axis", 2)), len(inputs[0]))
        return passthrough(inputs=(0,)) if axis >= 2 else \
            blocked(f"Crop '{layer.name}' crops the channel axis")


@register
class Tile(CaffeSpec):
    types = ("Tile",)

    def infer(self, layer, inputs):
        p = sub(layer, "tile_param")
        x = list(inputs[0])
        axis = canonical_axis(int(p.get("axis", 1)), len(x))
        x[axis] *= int(p.get("tiles", 1))
        return [tuple(x)]

    def channel_flow(self, layer, inputs, outputs):
        axis = canonical_axis(int(sub(layer, "tile_param").get("axis", 1)), len(inputs[0]))
        return passthrough() if axis >= 2 else blocked(f"Tile '{layer.name}' repeats channels")


@register
class Upsample(CaffeSpec):
    """darknet2caffe's nearest-neighbour Upsample (``upsample_param { scale }``)."""

    types = ("Upsample",)

    def infer(self, layer, inputs):
        p = sub(layer, "upsample_param")
        x = inputs[0]
        if p.get("upsample_h") and p.get("upsample_w"):
            return [(x[0], x[1], int(p["upsample_h"]), int(p["upsample_w"]))]
        sh = int(p.get("scale_h", p.get("scale", 2)))
        sw = int(p.get("scale_w", p.get("scale", 2)))
        return [(x[0], x[1], x[2] * sh, x[3] * sw)]

    def channel_flow(self, layer, inputs, outputs):
        # SegNet's form reads the pooling mask as a second input, channel for channel.
        return ChannelFlow("join") if len(inputs) == 2 else passthrough()


@register
class Interp(CaffeSpec):
    """DeepLab/PSPNet bilinear Interp: size from height/width, zoom/shrink or a second input."""

    types = ("Interp",)

    def infer(self, layer, inputs):
        # DeepLab v2 / PSPNet interp_layer.cpp, in its order: a lone shrink or zoom
        # factor wins over height/width, height/width over the pair of factors
        # (shrink, then zoom), and a second input sizes the output only when
        # nothing else does.
        p = sub(layer, "interp_param")
        x = inputs[0]
        h = x[2] + int(p.get("pad_beg", 0)) + int(p.get("pad_end", 0))
        w = x[3] + int(p.get("pad_beg", 0)) + int(p.get("pad_end", 0))
        zoom, shrink = "zoom_factor" in p, "shrink_factor" in p
        if zoom != shrink or (zoom and not ("height" in p and "width" in p)):
            if shrink:
                s = int(p["shrink_factor"])
                h, w = (h - 1) // s + 1, (w - 1) // s + 1
            if zoom:
                z = int(p["zoom_factor"])
                h, w = h + (h - 1) * (z - 1), w + (w - 1) * (z - 1)
        elif "height" in p and "width" in p:
            h, w = int(p["height"]), int(p["width"])
        elif len(inputs) > 1:
            h, w = inputs[1][2], inputs[1][3]
        else:
            raise ModelError("Interp needs zoom_factor, shrink_factor, height and width, "
                             "or a second input to size its output")
        return [(x[0], x[1], h, w)]


@register
class DeephiResize(CaffeSpec):
    types = ("DeephiResize",)

    def infer(self, layer, inputs):
        p = sub(layer, "deephi_resize_param")
        x = inputs[0]
        if p.get("new_height") and p.get("new_width"):
            return [(x[0], x[1], int(p["new_height"]), int(p["new_width"]))]
        # caffe-xilinx: int = int * float (float32), scale_h/scale_w default 1 in its proto
        return [(x[0], x[1], int(np.float32(x[2]) * np.float32(p.get("scale_h", 1))),
                 int(np.float32(x[3]) * np.float32(p.get("scale_w", 1))))]


@register
class Reorg(CaffeSpec):
    types = ("Reorg",)
    channel_role = "blocker"

    def infer(self, layer, inputs):
        p = sub(layer, "reorg_param")
        s = int(p.get("stride", 2))
        n, c, h, w = inputs[0]
        if p.get("reverse", False):
            return [(n, c // (s * s), h * s, w * s)]
        if h % s or w % s:
            raise ModelError(f"Reorg stride {s} does not divide {h}x{w}")
        return [(n, c * s * s, h // s, w // s)]


@register
class ArgMax(CaffeSpec):
    types = ("ArgMax",)
    channel_role = "sink"

    def infer(self, layer, inputs):
        p = sub(layer, "argmax_param")
        x = list(inputs[0])
        k = int(p.get("top_k", 1))
        if "axis" in p:
            x[canonical_axis(int(p["axis"]), len(x))] = k
            return [tuple(x)]
        return [(x[0], 2 if p.get("out_max_val", False) else 1, k)]


# ---------------------------------------------------------------- SSD
@register
class PriorBox(CaffeSpec):
    types = ("PriorBox",)

    def channel_flow(self, layer, inputs, outputs):
        return ChannelFlow("shape_only")  # reads the feature map's size, never its values

    @staticmethod
    def num_priors(p: dict) -> int:
        ratios = [1.0]
        for ar in p.get("aspect_ratio", []):
            if any(abs(ar - r) < 1e-6 for r in ratios):
                continue
            ratios.append(ar)
            if p.get("flip", True):
                ratios.append(1.0 / ar)
        return len(ratios) * len(p.get("min_size", [])) + len(p.get("max_size", []))

    def infer(self, layer, inputs):
        p = sub(layer, "prior_box_param")
        if not p.get("min_size"):
            raise ModelError("PriorBox has no min_size")
        x = inputs[0]
        return [(1, 2, x[2] * x[3] * self.num_priors(p) * 4)]


@register
class DetectionOutput(CaffeSpec):
    types = ("DetectionOutput",)
    channel_role = "sink"

    def infer(self, layer, inputs):
        # Caffe sizes this per run; OpenCV reserves keep_top_k rows per image.
        keep = int(sub(layer, "detection_output_param").get("keep_top_k", -1))
        return [(1, 1, max(keep, 1) * inputs[0][0], 7)]


# ---------------------------------------------------------------- heads
@register
class Scalar(CaffeSpec):
    """Metric and loss layers: one scalar per top (Accuracy's optional per-class top is C)."""

    types = ("Accuracy", "SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss",
             "ContrastiveLoss", "MultiBoxLoss", "HingeLoss", "InfogainLoss",
             "MultinomialLogisticLoss", "L1Loss", "SmoothL1Loss", "DetectionEvaluate")
    channel_role = "sink"

    def infer(self, layer, inputs):
        out = [()]
        if layer.type == "Accuracy" and len(layer.tops) > 1:
            out.append((inputs[0][1],))
        return (out + [()] * len(layer.tops))[: len(layer.tops)]


@register
class Silence(CaffeSpec):
    types = ("Silence",)

    def channel_flow(self, layer, inputs, outputs):
        return ChannelFlow("shape_only")

    def infer(self, layer, inputs):
        return []
