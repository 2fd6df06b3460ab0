"""Peak memory of a forward pass, known before anything runs.

The executor frees a value after its last reader, so the peak is the largest
set of values alive at once (walked in the run order, as the executor does),
plus the weights, plus the largest scratch buffer one layer takes (the im2col
columns of a convolution). A network that cannot fit is refused with these
figures and what the machine has available, instead of dying half way with a
MemoryError (or being killed by the kernel's OOM killer).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ModelError
from ..graph import Graph
from ..layers.registry import ShapeMap

F32 = 4
GIB = 1024.0 ** 3


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes a forward pass needs, and where the peak falls."""

    activations: int  # live values at the peak layer (inputs included)
    weights: int
    scratch: int  # the largest per-layer workspace (im2col columns)
    peak_layer: str
    scratch_layer: str

    @property
    def total(self) -> int:
        return self.activations + self.weights + self.scratch

    def describe(self) -> str:
        scratch = (f", im2col scratch {human_bytes(self.scratch)} at layer '{self.scratch_layer}'"
                   if self.scratch else "")
        return (f"{human_bytes(self.total)} (live activations {human_bytes(self.activations)} "
                f"at layer '{self.peak_layer}', weights {human_bytes(self.weights)}{scratch})")


def human_bytes(n: float) -> str:
    """``6,850.2 GiB``, ``14.5 MiB``, ``448 B``."""
    for unit, scale in (("GiB", GIB), ("MiB", 1024.0 ** 2), ("KiB", 1024.0)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n)} B"


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _scratch_bytes(layer, in_shapes, out_shapes) -> int:
    """im2col columns for a spatial convolution: (C/g x kh x kw) x (N x oh x ow) floats."""
    shape = next((tuple(a.shape) for a in layer.weights.values() if a.ndim == 4), ())
    if len(shape) != 4 or shape[2] * shape[3] <= 1 or not out_shapes or len(out_shapes[0]) != 4:
        return 0
    n, _, oh, ow = out_shapes[0]
    return shape[1] * shape[2] * shape[3] * n * oh * ow * F32


def plan(graph: Graph, shapes: ShapeMap) -> MemoryPlan:
    """The :class:`MemoryPlan` of one forward pass at the shapes ``shapes`` were inferred for."""
    producers = graph.producers()
    last_use: dict[tuple, int] = {}
    for i, row in enumerate(producers):
        for p, b in zip(row, graph.layers[i].bottoms):
            last_use[(-1 if p is None else p, b)] = i
    final = {name: -1 for name in graph.inputs}
    for i, layer in enumerate(graph.layers):
        for t in layer.tops:
            final[t] = i
    returned = {(final[name], name) for name in graph.outputs if name in final}
    live = {(-1, name): _size(shapes.blobs[name]) * F32 for name in graph.inputs
            if name in shapes.blobs}
    peak, peak_layer = sum(live.values()), "(inputs)"
    scratch, scratch_layer = 0, "-"
    for i, layer in enumerate(graph.layers):
        outs = shapes.outputs.get(layer.name, [])
        for t, s in zip(layer.tops, outs):
            live[(i, t)] = _size(s) * F32
        now = sum(live.values())
        if now > peak:
            peak, peak_layer = now, layer.name
        work = _scratch_bytes(layer, shapes.inputs.get(layer.name, []), outs)
        if work > scratch:
            scratch, scratch_layer = work, layer.name
        for v in [v for v in live if v not in returned and last_use.get(v, v[0]) <= i]:
            del live[v]
    weights = sum(a.nbytes for l in graph.layers for a in l.weights.values())
    return MemoryPlan(peak, weights, scratch, peak_layer, scratch_layer)


def available_bytes() -> int | None:
    """Memory the system can still give this process (MemAvailable + free swap), if known."""
    try:
        fields = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields[key] = int(rest.split()[0]) * 1024
        return fields["MemAvailable"] + fields.get("SwapFree", 0)
    except (OSError, KeyError, ValueError, IndexError):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None


def check_fits(graph: Graph, shapes: ShapeMap, available: int | None = None) -> MemoryPlan:
    """Refuse a forward pass that cannot fit in memory; return its plan otherwise."""
    p = plan(graph, shapes)
    have = available_bytes() if available is None else available
    if have is not None and p.total > have:
        batch = next(iter(shapes.blobs.values()), (1,))[0] if shapes.blobs else 1
        raise ModelError(f"a forward pass at batch {batch} needs {p.describe()}, but only "
                         f"{human_bytes(have)} of memory is available; use a smaller input "
                         "size or batch", file=graph.source_text)
    return p
