"""The base of every Darknet layer spec, and the array layouts several types share."""
from __future__ import annotations

import math

import numpy as np

from ...errors import ModelError
from ...graph import Layer
from ..affine import F32, scale_rows
from ..channel_flow import ChannelFlow
from ..registry import Counts, LayerSpec, Shape
from .options import opt_int


def prod(xs) -> int:
    return math.prod(int(x) for x in xs)


#: normalize_cpu's epsilon per fork: pjreddie ``(x - mean) / (sqrt(var) + .000001f)``,
#: AlexeyAB ``(x - mean) / sqrt(var + .00001f)`` (the engine and the edits both use it)
BN_EPS = {"pjreddie": 1e-6, "alexeyab": 1e-5}


def bn_affine64(scales, mean, var, biases, flavour: str) -> tuple[np.ndarray, np.ndarray]:
    """(a, c) in float64 with ``scales * normalize(x) + biases == a * x + c`` per channel."""
    if flavour not in BN_EPS:
        raise ModelError(f"darknet BN flavour must be one of {', '.join(BN_EPS)}, not {flavour!r}")
    scales, mean, var, biases = (np.asarray(x, np.float64).reshape(-1)
                                 for x in (scales, mean, var, biases))
    a = scales / (np.sqrt(var) + BN_EPS[flavour]) if flavour == "pjreddie" \
        else scales / np.sqrt(var + BN_EPS[flavour])
    return a, biases - mean * a


def fold_own_bn(layer: Layer, flavour: str, weights_axis: int) -> bool:
    """Fold ``batch_normalize`` into ``weights``/``biases`` and switch it off (see
    ``LayerSpec.fold_own_norm``); ``weights_axis`` is the filters' output axis."""
    if not has_bn(layer) or opt_int(layer, "cbn", 0) or "weights" not in layer.weights:
        return False
    w = layer.weights
    a, c = bn_affine64(w["scales"], w["rolling_mean"], w["rolling_variance"], w["biases"],
                       flavour)
    layer.weights = {name: (c.astype(F32) if name == "biases"
                            else scale_rows(array, a, weights_axis) if name == "weights"
                            else array)
                     for name, array in w.items() if name not in bn_arrays("", 0)}
    layer.params["batch_normalize"] = 0
    return True


def has_bn(layer: Layer) -> bool:
    return opt_int(layer, "batch_normalize", 0) != 0 or opt_int(layer, "cbn", 0) != 0


def bn_arrays(prefix: str, n: int) -> dict[str, Shape]:
    return {f"{prefix}scales": (n,), f"{prefix}rolling_mean": (n,),
            f"{prefix}rolling_variance": (n,)}


def producer_flow(layer: Layer, out_axes: dict, in_axes: dict, why: str = "") -> ChannelFlow:
    """Darknet conv/connected: with batch_normalize an input offset folds into the BN mean."""
    bn = has_bn(layer)
    return ChannelFlow("produce", out_axes=out_axes, in_axes=in_axes, in_block=why,
                       out_block=why, gamma="scales" if bn else None,
                       offset_into="rolling_mean" if bn else "biases",
                       offset_sign=-1.0 if bn else 1.0, mean="rolling_mean" if bn else None,
                       silence={"weights": 0.0, "biases": 0.0, "rolling_mean": 0.0})


def connected_arrays(prefix: str, n_in: int, n_out: int, bn: bool) -> dict[str, Shape]:
    """File order of ``save_connected_weights``: biases, weights, then BN arrays."""
    out = {f"{prefix}biases": (n_out,), f"{prefix}weights": (n_out, n_in)}
    if bn:
        out.update(bn_arrays(prefix, n_out))
    return out


class DarknetSpec(LayerSpec):
    """Base: one output shaped like the first input, nothing stored, no work."""

    framework = "darknet"
    channel_role = "pass"
    in_total = False  # whether darknet's numops total includes the type

    def transposable(self, name: str) -> bool:
        """Whether files with the transpose flag store this array as (in, out)."""
        return False

    def count(self, layer, inputs, outputs) -> Counts:
        params = sum(prod(s) for s in self.weight_shapes(layer, inputs).values())
        macs = self.macs(layer, inputs, outputs)
        return Counts(ops=2 * macs, macs=macs, params=params, in_total=self.in_total)

    def macs(self, layer, inputs, outputs) -> int:
        return 0

    def init_weights(self, layer, inputs, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random but plausible arrays, drawn in file order from ``rng``.

        Weights ~ N(0, sqrt(2 / fan_in)); biases and rolling means small;
        BN scales around 1 and variances in [0.5, 1.5], so forward tests that
        fold or apply batch norm see non-trivial statistics.
        """
        out = {}
        for name, shape in self.weight_shapes(layer, inputs).items():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "weights":
                std = np.sqrt(2.0 / max(1, self.fan_in(shape)))
                a = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
            elif leaf == "scales":
                a = 1 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
            elif leaf == "rolling_variance":
                a = rng.uniform(0.5, 1.5, shape).astype(np.float32)
            else:  # biases, rolling_mean
                a = 0.05 * rng.standard_normal(shape, dtype=np.float32)
            out[name] = np.asarray(a, dtype=np.float32)
        return out

    def fan_in(self, shape: Shape) -> int:
        return prod(shape[1:])


def chw(shape: Shape) -> tuple[int, int, int, int]:
    if len(shape) != 4:
        raise ModelError(f"expects a 4-D (N, C, H, W) input, got {tuple(shape)}")
    return tuple(int(d) for d in shape)  # type: ignore[return-value]
