"""Darknet recurrent layers (rnn, gru): shapes and arrays only; channels are blocked."""
from __future__ import annotations

from ..registry import Shape, register
from .base import DarknetSpec, connected_arrays, has_bn, prod
from .options import opt_int


class _Recurrent(DarknetSpec):
    """Recurrent layers: a flat ``output``-sized vector made by stacked connected layers."""

    channel_role = "block"
    in_total = True

    def infer(self, layer, inputs):
        return [(inputs[0][0], opt_int(layer, "output", 1), 1, 1)]

    def transposable(self, name):
        return name.endswith(".weights")

    def macs(self, layer, inputs, outputs):
        return sum(s[0] * s[1] for k, s in self.weight_shapes(layer, inputs).items()
                   if k.endswith(".weights"))


@register
class RNN(_Recurrent):
    """Three connected layers: input (in->hidden), self (hidden->hidden), output (hidden->out)."""

    types = ("rnn",)

    def weight_shapes(self, layer, inputs):
        n_in, out, bn = prod(inputs[0][1:]), opt_int(layer, "output", 1), has_bn(layer)
        hid = opt_int(layer, "hidden", out)
        return {**connected_arrays("input.", n_in, hid, bn),
                **connected_arrays("self.", hid, hid, bn),
                **connected_arrays("output.", hid, out, bn)}


@register
class GRU(_Recurrent):
    """Six connected layers in pjreddie file order: state_z/r/h (out->out, its wz/wr/wh),
    then input_z/r/h (in->out, its uz/ur/uh); checked against libdarknet with a
    transposed file. AlexeyAB writes the input matrices first: the same length,
    but a file from it has its blocks in the other order.
    """

    types = ("gru",)

    def weight_shapes(self, layer, inputs):
        n_in, out, bn = prod(inputs[0][1:]), opt_int(layer, "output", 1), has_bn(layer)
        shapes: dict[str, Shape] = {}
        for part, size in (("state", out), ("input", n_in)):
            for gate in "zrh":
                shapes.update(connected_arrays(f"{part}_{gate}.", size, out, bn))
        return shapes
