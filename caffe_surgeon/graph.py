"""The framework-free layer graph every reader builds and every writer consumes.

Plain data only: no protobuf message, cfg section or file handle lives here.
What a writer needs to stay lossless (original text, unknown bytes, comments)
is kept in ``origin`` records that only the matching writer interprets.

Blobs are named by strings. In-place layers (top == bottom) are allowed, so a
blob name can be produced by several layers in turn; :meth:`Graph.producers`
resolves each bottom to the layer that last wrote it before the consumer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from .errors import ModelError

FRAMEWORKS = ("caffe", "darknet")


@dataclass(eq=False)
class Layer:
    """One layer.

    Attributes:
        name: unique layer name (Darknet layers are named ``<section>_<index>``).
        type: framework type string (``"Convolution"``, ``"convolutional"``).
        bottoms / tops: blob names read and written, in order.
        params: layer parameters as a plain nested dict that mirrors the file's
            own field names (Caffe: ``{"convolution_param": {"num_output": 64}}``;
            Darknet: ``{"filters": 64, "size": 3}``). Unset fields are absent;
            defaults are applied by the layer registry, not stored.
        weights: ordered name -> float32 array, in file order. Arrays are shared between
            copies of a graph and derived data (Winograd transforms) is cached per array:
            replace an array to change it, never write into it.
        origin: opaque record of the reader, used by the writer of the same
            format to reproduce untouched parts byte for byte.
    """

    name: str
    type: str
    bottoms: list[str] = field(default_factory=list)
    tops: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    origin: Any = None

    @property
    def in_place(self) -> bool:
        return bool(self.tops) and self.tops == self.bottoms[: len(self.tops)]

    def same_as(self, other: "Layer") -> bool:
        """Structural equality, weights compared bit for bit (origin ignored)."""
        if (self.name, self.type, self.bottoms, self.tops) != (
                other.name, other.type, other.bottoms, other.tops):
            return False
        if self.params != other.params or list(self.weights) != list(other.weights):
            return False
        return all(a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
                   for a, b in zip(self.weights.values(), other.weights.values()))


@dataclass(eq=False)
class Graph:
    """Layers in topological order plus explicit inputs and outputs.

    Attributes:
        framework: ``"caffe"`` or ``"darknet"``; selects the layer registry.
        name: network name.
        layers: topologically ordered layers.
        inputs: network input blob -> declared shape (N, C, H, W), or None when
            only the data layer knows it.
        outputs: blobs produced and never consumed (computed by :meth:`refresh`
            unless a reader fixed them).
        meta: net-level parameters (Caffe net fields, Darknet ``[net]`` options).
        origin: opaque writer record for the whole file.
        source: the files this graph was read from (for error messages).
    """

    framework: str
    name: str = ""
    layers: list[Layer] = field(default_factory=list)
    inputs: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    origin: Any = None
    source: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {FRAMEWORKS}, not {self.framework!r}")

    # -- lookup -----------------------------------------------------------
    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ModelError(f"no layer named '{name}'", file=self.source_text)

    def index(self, name: str) -> int:
        for i, layer in enumerate(self.layers):
            if layer.name == name:
                return i
        raise ModelError(f"no layer named '{name}'", file=self.source_text)

    @property
    def source_text(self) -> str | None:
        return " + ".join(self.source) if self.source else None

    # -- edges ------------------------------------------------------------
    def producers(self) -> list[list[int | None]]:
        """For each layer, for each bottom, the index of the layer that wrote it.

        ``None`` means the bottom is a network input. In-place chains resolve to
        the most recent writer, which is what makes (conv -> bn -> relu, all on
        one blob name) come out as a chain rather than three siblings.
        """
        last: dict[str, int | None] = {name: None for name in self.inputs}
        result = []
        for i, layer in enumerate(self.layers):
            row = []
            for b in layer.bottoms:
                if b not in last:
                    raise ModelError(f"bottom '{b}' is not produced by any earlier layer "
                                     "and is not a network input",
                                     file=self.source_text, layer=layer.name)
                row.append(last[b])
            result.append(row)
            for t in layer.tops:
                last[t] = i
        return result

    def consumers(self, blob: str | None = None):
        """Who reads what.

        Without ``blob`` (the form the pruning code uses): for each layer, the
        (layer index, bottom position) pairs reading its output. With ``blob``:
        the layers that read the value :meth:`producer` says ``blob`` ends as
        (its last writer's; the network input's if nobody writes it), in net
        order. The two share one method so existing callers keep working.
        """
        if blob is not None:
            last = self._last_writer(blob)
            return [self.layers[i] for i, row in enumerate(self.producers())
                    if any(b == blob and p == last
                           for b, p in zip(self.layers[i].bottoms, row))]
        result: list[list[tuple[int, int]]] = [[] for _ in self.layers]
        for i, row in enumerate(self.producers()):
            for pos, p in enumerate(row):
                if p is not None:
                    result[p].append((i, pos))
        return result

    def producer(self, blob: str) -> Layer | None:
        """The layer whose output ``blob`` ends as (the last of an in-place chain), or None
        for a network input nobody overwrites; a ModelError for a blob the net lacks."""
        last = self._last_writer(blob)
        return None if last is None else self.layers[last]

    def _last_writer(self, blob: str) -> int | None:
        last = None
        for i, layer in enumerate(self.layers):
            if blob in layer.tops:
                last = i
        if last is None and blob not in self.inputs:
            raise ModelError(f"no blob named '{blob}' (no layer writes it and it is not a "
                             "network input)", file=self.source_text)
        return last

    def refresh(self) -> "Graph":
        """Recompute ``outputs``: blobs whose last writer's value nobody reads."""
        prod = self.producers()
        read: set[tuple[int | None, str]] = set()
        for layer, row in zip(self.layers, prod):
            for b, p in zip(layer.bottoms, row):
                read.add((p, b))
        outputs, seen = [], set()
        last: dict[str, int] = {}
        for i, layer in enumerate(self.layers):
            for t in layer.tops:
                last[t] = i
        for i, layer in enumerate(self.layers):
            for t in layer.tops:
                if last[t] == i and (i, t) not in read and t not in seen:
                    outputs.append(t)
                    seen.add(t)
        self.outputs = outputs
        return self

    def same_as(self, other: "Graph") -> bool:
        """Equal structure, parameters and weights (origin records ignored)."""
        return (self.framework == other.framework and self.name == other.name
                and self.inputs == other.inputs and self.outputs == other.outputs
                and self.meta == other.meta and len(self.layers) == len(other.layers)
                and all(a.same_as(b) for a, b in zip(self.layers, other.layers)))

    def diff(self, other: "Graph") -> list[str]:
        """Human-readable differences, for test failure messages."""
        out = []
        for attr in ("framework", "name", "inputs", "outputs", "meta"):
            if getattr(self, attr) != getattr(other, attr):
                out.append(f"{attr}: {getattr(self, attr)!r} != {getattr(other, attr)!r}")
        if len(self.layers) != len(other.layers):
            out.append(f"layer count {len(self.layers)} != {len(other.layers)}")
        for a, b in zip(self.layers, other.layers):
            if not a.same_as(b):
                out.append(f"layer {a.name!r} differs from {b.name!r}")
        return out
