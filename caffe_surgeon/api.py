"""The public Python API: load, save, convert, stat, init.

Model files are recognised by extension: ``.prototxt``/``.pt`` (Caffe
definition), ``.caffemodel`` (Caffe weights), ``.cfg`` (Darknet definition),
``.weights`` (Darknet weights).

Example::

    import caffe_surgeon as cs
    g = cs.load("deploy.prototxt", "model.caffemodel")
    print(cs.stat(g).total.ops)
    cs.save(g, "out.prototxt", "out.caffemodel")
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ModelError
from .graph import Graph

CAFFE_DEF = (".prototxt", ".pt", ".txt")
CAFFE_WEIGHTS = (".caffemodel",)
DARKNET_DEF = (".cfg",)
DARKNET_WEIGHTS = (".weights",)


def classify(paths) -> tuple[str, Path, Path | None]:
    """(framework, definition, weights or None) from a list of 1 or 2 model files."""
    paths = [Path(p) for p in paths]
    if not 1 <= len(paths) <= 2:
        raise ModelError(f"expected a definition and optionally a weights file, got {len(paths)} files")
    kinds = {}
    # Darknet weights often go by other names (weights.prune, weights.transform, *.backup):
    # after a .cfg, any second file is its weights.
    cfg_first = len(paths) == 2 and paths[0].suffix.lower() in DARKNET_DEF
    for p in paths:
        ext = p.suffix.lower()
        kind = ("caffe_def" if ext in CAFFE_DEF else "caffe_weights" if ext in CAFFE_WEIGHTS
                else "darknet_def" if ext in DARKNET_DEF else "darknet_weights" if ext in DARKNET_WEIGHTS
                else None)
        if kind is None and cfg_first and p is paths[1]:
            kind = "darknet_weights"
        if kind is None:
            raise ModelError("unrecognised model file extension (expected .prototxt, .caffemodel, "
                             ".cfg or .weights)", file=p)
        if kind in kinds:
            raise ModelError(f"two {kind.replace('_', ' ')} files given: {kinds[kind]} and {p}")
        kinds[kind] = p
    framework = "caffe" if any(k.startswith("caffe") for k in kinds) else "darknet"
    if any(not k.startswith(framework) for k in kinds):
        raise ModelError(f"mixed Caffe and Darknet files: {', '.join(map(str, paths))}")
    definition = kinds.get(f"{framework}_def")
    if definition is None:
        raise ModelError(f"no {framework} definition file given (only weights: {paths[0]})")
    return framework, definition, kinds.get(f"{framework}_weights")


def load(*paths, phase: str = "TEST", stages=(), level: int = 0) -> Graph:
    """Read a model from its definition and (optional) weights file.

    Args:
        paths: ``deploy.prototxt [model.caffemodel]`` or ``net.cfg [net.weights]``.
        phase, stages, level: Caffe NetState used by include/exclude rules.
    """
    framework, definition, weights = classify(paths)
    if framework == "caffe":
        from .caffe.reader import read_caffe
        return read_caffe(definition, weights, phase=phase, stages=stages, level=level)
    from .darknet.reader import read_darknet
    return read_darknet(definition, weights)


def save(graph: Graph, *paths) -> None:
    """Write ``graph`` to a definition and (optional) weights file, atomically.

    The target follows the extension: ``x.onnx`` exports to ONNX (default options of
    :func:`convert`), Caffe files for a Darknet graph convert it to Caffe (BVLC flavor).
    """
    if len(paths) == 1 and Path(paths[0]).suffix.lower() == ".onnx":
        from .convert.to_onnx import export_onnx
        export_onnx(graph, paths[0])
        return
    framework, definition, weights = classify(paths)
    if framework == "caffe" and graph.framework == "darknet":
        from .convert import caffe_conversion
        save_caffe_conversion = caffe_conversion()[1]
        caffe_graph, heads = convert(graph, "caffe")
        weights = weights or Path(definition).with_suffix(".caffemodel")
        save_caffe_conversion(caffe_graph, heads, definition, weights)
        return
    if framework != graph.framework:
        raise ModelError(f"cannot save a {graph.framework} graph as {framework} files "
                         "(conversion to Darknet is not available)")
    if framework == "caffe":
        from .caffe.writer import write_caffe
        write_caffe(graph, definition, weights)
    else:
        from .darknet.writer import write_darknet
        write_darknet(graph, definition, weights)


def convert(graph: Graph, target: str, **options):
    """Convert ``graph`` to ``target`` ("onnx": an ``onnx.ModelProto``; "caffe": a Darknet
    graph as ``(caffe_graph, heads)``); see :func:`caffe_surgeon.convert.convert`."""
    from .convert import convert as _convert
    return _convert(graph, target, **options)


def stat(graph: Graph, input_shapes=None):
    """Per-layer and total ops, MACs and params for one image (see :mod:`caffe_surgeon.opcount`)."""
    from .opcount import stat as _stat
    return _stat(graph, input_shapes)


def init(graph: Graph, seed: int = 0, input_shapes=None) -> Graph:
    """Fill ``graph`` with deterministic synthetic weights (in place); ``seed`` an int >= 0."""
    from .synthetic import init_weights
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ModelError(f"init: seed must be an integer >= 0, got {seed!r}")
    return init_weights(graph, seed, input_shapes)
