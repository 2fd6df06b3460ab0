"""Train mode follows Caffe: BatchNorm's batch statistics and blob update, Dropout's scaling,
the module's parameters, buffers and write-back.

Expected values are worked out here from the formulas of BVLC ``batch_norm_layer.cpp`` and
``dropout_layer.cpp`` on inputs small enough to check by hand, never by calling the module's
own helpers.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from assets import FIXTURES, need_module

torch = need_module("torch")

import caffe_surgeon as cs  # noqa: E402
from caffe_surgeon.training.module import CaffeModule  # noqa: E402

# x: N=2, C=2, H=1, W=2 -> m = count / channels = 4 values per channel
X = np.array([[[[1.0, 3.0]], [[0.0, 2.0]]],
              [[[5.0, 7.0]], [[4.0, -2.0]]]], np.float32)
# per channel: c0 = {1, 3, 5, 7}: mean 4, biased var 5; c1 = {0, 2, 4, -2}: mean 1, biased var 5


def _bn_graph(params=None, weights=None, tops=("y",)):
    layer = cs.Layer("bn", "BatchNorm", ["x"], list(tops), params or {}, weights or {
        "mean": np.array([0.5, -1.0], np.float32), "variance": np.array([2.0, 4.0], np.float32),
        "scale_factor": np.array([2.0], np.float32)})
    return cs.Graph("caffe", name="bn", layers=[layer], inputs={"x": (2, 2, 1, 2)})


def test_batchnorm_in_train_mode_normalises_with_batch_statistics_and_biased_variance():
    m = CaffeModule(_bn_graph({"batch_norm_param": {"eps": 1e-5}})).train()
    y = m({"x": X}).blobs["y"].detach().numpy()
    mean = np.array([4.0, 1.0]).reshape(1, 2, 1, 1)
    expected = (X - mean) / np.sqrt(5.0 + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_batchnorm_train_step_updates_the_stored_blobs_as_caffe_does():
    maf = 0.9
    g = _bn_graph({"batch_norm_param": {"moving_average_fraction": maf}})
    m = CaffeModule(g).train()
    m({"x": X})
    out = m.write_back(g).layer("bn").weights
    # s <- s * maf + 1; mean <- maf * mean + batch mean; var <- maf * var + m/(m-1) * biased var
    np.testing.assert_allclose(out["scale_factor"], [2.0 * 0.9 + 1], rtol=1e-6)
    np.testing.assert_allclose(out["mean"], [0.9 * 0.5 + 4.0, 0.9 * -1.0 + 1.0], rtol=1e-6)
    np.testing.assert_allclose(out["variance"], [0.9 * 2.0 + 4 / 3 * 5.0, 0.9 * 4.0 + 4 / 3 * 5.0],
                               rtol=1e-6)
    m({"x": X})  # a second step compounds: s = 2.8 * 0.9 + 1
    np.testing.assert_allclose(m.write_back(g).layer("bn").weights["scale_factor"], [3.52], rtol=1e-6)


def test_batchnorm_in_eval_mode_and_with_global_stats_reads_the_stored_blobs_and_leaves_them():
    for params, train in (({}, False), ({"batch_norm_param": {"use_global_stats": True}}, True)):
        g = _bn_graph(params)
        m = CaffeModule(g).train(train)
        y = m({"x": X}).blobs["y"].detach().numpy()
        # stored mean / factor = [0.25, -0.5], variance / factor = [1, 2]
        mean = np.array([0.25, -0.5]).reshape(1, 2, 1, 1)
        var = np.array([1.0, 2.0]).reshape(1, 2, 1, 1)
        np.testing.assert_allclose(y, (X - mean) / np.sqrt(var + 1e-5), rtol=1e-6)
        assert m.write_back(g).layer("bn").weights["scale_factor"][0] == 2.0


def test_batchnorm_gradient_is_caffes_full_batch_derivative():
    """BVLC's Backward_cpu: (dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps)."""
    m = CaffeModule(_bn_graph()).train()
    x = torch.tensor(X, requires_grad=True)
    dy = torch.tensor(np.arange(8, dtype=np.float32).reshape(X.shape) - 3.0)
    y = m({"x": x}).blobs["y"]
    (y * dy).sum().backward()
    yn, g = y.detach().numpy(), dy.numpy()
    axes = (0, 2, 3)
    expected = (g - g.mean(axis=axes, keepdims=True)
                - (g * yn).mean(axis=axes, keepdims=True) * yn) / np.sqrt(5.0 + 1e-5)
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_xilinx_batchnorm_trains_its_scale_and_bias_and_updates_its_statistics():
    """caffe-xilinx batch_norm_layer.cpp: the first TRAIN pass copies the batch statistics
    (biased variance, stored undivided); later passes average them in with weight 1 - maf."""
    weights = {"scale": np.array([2.0, 0.5], np.float32), "bias": np.array([1.0, 0.0], np.float32),
               "mean": np.zeros(2, np.float32), "variance": np.ones(2, np.float32),
               "counter": np.zeros(1, np.float32)}
    g = _bn_graph({"batch_norm_param": {"moving_average_fraction": 0.5}}, weights)
    m = CaffeModule(g).train()
    y = m({"x": X}).blobs["y"].detach().numpy()
    mean = np.array([4.0, 1.0]).reshape(1, 2, 1, 1)
    expected = (X - mean) / np.sqrt(5.0 + 1e-5) * np.array([2.0, 0.5]).reshape(1, 2, 1, 1) \
        + np.array([1.0, 0.0]).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    assert [(p.blob_name, p.blob_index) for p in m.caffe_params()] == [("scale", 0), ("bias", 1)]
    out = m.write_back(g).layer("bn").weights
    np.testing.assert_allclose(out["counter"], [1.0])
    np.testing.assert_allclose(out["mean"], [4.0, 1.0])  # copied, not averaged
    np.testing.assert_allclose(out["variance"], [5.0, 5.0], rtol=1e-6)  # biased, undivided
    m({"x": X + 2.0})  # second pass: 0.5 * stored + 0.5 * batch
    out = m.write_back(g).layer("bn").weights
    np.testing.assert_allclose(out["counter"], [2.0])
    np.testing.assert_allclose(out["mean"], [5.0, 2.0])
    np.testing.assert_allclose(out["variance"], [5.0, 5.0], rtol=1e-6)
    # the engine reads what training stored: eval mode normalises with it
    y_eval = m.eval()({"x": X}).blobs["y"].detach().numpy()
    want = (X - np.array([5.0, 2.0]).reshape(1, 2, 1, 1)) / np.sqrt(5.0 + 1e-5) \
        * np.array([2.0, 0.5]).reshape(1, 2, 1, 1) + np.array([1.0, 0.0]).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(y_eval, want, rtol=1e-5, atol=1e-5)


