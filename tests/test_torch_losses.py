"""Each Caffe loss's value and gradient, and Accuracy, against values worked out by hand
from the BVLC / Fast R-CNN formulas (float64 NumPy written out here, not the module's code)."""
from __future__ import annotations

import numpy as np
import pytest

from assets import need_module

torch = need_module("torch")

import caffe_surgeon as cs  # noqa: E402
from caffe_surgeon.training.module import CaffeModule  # noqa: E402

# scores N=2, C=3, H=1, W=2: outer 2, inner 2, four labels, the third ignored (255)
S = np.array([[[[1.0, 0.5]], [[2.0, -1.0]], [[0.0, 0.0]]],
              [[[-1.0, 3.0]], [[0.5, 0.5]], [[1.5, -2.0]]]], np.float32)
L = np.array([[[[2, 0]]], [[[255, 1]]]], np.float32)


def _run(layer_type, bottoms, params, feeds, tops=("loss",)):
    layer = cs.Layer("loss", layer_type, list(bottoms), list(tops), params)
    g = cs.Graph("caffe", name="t", inputs={k: tuple(v.shape) for k, v in feeds.items()},
                 layers=[layer])
    tensors = {k: torch.tensor(v, requires_grad=(k == bottoms[0])) for k, v in feeds.items()}
    out = CaffeModule(g).train()(tensors)
    out.loss.backward()
    return out, tensors[bottoms[0]].grad.numpy()


def _softmax_by_hand():
    rows = np.moveaxis(S.astype(np.float64), 1, -1).reshape(-1, 3)
    p = np.exp(rows) / np.exp(rows).sum(axis=1, keepdims=True)
    lab = L.reshape(-1).astype(int)
    keep = lab != 255
    nll = -np.log(p[np.arange(4)[keep], lab[keep]]).sum()
    grad = p.copy()
    grad[np.arange(4)[keep], lab[keep]] -= 1
    grad[~keep] = 0
    return nll, np.moveaxis(grad.reshape(2, 1, 2, 3), -1, 1)


@pytest.mark.parametrize("loss_param, norm", [
    ({}, 3.0),                                   # VALID by default: 3 kept labels
    ({"normalization": "VALID"}, 3.0),
    ({"normalization": "FULL"}, 4.0),            # outer x inner
    ({"normalization": "BATCH_SIZE"}, 2.0),      # outer
    ({"normalization": "NONE"}, 1.0),
    ({"normalize": False}, 2.0),                 # legacy: BATCH_SIZE
    ({"normalize": True}, 3.0),                  # legacy: VALID
])
def test_softmax_with_loss_value_and_gradient_for_each_normalization(loss_param, norm):
    params = {"loss_param": {"ignore_label": 255, **loss_param}}
    out, grad = _run("SoftmaxWithLoss", ["s", "l"], params, {"s": S, "l": L})
    nll, g = _softmax_by_hand()
    np.testing.assert_allclose(out.loss.item(), nll / norm, rtol=1e-6)
    np.testing.assert_allclose(grad, g / norm, rtol=1e-5, atol=1e-7)
    assert np.all(grad[1, :, 0, 0] == 0)  # the ignored position gets no gradient


def test_softmax_with_loss_weight_scales_value_and_gradient_and_prob_top_weighs_nothing():
    params = {"loss_param": {"ignore_label": 255}, "loss_weight": [0.5, 0.0]}
    out, grad = _run("SoftmaxWithLoss", ["s", "l"], params, {"s": S, "l": L}, tops=("loss", "prob"))
    nll, g = _softmax_by_hand()
    np.testing.assert_allclose(out.loss.item(), 0.5 * nll / 3, rtol=1e-6)
    np.testing.assert_allclose(grad, 0.5 * g / 3, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.blobs["prob"].detach().numpy().sum(axis=1), 1.0, rtol=1e-6)


def test_softmax_with_loss_names_a_label_outside_the_classes():
    bad = L.copy()
    bad[0, 0, 0, 0] = 7
    with pytest.raises(cs.ModelError, match=r"layer 'loss': SoftmaxWithLoss got label 7 for 3 classes"):
        _run("SoftmaxWithLoss", ["s", "l"], {}, {"s": S, "l": bad})


