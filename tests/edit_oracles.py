"""What the edit tests share: models with synthetic weights, and the oracles' forwards.

Every check compares a model before and after an edit in an implementation that
is not ours (OpenCV 4.x's Caffe and Darknet importers, the Debian darknet
binary), besides our engine.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

import caffe_surgeon as cs
from caffe_surgeon.engine import Executor
from caffe_surgeon.layers.registry import feed_shapes, infer_shapes

from assets import DARKNET_SHARE, darknet_binary, need_path
from oracle_caffe import database_input_shapes, deterministic_inputs, opencv_forward

try:
    import cv2
except ImportError:  # pragma: no cover - a test dependency
    cv2 = None


def rel(a, b) -> float:
    """max |a - b| / max |b| over one tensor (the tolerance is relative to its scale)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) if b.size else 0.0


def sized(graph):
    """(shapes, input overrides) for a graph, giving database-fed data layers a size."""
    try:
        return infer_shapes(graph), {}
    except cs.ModelError as e:
        given = database_input_shapes(graph, str(e))
        if not given:
            raise
        return infer_shapes(graph, given), given


def engine_outputs(graph, feeds, outputs=None) -> dict:
    return Executor(graph).run(feeds, outputs)


def batch1_feeds(graph, shapes, seed=0, scale=1.0) -> dict:
    wanted = {k: (1,) + tuple(v[1:]) for k, v in feed_shapes(graph, shapes).items() if len(v) == 4}
    return {k: v * np.float32(scale) for k, v in deterministic_inputs(wanted, seed).items()}


def opencv_caffe_outputs(prototxt, caffemodel, feeds, names=None) -> dict:
    return {k: v[0] for k, v in opencv_forward(prototxt, caffemodel, feeds, names).items()}


def opencv_darknet_outputs(cfg, weights, x) -> list[np.ndarray]:
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(x)
    return [np.array(o, np.float32) for o in net.forward(net.getUnconnectedOutLayersNames())]


def darknet_detections(cfg, weights, image, workdir: Path) -> list[str]:
    """The lines ``darknet detector test`` prints for ``image`` (name: percent)."""
    binary = darknet_binary()
    need_path(DARKNET_SHARE / "cfg" / "coco.data", "darknet data files (Debian package darknet)")
    root = workdir / "darknet"
    if not root.exists():
        shutil.copytree(DARKNET_SHARE, root)
    proc = subprocess.run([str(binary), "detector", "test", "cfg/coco.data", str(cfg), str(weights),
                           str(image), "-thresh", "0.25", "-out", str(workdir / "pred")],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split("Predicted in", 1)[1].splitlines()[1:]
    return [s for s in lines if re.match(r".+: \d+%$", s)]
