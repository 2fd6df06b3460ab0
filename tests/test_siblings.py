"""Sibling convolutions (one input, one geometry) run as one GEMM with stacked weights.

Each member's output must be the convolution of its own weights (checked against the
slow reference twin and against OpenCV), in every way a run can cut a group: partial
``only`` sets, ``start`` or ``stop`` between members, a member's value requested,
weights replaced between runs, params edited so that the group no longer stacks.
"""
from __future__ import annotations

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.engine import Executor
from caffe_surgeon.engine.kernels import reference as ref

NET = """name: "heads"
input: "data"
input_shape { dim: 1 dim: 24 dim: 17 dim: 19 }
layer { name: "trunk" type: "Convolution" bottom: "data" top: "feat"
        convolution_param { num_output: 32 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "loc" type: "Convolution" bottom: "feat" top: "loc"
        convolution_param { num_output: 12 kernel_size: 3 pad: 1 } }
layer { name: "other" type: "Convolution" bottom: "feat" top: "other"
        convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "conf" type: "Convolution" bottom: "feat" top: "conf"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "grouped" type: "Convolution" bottom: "feat" top: "grouped"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "prior" type: "Convolution" bottom: "feat" top: "prior"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "cat" type: "Concat" bottom: "loc" bottom: "conf" bottom: "prior" top: "heads" }
"""

OUTS = ["heads", "other", "grouped"]


@pytest.fixture()
def net(tmp_path):
    p = tmp_path / "heads.prototxt"
    p.write_text(NET)
    return cs.init(cs.load(p), seed=3)


def _by_reference(g, x):
    w = {l.name: l.weights for l in g.layers}
    feat = np.maximum(ref.conv2d(x, w["trunk"]["weight"], w["trunk"]["bias"], (1, 1), (1, 1), (1, 1), 1), 0)
    conv = lambda n, k, p, grp=1: ref.conv2d(feat, w[n]["weight"], w[n]["bias"], (1, 1), (p, p), (1, 1), grp)
    return {"heads": np.concatenate([conv("loc", 3, 1), conv("conf", 3, 1), conv("prior", 3, 1)], 1),
            "other": conv("other", 1, 0), "grouped": conv("grouped", 3, 1, 2), "feat": feat}


def _x(n=2):
    return np.random.default_rng(1).standard_normal((n, 24, 17, 19)).astype(np.float32)


def test_siblings_are_planned_by_input_and_geometry(net):
    ex = Executor(net)
    names = {net.layers[k].name: [net.layers[j].name for j in g] for k, g in ex.groups.items()}
    # the 1x1 and the grouped convolution read the same value but do not stack
    assert names == {"loc": ["loc", "conf", "prior"]}


def test_stacked_members_equal_their_own_convolutions(net):
    x = _x()
    got = Executor(net).run({"data": x}, outputs=OUTS)
    want = _by_reference(net, x)
    for k in OUTS:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)
    apart = Executor(net)
    apart.groups = {}
    sep = apart.run({"data": x}, outputs=OUTS)
    for k in OUTS:
        np.testing.assert_allclose(got[k], sep[k], rtol=1e-6, atol=1e-6)


def test_runs_that_cut_a_group_give_the_same_values(net):
    x = _x()
    ex = Executor(net)
    full = ex.run({"data": x}, outputs=OUTS, layer_outputs=["conf"])
    want = _by_reference(net, x)
    np.testing.assert_allclose(full["conf:conf"], want["heads"][:, 12:18], rtol=1e-5, atol=1e-5)
    idx = {l.name: i for i, l in enumerate(net.layers)}
    # a prefix that stops between members, then resumes from it
    cache = ex.prefix({"data": x}, idx["conf"])
    resumed = ex.run(start=idx["conf"], cache=cache, outputs=["heads", "grouped"])
    for k in ("heads", "grouped"):
        np.testing.assert_allclose(resumed[k], full[k], rtol=1e-6, atol=1e-6)
    # only some members re-run, the others' values from the cache
    cache = ex.prefix({"data": x}, len(net.layers), keep=[(idx["loc"], "loc"), (idx["prior"], "prior"),
                                                           (idx["conf"], "conf"), (idx["relu"], "feat"),
                                                           (idx["other"], "other"),
                                                           (idx["grouped"], "grouped")])
    part = ex.run(start=idx["loc"], cache=cache, outputs=["heads"], only={idx["conf"], idx["cat"]})
    for k in ("heads",):
        np.testing.assert_allclose(part[k], full[k], rtol=1e-6, atol=1e-6)


