"""sparse_from_dense: a trained dense pruned model back into the original shapes, so that
finetune snapshots pair with the config's model (the vendor's prune -> finetune -> prune)."""
from __future__ import annotations

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.engine import Executor
from caffe_surgeon.errors import ModelError
from caffe_surgeon.pruning import analyse, apply, copy_graph, make_plan
from caffe_surgeon.pruning.expand import sparse_from_dense
from caffe_surgeon.pruning.transform import transform

from pruning_checks import ROOT, TINY, feeds, rel

FASHION = ROOT / "fixtures/fashion"
MODELS = {
    "fashion": (FASHION / "fashion_train_val.prototxt", FASHION / "fashion.caffemodel"),
    "fashion_darknet": (FASHION / "fashion.cfg", FASHION / "fashion.weights"),
    "tinynet": TINY,
}


def _load(key):
    return cs.load(*MODELS[key])


def _same(a, b):
    assert [l.name for l in a.layers] == [l.name for l in b.layers]
    for la, lb in zip(a.layers, b.layers):
        assert la.same_as(lb), la.name


@pytest.mark.parametrize("key,ratio", [("fashion", 0.3), ("fashion", 0.5), ("fashion", 0.7),
                                       ("fashion_darknet", 0.5), ("tinynet", 0.5)])
@pytest.mark.parametrize("keep_layout", [True, False])
def test_expanding_the_dense_model_gives_the_sparse_model_bit_for_bit(key, ratio, keep_layout):
    g = _load(key)
    a = analyse(g)
    plan = make_plan(a, ratio=ratio)
    dense = apply(g, plan, "dense", analysis=a, keep_layout=keep_layout)
    sparse = apply(g, plan, "sparse", analysis=a, keep_layout=keep_layout)
    _same(sparse_from_dense(g, plan, dense, keep_layout=keep_layout), sparse)


def _perturbed(dense, seed=0):
    """Simulated training: every array moves (kept channels only exist in the dense model)."""
    rng = np.random.default_rng(seed)
    out = copy_graph(dense)
    for layer in out.layers:
        for name, w in layer.weights.items():
            if name == "scale_factor":
                continue  # BVLC BatchNorm's factor stays 1 in our tests
            bump = rng.uniform(0.9, 1.1, w.shape).astype(np.float32)
            layer.weights[name] = (w * bump + np.float32(0.01)).astype(np.float32)
    return out


@pytest.mark.parametrize("key", ["fashion", "fashion_darknet", "tinynet"])
def test_transform_of_the_expanded_trained_model_gives_the_trained_dense_weights(key):
    g = _load(key)
    a = analyse(g)
    plan = make_plan(a, ratio=0.5)
    trained = _perturbed(apply(g, plan, "dense", analysis=a))
    sparse = sparse_from_dense(g, plan, trained, analysis=a)
    for lo, ls in zip(g.layers, sparse.layers):  # original shapes
        assert {k: v.shape for k, v in lo.weights.items()} == \
            {k: v.shape for k, v in ls.weights.items()}, lo.name
    back = transform(sparse)
    assert not back.mixed
    for lt, lb in zip(trained.layers, back.dense.layers):
        assert list(lt.weights) == list(lb.weights), lt.name
        for name in lt.weights:
            np.testing.assert_array_equal(lb.weights[name], lt.weights[name],
                                          err_msg=f"{lt.name}.{name}")
    x = feeds(trained)
    outs = list(trained.outputs)
    od, osp = Executor(trained).run(x, outs), Executor(sparse).run(x, outs)
    for k in od:
        assert rel(osp[k], od[k]) <= 1e-5, k


def test_a_dense_model_that_does_not_fit_the_plan_is_a_one_line_error_naming_both_shapes():
    g = _load("fashion")
    a = analyse(g)
    dense = apply(g, make_plan(a, ratio=0.3), "dense", analysis=a)
    with pytest.raises(ModelError) as err:
        sparse_from_dense(g, make_plan(a, ratio=0.5), dense, analysis=a)
    msg = str(err.value)
    assert "\n" not in msg and "layer '" in msg and msg.count("(") >= 2, msg
    unpruned = copy_graph(g)
    unpruned.layers = [l for l in unpruned.layers if l.name != "conv1"]
    with pytest.raises(ModelError, match="no layer 'conv1'"):
        sparse_from_dense(g, make_plan(a, ratio=0.3), unpruned, analysis=a)
