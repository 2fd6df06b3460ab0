"""LASSO channel selection: the Numba solver against a slow twin, and selection behaviour."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.pruning import analyse, make_plan
from caffe_surgeon.pruning.lasso import LassoCriterion, lasso_cd

ROOT = Path(__file__).resolve().parents[1]
TINY = (ROOT / "fixtures/caffe/tinynet_deploy.prototxt", ROOT / "fixtures/caffe/tinynet.caffemodel")


def slow_lasso(gram, lam, iters=200):
    """Plain coordinate descent on (1-b)^T G (1-b) + lam |b|_1, recomputing everything."""
    b = np.ones(len(gram))
    for _ in range(iters):
        for j in range(len(b)):
            r = gram[j] @ (1 - b) + gram[j, j] * b[j]  # gradient part without b_j's own term
            z = r
            b[j] = np.sign(z) * max(abs(z) - lam / 2, 0) / gram[j, j]
    return b


@pytest.mark.parametrize("n,lam", [(5, 0.0), (8, 0.5), (12, 3.0), (20, 10.0)])
def test_numba_cd_matches_slow_twin(n, lam):
    rng = np.random.default_rng(n)
    z = rng.standard_normal((n, 3 * n))
    gram = z @ z.T
    np.testing.assert_allclose(lasso_cd(gram, lam, iters=400, tol=0), slow_lasso(gram, lam, 400),
                               rtol=1e-6, atol=1e-8)


def test_select_keeps_exactly_the_informative_channels():
    """Channels whose contributions are tiny get beta 0 first."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((6, 200))
    z[[1, 4]] *= 1e-3
    scores = LassoCriterion.select(z @ z.T, keep_n=4)
    assert set(np.argsort(scores)[:2]) == {1, 4}
    assert np.count_nonzero(scores) >= 4


def test_lasso_plan_on_tinynet_prefers_channels_the_consumer_uses():
    g = cs.load(*TINY)
    conv2b = g.layer("conv2b")
    w = conv2b.weights["weight"].copy()
    w[:, [0, 3, 5, 6]] *= 1e-4  # conv2b barely reads these outputs of conv2a
    conv2b.weights["weight"] = w
    a = analyse(g)
    calib = {"data": np.random.default_rng(1).standard_normal((6, 3, 32, 32)).astype(np.float32)}
    plan = make_plan(a, ratios={"conv2a": 0.25}, criterion=LassoCriterion(g, a, calib))
    gp = next(x for x in plan.groups if x.producers == ["conv2a"])
    assert plan.criterion == "lasso"
    assert sorted(set(range(16)) - set(gp.keep)) == [0, 3, 5, 6]
