"""replace-activation: swap one activation for another (ReLU6 -> ReLU, mish -> leaky, a slope).

For a runtime that lacks an activation. Caffe activations are layer types (the
registry's ``pointwise`` role says which); Darknet's are a section option (the
spec's ``activation_option``) with darknet's own names. The result computes a
different function: that is the point, and each changed layer is reported.
"""
from __future__ import annotations

from ..engine.darknet_activations import ACTIVATIONS, activation_name
from ..errors import ModelError
from ..graph import Graph
from ..layers.registry import spec_of_type, specs
from .rewire import Report, copy_graph, say, spec


def replace_activation(graph: Graph, old: str, new: str, *, slope: float | None = None,
                       report: Report = None) -> Graph:
    """Return a copy of ``graph`` with every ``old`` activation replaced by ``new``.

    Args:
        old, new: Caffe layer types (``ReLU6``, ``ReLU``) or Darknet activation names
            (``mish``, ``leaky``).
        slope: Caffe only: the negative slope of the new activation (a leaky ReLU).
        report: called with one line per change.

    Raises:
        ModelError for an unknown activation, a slope the new one has no field for, or
        when no layer uses ``old``.
    """
    out = copy_graph(graph)
    changed = (_caffe if graph.framework == "caffe" else _darknet)(out, old, new, slope, report)
    if not changed:
        raise ModelError(f"replace-activation: no layer uses the activation '{old}'",
                         file=graph.source_text)
    return out


def _caffe(graph, old, new, slope, report) -> int:
    pointwise = sorted(specs("caffe", "pointwise"))
    for t in (old, new):
        if spec_of_type("caffe", t) is None or "pointwise" not in spec_of_type("caffe", t).roles:
            raise ModelError(f"replace-activation: '{t}' is not a Caffe activation type "
                             f"({', '.join(pointwise)})", file=graph.source_text)
    changed = 0
    for layer in graph.layers:
        if layer.type != old:
            continue
        before = layer.type
        layer.type = new
        if before != new:  # the old type's own parameter message means nothing to the new one
            layer.params = {k: v for k, v in layer.params.items() if not k.endswith("_param")}
        if slope is not None:
            field = spec(graph, layer).slope_field(layer)
            if field is None:
                raise ModelError(f"replace-activation: {new} has no negative slope to set",
                                 file=graph.source_text, layer=layer.name)
            layer.params.setdefault(field[0], {})[field[1]] = float(slope)
        changed += 1
        say(report, f"{layer.name}: {before} -> {new}"
                    + (f" (negative_slope {slope:g})" if slope is not None else ""))
    return changed


def _darknet(graph, old, new, slope, report) -> int:
    if slope is not None:
        raise ModelError("replace-activation: darknet's leaky slope is fixed at 0.1; --slope "
                         "is for Caffe", file=graph.source_text)
    for name in (old, new):
        if name not in ACTIVATIONS:
            raise ModelError(f"replace-activation: '{name}' is not a darknet activation "
                             f"({', '.join(sorted(ACTIVATIONS))})", file=graph.source_text)
    changed = 0
    for layer in graph.layers:
        option = spec(graph, layer).activation_option
        if option is None or activation_name(layer) != old:
            continue
        layer.params[option] = new
        changed += 1
        say(report, f"{layer.name}: {option}={old} -> {new}")
    return changed
