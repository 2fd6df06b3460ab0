"""What the pruning tests share: the tiny fixture net, seeded feeds, and the dense = sparse
(= OpenCV) check of a pruned model."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import caffe_surgeon as cs
from assets import needs
from caffe_surgeon.engine import Executor
from caffe_surgeon.layers.registry import feed_shapes
from caffe_surgeon.pruning import analyse, apply, make_plan

ROOT = Path(__file__).resolve().parents[1]
TINY = (ROOT / "fixtures/caffe/tinynet_deploy.prototxt", ROOT / "fixtures/caffe/tinynet.caffemodel")

try:
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None
needs_cv = needs(cv2 is not None, "opencv-python-headless<5 not installed")


def feeds(graph, seed=0, shapes=None):
    a = shapes or analyse(graph).shapes
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal((1,) + tuple(s[1:])).astype(np.float32)
            for k, s in feed_shapes(graph, a).items()}


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def dense_sparse_check(graph, ratio=0.5, criterion="l1", tmp_path=None, opencv=False,
                       input_shapes=None):
    a = analyse(graph, input_shapes=input_shapes)
    plan = make_plan(a, ratio=ratio, criterion=criterion)
    dense, sparse = apply(graph, plan, "dense", analysis=a), apply(graph, plan, "sparse", analysis=a)
    x = feeds(graph, shapes=a.shapes)
    # DetectionOutput's row count depends on ties and padding (OpenCV pads to keep_top_k):
    # compare what it reads instead.
    outs = []
    for name in graph.outputs:
        layer = next(l for l in reversed(graph.layers) if name in l.tops)
        outs += [b for b in layer.bottoms if b not in outs] if layer.type == "DetectionOutput" else [name]
    od, osp = Executor(dense).run(x, outs), Executor(sparse).run(x, outs)
    for k in osp:
        assert od[k].shape == osp[k].shape
        assert rel(od[k], osp[k]) <= 1e-4, (k, rel(od[k], osp[k]))
    if opencv and graph.framework == "caffe":
        cs.save(dense, tmp_path / "d.prototxt", tmp_path / "d.caffemodel")
        net = cv2.dnn.readNetFromCaffe(str(tmp_path / "d.prototxt"), str(tmp_path / "d.caffemodel"))
        for k, v in x.items():
            net.setInput(v, k)
        theirs = net.forward(list(od))
        for k, t in zip(od, theirs):
            assert rel(od[k], t) <= 1e-4, (k, rel(od[k], t))
    return plan, dense, sparse
