"""Per-layer-type knowledge, in one place.

Each layer type of each framework has one :class:`LayerSpec` subclass that
says what the layer *is*: its output shapes, its stored arrays, its counts, how
channels cross it (``channel_flow``) and its roles (data source, metric, loss,
detector head, fusable head or follower, bias switch, Darknet link key; see
:mod:`.roles`). Nothing outside ``caffe_surgeon/layers/`` matches type names.

What a layer *does* lives in backends, each a table from type to implementation
in its own module, imported only when that backend is used: the NumPy engine
(``caffe_surgeon/engine/ops.py``: ``OPS`` and ``REFUSED``). Adding a layer type
means one spec class here (in the ``caffe_*.py`` / ``darknet_*.py`` modules beside
this file) and one entry (an implementation or a stated refusal) per backend;
``tests/test_backend_coverage.py`` fails until every backend has one.

Specs raise :class:`ModelError` with the message only; the caller adds the
file and layer name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ModelError
from ..graph import Graph, Layer
from . import roles as vocab
from .channel_flow import KINDS, ChannelFlow, blocked, passthrough

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
    #: the :class:`ChannelFlow` kind :meth:`channel_flow` gives by default ("pass",
    #: "source" or "block"); types with weights or joins override channel_flow and
    #: name their kind here too, so the role can be read without shapes.
    channel_role: str = "pass"
    #: why channels reaching a "block" layer are fixed (``{type}``/``{name}`` filled in)
    block_reason: str = "{type} '{name}' moves channels in a way that cannot be traced"
    #: what the layer is for beyond computing (see :data:`.roles.ROLES`)
    roles: frozenset = frozenset()
    #: detector heads: how the output encodes boxes (:data:`.roles.BOX_FORMATS`)
    box_format: str | None = None
    #: data sources: what they read (:data:`.roles.DATA_FORMATS`) and the parameter
    #: message that holds ``source`` / ``batch_size``
    data_format: str | None = None
    data_param: str | None = None
    #: metrics: how per-batch values combine (:data:`.roles.METRIC_KINDS`)
    metric_kind: str | None = None
    #: losses and metrics whose first bottom holds class scores over axis 1, before a
    #: softmax (SoftmaxWithLoss, Accuracy): distillation matches softened softmaxes there
    reads_class_scores: bool = False
    #: (parameter message, field) that switches the bias array on, for types whose bias
    #: is optional (offset folding may have to give them one)
    bias_switch: tuple[str, str] | None = None
    #: Darknet: the option naming the layers read besides (or, for route, instead of)
    #: the previous layer, and whether the previous layer is an input at all
    link_key: str | None = None
    links_replace_previous: bool = False
    #: Darknet: the activation when the section gives none (parser.c defaults)
    default_activation: str = "linear"
    #: Darknet: the option that names a section's activation (None: the section has none)
    activation_option: str | None = None
    #: a data source whose shape the definition itself declares (Caffe's Input): what a
    #: deploy file keeps, and what ``edit.strip`` turns the other data sources into
    declared_input: bool = False

    def has_role(self, role: str) -> bool:
        return role in self.roles

    @property
    def may_lack_top(self) -> bool:
        """Caffe accepts the layer without a top (a sink, or a loss given an automatic top)."""
        return bool(self.roles & {"no_top", "loss"})

    def unsupported(self, layer: Layer) -> str:
        """Why this layer's settings are beyond what we run ("" when they are fine)."""
        return ""

    def stack_key(self, layer: Layer):
        """For ``stackable`` types: what siblings on one input must share for their weights
        to stack along the outputs into one layer of this type, the type included (None:
        this one cannot)."""
        return None

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
        if self.channel_role == "pass":
            return passthrough()
        if self.channel_role == "source":
            return ChannelFlow("source", reason=f"produced by the {layer.type} data layer")
        if self.channel_role == "block":
            return blocked(self.block_reason.format(type=layer.type, name=layer.name))
        raise NotImplementedError(f"{type(self).__name__} declares channel_role "
                                  f"{self.channel_role!r} but no channel_flow")

    def set_channels(self, layer: Layer, n: int) -> None:
        """Record a new output channel count in ``layer.params`` (producers, depthwise)."""
        raise ModelError(f"{layer.type} has no channel count to change", layer=layer.name)

    # -- what model edits (caffe_surgeon/edit/) ask ----------------------------
    def channel_affine(self, layer: Layer, flavour: str = "pjreddie"
                       ) -> tuple[np.ndarray, np.ndarray] | None:
        """(a, c) in float64 with the layer's test-time output ``a * x + c`` per channel
        (C values each, or one value for every channel), or None when the layer is not
        such a map (or not with these settings). ``flavour`` picks Darknet's BN epsilon."""
        return None

    def absorb_affine(self, layer: Layer, a: np.ndarray, c: np.ndarray) -> str:
        """Change ``layer`` (an edit's own copy) so that it outputs ``a * y + c`` where it
        output ``y``: new arrays, the bias switched on where needed. Returns "" when done,
        otherwise why the layer cannot take it (the layer is then unchanged)."""
        return f"a {layer.type} layer cannot take a per-channel scale and shift into its arrays"

    def fold_own_norm(self, layer: Layer, flavour: str = "pjreddie") -> bool:
        """Darknet ``batch_normalize``: fold the layer's built-in batch norm into its weights
        and biases and switch it off (an edit's own copy). False when it has none."""
        return False

    def identity(self, layer: Layer, inputs: Sequence[Shape], outputs: Sequence[Shape]) -> bool:
        """Whether every top equals the first bottom at test time, so the layer can go."""
        return "test_identity" in self.roles

    def slope_field(self, layer: Layer) -> tuple[str, str] | None:
        """(parameter message, field) of a leaky activation's negative slope, if it has one."""
        return None

    def set_input_shape(self, layer: Layer, shape: Shape) -> None:
        """Declare a new shape for a layer that defines a network input (an ``Input``)."""
        raise ModelError(f"a {layer.type} layer takes its shape from its data, not from the "
                         "definition; strip it first (edit strip) to get a plain input")

    def init_weights(self, layer: Layer, inputs: Sequence[Shape],
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Synthetic float32 weights for ``caffe-surgeon init``, deterministic given ``rng``.

        The default draws every array from N(0, 0.01^2); types with fillers,
        batch statistics or biases override it.
        """
        return {name: (rng.standard_normal(shape) * 0.01).astype(np.float32)
                for name, shape in self.weight_shapes(layer, inputs).items()}


REGISTRY: dict[tuple[str, str], LayerSpec] = {}


#: channel_flow text for layers that read every channel (heads, softmax, metrics)
NEEDS_EVERY_CHANNEL = "read by {type} '{name}', which needs every channel"


def register(cls: type[LayerSpec]) -> type[LayerSpec]:
    """Class decorator: make ``cls`` the spec of each type in ``cls.types``.

    Checks the declared vocabularies, so a misspelt role is an import-time error.
    """
    where = f"{cls.framework} {cls.__name__}"
    if cls.channel_role not in KINDS:
        raise ValueError(f"{where}: channel_role {cls.channel_role!r} is not a ChannelFlow kind "
                         f"({', '.join(KINDS)})")
    vocab.check("role", cls.roles, vocab.ROLES, where)
    vocab.check("box format", cls.box_format, vocab.BOX_FORMATS, where)
    vocab.check("data format", cls.data_format, vocab.DATA_FORMATS, where)
    vocab.check("metric kind", cls.metric_kind, vocab.METRIC_KINDS, where)
    if ("detector_head" in cls.roles) != (cls.box_format is not None):
        raise ValueError(f"{where}: a detector head needs a box_format and only it has one")
    if ("metric" in cls.roles) != (cls.metric_kind is not None):
        raise ValueError(f"{where}: a metric needs a metric_kind and only it has one")
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


def spec_of_type(framework: str, type_name: str) -> LayerSpec | None:
    """The spec registered for ``type_name``, or None (readers ask before a layer exists)."""
    _load()
    return REGISTRY.get((framework, type_name))


def spec_for(framework: str, layer: Layer, file: str | None = None) -> LayerSpec:
    """The spec of ``layer``, or a ModelError naming the type, layer, file and the supported types."""
    _load()
    spec = REGISTRY.get((framework, layer.type))
    if spec is None:
        raise ModelError(
            f"unknown {framework} layer type '{layer.type}' (supported: "
            f"{', '.join(supported_types(framework))})", file=file, layer=layer.name)
    return spec


_loaded = []


def _load() -> None:
    # Import the per-framework spec modules on first use; they register themselves. (Asked
    # for every layer of every forward pass: the import statement alone costs microseconds.)
    if not _loaded:
        from . import caffe, darknet  # noqa: F401
        _loaded.append(True)


def specs(framework: str, role: str | None = None) -> dict[str, LayerSpec]:
    """Type name -> spec of every registered type of ``framework`` (with ``role``, if given)."""
    _load()
    if role is not None:
        vocab.check("role", role, vocab.ROLES, "specs()")
    return {t: s for (f, t), s in sorted(REGISTRY.items())
            if f == framework and (role is None or role in s.roles)}


def layers_with_role(graph: Graph, role: str) -> list[Layer]:
    """The layers of ``graph`` whose spec has ``role``, in net order."""
    vocab.check("role", role, vocab.ROLES, "layers_with_role()")
    return [l for l in graph.layers if role in spec_for(graph.framework, l, graph.source_text).roles]


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
            if not layer.tops and graph.framework == "caffe" and not spec.may_lack_top:
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
