"""The torch trainer in eval mode against the NumPy engine (a library; the tests live in
``test_torch_eval.py``).

The measure is max-abs relative to scale: for each top, ``max|torch - numpy|`` over
``max|numpy|`` (1 when the top is all zeros), so an element that is tiny only by
cancellation cannot fail the comparison and a whole top off by a constant factor cannot
pass it. Every top of the net is compared, as the last layer writing its name left it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from oracle_caffe import database_input_shapes, deterministic_inputs

#: what eval mode must reach on every top (the issue's 1e-5 relative)
RTOL = 1e-5


def prepared(path: Path, weights: Path | None = None, *, seed: int = 0):
    """(graph, feeds) for one definition: TEST phase, batch 1 unless the net fixes its own,
    the given weights or synthetic ones (``caffe_surgeon.init``), a deterministic standard
    normal image per input and class 0 for every label."""
    import caffe_surgeon as cs
    from caffe_surgeon.layers.registry import feed_shapes, infer_shapes

    g = cs.load(str(path), str(weights)) if weights else cs.load(str(path))
    try:
        shapes = infer_shapes(g, batch=1)
        overrides = None
    except cs.ModelError as e:
        overrides = database_input_shapes(g, str(e))
        if not overrides:
            raise
        overrides = {k: (1,) + tuple(v[1:]) for k, v in overrides.items()}
        shapes = infer_shapes(g, overrides, batch=1)
    if weights is None:
        cs.init(g, seed=seed, input_shapes=overrides)
    wanted = feed_shapes(g, shapes)
    labels = {t for l in g.layers if not l.bottoms for t in l.tops[1:]}
    for layer in g.layers:  # a label comes one per image (infer_shapes rebatches only images)
        if not layer.bottoms and len(layer.tops) > 1 and layer.tops[0] in wanted:
            for t in layer.tops[1:]:
                wanted[t] = (wanted[layer.tops[0]][0],) + tuple(wanted[t][1:])
    feeds = deterministic_inputs({k: v for k, v in wanted.items() if k not in labels}, seed)
    feeds.update({t: np.zeros(wanted[t], np.float32) for t in labels if t in wanted})
    return g, feeds


def top_names(graph) -> list[str]:
    seen: dict[str, None] = {}
    for layer in graph.layers:
        seen.update(dict.fromkeys(layer.tops))
    return list(seen)


def relative_differences(graph, feeds, darknet_bn: str = "pjreddie") -> dict[str, float]:
    """Top name -> max-abs difference relative to scale, torch eval vs ``Executor.run``
    (both with the Darknet BatchNorm flavour ``darknet_bn``)."""
    import torch

    from caffe_surgeon.engine import Executor
    from caffe_surgeon.training.module import CaffeModule

    tops = top_names(graph)
    ref = Executor(graph, darknet_bn=darknet_bn).run(feeds, outputs=tops)
    module = CaffeModule(graph, darknet_bn=darknet_bn).eval()
    with torch.no_grad():
        got = module(feeds).blobs
    out = {}
    for t in tops:
        a, b = got[t].cpu().numpy(), np.asarray(ref[t], np.float32)
        if a.shape != b.shape:
            if a.size != b.size:
                raise AssertionError(f"top {t}: torch {a.shape}, numpy {b.shape}")
            a = a.reshape(b.shape)
        scale = float(np.abs(b).max()) if b.size else 0.0
        out[t] = float(np.abs(a - b).max() / (scale or 1.0)) if b.size else 0.0
    return out


def worst(diffs: dict[str, float]) -> tuple[str, float]:
    name = max(diffs, key=diffs.get)
    return name, diffs[name]
