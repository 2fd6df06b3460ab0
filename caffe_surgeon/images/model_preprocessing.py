"""How a model says its input images are made, for ``forward`` and ``detect``.

A Caffe net trained from images states its preprocessing in its data layer: the
TEST-phase ``transform_param`` (scale, mean, crop) and, for ImageData, the decode
(``is_color``) and resize (``new_height`` x ``new_width``). A deploy prototxt has
none of that, but the train_val it was cut from usually sits beside it: when
exactly one recipe is found there, it is used. Darknet's ``[net]`` section gives
the channels and size itself. The caller prints :attr:`CaffeRecipe.source` so a
user sees what was applied, and command-line flags override single fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError


@dataclass
class CaffeRecipe:
    """One data layer's TEST-time image preparation."""

    source: str  # where it was read: "fashion_train_val.prototxt layer 'data' (TEST)"
    transform: dict = field(default_factory=dict)  # transform_param
    new_size: tuple | None = None  # ImageData (new_height, new_width); None: not resized by it
    is_color: bool | None = None  # ImageData's is_color; None: the net's channel count decides

    def describe(self) -> str:
        t = self.transform
        parts = [f"scale {float(t.get('scale', 1.0)):.6g}"]
        if t.get("mean_value"):
            parts.append("mean " + ",".join(f"{float(v):g}" for v in t["mean_value"]))
        if t.get("mean_file"):
            parts.append(f"mean file {t['mean_file']}")
        if t.get("crop_size") or t.get("crop_h"):
            parts.append(f"centre crop {t.get('crop_h') or t['crop_size']}")
        if self.new_size:
            parts.append(f"resize {self.new_size[0]}x{self.new_size[1]}")
        return ", ".join(parts)


def _recipe_of(graph, path, top: str | None) -> CaffeRecipe | None:
    from ..layers.registry import spec_for
    for layer in graph.layers:
        if "data_source" not in spec_for(graph.framework, layer).roles:
            continue
        if "transform_param" not in layer.params or (top is not None and top not in layer.tops):
            continue
        image = layer.params.get("image_data_param") or {}
        h, w = int(image.get("new_height", 0)), int(image.get("new_width", 0))
        return CaffeRecipe(f"{Path(path).name} layer '{layer.name}' (TEST)",
                           dict(layer.params["transform_param"]), (h, w) if h and w else None,
                           bool(image.get("is_color", True)) if image else None)
    return None


def caffe_recipe(graph, prototxt, input_name: str) -> tuple[CaffeRecipe | None, str]:
    """The model's own preprocessing, and a note when it could not be decided.

    Args:
        graph: the net as read (TEST phase).
        prototxt: its file; a deploy file's folder is searched for its train_val.
        input_name: the blob to be fed; a train_val beside the deploy must feed it too.
    Returns:
        (recipe or None, note): the note says why none was used when that is not obvious.
    """
    from .. import api
    own = _recipe_of(graph, prototxt, None)
    if own is not None:
        return own, ""
    prototxt = Path(prototxt)
    found = {}
    for other in sorted(prototxt.parent.glob("*.prototxt")):
        if other.resolve() == prototxt.resolve():
            continue
        try:
            if "transform_param" not in other.read_text(errors="replace"):
                continue
            recipe = _recipe_of(api.load(other), other, input_name)
        except (ModelError, OSError):
            continue  # a solver, a vai_p config, a broken file: not a train_val of this net
        if recipe is not None:
            found.setdefault(repr((recipe.transform, recipe.new_size, recipe.is_color)), recipe)
    if len(found) == 1:
        return next(iter(found.values())), ""
    if len(found) > 1:
        names = ", ".join(r.source.split(" ")[0] for r in found.values())
        return None, (f"{len(found)} train_val files beside {prototxt.name} give different "
                      f"preprocessing ({names}); using none: pass --scale/--mean")
    return None, ""


def with_flags(recipe: CaffeRecipe, *, mean=None, scale=None) -> CaffeRecipe:
    """The recipe with the command line's ``--mean`` / ``--scale`` in place of its own."""
    params = dict(recipe.transform)
    if scale is not None:
        params["scale"] = scale
    if mean is not None:
        params["mean_value"] = list(mean)
        params.pop("mean_file", None)
    return CaffeRecipe(recipe.source, params, recipe.new_size, recipe.is_color)


def caffe_image_input(path, recipe: CaffeRecipe, shape, *, rgb: bool = False) -> np.ndarray:
    """An image made as the recipe says: (C, H, W) float32.

    Decoded the way Caffe's ImageData decodes (OpenCV-compatible, BGR; ``rgb`` swaps to
    RGB), resized to the recipe's size or else the net's, then the TEST-time transform
    (crop, mean, scale).
    """
    from ..evaluation.caffe_transform import Transform, resolver
    from .caffe_image import cv_resize_linear, read_image_caffe
    channels, h, w = int(shape[1]), int(shape[2]), int(shape[3])
    params = dict(recipe.transform)
    params.pop("mirror", None)  # random in Caffe; a single forward stays deterministic
    is_color = recipe.is_color if recipe.is_color is not None else channels == 3
    crop = params.get("crop_h") or params.get("crop_size")
    size = recipe.new_size or (None if crop else (h, w))
    img = read_image_caffe(path, *(size or (0, 0)), is_color)
    if crop and min(img.shape[1:]) < int(crop):  # a small image: bring it up to the crop
        img = np.ascontiguousarray(cv_resize_linear(img.transpose(1, 2, 0), h, w)
                                   .reshape(h, w, -1).transpose(2, 0, 1))
    if rgb and img.shape[0] == 3:
        img = np.ascontiguousarray(img[::-1])
    x = Transform(params, recipe.source, path, resolver(None))(img)
    if x.shape != (channels, h, w):
        raise ModelError(f"the image prepared as {recipe.source} says is {tuple(x.shape)} but the "
                         f"net's input is {(channels, h, w)}", file=path)
    return x
