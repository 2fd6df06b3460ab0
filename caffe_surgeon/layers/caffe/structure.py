"""Caffe layers that join, split, reshape or resize blobs."""
from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ..caffe_geometry import canonical_axis, join_axis, permute_order, shape_dims, slice_bounds, sub
from ..channel_flow import ChannelFlow, blocked, passthrough
from ..registry import NEEDS_EVERY_CHANNEL, register
from .base import CaffeSpec, prod


@register
class Eltwise(CaffeSpec):
    types = ("Eltwise",)
    channel_role = "join"
    roles = frozenset({"fusion_head"})  # the engine runs a following ReLU in its output pass

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
    channel_role = "concat"

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

    def identity(self, layer, inputs, outputs):
        return len(layer.bottoms) == 1  # a Concat of one blob copies it

    def channel_flow(self, layer, inputs, outputs):
        p = sub(layer, "concat_param")
        axis = canonical_axis(int(p["concat_dim"]) if "concat_dim" in p else int(p.get("axis", 1)),
                              len(inputs[0]))
        return ChannelFlow("concat") if axis == 1 else \
            blocked(f"Concat '{layer.name}' joins along axis {axis}, not channels")


@register
class Slice(CaffeSpec):
    types = ("Slice",)
    channel_role = "slice"

    def infer(self, layer, inputs):
        x = inputs[0]
        axis, bounds = slice_bounds(layer, x)
        return [tuple(x[:axis]) + (b - a,) + tuple(x[axis + 1:]) for a, b in zip(bounds, bounds[1:])]

    def channel_flow(self, layer, inputs, outputs):
        axis = join_axis(layer, len(inputs[0]))
        if axis != 1:
            return passthrough() if axis >= 2 else \
                blocked(f"Slice '{layer.name}' splits axis {axis}")
        if len(layer.tops) > 1 and not sub(layer, "slice_param").get("slice_point"):
            return blocked(f"Slice '{layer.name}' splits channels into equal parts "
                           "(no slice_point), which pruning would have to keep equal")
        return ChannelFlow("slice")


@register
class Split(CaffeSpec):
    types = ("Split",)

    def identity(self, layer, inputs, outputs):
        return True  # every top is a copy of the bottom (Caffe inserts these itself)


@register
class Flatten(CaffeSpec):
    types = ("Flatten",)
    channel_role = "flatten"

    def identity(self, layer, inputs, outputs):
        return tuple(outputs[0]) == tuple(inputs[0])

    def infer(self, layer, inputs):
        p = sub(layer, "flatten_param")
        x = inputs[0]
        a = canonical_axis(int(p.get("axis", 1)), len(x))
        e = canonical_axis(int(p.get("end_axis", -1)), len(x))
        return [tuple(x[:a]) + (prod(x[a:e + 1]),) + tuple(x[e + 1:])]

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
    channel_role = "block"

    def identity(self, layer, inputs, outputs):
        return tuple(outputs[0]) == tuple(inputs[0])

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
            known = prod([d for d in out if d != -1])
            total = prod(mid)
            if known == 0 or total % known:
                raise ModelError(f"Reshape cannot infer -1: {prod(x)} elements into {dims}")
            out[out.index(-1)] = total // known
        result = tuple(head + out + tail)
        if prod(result) != prod(x):
            raise ModelError(f"Reshape {tuple(x)} -> {result} changes the element count")
        return [result]


@register
class Permute(CaffeSpec):
    types = ("Permute",)
    channel_role = "block"

    def infer(self, layer, inputs):
        x = inputs[0]
        return [tuple(x[i] for i in permute_order(layer, len(x)))]


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
    channel_role = "block"

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
    channel_role = "block"
    block_reason = NEEDS_EVERY_CHANNEL

    def infer(self, layer, inputs):
        p = sub(layer, "argmax_param")
        x = list(inputs[0])
        k = int(p.get("top_k", 1))
        if "axis" in p:
            x[canonical_axis(int(p["axis"]), len(x))] = k
            return [tuple(x)]
        return [(x[0], 2 if p.get("out_max_val", False) else 1, k)]
