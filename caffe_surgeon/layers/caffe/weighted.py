"""Caffe layers with learned arrays that create channels: convolutions and InnerProduct."""
from __future__ import annotations

from ...errors import ModelError
from ..caffe_geometry import (canonical_axis, conv_geometry, conv_out, deconv_out,
                              sub)
from ..affine import absorb_into_producer
from ..fillers import fill
from ..channel_flow import ChannelFlow, passthrough
from ..registry import Counts, register
from .base import CaffeSpec, prod


@register
class Convolution(CaffeSpec):
    types = ("Convolution", "ConvolutionFixed")
    channel_role = "produce"
    roles = frozenset({"fusion_head", "stackable"})
    bias_switch = ("convolution_param", "bias_term")
    #: the forks' depthwise types: one group per input channel, whatever ``group`` says
    depthwise = False

    def _geom(self, layer, inputs):
        p = sub(layer, "convolution_param")
        if "num_output" not in p:
            raise ModelError(f"{layer.type} has no convolution_param.num_output")
        if len(inputs[0]) != 4:
            raise ModelError(f"{layer.type} expects a 4-D input, got {tuple(inputs[0])}")
        return p, int(p["num_output"]), self.group(layer, inputs[0][1]), conv_geometry(p)

    def stack_key(self, layer):
        # one group, the weights' kernel as declared; the stacked layer is this one with
        # the members' weight and bias arrays concatenated and num_output their sum
        p = sub(layer, "convolution_param")
        w = layer.weights.get("weight")
        if w is None or getattr(w, "ndim", 0) != 4 or int(p.get("group", 1)) != 1:
            return None
        kernel, stride, pad, dilation = conv_geometry(p)
        if tuple(w.shape[2:]) != tuple(kernel):
            return None
        return (layer.type, int(w.shape[1]), kernel, stride, pad, dilation, "bias" in layer.weights)

    def group(self, layer, in_channels: int) -> int:
        """The number of filter groups for an input of ``in_channels`` channels."""
        return in_channels if self.depthwise else int(sub(layer, "convolution_param").get("group", 1))

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

    def absorb_affine(self, layer, a, c):
        # Filters are (num_output, C/group, kh, kw) whatever the grouping: axis 0 is the output.
        return absorb_into_producer(layer, a, c, "weight", "bias", 0, self.bias_switch)

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
class DepthwiseConvolution(Convolution):
    types = ("ConvolutionDepthwise", "DepthwiseConvolution")
    roles = frozenset({"fusion_head"})
    depthwise = True


@register
class Deconvolution(Convolution):
    types = ("Deconvolution",)
    roles = frozenset()

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

    def absorb_affine(self, layer, a, c):
        # Filters are (C_in, num_output/group, kh, kw): output channels lie on axis 1 only
        # when there is one group.
        if int(sub(layer, "convolution_param").get("group", 1)) != 1:
            return "a grouped Deconvolution's output channels are spread over its filter groups"
        return absorb_into_producer(layer, a, c, "weight", "bias", 1, self.bias_switch)

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
    channel_role = "produce"
    bias_switch = ("inner_product_param", "bias_term")

    def _dims(self, layer, inputs):
        p = sub(layer, "inner_product_param")
        if "num_output" not in p:
            raise ModelError("InnerProduct has no inner_product_param.num_output")
        axis = canonical_axis(int(p.get("axis", 1)), len(inputs[0]))
        return p, axis, prod(inputs[0][axis:]), int(p["num_output"])

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

    def absorb_affine(self, layer, a, c):
        p = sub(layer, "inner_product_param")
        if int(p.get("axis", 1)) != 1:
            # its outputs are then the last axis, not the channel axis a BN or Scale maps
            return f"InnerProduct over axis {p['axis']} does not give its outputs on axis 1"
        axis = 1 if p.get("transpose", False) else 0  # (K, N) when transposed, else (N, K)
        return absorb_into_producer(layer, a, c, "weight", "bias", axis, self.bias_switch)

    def count(self, layer, inputs, outputs):
        p, axis, k, n = self._dims(layer, inputs)
        rows = prod(inputs[0][1:axis]) if axis > 1 else 1
        bias = p.get("bias_term", True)
        return Counts(ops=rows * n * (2 * k + (1 if bias else 0)), macs=rows * n * k,
                      params=n * k + (n if bias else 0), in_total=False)

    def init_weights(self, layer, inputs, rng):
        p = sub(layer, "inner_product_param")
        return {name: fill(p.get("weight_filler" if name == "weight" else "bias_filler"),
                           shape, rng, default=("xavier" if name == "weight" else "small"))
                for name, shape in self.weight_shapes(layer, inputs).items()}
