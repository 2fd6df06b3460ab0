"""The ONNX graph under construction: nodes, initializers and the value behind every blob.

Exporters of single layer types (the tables in ``onnx_caffe_ops`` / ``onnx_darknet_ops`` /
``onnx_heads``) only ask this object for what they need: the ONNX value a bottom reads now
(:meth:`OnnxBuilder.value`), a constant (:meth:`const`), a node (:meth:`node`) and the name
under which a top is written (:meth:`write`). Caffe's in-place layers write one blob name
several times; ONNX values are single-assignment, so every write gets a fresh value name
(``blob``, then ``blob/1``, ...) and readers follow the newest one.

Shapes are known statically at two batch sizes (1 and 2): a shape constant that a layer needs
(a Reshape target, a flattened size) is taken from batch 1, and the one axis that grows with
the batch becomes ``-1`` (:meth:`dynamic_shape`), which is what keeps the batch dimension
dynamic without a Shape/Gather chain in the graph.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError

F32 = np.float32


class OnnxBuilder:
    """Collects the nodes of one exported graph.

    Args:
        graph: the source graph (for error messages and the layer being exported).
        shapes1, shapes2: :class:`~caffe_surgeon.layers.registry.ShapeMap` at batch 1 and 2
            (``shapes2`` may be a function giving it).
        options: the exporter's options (``fold_bn``, ``heads_only``, ``darknet_bn``).
    """

    def __init__(self, graph, shapes1, shapes2, options: dict):
        from onnx import helper  # the [onnx] extra; imported when exporting
        self.helper = helper
        self.graph, self.shapes1, self._shapes2 = graph, shapes1, shapes2
        self.options = options
        self.nodes: list = []
        #: (name, array) of every initializer, in order; written by ``onnx_file``
        self.arrays: list[tuple[str, np.ndarray]] = []
        self.graph_inputs: list = []
        self.current: dict[str, str] = {}      # blob name -> the ONNX value it holds now
        self.writes: dict[str, int] = {}       # blob name -> how many times written
        self.value_shapes: dict[str, tuple] = {}  # ONNX value -> static shape at batch 1
        self.layer = None
        #: values computed from initializers alone (PriorBox outputs and their concatenation),
        #: folded as the graph is built: DetectionOutput reads its priors from here
        self.folded: dict[str, np.ndarray] = {}
        self._names: set[str] = set()
        self._node_names: set[str] = set()
        self._counters: dict[tuple, int] = {}

    # ------------------------------------------------------------------ names
    def unique(self, base: str, taken: set | None = None) -> str:
        """``base``, or ``base/1``, ``base/2``, ... if taken (values and nodes have separate
        namespaces in ONNX, so a layer's node may share its top's name)."""
        taken = self._names if taken is None else taken
        name = base
        while name in taken:
            n = self._counters[(id(taken), base)] = self._counters.get((id(taken), base), 0) + 1
            name = f"{base}/{n}"
        taken.add(name)
        return name

    def value(self, blob: str) -> str:
        """The ONNX value that ``blob`` holds at this point of the net."""
        try:
            return self.current[blob]
        except KeyError:
            raise ModelError(f"bottom '{blob}' has no value in the exported graph",
                             layer=self.layer.name if self.layer else None) from None

    def inputs(self) -> list[str]:
        """The ONNX values of the current layer's bottoms."""
        return [self.value(b) for b in self.layer.bottoms]

    def write(self, blob: str) -> str:
        """A fresh value name for a (re)write of ``blob``; later readers see it."""
        n = self.writes.get(blob, 0)
        name = self.unique(blob if n == 0 else f"{blob}/{n}")
        self.writes[blob] = n + 1
        self.current[blob] = name
        return name

    def alias(self, blob: str, value: str) -> None:
        """Let ``blob`` name an existing value (Split, Dropout, an in-place identity)."""
        self.current[blob] = value

    def tmp(self, what: str) -> str:
        return self.unique(f"{self.layer.name}/{what}" if self.layer else what)

    def add_input(self, blob: str, shape) -> None:
        """Make ``blob`` a graph input of ``shape`` with a dynamic batch (first) axis."""
        name = self.write(blob)
        dims = ["N"] + [int(d) for d in shape[1:]] if len(shape) else []
        self.graph_inputs.append(self.helper.make_tensor_value_info(name, 1, dims))

    # ------------------------------------------------------------------ shapes
    @property
    def shapes2(self):
        """Shapes at batch 2, worked out on first use (only batch-dependent constants ask)."""
        if callable(self._shapes2):
            self._shapes2 = self._shapes2()
        return self._shapes2

    def in_shape(self, i: int = 0, batch2: bool = False) -> tuple:
        shapes = self.shapes2 if batch2 else self.shapes1
        return tuple(shapes.inputs[self.layer.name][i])

    def out_shape(self, i: int = 0, batch2: bool = False) -> tuple:
        shapes = self.shapes2 if batch2 else self.shapes1
        return tuple(shapes.outputs[self.layer.name][i])

    def dynamic_shape(self, i: int = 0) -> list[int]:
        """Output ``i``'s shape with the axis that grows with the batch as -1 (at most one)."""
        one, two = self.out_shape(i), self.out_shape(i, batch2=True)
        grow = [k for k, (a, b) in enumerate(zip(one, two)) if a != b]
        if len(one) != len(two) or len(grow) > 1:
            raise self.refusal(f"its output shape {one} at batch 1 and {two} at batch 2 "
                               "differ in more than one axis")
        return [-1 if k in grow else int(d) for k, d in enumerate(one)]

    # ------------------------------------------------------------------ nodes
    def const(self, array, what: str = "const") -> str:
        """An initializer holding ``array`` (float arrays as float32, ints as int64)."""
        a = np.asarray(array)
        a = a.astype(F32) if a.dtype.kind == "f" else (a.astype(np.int64) if a.dtype.kind in "iub" else a)
        name = self.tmp(what)
        self.arrays.append((name, a))
        self.folded[name] = a
        return name

    def ints(self, values, what: str = "shape") -> str:
        return self.const(np.asarray(list(values), np.int64), what)

    def node(self, op: str, inputs: list[str], outputs=None, name: str | None = None, **attrs):
        """Add one node; returns its single output (or the list when several are asked for)."""
        many = isinstance(outputs, int)
        if outputs is None or many:
            outputs = [self.tmp(op.lower()) for _ in range(outputs if many else 1)]
        node_name = self.unique(name or (self.layer.name if self.layer else op), self._node_names)
        self.nodes.append(self.helper.make_node(op, inputs, outputs, name=node_name, **attrs))
        if len(outputs) == 1 and inputs and all(i in self.folded for i in inputs):
            value = _fold(op, [self.folded[i] for i in inputs], attrs)
            if value is not None:
                self.folded[outputs[0]] = value
        return outputs if many or len(outputs) > 1 else outputs[0]

    def reduce(self, op: str, x: str, axes, keepdims: int = 1) -> str:
        """ReduceMean / ReduceMax over ``axes``: an attribute before opset 18, an input from it
        (ReduceSum took the input form already in 13)."""
        if self.options.get("opset", 13) >= 18:
            return self.node(op, [x, self.ints(list(axes), "axes")], keepdims=keepdims)
        return self.node(op, [x], axes=list(axes), keepdims=keepdims)

    def constant_value(self, value: str):
        """The array behind ``value`` when it is computed from constants alone, else None."""
        return self.folded.get(value)

    def refusal(self, why: str) -> ModelError:
        """A ModelError naming the layer, its type and why ONNX cannot express it."""
        layer = self.layer
        return ModelError(f"{layer.type} cannot be exported to ONNX: {why}",
                          file=self.graph.source_text, layer=layer.name)


def _fold(op: str, arrays: list, attrs: dict):
    """The numpy result of the few shape-moving ops constants pass through, else None."""
    if op == "Identity":
        return arrays[0]
    if op == "Concat":
        return np.concatenate(arrays, axis=attrs["axis"])
    if op == "Flatten":
        a = arrays[0]
        axis = attrs.get("axis", 1)
        return a.reshape(int(np.prod(a.shape[:axis])), -1)
    if op == "Reshape":
        a, shape = arrays
        dims = [a.shape[i] if d == 0 else int(d) for i, d in enumerate(shape)]
        return a.reshape(dims)
    return None
