"""Export a Caffe or Darknet graph to an ONNX model (standard operators, opset 13+).

Every layer goes through the ONNX backend table (:mod:`.onnx_table`), which either exports
it or refuses it with a reason; all layers are looked up before anything is built, so a
refusal names the first layer that cannot be expressed and nothing is written. Losses,
metrics and sinks are left out (a deploy graph), and with ``heads_only`` so are detector
heads (``DetectionOutput``, ``[yolo]``, ``[region]``, ``[detection]``): the graph then ends
at their inputs. Without it, a Darknet detector's graph also decodes its boxes and runs
darknet's NMS (:mod:`.onnx_yolo`, the ``detections`` output).

:func:`onnx_bytes` builds and checks the file's bytes, :func:`export_onnx` writes them
(atomically), :func:`to_onnx` gives the ``onnx.ModelProto`` (the Python API's answer).

The written model is readable: node names are layer names (a layer with several nodes has
``name/1``, ``name/2``, ...), graph values keep the blob names, the batch axis is the
symbolic ``N``, and ``metadata_props`` record the producer and the sha256 of each source file.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import ModelError
from ..fileio import atomic_write
from ..graph import Graph
from ..layers.registry import infer_shapes, spec_for

#: the oldest opset whose operators (Split/Squeeze/ReduceSum with axes inputs, ...) we emit
MIN_OPSET = 13
DARKNET_BN = ("pjreddie", "alexeyab")


def check_opset(opset) -> int:
    """``opset`` as an int within [13, the installed onnx's newest], else a ModelError."""
    import onnx
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int):
        try:
            opset = int(str(opset))
        except ValueError:
            raise ModelError(f"--opset must be an integer, got {opset!r}") from None
    if not MIN_OPSET <= opset <= newest:
        raise ModelError(f"opset {opset} is not supported: give {MIN_OPSET} to {newest} "
                         f"(the installed onnx {onnx.__version__} knows up to {newest})")
    return opset


def _need_onnx():
    import importlib.util
    if importlib.util.find_spec("onnx") is None:
        raise ModelError("ONNX export needs the onnx package: pip install 'caffe-surgeon[onnx]'") from None


def _kept_layers(graph: Graph, heads_only: bool) -> list:
    """(layer, export function) of the layers the ONNX graph holds, in order; refusals raise."""
    from .onnx_table import DROPPED, exporter_for
    kept, gone = [], set()
    for layer in graph.layers:
        spec = spec_for(graph.framework, layer, graph.source_text)
        fn = exporter_for(graph.framework, layer, graph.source_text)
        head = heads_only and spec.has_role("detector_head")
        if fn is DROPPED or head or any(b in gone for b in layer.bottoms):
            gone.update(layer.tops)  # what only a left-out layer computes goes with it
            continue
        gone.difference_update(layer.tops)
        kept.append((layer, fn))
    return kept


def _check_weights(graph: Graph, kept, shapes) -> None:
    """Every exported layer holds the arrays its type needs, in a layout its spec knows."""
    for layer, _ in kept:
        spec = spec_for(graph.framework, layer)
        layouts = spec.weight_layouts(layer, shapes.inputs[layer.name])
        if any(list(l) == list(layer.weights) and
               all(tuple(layer.weights[k].shape) == tuple(s) for k, s in l.items()) for l in layouts):
            continue
        want = {k: tuple(s) for k, s in layouts[0].items()}
        have = {k: tuple(v.shape) for k, v in layer.weights.items()}
        what = (f"missing weights: this {layer.type} needs {want} (give the weights file, or "
                "make some with caffe-surgeon init)" if not have
                else f"weights {have} do not fit this {layer.type}, which needs {want}")
        raise ModelError(what, file=graph.source_text, layer=layer.name)


def _output_dims(graph: Graph, blob: str, shapes1, shapes2) -> list:
    """Static dims, with ``N`` where the size follows the batch; a detector head's row count
    depends on the data (``rows``)."""
    one, two = shapes1.blobs[blob], shapes2.blobs[blob]
    writer = [l for l in graph.layers if blob in l.tops][-1]
    varies = spec_for(graph.framework, writer).box_format == "ssd"
    dims = ["N" if a != b else int(a) for a, b in zip(one, two)]
    if varies:
        dims = [1, 1, "rows", int(one[-1])] if len(one) == 4 else ["rows"] * len(one)
    return dims


