"""Which Darknet sections train by Darknet's rules in the torch backend, and the heads' deltas.

A section trains here when the gradient autograd derives from its torch forward is the
delta its Darknet ``backward_*`` computes (convolution and its BatchNorm, which has its own
backward in ``torch_darknet_bn.py``; pooling, joins, resampling), or when it is a head whose
deltas are written out (:data:`HEADS`). Every other section is refused by name with why,
before anything runs: dropout and crop draw random numbers in training, connected and
the others have update rules or deltas not reproduced here.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from ..layers.darknet import opt_int

from .torch_region_loss import REGION_ROWS, region_check, region_deltas
from .torch_yolo_loss import TRUTH_ROWS
from .yolo_alexeyab import yolo_head_check, yolo_head_deltas

#: sections whose Darknet backward is the autograd of the torch forward
TRAINABLE = frozenset({"convolutional", "maxpool", "avgpool", "route", "upsample", "shortcut",
                       "reorg", "activation"})


class Head(NamedTuple):
    """A loss section: ``check(layer) -> str`` (why it cannot train, "" if it can),
    ``deltas(layer, output, truths, seen=, net_w=, net_h=) -> (delta, cost)``, the truth rows
    it reads, and whether its x, y and objectness deltas reach the layer below through the
    logistic's derivative (``region``, the GPU build) or unchanged (``yolo``)."""

    check: Callable
    deltas: Callable
    rows: int
    logistic_backward: bool


HEADS = {
    "yolo": Head(yolo_head_check, lambda layer, out, truths, seen, net_w, net_h:
                 yolo_head_deltas(layer, out, truths, net_w, net_h), TRUTH_ROWS, False),
    "region": Head(region_check, lambda layer, out, truths, seen, net_w, net_h:
                   region_deltas(layer, out, truths, seen), REGION_ROWS, True),
}


def overwrites_input_delta(layer) -> bool:
    """Whether the section's Darknet backward *assigns* the delta of the layer before it
    instead of adding to it: a 1x1 convolution (its GEMM writes ``net.delta`` with beta 0),
    ``[reorg]`` and ``[activation]`` (copies), a summing ``[upsample]`` (negative stride).
    Darknet runs backward from the last layer down, so whatever routes and shortcuts had
    added to that delta before is lost: the trainer reproduces it by showing them a detached
    copy of that layer's output."""
    rule = OVERWRITES_INPUT_DELTA.get(layer.type)
    return bool(rule and rule(layer))


#: section type -> whether its backward assigns (rather than adds to) the delta below
OVERWRITES_INPUT_DELTA = {
    "convolutional": lambda layer: opt_int(layer, "size", 1) == 1,
    "upsample": lambda layer: opt_int(layer, "stride", 2) < 0,
    "reorg": lambda layer: True,
    "activation": lambda layer: True,
}


def training_refusal(layer) -> str:
    """Why ``layer`` cannot be trained as pjreddie Darknet trains it ("" when it can)."""
    head = HEADS.get(layer.type)
    if head is not None:
        return head.check(layer)
    if layer.type in TRAINABLE:
        return ""
    return (f"training a [{layer.type}] section as Darknet does is not implemented (trainable: "
            f"{', '.join(sorted(TRAINABLE | set(HEADS)))})")
