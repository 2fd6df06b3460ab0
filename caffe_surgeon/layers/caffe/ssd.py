"""Caffe layers of the SSD fork: prior boxes, decoded detections."""
from __future__ import annotations

from ...errors import ModelError
from ..caffe_geometry import sub
from ..channel_flow import ChannelFlow
from ..registry import NEEDS_EVERY_CHANNEL, register
from .base import CaffeSpec


@register
class PriorBox(CaffeSpec):
    types = ("PriorBox",)
    channel_role = "shape_only"

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
    channel_role = "block"
    block_reason = NEEDS_EVERY_CHANNEL
    roles = frozenset({"detector_head"})
    box_format = "ssd"

    def infer(self, layer, inputs):
        # Caffe sizes this per run; OpenCV reserves keep_top_k rows per image.
        keep = int(sub(layer, "detection_output_param").get("keep_top_k", -1))
        return [(1, 1, max(keep, 1) * inputs[0][0], 7)]
