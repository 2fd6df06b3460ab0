"""The NumPy engine's fused output passes for Caffe: each fusion follower's float32 steps.

A layer whose spec has the ``fusion_follower`` role has one entry in ``STAGES``:
``fn(layer, ctx, epilogue, channels) -> bool`` appends exactly the operations its
forward function does (so a fused chain is bit-for-bit the layers run one by one)
and returns False when its arrays do not fit ``channels``. ``FITS`` holds static
checks for types that can only be fused in some configurations (Scale, Bias), as a
head or as a follower. ``tests/test_backend_coverage.py`` checks the roles and this
table agree.
"""
from __future__ import annotations

import numpy as np

from ..layers.caffe_geometry import sub
from .caffe_ops import bn_affine


def _batch_norm(layer, ctx, ep, channels) -> bool:
    a, c = bn_affine(layer, ctx)
    if a.size != channels:
        return False
    ep.mul(a).add(c)
    return True


def _scale(layer, ctx, ep, channels) -> bool:
    s, b = layer.weights["scale"], layer.weights.get("bias")
    if s.size != channels or (b is not None and b.size != channels):
        return False
    ep.mul(s)
    if b is not None:
        ep.add(b)
    return True


def _bias(layer, ctx, ep, channels) -> bool:
    if layer.weights["bias"].size != channels:
        return False
    ep.add(layer.weights["bias"])
    return True


def _relu(layer, ctx, ep, channels) -> bool:
    slope = float(sub(layer, "relu_param").get("negative_slope", 0.0))
    ep.relu() if slope == 0.0 else ep.leaky(slope)
    return True


def _relu6(layer, ctx, ep, channels) -> bool:
    ep.clip(0, 6)
    return True


def _clip(layer, ctx, ep, channels) -> bool:
    p = sub(layer, "clip_param")
    ep.clip(p.get("min", -np.inf), p.get("max", np.inf))
    return True


STAGES = {"BatchNorm": _batch_norm, "Scale": _scale, "Bias": _bias, "ReLU": _relu,
          "ReLU6": _relu6, "Clip": _clip}


def _per_channel_vector(param: str, array: str):
    """Fusable only along axis 1, with 1-D arrays, and with ``array`` stored (not a bottom)."""
    def fits(layer) -> bool:
        return (int(sub(layer, param).get("axis", 1)) == 1 and array in layer.weights
                and all(v.ndim == 1 for v in layer.weights.values()))
    return fits


FITS = {"Scale": _per_channel_vector("scale_param", "scale"),
        "Bias": _per_channel_vector("bias_param", "bias")}
