"""Exact data movement for the exporter: resizes and permutations as Gather with fixed indices.

ONNX ``Resize`` has several coordinate and rounding modes whose float arithmetic is the
runtime's; the engine's resizes are defined by their source indices and per-axis weights.
Gathering with those very indices (and mixing with those very weights) makes the exported
graph reproduce the engine whatever the runtime's Resize does.

:func:`permutation` turns any layer that only moves values within an image (Darknet's
``reorg_cpu`` with its mixed-up channel order, ``[reorg3d]``, Caffe's Reorg) into one Gather:
the engine's own forward is run once on a batch-1 probe holding each value's position + 1,
so its output says where every output value comes from (0: written by nobody, a zero).
"""
from __future__ import annotations

import numpy as np

F32 = np.float32


def repeat_hw(b, x, fh: int, fw: int):
    """Nearest upsampling by whole factors: each row ``fh`` times, each column ``fw`` times."""
    _, _, h, w = b.in_shape()
    if fh != 1:
        x = b.node("Gather", [x, b.ints(np.repeat(np.arange(h), fh), "rows")], axis=2)
    if fw != 1:
        x = b.node("Gather", [x, b.ints(np.repeat(np.arange(w), fw), "cols")], axis=3)
    return x if (fh, fw) != (1, 1) else b.node("Identity", [x])


def bilinear(b, x, h_taps, w_taps):
    """``engine.caffe_resize_ops.bilinear`` as nodes: taps are (lower, upper, lower weight,
    upper weight) per axis, combined in the same order (rows' pairs first, then columns)."""
    hl, hh, h0, h1 = h_taps
    wl, wh, w0, w1 = w_taps
    top = b.node("Gather", [x, b.ints(hl, "rows_lo")], axis=2)
    bot = b.node("Gather", [x, b.ints(hh, "rows_hi")], axis=2)

    def mix(v):
        lo = b.node("Gather", [v, b.ints(wl, "cols_lo")], axis=3)
        hi = b.node("Gather", [v, b.ints(wh, "cols_hi")], axis=3)
        return b.node("Add", [b.node("Mul", [lo, b.const(np.asarray(w0, F32), "w0")]),
                              b.node("Mul", [hi, b.const(np.asarray(w1, F32), "w1")])])

    a, c = mix(top), mix(bot)
    col = (-1, 1)
    return b.node("Add", [b.node("Mul", [a, b.const(np.asarray(h0, F32).reshape(col), "h0")]),
                          b.node("Mul", [c, b.const(np.asarray(h1, F32).reshape(col), "h1")])])


def source_positions(graph, layer, in_shape) -> np.ndarray:
    """For a value-moving ``layer`` on a (1, C, H, W) input: per output position (flat), the
    flat input position it copies, or -1 where the layer writes a zero."""
    from ..engine.executor import Executor
    from ..graph import Graph

    size = int(np.prod(in_shape[1:]))
    if size >= 2 ** 24:  # positions must be exact in float32
        raise ValueError(f"{size} values per image are too many to trace through float32")
    probe = (np.arange(size, dtype=np.float64) + 1).astype(F32).reshape((1,) + tuple(in_shape[1:]))
    one = Graph(graph.framework, name="probe", layers=[layer], inputs={layer.bottoms[0]: (1,) + tuple(in_shape[1:])})
    one.refresh()
    out = Executor(one, check_weights=False).run({layer.bottoms[0]: probe}, outputs=[layer.tops[0]])
    return out[layer.tops[0]].reshape(-1).astype(np.int64) - 1


def permutation(b, layer, x):
    """``layer``'s output as one Gather over each image's flattened values (see module doc)."""
    shape = b.in_shape()
    src = source_positions(b.graph, layer, shape)
    flat = b.node("Flatten", [x], axis=1)
    if (src < 0).any():  # positions nobody writes read an appended zero column
        zero = b.node("Mul", [b.node("Slice", [flat, b.ints([0]), b.ints([1]), b.ints([1])]),
                              b.const(np.array(0, F32), "zero")])
        flat = b.node("Concat", [flat, zero], axis=1)
        src = np.where(src < 0, int(np.prod(shape[1:])), src)
    moved = b.node("Gather", [flat, b.ints(src, "positions")], axis=1)
    return b.node("Reshape", [moved, b.ints(b.dynamic_shape())])
