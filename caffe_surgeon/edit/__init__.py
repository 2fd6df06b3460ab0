"""Model surgery beyond pruning: the edits deployment needs, as pure functions.

Each edit takes a :class:`~caffe_surgeon.graph.Graph` and returns a new one
(the input is never modified, as with ``pruning.surgery.apply``), so edits
compose by nesting or in a loop; each takes ``report=`` (a callable such as
``print`` or ``list.append``) that receives one line per change. Writing the
result keeps every untouched layer's text byte for byte.

    import caffe_surgeon as cs
    g = cs.load("train_val.prototxt", "model.caffemodel")
    g = cs.edit.strip(cs.edit.fold_bn(g), keep_phase="TEST")
    cs.save(g, "deploy.prototxt", "deploy.caffemodel")
"""
from __future__ import annotations

from .activation import replace_activation
from .cut import cut
from .fold_bn import fold_bn
from .merge import merge
from .rename import rename
from .set_input import set_input
from .strip import strip

__all__ = ["fold_bn", "strip", "cut", "set_input", "rename", "replace_activation", "merge"]
