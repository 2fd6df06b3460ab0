"""apply(plan): the one step that changes a model.

Dense output slices the arrays and updates ``num_output`` / ``filters`` and
every dependent parameter. Sparse output keeps every shape and makes each
removed channel inert, so that both outputs compute the same function:

- the producer's filter row, bias and the shift of every per-channel layer
  after it (BatchNorm mean, Scale/Bias bias, Darknet ``biases`` and
  ``rolling_mean``) are zeroed, so the channel emits exactly 0 wherever the
  activation maps 0 to 0 (this is what a channel-mixing layer such as SSD's
  Normalize needs, and what lets ``transform`` recognise it);
- every consumer's weights reading the channel are zeroed;
- the constant the channel used to emit with a dead filter (act(beta), through
  pooling, upsampling, concat and joins) is added to each consumer's bias in
  both outputs (offset folding), so removing a channel whose filter is dead
  changes nothing.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np

from ..errors import ModelError
from ..graph import Graph, Layer
from ..layers.registry import LayerSpec, feed_shapes, spec_for
from .groups import ChannelAnalysis, analyse
from .plan import Plan, node_keep

MODES = ("dense", "sparse")


def apply(graph: Graph, plan: Plan, mode: str = "dense", fold: bool = True,
          analysis: ChannelAnalysis | None = None, calib: dict | None = None,
          darknet_bn: str = "pjreddie", keep_layout: bool = False,
          constants: dict | None = None) -> Graph:
    """Return a pruned copy of ``graph`` (the input graph is not modified).

    Args:
        plan: which channels stay (see :mod:`.plan`); checked against the model.
        mode: "dense" (smaller arrays) or "sparse" (original shapes, removed channels zeroed).
        fold: fold the constant output of removed channels into consumer biases.
        analysis: the model's channel analysis, if already computed.
        calib: input blobs (N, C, H, W) of calibration images: refit the weights of
            every layer that lost input channels by least squares so that its output
            matches the original model's (see :mod:`.reconstruct`).
        keep_layout: never switch a bias on (a sparse caffemodel then still pairs with
            the original prototxt); constants with nowhere to go are not folded.
        constants: :func:`removed_constants` computed for a plan that removes at least
            this plan's channels (see :func:`constants_stand_alone`); saves its forward pass
            when many plans cut the same group (sensitivity analysis).
    """
    if mode not in MODES:
        raise ModelError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    a = analysis or analyse(graph)
    keep = node_keep(a, plan)
    out = copy_graph(graph)
    if keep.all():
        return out
    _check_nothing_emptied(a, keep)
    consts = {} if not fold else removed_constants(graph, a, keep) if constants is None \
        else constants
    for i, layer in enumerate(out.layers):
        flow = a.flows[i]
        spec = spec_for(graph.framework, layer)
        if flow.kind == "produce":
            cols = _input_columns(a, keep, i, layer, graph.source_text)
            if cols is not None and i in consts and not cols.all():  # before any slicing
                _fold(out, a, i, cols, consts[i], create=not keep_layout)  # full-size arrays
            e = (a.layer_out[i] or [None])[0]
            if e is not None and not keep[e.nodes].all():
                _cut_outputs(layer, spec, flow, keep[e.nodes], mode, resize=True)
            if cols is not None and not cols.all():
                _cut_inputs(layer, flow, cols, mode)
        elif flow.kind in ("pass", "join") and a.layer_in[i] is not None:
            m = keep[a.layer_in[i].nodes]
            if not m.all() and flow.out_axes:
                resize = type(spec).set_channels is not LayerSpec.set_channels
                _cut_outputs(layer, spec, flow, m, mode, resize=resize)
        elif flow.kind == "slice" and mode == "dense" and a.layer_in[i] is not None:
            sizes = [int(keep[e.nodes].sum()) for e in a.layer_out[i]]
            p = layer.params.setdefault("slice_param", {})
            if p.get("slice_point"):
                p["slice_point"] = list(np.cumsum(sizes)[:-1].tolist())
    if calib is not None:
        from .reconstruct import reconstruct
        reconstruct(graph, out, a, keep, calib, darknet_bn=darknet_bn, create=not keep_layout)
    return out


def copy_graph(graph: Graph) -> Graph:
    """A copy whose layers can be edited; arrays are shared until replaced, origins kept."""
    layers = [Layer(l.name, l.type, list(l.bottoms), list(l.tops), copy.deepcopy(l.params),
                    dict(l.weights), l.origin) for l in graph.layers]
    return Graph(graph.framework, graph.name, layers, dict(graph.inputs), list(graph.outputs),
                 copy.deepcopy(graph.meta), graph.origin, list(graph.source))


def _check_nothing_emptied(a: ChannelAnalysis, keep) -> None:
    for i, tops in enumerate(a.layer_out):
        for t, e in zip(a.graph.layers[i].tops, tops or []):
            if e is not None and len(e) and not keep[e.nodes].any():
                raise ModelError(f"the plan removes every channel of blob '{t}'",
                                 file=a.graph.source_text, layer=a.graph.layers[i].name)


def _columns(keep, entries, in_shape, n_cols: int) -> np.ndarray:
    """Keep mask over a consumer's input columns.

    A convolution has one column per channel; an InnerProduct reads every
    feature, so a channel spans width x H x W columns (width > 1 after Flatten).
    """
    m = keep[entries.nodes]
    if n_cols == len(m):
        return m
    spatial = int(np.prod(in_shape[2:], dtype=np.int64)) if len(in_shape) > 2 else 1
    cols = np.repeat(m, np.asarray(entries.widths, np.int64) * spatial)
    if len(cols) != n_cols:
        raise ModelError(f"the layer reads {n_cols} input features, the channel analysis "
                         f"traces {len(cols)}")
    return cols


def _input_columns(a: ChannelAnalysis, keep, i: int, layer, source) -> np.ndarray | None:
    """Keep mask over the input columns of the producing layer ``i`` (:func:`_columns`), or
    None where its input is not cut (no traced input edge, or a blocked one).

    Shared by :func:`apply` and ``expand.kept_positions``, which must walk alike so that
    expanding a dense model lands every column where pruning took it from. ``layer`` is the
    layer whose stored arrays give the column count (``apply`` passes its working copy);
    ``source`` locates a mismatch in the model file.
    """
    flow, e = a.flows[i], a.layer_in[i]
    if e is None or flow.in_block:
        return None
    name, axis = next(iter(flow.in_axes.items()))
    try:
        return _columns(keep, e, a.shapes.inputs[layer.name][0], layer.weights[name].shape[axis])
    except ModelError as err:
        raise err.located(file=source, layer=layer.name) from None


def _cut_outputs(layer, spec, flow, m, mode, resize):
    idx = np.flatnonzero(m)
    drop = np.flatnonzero(~m)
    for name, axis in flow.out_axes.items():
        if name not in layer.weights:
            continue
        arr = layer.weights[name]
        if mode == "dense":
            layer.weights[name] = np.ascontiguousarray(np.take(arr, idx, axis=axis))
        elif name in flow.silence:
            z = arr.copy()
            sl = [slice(None)] * z.ndim
            sl[axis] = drop
            z[tuple(sl)] = flow.silence[name]
            layer.weights[name] = z
    if mode == "dense" and resize:
        spec.set_channels(layer, int(m.sum()))


def _cut_inputs(layer, flow, cols, mode):
    idx = np.flatnonzero(cols)
    for name, axis in flow.in_axes.items():
        arr = layer.weights[name]
        if arr.shape[axis] != len(cols):
            raise ModelError(f"'{name}' has {arr.shape[axis]} inputs along axis {axis}, the "
                             f"channel analysis expects {len(cols)}", layer=layer.name)
        if mode == "dense":
            layer.weights[name] = np.ascontiguousarray(np.take(arr, idx, axis=axis))
        else:
            z = arr.copy()
            sl = [slice(None)] * z.ndim
            sl[axis] = np.flatnonzero(~cols)
            z[tuple(sl)] = 0.0
            layer.weights[name] = z


def _fold(out: Graph, a: ChannelAnalysis, i: int, cols, values, create: bool = True):
    """Add what the removed input features contributed as constants to layer i's output offset."""
    layer, flow = out.layers[i], a.flows[i]
    drop = np.flatnonzero(~cols)
    delta = None
    for name, axis in flow.in_axes.items():
        w = np.moveaxis(layer.weights[name], axis, 0).astype(np.float64)
        w = w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2)  # (inputs, outputs)
        d = values[drop].astype(np.float64) @ w[drop]
        delta = d if delta is None else delta + d
    if delta is not None and np.any(delta):
        add_offset(out, a, i, delta, np.arange(len(delta)), create)


