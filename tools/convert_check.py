"""How far a converted model is from our engine on the same deterministic input.

Shared by ``tools/batch_convert.py``, ``benchmarks/convert.py`` and the tests: onnxruntime
runs an exported ONNX model, our engine runs the source graph, and the largest relative
difference over all outputs is reported (``max |ours - theirs| / max |ours|`` per output).
onnxruntime is an oracle here (the ``test`` extra), never a dependency of the package.
"""
from __future__ import annotations

import numpy as np


def deterministic_inputs(graph, shapes: dict, seed: int = 0) -> dict:
    """Per fed blob, a float32 array identical on every run: uniform [0, 1) for Darknet (an
    image), standard normal for Caffe (a mean-subtracted image)."""
    out = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        rng = np.random.default_rng([seed, i])
        shape = tuple(int(d) for d in shape)
        out[name] = (rng.random(shape, dtype=np.float32) if graph.framework == "darknet"
                     else rng.standard_normal(shape).astype(np.float32))
    return out


def rel_err(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| / max |ours| (inf when the shapes differ)."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    if ours.shape != theirs.shape:
        return float("inf")
    if not ours.size:
        return 0.0
    scale = max(float(np.abs(ours).max()), 1e-30)
    return float(np.abs(ours.astype(np.float64) - theirs).max() / scale)


def onnx_agreement(graph, model, input_shapes=None, batch: int = 1, seed: int = 0,
                   darknet_bn: str = "pjreddie", threads: int = 1) -> tuple[float, dict]:
    """(worst relative error, {blob: error}) of onnxruntime on ``model`` against our engine
    on ``graph``, both fed the same :func:`deterministic_inputs` at ``batch``."""
    import onnxruntime as ort

    from caffe_surgeon.convert.to_onnx import deploy_graph
    from caffe_surgeon.engine.executor import Executor
    from caffe_surgeon.layers.registry import feed_shapes, infer_shapes

    shapes = infer_shapes(graph, input_shapes, batch=batch)
    fed = feed_shapes(graph, shapes)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    feeds = deterministic_inputs(graph, fed, seed)
    props = {p.key: p.value for p in model.metadata_props}
    heads_only = props.get("heads_only") == "True"
    deploy = deploy_graph(graph, heads_only)
    # outputs that hold a blob of the net; a detector's decoded ``detections`` (no blob of
    # the engine) is checked against the decoder by tests/test_onnx_yolo.py
    computed = set(deploy.inputs) | {t for l in deploy.layers for t in l.tops}
    held = [o for o in model.graph.output if o.doc_string in computed]
    theirs = sess.run([o.name for o in held], {k: v for k, v in feeds.items() if k in wanted})
    blobs = [o.doc_string for o in held]
    ours = Executor(deploy, darknet_bn=darknet_bn).run(feeds, outputs=blobs)
    errors = {blob: rel_err(ours[blob], t) for blob, t in zip(blobs, theirs)}
    return max(errors.values()), errors


def penultimate_blobs(graph, heads_only: bool = False) -> list[str]:
    """The inputs of the layers that write the net's outputs (logits before a softmax, an
    SSD head's loc/conf/priors): with ``to_onnx(extra_outputs=...)`` they are compared too,
    so an output that init weights make flat (a softmax of near-zero logits, no detection)
    cannot hide a difference."""
    from caffe_surgeon.convert.to_onnx import deploy_graph
    deploy = deploy_graph(graph, heads_only)
    outputs = set(deploy.outputs)
    found = []
    for layer in deploy.layers:
        if not set(layer.tops) & outputs:
            continue
        for blob in layer.bottoms:
            if blob not in outputs and blob not in deploy.inputs and blob not in layer.tops \
                    and blob not in found and any(blob in l.tops for l in deploy.layers):
                found.append(blob)
    return found


def check_onnx_export(definition, weights=None, *, out=None, seed: int = 0, input_shapes=None,
                      compare_outputs: bool = True, batch: int = 1, **options) -> dict:
    """Load a model (init weights with ``seed`` when no weights file is given), export it to
    ONNX (written to ``out`` when given, then read back from there), and compare onnxruntime
    with our engine on the outputs and on the outputs' inputs (:func:`penultimate_blobs`).

    Returns:
        {"status": "ok" | "refused", "reason", "error" (worst over the net's outputs),
        "errors" ({blob: error} incl. the penultimate blobs), "init" (weights were
        synthetic), "seconds" (load + export + write)}. Refusals (a ModelError) are returned;
        anything else raises.
    """
    import time

    import caffe_surgeon as cs
    from caffe_surgeon.convert.to_onnx import export_onnx, to_onnx
    from caffe_surgeon.errors import ModelError

    start = time.perf_counter()
    row = {"status": "ok", "reason": "", "error": None, "errors": {}, "init": weights is None,
           "seconds": 0.0}
    try:
        graph = cs.load(*[p for p in (definition, weights) if p is not None])
        shapes = input_shapes
        if shapes is None:
            shapes = database_shapes(graph)
        if weights is None:
            cs.init(graph, seed=seed, input_shapes=shapes)
        if out is not None:
            import onnx
            export_onnx(graph, out, input_shapes=shapes, **options)
            model = onnx.load(str(out))
        else:
            model = to_onnx(graph, input_shapes=shapes, **options)
    except ModelError as e:
        row.update(status="refused", reason=str(e), seconds=time.perf_counter() - start)
        return row
    row["seconds"] = time.perf_counter() - start
    if compare_outputs:
        err, errors = onnx_agreement(graph, model, shapes, batch=batch, seed=seed,
                                     darknet_bn=options.get("darknet_bn", "pjreddie"))
        row["error"], row["errors"] = err, errors
        extra = penultimate_blobs(graph, options.get("heads_only", False))
        if extra:
            model2 = to_onnx(graph, input_shapes=shapes, extra_outputs=extra, **options)
            _, more = onnx_agreement(graph, model2, shapes, batch=batch, seed=seed,
                                     darknet_bn=options.get("darknet_bn", "pjreddie"))
            row["errors"] = {**more, **errors}
    return row


#: Image sizes of the databases the zoo's train_val nets read (their ``data_param.source``
#: names them; Caffe learns these from the LMDB). Same table as tests/oracle_caffe.py.
DATABASE_IMAGES = (("siamese", (2, 28, 28)), ("mnist", (1, 28, 28)), ("cifar", (3, 32, 32)))


def database_shapes(graph):
    """Shapes for data layers whose size only their database knows (None when none is)."""
    from caffe_surgeon.errors import ModelError
    from caffe_surgeon.layers.registry import infer_shapes
    try:
        infer_shapes(graph)
        return None
    except ModelError as e:
        if "depends on its database" not in str(e):
            return None
    shapes = {}
    for layer in graph.layers:
        p = layer.params.get("data_param") or {}
        for key, chw in DATABASE_IMAGES:
            if not layer.bottoms and layer.tops and key in str(p.get("source", "")):
                shapes[layer.tops[0]] = (1,) + chw
                break
    return shapes or None


def check_caffe_conversion(definition, weights, prototxt, seed: int = 0) -> dict:
    """Convert a Darknet model to Caffe files at ``prototxt`` (+ .caffemodel, .heads.json),
    read them back with our reader, and compare our engine on them with our engine on the
    Darknet source (its outputs, or the heads' inputs where the Caffe net ends at them); and
    OpenCV on the written files when it is installed.

    Returns:
        {"status", "reason", "max_rel_error", "opencv_max_rel_error", "seconds"} as strings.
    """
    import time
    from pathlib import Path

    import caffe_surgeon as cs
    from caffe_surgeon.convert import caffe_conversion
    from caffe_surgeon.convert.to_onnx import deploy_graph
    from caffe_surgeon.engine.executor import Executor
    from caffe_surgeon.errors import ModelError
    from caffe_surgeon.layers.registry import feed_shapes, infer_shapes

    row = {"status": "ok", "reason": "", "max_rel_error": "", "opencv_max_rel_error": "", "seconds": ""}
    start = time.perf_counter()
    prototxt = Path(prototxt)
    caffemodel = prototxt.with_suffix(".caffemodel")
    try:
        graph = cs.load(*[p for p in (definition, weights) if p is not None])
        if graph.framework != "darknet":
            raise ModelError("--to caffe converts Darknet models; this one is already Caffe")
        if weights is None:
            cs.init(graph, seed=seed)
        from caffe_surgeon.convert.to_caffe import to_caffe_mapped
        save = caffe_conversion()[1]
        caffe_graph, heads, blob_map = to_caffe_mapped(graph)
        save(caffe_graph, heads, prototxt, caffemodel)
        row["seconds"] = f"{time.perf_counter() - start:.2f}"
        back = cs.load(prototxt, caffemodel)
    except ModelError as e:
        row.update(status="refused", reason=str(e), seconds=f"{time.perf_counter() - start:.2f}")
        return row
    source = deploy_graph(graph, heads_only=heads is not None)
    feeds = deterministic_inputs(graph, feed_shapes(graph, infer_shapes(graph)), seed)
    want = Executor(source).run(feeds, outputs=source.outputs)
    want = [want[b] for b in source.outputs]
    back_feeds = dict(zip(list(back.inputs) or [l.tops[0] for l in back.layers if not l.bottoms],
                          feeds.values()))
    # each source output against the Caffe blob it became (a Caffe net may have more
    # dangling tops than its source, e.g. the unread half of a grouped route's Slice)
    paired = [blob_map[b] for b in source.outputs]
    got = Executor(back).run(back_feeds, outputs=paired)
    got = [got[b] for b in paired]
    row["max_rel_error"] = f"{_paired_error(want, got):.3g}"
    try:
        import cv2
    except ImportError:
        return row
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setInput(next(iter(feeds.values())))
    theirs = net.forward(paired)
    row["opencv_max_rel_error"] = f"{_paired_error(got, list(theirs)):.3g}"
    return row


def _paired_error(a: list, b: list) -> float:
    """Worst error over outputs paired in order (shapes must agree)."""
    if len(a) != len(b):
        return float("inf")
    return max(rel_err(x, y.reshape(x.shape) if y.size == x.size else y) for x, y in zip(a, b))
