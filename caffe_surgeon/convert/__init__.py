"""Conversion between frameworks: any supported model to ONNX, Darknet to Caffe.

:func:`convert` dispatches on the target; each target's code is imported only when used
(``onnx`` is an optional extra; the Caffe target lives in ``to_caffe``).
"""
from __future__ import annotations

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
        from .to_caffe import to_caffe
        return to_caffe(graph, **options)
    raise ModelError(f"unknown conversion target {target!r} (known: {', '.join(TARGETS)})")
