"""set-input: a new input size, every shape re-inferred, refused where a weight fixes it.

A convolution works at any size; an InnerProduct after a flatten, or Darknet's
``[connected]``, has weights sized for one input. The check is generic: the
arrays every layer needs at the new size must be the arrays it needs now.
Darknet nets are also held to their stride (the largest input-to-feature-map
ratio), since darknet rounds sizes per layer and the heads' grids must stay whole.
"""
from __future__ import annotations

from ..errors import ModelError
from ..graph import Graph
from ..layers.registry import infer_shapes
from .rewire import Report, copy_graph, say, spec


def set_input(graph: Graph, shape, *, name: str | None = None, report: Report = None) -> Graph:
    """Return a copy of ``graph`` whose input ``name`` (default: the only one) has ``shape``.

    Args:
        shape: (N, C, H, W).
        name: the input blob; needed when the net has several.
        report: called with one line per change.

    Raises:
        ModelError naming the first layer whose weights fix the old size, or the stride.
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ModelError(f"set-input: the shape must be N,C,H,W of positive numbers, not {shape}")
    before = infer_shapes(graph)
    out = copy_graph(graph)
    name, owner = _input_of(out, name)
    old = tuple(before.blobs[name])
    if owner is None:
        out.inputs[name] = shape
    else:
        spec(out, owner).set_input_shape(owner, shape)
    if graph.framework == "darknet":
        _check_stride(graph, before, old, shape)
    after = infer_shapes(out)
    for layer in out.layers:
        s = spec(out, layer)
        was = s.weight_shapes(layer, before.inputs[layer.name])
        now = s.weight_shapes(layer, after.inputs[layer.name])
        if was != now:
            k = next(k for k in was if was[k] != now.get(k))
            raise ModelError(f"its weights '{k}' {was[k]} fix its input at "
                             f"{tuple(before.inputs[layer.name][0])}; input {shape} would give it "
                             f"{tuple(after.inputs[layer.name][0])} (needing {now.get(k)})",
                             file=graph.source_text, layer=layer.name)
    say(report, f"input '{name}': {','.join(map(str, old))} -> {','.join(map(str, shape))}")
    for o in out.outputs:
        if before.blobs.get(o) != after.blobs.get(o):
            say(report, f"output '{o}': {before.blobs.get(o)} -> {after.blobs.get(o)}")
    return out


def _input_of(graph: Graph, name):
    """(input blob, the layer declaring it or None for a header input)."""
    declared = [(t, l) for l in graph.layers if not l.bottoms for t in l.tops[:1]
                if "data_source" in spec(graph, l).roles]
    candidates = [(n, None) for n in graph.inputs] + declared
    if name is None:
        if len(candidates) != 1:
            raise ModelError(f"set-input: the net has {len(candidates)} inputs "
                             f"({', '.join(c for c, _ in candidates)}); name one",
                             file=graph.source_text)
        return candidates[0]
    for c in candidates:
        if c[0] == name:
            return c
    raise ModelError(f"set-input: '{name}' is not an input (inputs: "
                     f"{', '.join(c for c, _ in candidates)})", file=graph.source_text)


def _check_stride(graph, before, old, shape) -> None:
    h, w = old[2], old[3]
    ratios = [h // s[2] for s in before.blobs.values()
              if len(s) == 4 and s[2] and h % s[2] == 0 and w % s[3] == 0 and h // s[2] == w // s[3]]
    stride = max(ratios, default=1)
    if shape[2] % stride or shape[3] % stride:
        raise ModelError(f"set-input: {shape[3]}x{shape[2]} is not a multiple of the net's "
                         f"stride {stride} (its {w}x{h} input becomes {w // stride}x{h // stride} "
                         "feature maps)", file=graph.source_text)