def deploy_graph(graph: Graph, heads_only: bool = False) -> Graph:
    """The layers an ONNX export of ``graph`` holds, as a graph of the same layer objects:
    what onnxruntime on the export is compared with (losses and metrics left out)."""
    kept = [layer for layer, _ in _kept_layers(graph, heads_only)]
    out = Graph(graph.framework, name=graph.name, layers=kept, inputs=dict(graph.inputs),
                meta=graph.meta, source=list(graph.source)).refresh()
    sources = {t for l in kept if not l.bottoms for t in l.tops}
    out.outputs = [t for t in out.outputs if t not in sources]
    return out


def _digests(graph: Graph) -> list[tuple[str, str]]:
    out = []
    for src in graph.source:
        path = Path(src)
        if path.is_file():
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out.append((f"source_sha256:{path.name}", h.hexdigest()))
    return out


def onnx_bytes(graph: Graph, *, opset: int = MIN_OPSET, fold_bn: bool = False,
            heads_only: bool = False, input_shapes=None, darknet_bn: str = "pjreddie",
            extra_outputs=(), conf_thresh=None, nms_thresh=None):
    """The ONNX model file of ``graph`` (weights attached), checked by ``onnx.checker``.

    Args:
        graph: a Caffe or Darknet graph with weights.
        opset: ONNX opset, 13 or later.
        fold_bn: fold BatchNorm/Scale (Caffe) and ``batch_normalize`` (Darknet) into the
            convolutions instead of keeping them as nodes.
        heads_only: leave detector heads out; the graph ends at their inputs.
        input_shapes: overrides of input / data-layer shapes (as ``infer_shapes``).
        darknet_bn: Darknet BatchNorm formula, as the engine's ``Executor`` ("pjreddie",
            the Debian darknet; or "alexeyab").
        extra_outputs: blob names to output besides the net's outputs (their final values),
            e.g. to compare logits where a softmax of huge values is ill-conditioned.
        conf_thresh, nms_thresh: defaults (darknet's .5 and .45) of the ``conf_thresh`` and
            ``nms_thresh`` inputs of a Darknet detector's in-graph decoding and NMS, which
            adds the ``detections`` output (see :mod:`.onnx_yolo`); refused for other nets.

    Returns:
        The bytes of the ``.onnx`` file (see :mod:`.onnx_file`).

    Raises:
        ModelError: an unsupported option or opset, or a layer ONNX cannot express (naming it).
    """
    _need_onnx()
    import onnx
    from onnx import helper

    from .. import __version__
    from .onnx_builder import OnnxBuilder
    from .onnx_file import model_bytes
    opset = check_opset(opset)
    if darknet_bn not in DARKNET_BN:
        raise ModelError(f"darknet_bn must be one of {DARKNET_BN}, not {darknet_bn!r}")
    if fold_bn and graph.framework == "caffe":
        # the model-surgery edit, on a copy: a batch norm it cannot fold stays a node
        from ..edit.fold_bn import fold_bn as fold
        graph = fold(graph, keep_unfoldable=True)
    kept = _kept_layers(graph, heads_only)
    shapes1 = infer_shapes(graph, input_shapes, batch=1)
    _check_weights(graph, kept, shapes1)
    options = {"fold_bn": fold_bn, "heads_only": heads_only, "darknet_bn": darknet_bn, "opset": opset}
    b = OnnxBuilder(graph, shapes1, lambda: infer_shapes(graph, input_shapes, batch=2), options)
    for name in graph.inputs:
        b.add_input(name, shapes1.blobs[name])
    for layer, fn in kept:
        b.layer = layer
        try:
            fn(b, layer)
        except ModelError as e:
            raise e.located(file=graph.source_text, layer=layer.name) from None
    b.layer = None
    decoded = _detections(b, graph, heads_only, conf_thresh, nms_thresh)
    deploy = Graph(graph.framework, layers=[l for l, _ in kept], inputs=dict(graph.inputs))
    for layer in deploy.layers:  # data layers' tops are the deploy graph's inputs
        if not layer.bottoms:
            deploy.inputs.update({t: None for t in layer.tops})
    deploy.refresh()
    # a data layer's top nothing reads (a label whose loss is left out) is no output
    sources = {t for l in deploy.layers if not l.bottoms for t in l.tops}
    deploy.outputs = [t for t in deploy.outputs if t not in sources]
    # each output's doc_string names the blob it holds (its value name may carry /k)
    outputs = [helper.make_tensor_value_info(b.current[t], onnx.TensorProto.FLOAT,
                                             _output_dims(graph, t, shapes1, b.shapes2), doc_string=t)
               for t in deploy.outputs if t in b.current] + decoded
    for t in extra_outputs:
        if t not in b.current or t in deploy.outputs:
            raise ModelError(f"extra output '{t}' is not a blob of the exported graph (or "
                             "already an output)", file=graph.source_text)
        outputs.append(helper.make_tensor_value_info(
            b.current[t], onnx.TensorProto.FLOAT, _output_dims(graph, t, shapes1, b.shapes2), doc_string=t))
    if not outputs:
        raise ModelError("the exported graph would have no output (every layer left out)",
                         file=graph.source_text)
    read = {i for n in b.nodes for i in n.input} | {o.name for o in outputs}
    inputs = [v for v in b.graph_inputs if v.name in read]
    g = helper.make_graph(b.nodes, graph.name or "net", inputs, outputs)
    opsets = [helper.make_opsetid("", opset)]
    skeleton = helper.make_model(g, opset_imports=opsets, producer_name="caffe-surgeon",
                                 producer_version=__version__,
                                 ir_version=helper.find_min_ir_version_for(opsets))
    meta = [("producer", f"caffe-surgeon {__version__}"), ("source_framework", graph.framework),
            *_digests(graph), ("fold_bn", str(bool(fold_bn))), ("heads_only", str(bool(heads_only)))]
    if graph.framework == "darknet":
        meta.append(("darknet_bn", darknet_bn))
    if decoded:
        from .onnx_yolo import LAYOUT
        meta.append(("detections", LAYOUT))
    helper.set_model_props(skeleton, dict(meta))
    data = model_bytes(skeleton, b.arrays)
    try:
        onnx.checker.check_model(data)
    except onnx.checker.ValidationError as e:  # a bug of ours, said in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"the exported ONNX graph fails onnx.checker: {first}",
                         file=graph.source_text) from None
    return data