def test_xilinx_batchnorm_clips_the_batch_variance_after_200_passes():
    weights = {"scale": np.ones(2, np.float32), "bias": np.zeros(2, np.float32),
               "mean": np.zeros(2, np.float32), "variance": np.array([0.1, 0.1], np.float32),
               "counter": np.array([200.0], np.float32)}
    g = _bn_graph({"batch_norm_param": {"moving_average_fraction": 0.5}}, weights)
    m = CaffeModule(g).train()
    y = m({"x": X}).blobs["y"].detach().numpy()
    clipped = 4.0 * (0.1 + 0.1)  # 4 x (mean |stored| + stored), far below the batch's 5
    expected = (X - np.array([4.0, 1.0]).reshape(1, 2, 1, 1)) / np.sqrt(clipped + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    out = m.write_back(g).layer("bn").weights
    np.testing.assert_allclose(out["counter"], [201.0])
    np.testing.assert_allclose(out["variance"], [0.5 * 0.1 + 0.5 * clipped] * 2, rtol=1e-6)


def _dropout_graph(params):
    layer = cs.Layer("drop", "Dropout", ["x"], ["x"], params)
    return cs.Graph("caffe", name="d", layers=[layer], inputs={"x": (1, 1, 100, 100)})


def test_dropout_scales_the_kept_values_by_one_over_keep_probability_at_train_time_only():
    x = np.full((1, 1, 100, 100), 2.0, np.float32)
    m = CaffeModule(_dropout_graph({"dropout_param": {"dropout_ratio": 0.75}}))
    torch.manual_seed(0)
    y = m.train()({"x": x}).blobs["x"].numpy()
    assert set(np.unique(y)) <= {0.0, 8.0}  # 2 / (1 - 0.75)
    assert abs((y == 8.0).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(m.eval()({"x": x}).blobs["x"].numpy(), x)


def test_dropout_with_scale_train_false_scales_at_test_time_instead():
    x = np.full((1, 1, 100, 100), 2.0, np.float32)
    m = CaffeModule(_dropout_graph({"dropout_param": {"dropout_ratio": 0.5, "scale_train": False}}))
    assert set(np.unique(m.train()({"x": x}).blobs["x"].numpy())) <= {0.0, 2.0}
    np.testing.assert_allclose(m.eval()({"x": x}).blobs["x"].numpy(), 1.0)


def test_caffe_params_follow_net_and_blob_order_with_lr_and_decay_mults_and_no_statistics():
    g = cs.load(str(FIXTURES / "fashion" / "fashion_train_val.prototxt"),
                str(FIXTURES / "fashion" / "fashion.caffemodel"), phase="TRAIN")
    m = CaffeModule(g)
    listed = [(p.layer, p.blob_index, p.blob_name) for p in m.caffe_params()]
    expected = [(l.name, i, n) for l in g.layers for i, n in enumerate(l.weights)
                if l.type != "BatchNorm"]
    assert listed == expected
    assert all(isinstance(p.param, torch.nn.Parameter) for p in m.caffe_params())
    bn_buffers = {n for n, _ in m.named_buffers()}
    assert len(bn_buffers) == 3 * sum(l.type == "BatchNorm" for l in g.layers)
    # fc: param { lr_mult: 1 decay_mult: 1 }  param { lr_mult: 2 decay_mult: 0 }
    assert [(p.lr_mult, p.decay_mult) for p in m.caffe_params() if p.layer == "fc"] == \
        [(1.0, 1.0), (2.0, 0.0)]


def test_shared_params_are_one_tensor_listed_once_and_lr_mult_zero_needs_no_gradient():
    w = np.ones((2, 2), np.float32)
    layers = [cs.Layer("a", "InnerProduct", ["x"], ["a"], {
                  "inner_product_param": {"num_output": 2, "bias_term": False},
                  "param": [{"name": "shared", "lr_mult": 2.0, "decay_mult": 0.0}]}, {"weight": w}),
              cs.Layer("b", "InnerProduct", ["a"], ["b"], {
                  "inner_product_param": {"num_output": 2, "bias_term": False},
                  "param": [{"name": "shared"}]}, {"weight": w}),
              cs.Layer("c", "InnerProduct", ["b"], ["c"], {
                  "inner_product_param": {"num_output": 2, "bias_term": False},
                  "param": [{"lr_mult": 0}]}, {"weight": w})]
    m = CaffeModule(cs.Graph("caffe", name="s", layers=layers, inputs={"x": (1, 2)}))
    listed = m.caffe_params()
    assert [(p.layer, p.lr_mult, p.decay_mult) for p in listed] == [("a", 2.0, 0.0), ("c", 0.0, 1.0)]
    assert m.arrays[0].weight is m.arrays[1].weight
    assert not listed[1].param.requires_grad


def test_write_back_gives_a_graph_save_writes_and_reads_back_equal(tmp_path):
    fashion = FIXTURES / "fashion"
    g = cs.load(str(fashion / "fashion_deploy.prototxt"), str(fashion / "fashion.caffemodel"))
    m = CaffeModule(g)
    with torch.no_grad():
        m.caffe_params()[0].param.add_(1.0)
    out = m.write_back(g)
    assert out is not g and g.layers[1].weights["weight"] is not out.layers[1].weights["weight"]
    cs.save(out, str(tmp_path / "n.prototxt"), str(tmp_path / "n.caffemodel"))
    back = cs.load(str(tmp_path / "n.prototxt"), str(tmp_path / "n.caffemodel"))
    first = m.caffe_params()[0]
    np.testing.assert_array_equal(back.layer(first.layer).weights[first.blob_name],
                                  g.layer(first.layer).weights[first.blob_name] + 1.0)
    assert all(a.dtype == np.float32 for l in back.layers for a in l.weights.values())


def test_write_back_refuses_a_graph_of_another_shape():
    fashion = FIXTURES / "fashion"
    g = cs.load(str(fashion / "fashion_deploy.prototxt"), str(fashion / "fashion.caffemodel"))
    m = CaffeModule(g)
    stranger = dataclasses.replace(g.layers[1], name="not_in_the_module")
    with pytest.raises(cs.ModelError, match="no layer 'not_in_the_module'"):
        m.write_back(cs.Graph("caffe", name="x", layers=[g.layers[0], stranger], inputs=g.inputs))
    conv = next(l for l in g.layers if "weight" in l.weights)
    smaller = dataclasses.replace(conv, weights={k: v[:1] for k, v in conv.weights.items()})
    with pytest.raises(cs.ModelError, match="array weight is"):
        m.write_back(cs.Graph("caffe", name="x", layers=[smaller], inputs=g.inputs))


def test_write_back_gives_the_test_phase_the_trained_arrays():
    """Finetuning trains the TRAIN phase; the TEST phase (other data and metric layers)
    takes the arrays by layer name."""
    fashion = FIXTURES / "fashion"
    train = cs.load(str(fashion / "fashion_train_val.prototxt"), str(fashion / "fashion.caffemodel"),
                    phase="TRAIN")
    test = cs.load(str(fashion / "fashion_train_val.prototxt"), str(fashion / "fashion.caffemodel"),
                   phase="TEST")
    m = CaffeModule(train)
    with torch.no_grad():
        for p in m.caffe_params():
            p.param.add_(1.0)
    out = m.write_back(test)
    assert [l.name for l in out.layers] == [l.name for l in test.layers]
    for layer in test.layers:
        for k, v in layer.weights.items():
            trained = out.layer(layer.name).weights[k]
            if k in ("mean", "variance", "scale_factor"):
                np.testing.assert_array_equal(trained, v)
            else:
                np.testing.assert_allclose(trained, v + 1.0, rtol=1e-6)


def _conv_bn_scale_graph(bn_params, scale_bias=True):
    rng = np.random.default_rng(3)
    conv = cs.Layer("conv", "Convolution", ["x"], ["c"], {"convolution_param": {
        "num_output": 3, "kernel_size": 1, "bias_term": False}},
        {"weight": rng.standard_normal((3, 2, 1, 1)).astype(np.float32)})
    bn = cs.Layer("bn", "BatchNorm", ["c"], ["c"], bn_params, {
        "mean": np.array([0.5, -1.0, 2.0], np.float32), "variance": np.array([2.0, 4.0, 1.0], np.float32),
        "scale_factor": np.array([2.0], np.float32)})
    sw = {"scale": np.array([1.5, -0.5, 2.0], np.float32)}
    if scale_bias:
        sw["bias"] = np.array([0.1, 0.2, -0.3], np.float32)
    scale = cs.Layer("scale", "Scale", ["c"], ["c"], {"scale_param": {"bias_term": scale_bias}}, sw)
    return cs.Graph("caffe", name="cbs", layers=[conv, bn, scale], inputs={"x": (2, 2, 1, 2)})


@pytest.mark.parametrize("bn_params,train", [({}, True), ({}, False),
                                             ({"batch_norm_param": {"use_global_stats": True}}, True)])
def test_batchnorm_fused_with_its_scale_gives_the_outputs_gradients_and_blobs_of_the_two_layers(
        bn_params, train):
    g = _conv_bn_scale_graph(bn_params)
    fused, plain = CaffeModule(g).train(train), CaffeModule(g).train(train)
    plain.fused = {}  # the two layers one after the other, as written
    assert list(fused.fused) == [1], "the in-place BatchNorm + Scale pair runs as one forward"
    results = []
    for m in (fused, plain):
        y = m({"x": X}).blobs["c"]
        (y * torch.arange(1.0, 13.0).reshape(y.shape)).sum().backward()
        results.append((y.detach().numpy(), [p.param.grad.numpy() for p in m.caffe_params()],
                        m.write_back(g).layer("bn").weights))
    (y1, g1, bn1), (y2, g2, bn2) = results
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for name in bn1:
        np.testing.assert_allclose(bn1[name], bn2[name], rtol=1e-6)


def test_a_scale_without_bias_or_a_pair_not_in_place_is_not_fused():
    assert CaffeModule(_conv_bn_scale_graph({}, scale_bias=False)).fused == {}
    g = _conv_bn_scale_graph({})
    g.layers[2] = dataclasses.replace(g.layers[2], tops=["s"])  # the BN output stays readable
    assert CaffeModule(g).fused == {}
