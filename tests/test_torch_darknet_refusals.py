"""What the torch backend refuses on Darknet graphs: training as a whole, and the types and
settings the NumPy engine refuses, each by name in one line before anything runs."""
from __future__ import annotations

import numpy as np
import pytest

from assets import FIXTURES, need_module

torch = need_module("torch")

import caffe_surgeon as cs  # noqa: E402
from caffe_surgeon.training.module import CaffeModule, build_module  # noqa: E402

FASHION = FIXTURES / "fashion"


def _fashion():
    return cs.load(str(FASHION / "fashion.cfg"), str(FASHION / "fashion.weights"))


def _one_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


def test_a_darknet_module_starts_in_eval_mode_and_runs():
    m = CaffeModule(_fashion())
    assert not m.training and not any(s.training for s in m.modules())
    with torch.no_grad():
        out = m({"data": np.load(FASHION / "sample.npy")})
    assert out.blobs["softmax_13"].shape == (4, 10, 1, 1)
    assert m.eval() is m


def test_building_a_darknet_module_in_train_mode_is_refused_in_one_line():
    with pytest.raises(cs.ModelError) as e:
        build_module(_fashion(), "TRAIN")
    _one_line(e, "fashion.cfg", "darknet models cannot be trained yet", "detector finetune")
    assert not build_module(_fashion(), "TEST").training


def test_train_on_a_darknet_module_is_refused_and_leaves_it_in_eval_mode():
    m = CaffeModule(_fashion())
    with pytest.raises(cs.ModelError) as e:
        m.train()
    _one_line(e, "darknet models cannot be trained yet", "burn_in")
    assert not m.training and m.train(False) is m


@pytest.mark.parametrize("section", ["rnn", "gru", "Gaussian_yolo", "iseg"])
def test_types_the_engine_refuses_are_refused_with_its_reason(section):
    from caffe_surgeon.engine.ops import refused
    from caffe_surgeon.training.torch_ops import REFUSED, tables
    tables()
    assert REFUSED[("darknet", section)] == refused("darknet")[section]


def test_every_type_the_engine_runs_has_a_torch_forward_and_no_other():
    from caffe_surgeon.engine import ops
    from caffe_surgeon.training import torch_ops
    engine = {t for f, t in ops.tables()[0] if f == "darknet"}
    ours = {t for f, t in torch_ops.tables()[0] if f == "darknet"}
    assert ours == engine


def test_the_activation_tables_name_the_same_functions():
    from caffe_surgeon.engine.darknet_activations import ACTIVATIONS as ENGINE
    from caffe_surgeon.training.torch_darknet_activations import ACTIVATIONS
    assert set(ACTIVATIONS) == set(ENGINE)


def _graph(tmp_path, body: str):
    cfg = tmp_path / "t.cfg"
    cfg.write_text("[net]\nheight=4\nwidth=4\nchannels=2\n" + body)
    return cs.init(cs.load(str(cfg)), seed=0)


@pytest.mark.parametrize("body, needles", [
    ("[convolutional]\nfilters=2\nsize=1\nactivation=leeky\n",
     ["[convolutional] cannot be trained", "unknown activation 'leeky'", "silently use relu"]),
    ("[convolutional]\nfilters=2\nsize=1\nxnor=1\n", ["xnor=1"]),
    ("[softmax]\ntree=data/9k.tree\n", ["[softmax]", "tree="]),
])
def test_settings_the_engine_refuses_are_refused_at_build_time(tmp_path, body, needles):
    g = _graph(tmp_path, body)
    with pytest.raises(cs.ModelError) as e:
        CaffeModule(g)
    _one_line(e, f"layer '{g.layers[0].name}'", *needles)
