"""What the trainer cannot train is refused by name, in one line, before anything runs."""
from __future__ import annotations

import numpy as np
import pytest

from assets import FIXTURES, need_module

torch = need_module("torch")

import caffe_surgeon as cs  # noqa: E402
from caffe_surgeon.training.module import CaffeModule  # noqa: E402


def _one_line_error(graph, *needles):
    with pytest.raises(cs.ModelError) as e:
        CaffeModule(graph)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def test_an_untrainable_layer_type_is_refused_by_layer_type_and_reason_at_build_time():
    layers = [cs.Layer("conv", "Convolution", ["x"], ["y"],
                       {"convolution_param": {"num_output": 2, "kernel_size": [1]}},
                       {"weight": np.ones((2, 3, 1, 1), np.float32), "bias": np.zeros(2, np.float32)}),
              cs.Layer("pair_loss", "ContrastiveLoss", ["y", "y", "y"], ["loss"], {})]
    g = cs.Graph("caffe", name="m", layers=layers, inputs={"x": (1, 3, 4, 4)})
    _one_line_error(g, "layer 'pair_loss'", "ContrastiveLoss cannot be trained", "siamese margin loss")


def test_an_untrainable_setting_is_refused_by_name():
    layer = cs.Layer("pool", "Pooling", ["x"], ["y"],
                     {"pooling_param": {"pool": "STOCHASTIC", "kernel_size": [2], "stride": [2]}})
    g = cs.Graph("caffe", name="p", layers=[layer], inputs={"x": (1, 1, 4, 4)})
    _one_line_error(g, "layer 'pool'", "Pooling cannot be trained", "STOCHASTIC")


def test_darknet_models_are_refused_training_until_darknet_training_lands():
    from caffe_surgeon.training.module import build_module
    g = cs.load(str(FIXTURES / "fashion" / "fashion.cfg"), str(FIXTURES / "fashion" / "fashion.weights"))
    with pytest.raises(cs.ModelError) as e:  # eval mode runs: test_torch_darknet*.py
        build_module(g, "TRAIN")
    assert "\n" not in str(e.value) and "detector finetune" in str(e.value)


def test_batchnorm_statistics_given_a_learning_rate_are_refused_as_caffe_does():
    layer = cs.Layer("bn", "BatchNorm", ["x"], ["x"], {"param": [{"lr_mult": 1}]},
                     {"mean": np.zeros(2, np.float32), "variance": np.ones(2, np.float32),
                      "scale_factor": np.ones(1, np.float32)})
    g = cs.Graph("caffe", name="b", layers=[layer], inputs={"x": (1, 2, 2, 2)})
    _one_line_error(g, "layer 'bn'", "lr_mult 1", "not learnable")


def test_missing_weights_and_bad_shapes_are_one_line_errors_naming_the_layer():
    conv = cs.Layer("conv", "Convolution", ["x"], ["y"],
                    {"convolution_param": {"num_output": 2, "kernel_size": [1]}})
    g = cs.Graph("caffe", name="c", layers=[conv], inputs={"x": (1, 3, 4, 4)})
    with pytest.raises(cs.ModelError, match=r"layer 'conv': this Convolution has no stored array 'weight'"):
        CaffeModule(g)({"x": np.zeros((1, 3, 4, 4), np.float32)})
    conv.weights = {"weight": np.ones((2, 3, 1, 1), np.float32)}
    with pytest.raises(cs.ModelError) as e:
        CaffeModule(g)({"x": np.zeros((1, 5, 4, 4), np.float32)})
    assert "layer 'conv': Convolution failed on inputs of shapes [(1, 5, 4, 4)]" in str(e.value)
    assert "\n" not in str(e.value)
