"""caffe-surgeon: model surgery and pruning for Caffe and Darknet models, without either framework."""
from .numba_pool import prefer_openmp_early

prefer_openmp_early()  # before anyone starts Numba's pool
from .api import convert, init, load, save, stat
from .errors import ModelError
from .graph import Graph, Layer

__all__ = ["load", "save", "convert", "stat", "init", "edit", "ModelError", "Graph", "Layer"]
__version__ = "0.1.0"


def __getattr__(name):
    # ``cs.edit`` on first use: it pulls in the engine and pruning, which plain load/save
    # users never need.
    if name == "edit":
        import importlib
        return importlib.import_module(".edit", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
