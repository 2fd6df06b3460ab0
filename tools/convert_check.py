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
    theirs = sess.run(None, {k: v for k, v in feeds.items() if k in wanted})
    blobs = [o.doc_string for o in model.graph.output]
    props = {p.key: p.value for p in model.metadata_props}
    heads_only = props.get("heads_only") == "True"
    deploy = deploy_graph(graph, heads_only)
    ours = Executor(deploy, darknet_bn=darknet_bn).run(feeds, outputs=blobs)
    errors = {blob: rel_err(ours[blob], t) for blob, t in zip(blobs, theirs)}
    return max(errors.values()), errors
