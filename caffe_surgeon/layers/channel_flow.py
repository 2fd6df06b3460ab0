"""How one layer moves channels: the per-type facts the pruning core needs.

Every :class:`~caffe_surgeon.layers.registry.LayerSpec` answers
``channel_flow(layer, in_shapes, out_shapes) -> ChannelFlow``. The pruning
core (``caffe_surgeon/pruning/groups.py``) walks the graph with these answers
and never looks at layer types itself.

Kinds:

``produce``
    New output channels (Convolution, InnerProduct, Darknet convolutional and
    connected). ``out_axes`` names the arrays sliced by output channel,
    ``in_axes`` those sliced by input channel (the filters). ``in_block`` /
    ``out_block`` say why the input or output channels cannot be pruned
    (grouped convolution).
``pass``
    Output channel i is input channel i (BatchNorm, Scale, activations,
    pooling, depthwise convolution). ``out_axes`` names per-channel arrays.
``join``
    All channel inputs are tied channel by channel and the output is the same
    channels (Eltwise, Darknet shortcut, sam). Unequal counts block.
``concat`` / ``slice``
    Channel offsets along axis 1 (Concat, route; Slice).
``flatten``
    Each channel becomes H x W consecutive features (Flatten before InnerProduct).
``source``
    Channels nobody may prune (data layers, network inputs).
``shape_only``
    Reads only the input's shape (PriorBox): no channel dependency.
``block``
    Channels reaching this layer cannot be pruned; ``reason`` says why.
"""
from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("produce", "pass", "join", "concat", "slice", "flatten", "source", "shape_only", "block")


@dataclass(frozen=True)
class ChannelFlow:
    kind: str
    reason: str = ""
    out_axes: dict = field(default_factory=dict)
    in_axes: dict = field(default_factory=dict)
    #: bottoms that carry channels; None means "all" (join/concat) or bottom 0
    inputs: tuple | None = None
    in_block: str = ""
    out_block: str = ""
    #: name of the per-channel BN/Scale multiplier (network-slimming criterion)
    gamma: str | None = None
    #: name of the array an output offset folds into, and its sign (BN mean: -1)
    offset_into: str | None = None
    offset_sign: float = 1.0
    #: per-channel arrays and the value that makes a removed channel emit 0
    silence: dict = field(default_factory=dict)
    #: the batch-norm running mean, if the layer normalises its channels
    mean: str | None = None
    #: a kept output channel also depends on the values of the other channels
    #: (SSD's Normalize): pruning changes it even where its own input is unchanged
    mixes_channels: bool = False
    #: the layer whose arrays this one uses (AlexeyAB share_index: absolute index, or
    #: relative when negative): pruning that layer would change this one's weights
    shares_weights_of: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown channel flow kind {self.kind!r}")

    def channel_inputs(self, n_bottoms: int) -> tuple:
        if self.inputs is not None:
            return self.inputs
        if self.kind in ("join", "concat", "block"):
            return tuple(range(n_bottoms))
        return (0,) if n_bottoms else ()


def passthrough(**kw) -> ChannelFlow:
    return ChannelFlow("pass", **kw)


def blocked(reason: str, **kw) -> ChannelFlow:
    return ChannelFlow("block", reason=reason, **kw)
