"""How the torch backend trains Darknet sections by Darknet's rules, and the heads' deltas.

A section trains here when the gradient autograd derives from its torch forward is the
delta its Darknet ``backward_*`` computes (convolution and its BatchNorm, which has its own
backward in ``torch_darknet_bn.py``; pooling, joins, resampling), or when it is a head whose
deltas are written out. Each forward states which at its registration (``op(...,
darknet=DarknetRule(...))`` in the torch backend's table), so no list of types lives here.
Every other section is refused by name with why, before anything runs: dropout and crop draw
random numbers in training, connected and the others have update rules or deltas not
reproduced here.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from .torch_ops import tables
from .torch_region_loss import REGION_ROWS, region_check, region_deltas
from .torch_yolo_loss import TRUTH_ROWS
from .yolo_alexeyab import yolo_head_check, yolo_head_deltas


class Head(NamedTuple):
    """A loss section: ``check(layer) -> str`` (why it cannot train, "" if it can),
    ``deltas(layer, output, truths, seen=, net_w=, net_h=) -> (delta, cost)``, the truth rows
    it reads, and whether its x, y and objectness deltas reach the layer below through the
    logistic's derivative (``region``, the GPU build) or unchanged (``yolo``)."""

    check: Callable
    deltas: Callable
    rows: int
    logistic_backward: bool


class DarknetRule(NamedTuple):
    """How Darknet trains one section type: ``head`` its loss (None: its backward is the
    autograd of the torch forward); ``assigns_delta(layer)``: whether its backward *assigns*
    the delta of the layer before it instead of adding to it (see
    :func:`overwrites_input_delta`); None: it never does."""

    head: Head | None = None
    assigns_delta: Callable | None = None


#: a section whose Darknet backward is the autograd of its torch forward and adds to the delta
AUTOGRAD = DarknetRule()
#: the same, but its backward copies into the delta below ([reorg], [activation])
AUTOGRAD_ASSIGNING = DarknetRule(assigns_delta=lambda layer: True)
YOLO = DarknetRule(Head(yolo_head_check, lambda layer, out, truths, seen, net_w, net_h:
                        yolo_head_deltas(layer, out, truths, net_w, net_h), TRUTH_ROWS, False))
REGION = DarknetRule(Head(region_check, lambda layer, out, truths, seen, net_w, net_h:
                          region_deltas(layer, out, truths, seen), REGION_ROWS, True))


def darknet_rule(layer) -> DarknetRule | None:
    """How Darknet trains ``layer``'s type, as its torch forward registered it (None: refused)."""
    entry = tables()[0].get(("darknet", layer.type))
    return entry.darknet if entry is not None else None


def head_of(layer) -> Head | None:
    """The loss ``layer`` computes in Darknet training, None for any other section."""
    rule = darknet_rule(layer)
    return rule.head if rule is not None else None


def overwrites_input_delta(layer) -> bool:
    """Whether the section's Darknet backward *assigns* the delta of the layer before it
    instead of adding to it: a 1x1 convolution (its GEMM writes ``net.delta`` with beta 0),
    ``[reorg]`` and ``[activation]`` (copies), a summing ``[upsample]`` (negative stride).
    Darknet runs backward from the last layer down, so whatever routes and shortcuts had
    added to that delta before is lost: the trainer reproduces it by showing them a detached
    copy of that layer's output."""
    rule = darknet_rule(layer)
    return bool(rule is not None and rule.assigns_delta is not None and rule.assigns_delta(layer))


def training_refusal(layer) -> str:
    """Why ``layer`` cannot be trained as pjreddie Darknet trains it ("" when it can)."""
    rule = darknet_rule(layer)
    if rule is not None:
        return rule.head.check(layer) if rule.head is not None else ""
    trainable = sorted(t for (f, t), entry in tables()[0].items()
                       if f == "darknet" and entry.darknet is not None)
    return (f"training a [{layer.type}] section as Darknet does is not implemented (trainable: "
            f"{', '.join(trainable)})")
