"""What the Caffe ops work out once per layer (convolution geometry, a Reshape's shape) is
worked out again when the layer's params are edited in place between runs of one Executor."""
from __future__ import annotations

import numpy as np

import caffe_surgeon as cs
from caffe_surgeon.engine import Executor


def _net(tmp_path):
    proto = tmp_path / "n.prototxt"
    proto.write_text('name: "n" input: "data" input_shape { dim: 1 dim: 2 dim: 6 dim: 6 }\n'
                     'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                     'convolution_param { num_output: 3 kernel_size: 3 pad: 1 stride: 1 } }\n'
                     'layer { name: "f" type: "Reshape" bottom: "c" top: "f" '
                     'reshape_param { shape { dim: 0 dim: -1 dim: 1 dim: 1 } } }\n')
    g = cs.load(proto)
    rng = np.random.default_rng(0)
    g.layer("c").weights = {"weight": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
                            "bias": rng.standard_normal(3).astype(np.float32)}
    return g, rng.standard_normal((1, 2, 6, 6)).astype(np.float32)


def test_reshape_follows_its_edited_shape(tmp_path):
    g, x = _net(tmp_path)
    ex = Executor(g)
    assert ex.run({"data": x})["f"].shape == (1, 108, 1, 1)
    assert ex.run({"data": x})["f"].shape == (1, 108, 1, 1)  # from the cache
    g.layer("f").params["reshape_param"]["shape"]["dim"] = [0, 3, -1, 1]
    again = ex.run({"data": x})["f"]
    assert again.shape == (1, 3, 36, 1)
    np.testing.assert_array_equal(again.reshape(-1), Executor(g).run({"data": x})["f"].reshape(-1))


def test_convolution_follows_its_edited_stride(tmp_path):
    g, x = _net(tmp_path)
    g.layer("f").params["reshape_param"]["shape"]["dim"] = [0, 0, 0, 0]
    ex = Executor(g, check_weights=False)
    assert ex.run({"data": x})["f"].shape == (1, 3, 6, 6)
    g.layer("c").params["convolution_param"]["stride"] = [2]
    got = ex.run({"data": x})["f"]
    assert got.shape == (1, 3, 3, 3)
    np.testing.assert_array_equal(got, Executor(g).run({"data": x})["f"])


def test_convolution_plan_is_kept_and_follows_replaced_arrays_and_input_sizes(tmp_path):
    g, x = _net(tmp_path)
    g.layer("f").params["reshape_param"]["shape"]["dim"] = [0, 0, 0, 0]
    ex = Executor(g)
    first = ex.run({"data": x})["f"]
    plan = ex.ctx.cache[("conv_plan", "c", 0)]
    np.testing.assert_array_equal(ex.run({"data": x})["f"], first)
    assert ex.ctx.cache[("conv_plan", "c", 0)] is plan  # nothing chosen again
    rng = np.random.default_rng(1)
    layer = g.layer("c")
    for name in ("weight", "bias"):  # a replaced array (pruning, finetune) is planned anew
        layer.weights[name] = rng.standard_normal(layer.weights[name].shape).astype(np.float32)
        np.testing.assert_array_equal(ex.run({"data": x})["f"], Executor(g).run({"data": x})["f"])
    batch = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)  # another input size
    got = ex.run({"data": batch})["f"]
    assert got.shape == (3, 3, 6, 6)
    np.testing.assert_array_equal(got, Executor(g).run({"data": batch})["f"])
