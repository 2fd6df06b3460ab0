"""The state one Darknet -> Caffe conversion builds up, shared by the per-type converters.

A converter (see :mod:`.darknet_caffe_ops`) reads its Darknet layer, the Darknet shapes of
its inputs and output (inferred once, before any Caffe layer exists) and appends Caffe
layers here; it then names the Caffe blob that holds what the Darknet layer outputs.
Darknet shapes drive every decision, so a converter never depends on how an earlier one
chose to express its layer. What a converter cannot express it reports through
:meth:`CaffeBuilder.refuse`; the conversion goes on so that one error lists every refusal.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..graph import Layer
from ..layers.registry import ShapeMap

#: flavours of Caffe a conversion can target (caffe.proto variants in ../shared/zoo)
FLAVORS = ("bvlc", "xilinx")


class Refused(Exception):
    """Raised by :meth:`CaffeBuilder.refuse` to stop one converter; the message is the reason."""


class CaffeBuilder:
    """Caffe layers under construction and the Darknet blob -> Caffe blob map.

    Args:
        shapes: Darknet shape inference of the source graph.
        flavor: "bvlc" or "xilinx".
        darknet_bn: whose BatchNorm formula the Caffe BatchNorm must reproduce.
    """

    def __init__(self, shapes: ShapeMap, flavor: str, darknet_bn: str):
        self.shapes, self.flavor, self.darknet_bn = shapes, flavor, darknet_bn
        self.layers: list[Layer] = []
        self.blob: dict[str, str] = {}        # Darknet blob name -> Caffe blob name
        self.heads: list[dict[str, Any]] = []  # detector heads, in layer order
        self._names: set[str] = set()

    # -- reading the Darknet side ---------------------------------------------
    def bottoms(self, layer: Layer) -> list[str]:
        """The Caffe blobs holding ``layer``'s Darknet inputs, in order."""
        return [self.blob[b] for b in layer.bottoms]

    def in_shapes(self, layer: Layer) -> list[tuple]:
        return [tuple(s) for s in self.shapes.inputs[layer.name]]

    def out_shape(self, layer: Layer) -> tuple:
        return tuple(self.shapes.outputs[layer.name][0])

    # -- writing the Caffe side -------------------------------------------------
    def unique(self, name: str) -> str:
        """``name``, or ``name_2``, ``name_3``... if a layer or blob already has it."""
        out, i = name, 1
        while out in self._names:
            i += 1
            out = f"{name}_{i}"
        self._names.add(out)
        return out

    def add(self, name: str, type_: str, bottoms, *, tops=None, in_place: bool = False,
            params: dict | None = None, weights: dict | None = None) -> str:
        """Append one Caffe layer and return its (first) top.

        ``in_place`` writes the first bottom again (Caffe's idiom for BatchNorm, Scale and
        activations after a convolution); otherwise the top is named after the layer.
        """
        name = self.unique(name)
        bottoms = list(bottoms)
        if tops is None:
            tops = [bottoms[0]] if in_place else [name]
        for t in tops:
            if t != name and t not in bottoms:
                self._names.add(t)
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in (weights or {}).items()}
        self.layers.append(Layer(name, type_, bottoms, list(tops), dict(params or {}), arrays))
        return tops[0]

    def refuse(self, why: str):
        """Stop converting the current layer: the target cannot express it, and why."""
        raise Refused(why)
