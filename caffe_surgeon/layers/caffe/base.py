"""The base of every Caffe layer spec."""
from __future__ import annotations

import numpy as np

from ..registry import LayerSpec


class CaffeSpec(LayerSpec):
    framework = "caffe"


def prod(xs) -> int:
    return int(np.prod(xs, dtype=np.int64)) if len(xs) else 1