def offset_target(out: Graph, a: ChannelAnalysis, i: int, create: bool = False):
    """Where a constant added to layer i's linear output goes: (layer, array, sign, factor).

    Its own bias (or, for Darknet batch-normalised layers, ``rolling_mean`` with
    sign -1); a Caffe conv/IP without a bias folds into the BatchNorm right after
    it (mean - delta, times BVLC's scale factor), so the file keeps its layout and
    a sparse caffemodel still pairs with the original prototxt. Otherwise, with
    ``create``, the layer's bias is switched on; else None.
    """
    layer, flow = out.layers[i], a.flows[i]
    if flow.offset_into in layer.weights:
        return layer, flow.offset_into, flow.offset_sign, 1.0
    found = _bn_after(out, a, i)
    if found is None and create and flow.offset_into and flow.offset_sign > 0:
        n = layer.weights[next(iter(flow.in_axes))].shape[flow.out_axes[next(iter(flow.in_axes))]]
        switch = spec_for(out.framework, layer).bias_switch
        if switch is not None:
            message, field = switch
            layer.params.setdefault(message, {})[field] = True
        layer.weights[flow.offset_into] = np.zeros(n, np.float32)
        return layer, flow.offset_into, 1.0, 1.0
    return found


def _bn_after(out: Graph, a: ChannelAnalysis, i: int):
    """The BatchNorm that is the first reader of layer i's output, as an offset target."""
    e = (a.layer_out[i] or [None])[0]
    if e is None:
        return None
    for j in range(i + 1, len(out.layers)):
        fj, ej = a.flows[j], a.layer_in[j]
        if ej is None or ej.nodes != e.nodes:
            continue
        bn = out.layers[j]
        if fj.kind == "pass" and fj.mean and fj.mean in bn.weights:
            s = bn.weights.get("scale_factor")
            factor = float(s[0]) if s is not None and float(s[0]) != 0 else 1.0
            return bn, fj.mean, -1.0, factor
        return None  # the first layer reading the output is not a batch norm
    return None