def test_replaced_weights_and_edited_params_are_followed(net):
    x = _x(1)
    ex = Executor(net)
    ex.run({"data": x}, outputs=OUTS)
    conf = net.layer("conf")
    conf.weights["weight"] = conf.weights["weight"] * np.float32(-2)
    got = ex.run({"data": x}, outputs=OUTS)
    np.testing.assert_allclose(got["heads"], _by_reference(net, x)["heads"], rtol=1e-5, atol=1e-5)
    # conf made 1x1 after the plan: this executor's group no longer stacks, so its members run
    # one by one
    conf.params["convolution_param"].update(kernel_size=1, pad=0)
    conf.weights["weight"] = conf.weights["weight"][:, :, 1:2, 1:2].copy()
    got = ex.run({"data": x}, outputs=OUTS)
    f = np.maximum(ref.conv2d(x, net.layer("trunk").weights["weight"], net.layer("trunk").weights["bias"],
                              (1, 1), (1, 1), (1, 1), 1), 0)
    one = lambda l, p: ref.conv2d(f, l.weights["weight"], l.weights["bias"], (1, 1), (p, p), (1, 1), 1)
    np.testing.assert_allclose(got["heads"], np.concatenate(
        [one(net.layer("loc"), 1), one(conf, 0), one(net.layer("prior"), 1)], 1), rtol=1e-5, atol=1e-5)
    conf.params["convolution_param"].update(kernel_size=3, pad=1)
    conf.weights["weight"] = np.repeat(np.repeat(conf.weights["weight"], 3, 2), 3, 3)
    # one member edited to a 1x1 convolution (Concat then takes the other two only)
    prior = net.layer("prior")
    prior.params["convolution_param"]["pad"] = 0
    prior.weights["weight"] = prior.weights["weight"][:, :, :1, :1].copy()
    prior.params["convolution_param"]["kernel_size"] = 1
    cat = net.layer("cat")
    cat.bottoms = ["loc", "conf"]
    feat = np.maximum(ref.conv2d(
        x, net.layer("trunk").weights["weight"], net.layer("trunk").weights["bias"], (1, 1), (1, 1), (1, 1), 1), 0)
    ex2 = Executor(net)
    got = ex2.run({"data": x}, outputs=OUTS + ["prior"])
    own = lambda l, p: ref.conv2d(feat, l.weights["weight"], l.weights["bias"], (1, 1), (p, p), (1, 1), 1)
    np.testing.assert_allclose(got["prior"], own(prior, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["heads"], np.concatenate([own(net.layer("loc"), 1), own(conf, 1)], 1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["other"], own(net.layer("other"), 0), rtol=1e-5, atol=1e-5)
    # the edited member now stacks with the other 1x1 convolution instead
    assert {net.layers[k].name: [net.layers[j].name for j in g] for k, g in ex2.groups.items()} == \
        {"loc": ["loc", "conf"], "other": ["other", "prior"]}


def test_stacked_heads_match_opencv(net, tmp_path):
    cv2 = pytest.importorskip("cv2")
    proto, model = tmp_path / "h.prototxt", tmp_path / "h.caffemodel"
    cs.save(net, proto, model)
    x = _x(1)
    ours = Executor(cs.load(proto, model)).run({"data": x}, outputs=["heads"])["heads"]
    cvnet = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    cvnet.setInput(x, "data")
    theirs = cvnet.forward("cat")
    assert np.max(np.abs(ours - theirs)) <= 1e-4 * np.max(np.abs(theirs))