def test_sigmoid_cross_entropy_value_and_gradient_with_ignore_label():
    x = np.array([[2.0, -1.0, 0.0], [0.5, -3.0, 1.0]], np.float32)
    t = np.array([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]], np.float32)
    keep = t != -1
    x64 = x.astype(np.float64)
    per = np.log1p(np.exp(-np.abs(x64))) + np.maximum(x64, 0) - x64 * t
    for mode, norm in ((None, 2.0), ("VALID", 5.0), ("FULL", 6.0)):
        lp = {"ignore_label": -1, **({"normalization": mode} if mode else {})}
        out, grad = _run("SigmoidCrossEntropyLoss", ["x", "t"], {"loss_param": lp}, {"x": x, "t": t})
        np.testing.assert_allclose(out.loss.item(), per[keep].sum() / norm, rtol=1e-6)
        expected = np.where(keep, 1 / (1 + np.exp(-x64)) - t, 0.0) / norm
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_euclidean_loss_is_half_the_squared_distance_over_num_with_both_gradients():
    a = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)
    b = np.array([[0.0, 2.0], [1.0, 1.0]], np.float32)
    out, grad = _run("EuclideanLoss", ["a", "b"], {}, {"a": a, "b": b})
    np.testing.assert_allclose(out.loss.item(), (1 + 0 + 4 + 4) / 2 / 2, rtol=1e-6)
    np.testing.assert_allclose(grad, (a - b) / 2, rtol=1e-6)


def test_smooth_l1_with_sigma_and_inside_outside_weights():
    p = np.array([[0.1, 2.0, -0.3, 0.0]], np.float32)
    t = np.zeros((1, 4), np.float32)
    w_in = np.array([[1.0, 1.0, 2.0, 0.0]], np.float32)
    w_out = np.array([[1.0, 0.5, 1.0, 1.0]], np.float32)
    sigma = 3.0  # quadratic below |d| < 1/9
    out, grad = _run("SmoothL1Loss", ["p", "t", "wi", "wo"],
                     {"smooth_l1_loss_param": {"sigma": sigma}},
                     {"p": p, "t": t, "wi": w_in, "wo": w_out})
    d = np.array([0.1, 2.0, -0.6, 0.0])  # w_in (p - t)
    # 0.1 < 1/9: 0.5 * 9 * 0.01; 2.0: 2 - 0.5/9; 0.6: 0.6 - 0.5/9; 0: 0
    per = np.array([0.045, 2 - 0.5 / 9, 0.6 - 0.5 / 9, 0.0]) * w_out[0]
    np.testing.assert_allclose(out.loss.item(), per.sum(), rtol=1e-6)
    # f'(d) = 9 d (quadratic) or sign(d), times w_in and w_out
    fprime = np.array([9 * 0.1, 1.0, -1.0, 0.0])
    np.testing.assert_allclose(grad[0], fprime * w_in[0] * w_out[0], rtol=1e-5, atol=1e-7)


def test_accuracy_top_k_ignore_label_ties_and_per_class_top_without_gradient():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05]],
                      np.float32)
    labels = np.array([1, 1, 0, 2], np.float32)
    layer = cs.Layer("acc", "Accuracy", ["s", "l"], ["acc", "per"],
                     {"accuracy_param": {"top_k": 1, "ignore_label": 2}})
    g = cs.Graph("caffe", name="a", layers=[layer], inputs={"s": (4, 3), "l": (4,)})
    out = CaffeModule(g).train()({"s": scores, "l": labels})
    # kept: rows 0..2; row 0 hit; row 1 a tie with class 0 counts against (Caffe: >=); row 2 miss
    assert out.blobs["acc"].item() == pytest.approx(1 / 3)
    np.testing.assert_allclose(out.blobs["per"].numpy(), [0.0, 0.5, 0.0])
    assert not out.blobs["acc"].requires_grad and out.loss.item() == 0.0
    layer.params["accuracy_param"]["top_k"] = 2
    out = CaffeModule(g)({"s": scores, "l": labels})
    assert out.blobs["acc"].item() == pytest.approx(2 / 3)  # rows 0, 1 hit; row 2 has 2 above


def test_loss_weight_on_a_non_loss_top_adds_its_weighted_sum():
    w = np.eye(2, dtype=np.float32)
    layer = cs.Layer("ip", "InnerProduct", ["x"], ["y"], {
        "inner_product_param": {"num_output": 2, "bias_term": False}, "loss_weight": 0.5},
        {"weight": w})
    g = cs.Graph("caffe", name="w", layers=[layer], inputs={"x": (1, 2)})
    out = CaffeModule(g)({"x": np.array([[3.0, 4.0]], np.float32)})
    assert out.loss.item() == pytest.approx(3.5) and list(out.losses) == ["ip"]


def test_loss_weights_must_be_one_per_top():
    layer = cs.Layer("loss", "SoftmaxWithLoss", ["s", "l"], ["loss", "prob"],
                     {"loss_weight": [1.0, 0.0, 2.0]})
    g = cs.Graph("caffe", name="w", layers=[layer], inputs={"s": (2, 3, 1, 2), "l": (2, 1, 1, 2)})
    with pytest.raises(cs.ModelError, match=r"layer 'loss': 3 loss_weight value\(s\) for 2 top"):
        CaffeModule(g)