def add_offset(out: Graph, a: ChannelAnalysis, i: int, delta, rows, create: bool = True) -> bool:
    """Add ``delta`` (for output channels ``rows`` of layer i) to its offset target."""
    target = offset_target(out, a, i, create)
    if target is None:
        return False
    layer, name, sign, factor = target
    arr = layer.weights[name].astype(np.float64)
    idx = rows if len(arr) != len(delta) else np.arange(len(delta))
    arr[idx] += sign * factor * np.asarray(delta, np.float64)
    layer.weights[name] = arr.astype(np.float32)
    return True


def constants_stand_alone(a: ChannelAnalysis) -> bool:
    """Whether a removed channel's constant depends on that channel alone (no layer mixes
    channels on its way), so :func:`removed_constants` of a plan removing more channels
    gives the same values for the channels both remove."""
    return not any(f.mixes_channels for f in a.flows)


def upstream_of(graph: Graph, targets) -> Graph:
    """``graph`` with only the layers that layers ``targets`` depend on (and themselves).

    The constants need no more, and the rest may have no forward at all: a TRAIN-phase
    graph's losses (SSD's MultiBoxLoss) run only in the trainer, whose snapshots of a
    pruned model come through here.
    """
    producers = graph.producers()
    needed, todo = set(), list(targets)
    while todo:
        i = todo.pop()
        if i not in needed:
            needed.add(i)
            todo.extend(p for p in producers[i] if p is not None)
    return dataclasses.replace(graph, layers=[graph.layers[i] for i in sorted(needed)])


