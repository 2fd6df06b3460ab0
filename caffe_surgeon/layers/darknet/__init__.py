"""Darknet layer specs: output shapes, stored arrays, counts, channel flow, roles, weights.

Shapes follow the ``make_*_layer`` functions of pjreddie darknet (2018, the
Debian package) and AlexeyAB darknet. Where the forks disagree the AlexeyAB
meaning is used, because it is a superset that modern cfgs rely on:
``[route] groups/group_id`` split channels, ``[batchnorm]`` stores biases too,
``[rnn]`` honours ``hidden=`` (pjreddie ignores it and uses ``output``; that is
the default here). ``[gru]`` follows pjreddie, whose layout can be checked here.
Shapes are (N, C, H, W); layers darknet treats as flat vectors give (N, C, 1, 1).

Counting: ``macs`` are multiply-adds; ``ops = 2 * macs``, which is what darknet
prints as BFLOPs (``2 * n * size^2 * c/groups * out_h * out_w`` for a conv) and sums
in ``numops`` (conv, connected, rnn, gru); ``in_total`` is True exactly for those.
Option values are read with C semantics (``atoi``/``atof``): ``stride=2.0`` is 2.

One module per family; importing this package registers every Darknet layer type.
"""
from __future__ import annotations

from . import heads, recurrent, structure, weighted  # noqa: F401  (register)
from .options import cdiv, opt_float, opt_int, opt_list

__all__ = ["UNSUPPORTED", "cdiv", "opt_float", "opt_int", "opt_list"]

#: sections both darknets know but this package does not model, and why.
_UNUSED = "and no known cfg uses it"
UNSUPPORTED = {
    "lstm": f"pjreddie and AlexeyAB store its eight matrices in different orders {_UNUSED}",
    "crnn": f"pjreddie and AlexeyAB give it different options and arrays {_UNUSED}",
    "conv_lstm": f"AlexeyAB-only; its arrays depend on peephole/bottleneck {_UNUSED}",
    "history": f"AlexeyAB-only time-stacking layer {_UNUSED}",
    "contrastive": "AlexeyAB-only training loss tied to a [yolo] layer, no inference role",
    "implicit": f"AlexeyAB-only learned constant (YOLOR) {_UNUSED}",
}
