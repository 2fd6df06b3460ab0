"""The forward engine: runs a Graph in NumPy/Numba without Caffe or Darknet."""
from .executor import Executor, forward

__all__ = ["Executor", "forward"]
