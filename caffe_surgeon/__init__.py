"""caffe-surgeon: model surgery and pruning for Caffe and Darknet models, without either framework."""
from .api import convert, init, load, save, stat
from .errors import ModelError
from .graph import Graph, Layer

__all__ = ["load", "save", "convert", "stat", "init", "ModelError", "Graph", "Layer"]
__version__ = "0.1.0"