def removed_constants(graph: Graph, a: ChannelAnalysis, keep) -> dict:
    """Per consumer layer: the value of each input feature a removed channel stands for.

    That value is act(beta): what the channel emits when its linear output sits at
    its batch-norm running mean (normalised value 0), or act(bias) without batch
    norm. For a filter that is truly dead both are exact (its running mean is 0);
    for a live low-norm channel it is the value around which it varies, which a
    zeroed filter alone (normalised value -mean/std) is not. It depends only on
    the bias chain (bias, BN, activation, pooling, joins), not on the input, so
    one forward pass of a copy with those filters zeroed and those means set to
    0 finds every constant. For image inputs the centre pixel stands for the
    channel (borders of padded layers differ).
    """
    from ..engine.executor import Executor  # engine only when folding is asked for

    removed = ~keep
    dead = copy_graph(graph)
    normalised = np.zeros(len(keep), bool)
    for i, layer in enumerate(dead.layers):
        flow = a.flows[i]
        e = a.layer_in[i] if flow.kind == "pass" else (a.layer_out[i] or [None])[0]
        if flow.kind not in ("pass", "produce") or e is None or not flow.mean or \
                flow.mean not in layer.weights:
            continue
        m = removed[e.nodes]
        if m.any():
            arr = layer.weights[flow.mean].copy()
            arr[np.flatnonzero(m)] = 0.0
            layer.weights[flow.mean] = arr
            normalised[np.asarray(e.nodes)[m]] = True
    for i, layer in enumerate(dead.layers):
        flow = a.flows[i]
        e = (a.layer_out[i] or [None])[0]
        if flow.kind != "produce" or e is None or keep[e.nodes].all():
            continue
        drop = np.flatnonzero(~keep[e.nodes])
        for name in flow.in_axes:
            w = layer.weights[name].copy()
            sl = [slice(None)] * w.ndim
            sl[flow.out_axes[name]] = drop
            w[tuple(sl)] = 0.0
            layer.weights[name] = w
        # a batch norm downstream sees exactly its (zeroed) mean
        bias = flow.offset_into if flow.offset_sign > 0 else None
        fix = drop[normalised[np.asarray(e.nodes)[drop]]]
        if bias in layer.weights and len(fix):
            b = layer.weights[bias].copy()
            b[fix] = 0.0
            layer.weights[bias] = b
    producers = graph.producers()
    wanted = {}
    for i, layer in enumerate(graph.layers):
        e = a.layer_in[i]
        if a.flows[i].kind != "produce" or e is None or keep[e.nodes].all() or a.flows[i].in_block:
            continue
        p = producers[i][0]
        if p is not None:
            wanted[i] = f"{graph.layers[p].name}:{layer.bottoms[0]}"
    if not wanted:
        return {}
    feeds = {name: np.zeros((1,) + tuple(shape[1:]), np.float32)
             for name, shape in feed_shapes(graph, a.shapes).items()}
    names = sorted({v.split(":", 1)[0] for v in wanted.values()}, key=graph.index)
    values = Executor(upstream_of(dead, [graph.index(n) for n in names])).run(
        feeds, outputs=[], layer_outputs=names)
    out = {}
    for i, key in wanted.items():
        v = values[key][0]
        layer = graph.layers[i]
        conv_like = layer.weights[next(iter(a.flows[i].in_axes))].ndim == 4
        # Convolutions: the centre pixel stands for the channel; dense layers read every feature.
        out[i] = v[:, v.shape[1] // 2, v.shape[2] // 2] if conv_like and v.ndim == 3 else v.reshape(-1)
    return out
