"""Darknet output layers: detection heads, softmax, cost."""
from __future__ import annotations

from ...errors import ModelError
from ..channel_flow import blocked
from ..registry import NEEDS_EVERY_CHANNEL, register
from .base import DarknetSpec, chw, prod
from .options import opt_int, opt_list


class _Head(DarknetSpec):
    """Detection heads: output = input, but the channel count must match the head's options.

    Subclasses give ``expect(layer) -> (needed count, explanation)``.
    """

    channel_role = "block"
    flat = False  # True when darknet checks the flat size rather than the channels
    default_classes = 20  # parser.c's classes= default

    def classes(self, layer) -> int:
        return opt_int(layer, "classes", self.default_classes)

    def channel_flow(self, layer, inputs, outputs):
        need, why = self.expect(layer)
        return blocked(f"{layer.type} head '{layer.name}' fixes the channels of its input to {why}")

    def infer(self, layer, inputs):
        need, why = self.expect(layer)
        got = prod(inputs[0][1:]) if self.flat else chw(inputs[0])[1]
        if got != need:
            what = "values" if self.flat else "channels"
            raise ModelError(f"{layer.type} needs {why} = {need} {what} from the layer before, "
                             f"but it gives {got} (check filters= of the layer before)")
        return [tuple(inputs[0])]


@register
class Yolo(_Head):
    types = ("yolo",)
    roles = frozenset({"detector_head"})
    box_format = "yolo_v3"
    extra = 5

    def expect(self, layer):
        classes = self.classes(layer)
        n = len(opt_list(layer, "mask")) or opt_int(layer, "num", 1)
        return n * (classes + self.extra), f"anchors {n} x (classes {classes} + {self.extra})"


@register
class GaussianYolo(Yolo):
    types = ("Gaussian_yolo",)
    roles = frozenset()  # no test-time semantics we can decode (the engine refuses it)
    box_format = None
    extra = 9


@register
class Region(_Head):
    types = ("region",)
    roles = frozenset({"detector_head"})
    box_format = "yolo_v2"

    def expect(self, layer):
        num, classes = opt_int(layer, "num", 1), self.classes(layer)
        coords = opt_int(layer, "coords", 4)
        return num * (classes + coords + 1), \
            f"num {num} x (classes {classes} + coords {coords} + 1)"


@register
class Detection(_Head):
    """YOLOv1 head on a flat vector: side^2 x ((1 + coords) x num + classes)."""

    types = ("detection",)
    roles = frozenset({"detector_head"})
    box_format = "yolo_v1"
    flat = True
    default_classes = 1

    def expect(self, layer):
        side, num = opt_int(layer, "side", 7), opt_int(layer, "num", 1)
        coords, classes = opt_int(layer, "coords", 1), self.classes(layer)
        return side * side * ((1 + coords) * num + classes), \
            f"side {side}^2 x ((1 + coords {coords}) x num {num} + classes {classes})"


@register
class ISeg(_Head):
    types = ("iseg",)

    def expect(self, layer):
        classes, ids = self.classes(layer), opt_int(layer, "ids", 32)
        return classes + ids, f"classes {classes} + ids {ids}"


@register
class Softmax(DarknetSpec):
    types = ("softmax",)
    channel_role = "block"
    block_reason = NEEDS_EVERY_CHANNEL

    def unsupported(self, layer):
        if layer.params.get("tree"):
            return "softmax trees (hierarchical classifiers) are not supported"
        return ""

    def infer(self, layer, inputs):
        groups = max(1, opt_int(layer, "groups", 1))
        n = prod(inputs[0][1:])
        if n % groups:
            raise ModelError(f"softmax over {n} values is not divisible into groups={groups}")
        return [tuple(inputs[0])]


@register
class Cost(DarknetSpec):
    types = ("cost",)
    channel_role = "block"
    block_reason = NEEDS_EVERY_CHANNEL
    roles = frozenset({"loss"})
