"""Per-layer-type behaviour, in one place.

Each layer type of each framework has one :class:`LayerSpec` subclass that
knows its output shapes, its expected weight arrays and how to count its
operations and parameters. Adding a layer type means adding one class here
(``caffe.py`` or ``darknet.py`` beside this file) and nothing elsewhere.

Specs raise :class:`ModelError` with the message only; the caller adds the
file and layer name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ModelError
from ..graph import Graph, Layer
from .channel_flow import ChannelFlow, blocked, passthrough

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Counts:
    """Work and size of one layer for one image.

    ``ops`` follows the vendor convention (a multiply-add is 2 ops, plus one op
    per output for the bias); ``macs`` counts multiply-accumulates; ``params``
    counts stored numbers. ``in_total`` says whether the vendor's ``stat``
    totals include this layer (it leaves InnerProduct out).
    """

    ops: int = 0
    macs: int = 0
    params: int = 0
    in_total: bool = True


class LayerSpec:
    """Default behaviour: one output shaped like the first input, no weights."""

    framework: str = ""
    types: tuple[str, ...] = ()
    #: default channel behaviour for :meth:`channel_flow`: "passthrough",
    #: "source", "blocker" or "sink"; types with weights or joins override it.
    channel_role: str = "passthrough"

    def infer(self, layer: Layer, inputs: Sequence[Shape]) -> list[Shape]:
        if not inputs:
            raise ModelError(f"{layer.type} needs an input")
        return [tuple(inputs[0])] * max(1, len(layer.tops))

    def guesses_channels(self, layer: Layer) -> bool:
        """Whether :meth:`infer` had to guess the channel count of the first top (a data
        layer whose database alone knows it)."""
        return False

    def weight_shapes(self, layer: Layer, inputs: Sequence[Shape]) -> dict[str, Shape]:
        """Expected weight arrays, in file order (empty when the type has none)."""
        return {}

    def weight_layouts(self, layer: Layer, inputs: Sequence[Shape]) -> list[dict[str, Shape]]:
        """Every stored-array layout a weights file may legitimately hold for this layer.

        Most types have one; a reader picks the layout whose array count matches
        the file (Caffe's BatchNorm has a BVLC and a Xilinx form).
        """
        return [self.weight_shapes(layer, inputs)]

    def weight_names(self, layer: Layer, count: int) -> list[str]:
        """Names for ``count`` stored arrays when shapes are not known yet."""
        return [f"blob{i}" for i in range(count)]

    def count(self, layer: Layer, inputs: Sequence[Shape], outputs: Sequence[Shape]) -> Counts:
        return Counts()

    def channel_flow(self, layer: Layer, inputs: Sequence[Shape],
                     outputs: Sequence[Shape]) -> ChannelFlow:
        """How channels cross this layer (see :mod:`.channel_flow`)."""
        if self.channel_role == "passthrough":
            return passthrough()
        if self.channel_role == "source":
            return ChannelFlow("source", reason=f"produced by the {layer.type} data layer")
        if self.channel_role == "sink":
            return blocked(f"read by {layer.type} '{layer.name}', which needs every channel")
        return blocked(f"{layer.type} '{layer.name}' moves channels in a way that cannot be traced")

    def set_channels(self, layer: Layer, n: int) -> None:
        """Record a new output channel count in ``layer.params`` (producers, depthwise)."""
        raise ModelError(f"{layer.type} has no channel count to change", layer=layer.name)

    def init_weights(self, layer: Layer, inputs: Sequence[Shape],
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Synthetic float32 weights for ``caffe-surgeon init``, deterministic given ``rng``.

        The default draws every array from N(0, 0.01^2); types with fillers,
        batch statistics or biases override it.
        """
        return {name: (rng.standard_normal(shape) * 0.01).astype(np.float32)
                for name, shape in self.weight_shapes(layer, inputs).items()}


REGISTRY: dict[tuple[str, str], LayerSpec] = {}


def register(cls: type[LayerSpec]) -> type[LayerSpec]:
    """Class decorator: make ``cls`` the spec of each type in ``cls.types``."""
    inst = cls()
    for t in cls.types:
        key = (cls.framework, t)
        if key in REGISTRY:
            raise RuntimeError(f"layer type {key} registered twice")
        REGISTRY[key] = inst
    return cls


def supported_types(framework: str) -> list[str]:
    _load()
    return sorted(t for f, t in REGISTRY if f == framework)


def spec_for(framework: str, layer: Layer, file: str | None = None) -> LayerSpec:
    """The spec of ``layer``, or a ModelError naming the type, layer, file and the supported types."""
    _load()
    spec = REGISTRY.get((framework, layer.type))
    if spec is None:
        raise ModelError(
            f"unknown {framework} layer type '{layer.type}' (supported: "
            f"{', '.join(supported_types(framework))})", file=file, layer=layer.name)
    return spec


def _load() -> None:
    # Import the per-framework spec modules on first use; they register themselves.
    from . import caffe, darknet  # noqa: F401


@dataclass
class ShapeMap:
    """Result of shape inference: per layer, input and output shapes."""

    inputs: dict[str, list[Shape]]
    outputs: dict[str, list[Shape]]
    blobs: dict[str, Shape]  # final shape of every blob name
    #: blobs whose channel count is a guess (data layers reading a database): shapes
    #: downstream are plausible for counting, not for checking stored weights
    guessed: frozenset = frozenset()


def infer_shapes(graph: Graph, input_shapes: dict[str, Shape] | None = None,
                 batch: int | None = None) -> ShapeMap:
    """Run every layer's shape rule in order.

    Args:
        graph: the graph.
        input_shapes: overrides for network inputs or source layers' tops.
        batch: if given, replaces the leading (batch) dimension of every input.

    Returns:
        A :class:`ShapeMap`. Raises ModelError naming the layer on any mismatch.
    """
    overrides = dict(input_shapes or {})
    blobs: dict[str, Shape] = {}
    for name, shape in graph.inputs.items():
        shape = overrides.get(name, shape)
        if shape is None:
            raise ModelError(f"the shape of network input '{name}' is not declared; "
                             "give it explicitly", file=graph.source_text)
        blobs[name] = _rebatch(tuple(int(d) for d in shape), batch)
    ins: dict[str, list[Shape]] = {}
    outs: dict[str, list[Shape]] = {}
    guessed: set[str] = set()
    for layer in graph.layers:
        spec = spec_for(graph.framework, layer, graph.source_text)
        try:
            in_shapes = [blobs[b] for b in layer.bottoms]
        except KeyError as e:
            raise ModelError(f"bottom {e.args[0]!r} is not produced by an earlier layer",
                             file=graph.source_text, layer=layer.name) from None
        if not layer.bottoms and layer.tops and layer.tops[0] in overrides:
            # A data layer shaped by the caller; its other tops are per-image labels.
            first = tuple(overrides[layer.tops[0]])
            out_shapes = [tuple(overrides.get(t, first[:1])) for t in layer.tops]
        else:
            if not layer.tops and graph.framework == "caffe" and layer.type not in _SINKS \
                    and not layer.type.endswith("Loss"):  # Caffe gives a loss an automatic top
                raise ModelError(f"{layer.type} has no top", file=graph.source_text,
                                 layer=layer.name)
            try:
                out_shapes = [tuple(int(d) for d in s) for s in spec.infer(layer, in_shapes)]
            except ModelError as e:
                raise e.located(file=graph.source_text, layer=layer.name) from None
            except (IndexError, KeyError, ValueError, TypeError, ZeroDivisionError,
                    OverflowError) as e:  # what a spec trips on with odd counts or zeros
                raise ModelError(f"{layer.type} cannot work out its output from "
                                 f"{len(layer.bottoms)} bottom(s) {[tuple(x) for x in in_shapes]}, "
                                 f"{len(layer.tops)} top(s) and these parameters "
                                 f"({type(e).__name__}: {e}); check them",
                                 file=graph.source_text, layer=layer.name) from None
            if layer.tops and spec.guesses_channels(layer):
                guessed.add(layer.tops[0])
        if not layer.bottoms:
            out_shapes = [_rebatch(s, batch) if len(s) == 4 else s for s in out_shapes]
        for s in out_shapes:
            if any(d <= 0 for d in s):
                raise ModelError(f"{layer.type} gives an empty output {s} from inputs "
                                 f"{[tuple(x) for x in in_shapes]}",
                                 file=graph.source_text, layer=layer.name)
            if any(d > _MAX_DIM for d in s):
                raise ModelError(f"{layer.type} gives an output {s} with a dimension over "
                                 f"{_MAX_DIM} (Caffe's and Darknet's int limit)",
                                 file=graph.source_text, layer=layer.name)
        ins[layer.name] = list(in_shapes)
        outs[layer.name] = out_shapes
        for t, s in zip(layer.tops, out_shapes):
            blobs[t] = s
    return ShapeMap(ins, outs, blobs, frozenset(guessed))


_SINKS = ("Silence",)  # Caffe layers that take bottoms and give no top
_MAX_DIM = 2**31 - 1


def _rebatch(shape: Shape, batch: int | None) -> Shape:
    if batch is None or not shape:
        return shape
    return (batch,) + tuple(shape[1:])


def feed_shapes(graph: Graph, shapes: ShapeMap) -> dict[str, Shape]:
    """Blobs a caller feeds to run the graph: network inputs and the tops of data layers."""
    out = {name: shapes.blobs[name] for name in graph.inputs}
    for layer in graph.layers:
        if not layer.bottoms:
            out.update({t: shapes.blobs[t] for t in layer.tops})
    return out
