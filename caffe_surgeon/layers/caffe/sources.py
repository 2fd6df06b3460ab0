"""Caffe data layers: where a net's values come from.

Each declares the ``data_source`` role; the ones evaluators can decode also say what they
read (``data_format``) and which parameter message holds ``source`` and ``batch_size``.
"""
from __future__ import annotations

from ...errors import ModelError
from ..caffe_geometry import (shape_dims, sub)
from ..registry import register
from .base import CaffeSpec


@register
class Input(CaffeSpec):
    types = ("Input",)
    channel_role = "source"
    roles = frozenset({"data_source"})
    declared_input = True

    def set_input_shape(self, layer, shape):
        if len(layer.tops) != 1:
            raise ModelError(f"an Input layer with {len(layer.tops)} tops has one shape per "
                             "top; give it one top to resize it")
        layer.params.setdefault("input_param", {})["shape"] = [{"dim": [int(d) for d in shape]}]

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
    roles = frozenset({"data_source"})

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
    types = ("Data",)
    data_format = "datum_db"
    data_param = "data_param"

    def batch(self, layer):
        p = sub(layer, "data_param") or sub(layer, "window_data_param")
        return int(p.get("batch_size", 1))

    def image(self, layer):
        crop = int(sub(layer, "window_data_param").get("crop_size", 0))
        if crop:
            return self.channels(layer), crop, crop
        return super().image(layer)


@register
class WindowData(Data):
    """R-CNN's window sampler: shaped like Data, but no evaluator decodes its windows."""

    types = ("WindowData",)
    data_format = None
    data_param = "window_data_param"


@register
class ImageData(_DataSpec):
    types = ("ImageData",)
    data_format = "image_list"
    data_param = "image_data_param"

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
    data_format = "annotated_db"
    data_param = "data_param"

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
    roles = frozenset({"data_source"})

    def infer(self, layer, inputs):
        what = "HDF5 file" if layer.type == "HDF5Data" else "Python code"
        raise ModelError(f"the output shape of a {layer.type} layer is set by its {what}; give it "
                         f"explicitly (e.g. --input-shape {layer.tops[0] if layer.tops else 'data'}=1,3,224,224)")
