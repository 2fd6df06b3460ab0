"""Conversion between frameworks: any supported model to ONNX, Darknet to Caffe.

:func:`convert` dispatches on the target; each target's code is imported only when used
(``onnx`` is an optional extra; the Caffe target lives in ``to_caffe``).
"""
from __future__ import annotations

import sys
import types

from ..errors import ModelError

TARGETS = ("onnx", "caffe")


def convert(graph, target: str, **options):
    """Convert ``graph`` to ``target``.

    Args:
        graph: a loaded model (weights attached).
        target: "onnx" (options of :func:`.to_onnx.to_onnx`: ``opset``, ``fold_bn``,
            ``heads_only``, ``input_shapes``, ``darknet_bn``) or "caffe" (a Darknet graph;
            option ``flavor``: "bvlc" or "xilinx").

    Returns:
        For "onnx", the ``onnx.ModelProto``; for "caffe", ``(caffe_graph, heads)`` where
        ``heads`` holds the [yolo]/[region] decoding parameters (JSON-able) or None.
    """
    if target == "onnx":
        from .to_onnx import to_onnx
        return to_onnx(graph, **options)
    if target == "caffe":
        return caffe_conversion()[0](graph, **options)
    raise ModelError(f"unknown conversion target {target!r} (known: {', '.join(TARGETS)})")


def caffe_conversion():
    """(``to_caffe``, ``save_caffe_conversion``) of the Darknet-to-Caffe converter."""
    from .to_caffe import save_caffe_conversion, to_caffe
    return to_caffe, save_caffe_conversion


class _CallableModule(types.ModuleType):
    """Importing this package sets ``caffe_surgeon.convert`` to the package itself, which
    would hide the API function :func:`caffe_surgeon.convert` of the same name; calling the
    package calls :func:`convert`, so ``cs.convert(graph, "onnx")`` works either way."""

    def __call__(self, graph, target: str, **options):
        return convert(graph, target, **options)


sys.modules[__name__].__class__ = _CallableModule
