"""The arithmetic of folding a per-channel affine map ``a * y + c`` into stored arrays.

Shared by the specs whose layers can take such a map (convolutions, InnerProduct,
Scale, Power, Darknet's weighted sections), so each of them only says which array
holds its output channels on which axis. Everything is computed in float64 and
rounded to float32 once, so a folded model differs from the unfolded one by
float32 rounding of the products, not by a chain of roundings.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32


def per_channel(a, n: int, axis: int, ndim: int) -> np.ndarray:
    """``a`` (n values, or one for all) as float64 shaped to broadcast along ``axis``."""
    a = np.asarray(a, np.float64).reshape(-1)
    if a.size not in (1, n):
        raise ValueError(f"{a.size} per-channel values for {n} channels")
    shape = [1] * ndim
    shape[axis] = a.size
    return a.reshape(shape)


def scale_rows(weight: np.ndarray, a, axis: int) -> np.ndarray:
    """``weight`` with every slice along ``axis`` (one output channel) multiplied by ``a``."""
    return (weight.astype(np.float64) * per_channel(a, weight.shape[axis], axis, weight.ndim)
            ).astype(F32)


def shifted(bias: np.ndarray | None, a, c, n: int) -> np.ndarray:
    """``a * bias + c`` as n float32 values (a missing bias counts as 0)."""
    b = np.zeros(n) if bias is None else bias.astype(np.float64).reshape(-1)
    return (b * per_channel(a, n, 0, 1) + per_channel(c, n, 0, 1)).astype(F32)


def absorb_into_producer(layer, a, c, weight: str, bias: str, out_axis: int,
                         bias_switch: tuple[str, str] | None) -> str:
    """Fold ``a * y + c`` into a linear layer: scale its filters, shift (or create) its bias.

    Args:
        layer: the layer (an edit's own copy; arrays are replaced, never written into).
        weight, bias: the names of its filter and bias arrays.
        out_axis: the filter array's output-channel axis.
        bias_switch: (message, field) to set when the bias has to be created.

    Returns:
        "" when done, otherwise why not (a layer without filters yet).
    """
    w = layer.weights.get(weight)
    if w is None:
        return f"{layer.type} has no '{weight}' array to fold into (give it weights first)"
    n = w.shape[out_axis]
    arrays = {}
    for name, array in layer.weights.items():
        if name == weight:
            arrays[name] = scale_rows(w, a, out_axis)
        elif name == bias:
            arrays[name] = shifted(array, a, c, n)
        else:
            arrays[name] = array
    if bias not in arrays:
        if bias_switch is None:
            return f"{layer.type} has no bias to take the shift"
        message, field = bias_switch
        layer.params.setdefault(message, {})[field] = True
        arrays[bias] = shifted(None, a, c, n)
    layer.weights = arrays
    return ""
