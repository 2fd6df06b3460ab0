"""Darknet layers that pool, join, route, resize or reorganise, and shape-keeping ones."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...errors import ModelError
from ..channel_flow import ChannelFlow, blocked, passthrough
from ..registry import register
from .base import DarknetSpec, chw
from .options import cdiv, opt_int


class _Pool(DarknetSpec):
    depth_ok = True

    def infer(self, layer, inputs):
        b, c, h, w = chw(inputs[0])
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
        b, c, h, w = chw(inputs[0])
        return [(b, c, 1, 1)]


# ----------------------------------------------------------------- joins
@register
class Route(DarknetSpec):
    """Concatenate the listed layers along C; AlexeyAB ``groups``/``group_id`` keep one slice.

    Every input must have the same H and W (darknet would silently give 0 x 0 x 0).
    With groups=2, group_id=1 a 64-channel input yields its channels 32..63.
    """

    types = ("route",)
    channel_role = "concat"
    link_key = "layers"
    links_replace_previous = True

    def infer(self, layer, inputs):
        groups, group_id = max(1, opt_int(layer, "groups", 1)), opt_int(layer, "group_id", 0)
        if not 0 <= group_id < groups:
            raise ModelError(f"group_id={group_id} is outside 0..{groups - 1}")
        (b, _, h, w), total = chw(inputs[0]), 0
        for i, s in enumerate(inputs):
            _, c, hh, ww = chw(s)
            if (hh, ww) != (h, w):
                raise ModelError(f"route input {i} ('{layer.bottoms[i]}') is {ww} x {hh}, but "
                                 f"input 0 ('{layer.bottoms[0]}') is {w} x {h}; darknet "
                                 "concatenates only equal sizes")
            if c % groups:
                raise ModelError(f"route input {i} ('{layer.bottoms[i]}') has {c} channels, "
                                 f"not divisible by groups={groups}")
            total += c
        return [(b, total // groups, h, w)]

    def identity(self, layer, inputs, outputs):
        return len(layer.bottoms) == 1 and max(1, opt_int(layer, "groups", 1)) == 1

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
    channel_role = "join"
    link_key = "from"
    activation_option = "activation"

    def weight_shapes(self, layer, inputs):
        kind = layer.params.get("weights_type", "none")
        n = len(inputs) - 1
        if kind == "none":
            return {}
        if kind in ("per_feature", "per_layer"):
            return {"weights": (n + 1,)}
        if kind == "per_channel":
            return {"weights": (n + 1, chw(inputs[0])[1])}
        raise ModelError(f"weights_type={kind} is not one of none, per_feature, per_channel")

    def channel_flow(self, layer, inputs, outputs):
        counts = [chw(s)[1] for s in inputs]
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
    activation_option = "activation"
    channel_role = "join"
    link_key = "from"

    def infer(self, layer, inputs):
        (_, c, h, w), (b2, c2, h2, w2) = chw(inputs[0]), chw(inputs[-1])
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
    activation_option = "activation"
    channel_role = "join"
    link_key = "from"

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
        (b, c, h, w), s = chw(inputs[0]), opt_int(layer, "stride", 2)
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
    channel_role = "block"

    def infer(self, layer, inputs):
        (b, c, h, w), s = chw(inputs[0]), max(1, opt_int(layer, "stride", 1))
        extra = opt_int(layer, "extra", 0) if layer.type == "reorg" else 0
        if extra:
            return [(b, c * h * w + extra, 1, 1)]
        if opt_int(layer, "reverse", 0):
            if c % (s * s):
                raise ModelError(f"reverse reorg needs channels ({c}) divisible by stride^2 ({s * s})")
            return [(b, c // (s * s), h * s, w * s)]
        return [(b, c * s * s, h // s, w // s)]


class ReorgWalk(NamedTuple):
    """How a ``[reorg]`` / ``[reorg3d]`` forward moves its elements (:func:`reorg_walk`).

    ``kind``: "reorg_cpu" (darknet's index walk over ``geometry`` = (w, h, c), ``forward``
    = reverse), "extra" (the flat input, then zeros up to ``out_shape``) or "flatten"
    (blas.c ``flatten``: (C, H*W) <-> (H*W, C), transposed back when ``reverse``).
    """

    kind: str
    geometry: tuple
    stride: int
    reverse: bool
    out_shape: tuple


def reorg_walk(layer, shape) -> ReorgWalk:
    """Which of darknet's reorg code paths an (N, C, H, W) input takes, shapes only: the
    backends share the dispatch and its checks and differ only in how they move the data.

    pjreddie ``forward_reorg_layer`` walks ``reorg_cpu`` over the *input* geometry;
    AlexeyAB ``[reorg3d]`` (REORG) walks it over the *output* geometry. Example: reorg3d
    stride 2 on (1, 4, 6, 6) gives ("reorg_cpu", (3, 3, 16), 2, False, (1, 16, 3, 3)).

    Raises:
        ModelError: a stride that does not divide H and W where darknet would write past
            its output buffer.
    """
    _, c, h, w = shape
    s = max(1, opt_int(layer, "stride", 1))
    reverse = bool(opt_int(layer, "reverse", 0))
    out_shape = tuple(Reorg().infer(layer, [tuple(shape)])[0])
    if layer.type == "reorg3d":
        _, oc, oh, ow = out_shape
        if (ow * s, oh * s) != (w, h) and not reverse:
            raise ModelError(f"[reorg3d] stride {s} needs width and height divisible by it, "
                             f"got {w} x {h}")
        return ReorgWalk("reorg_cpu", (ow, oh, oc), s, reverse, out_shape)
    if opt_int(layer, "extra", 0):
        return ReorgWalk("extra", (w, h, c), s, reverse, out_shape)
    if (h % s or w % s) and not reverse:
        raise ModelError(f"[reorg] stride {s} needs width and height divisible by it, got "
                         f"{w} x {h} (darknet would write past its output buffer)")
    kind = "flatten" if opt_int(layer, "flatten", 0) else "reorg_cpu"
    return ReorgWalk(kind, (w, h, c), s, reverse, out_shape)


@register
class Crop(DarknetSpec):
    types = ("crop",)

    def infer(self, layer, inputs):
        b, c, h, w = chw(inputs[0])
        return [(b, c, opt_int(layer, "crop_height", 1), opt_int(layer, "crop_width", 1))]



# ----------------------------------------------------------------- elementwise
@register
class Elementwise(DarknetSpec):
    """Layers that keep the shape and store nothing."""

    types = ("logistic", "empty")


@register
class ActivationSection(Elementwise):
    """AlexeyAB's ``[activation]``: only its activation."""

    types = ("activation",)
    activation_option = "activation"


@register
class Dropout(Elementwise):
    """Active in training only: at test time darknet passes the input through."""

    types = ("dropout",)
    roles = frozenset({"test_identity"})


@register
class AcrossChannels(Elementwise):
    """Shape-keeping layers that normalise across channels (LRN, L2 norm)."""

    types = ("normalization", "l2norm")
    channel_role = "block"
    block_reason = "{type} '{name}' normalises across channels"