def _detections(b, graph: Graph, heads_only: bool, conf_thresh, nms_thresh) -> list:
    """[the ``detections`` output] of a Darknet detector's in-graph decoding, or [] where
    the graph has none (heads left out, no decodable head); thresholds given for such a
    graph are refused rather than ignored."""
    from .onnx_yolo import add_detections, check_thresholds, decoded_heads
    conf, nms = check_thresholds(conf_thresh, nms_thresh)
    heads = [] if heads_only or graph.framework != "darknet" else decoded_heads(graph)
    if not heads:
        if conf_thresh is not None or nms_thresh is not None:
            why = "--heads-only leaves them out" if heads_only else "it has no [yolo] or [region] head to decode"
            raise ModelError(f"--conf-thresh and --nms-thresh apply to the in-graph decoding of "
                             f"a Darknet detector; {why}", file=graph.source_text)
        return []
    try:
        return [add_detections(b, graph, heads, conf, nms)]
    except ModelError as e:
        raise e.located(file=graph.source_text) from None


def to_onnx(graph: Graph, **options):
    """The ONNX ModelProto of ``graph`` (weights attached); the options and errors are
    :func:`onnx_bytes`'."""
    import onnx
    return onnx.ModelProto.FromString(onnx_bytes(graph, **options))


def export_onnx(graph: Graph, path, **options) -> bytes:
    """Export ``graph`` straight to the file ``path`` (atomically; the fastest path: the
    weights are never copied into a ModelProto). Returns the file's bytes."""
    _check_path(path)
    data = onnx_bytes(graph, **options)
    atomic_write(path, data)
    return data


def _check_path(path) -> None:
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ModelError(f"an ONNX model is written to a .onnx file, not '{path.suffix or path.name}'",
                         file=path)


def save_onnx(model, path) -> None:
    """Write ``model`` (a ModelProto) to ``path`` atomically (whole file or none)."""
    _check_path(path)
    atomic_write(path, model.SerializeToString())
