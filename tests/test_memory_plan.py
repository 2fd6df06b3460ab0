"""The engine knows a forward pass's peak memory before it runs, and refuses what cannot fit."""
from __future__ import annotations

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.cli.main import main
from caffe_surgeon.engine import Executor, memory_plan
from caffe_surgeon.errors import ModelError
from caffe_surgeon.layers.registry import infer_shapes

NET = """[net]
width={w}
height={w}
channels=3

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=2
size=1
stride=1
pad=0
activation=linear
"""


def _net(tmp_path, width=8):
    cfg = tmp_path / "net.cfg"
    cfg.write_text(NET.format(w=width))
    graph = cs.load(cfg)
    cs.init(graph, seed=1)
    return graph


def test_peak_is_the_largest_set_of_values_alive_at_once_counted_by_hand(tmp_path):
    graph = _net(tmp_path)
    plan = memory_plan.plan(graph, infer_shapes(graph))
    # conv0 holds its input (3x8x8) and its output (4x8x8); the input dies there.
    # maxpool: 4x8x8 + 4x4x4 = 320 floats; the 1x1 conv: 64 + 32. Peak at conv0: 448 floats.
    assert plan.activations == (3 * 64 + 4 * 64) * 4
    assert plan.peak_layer == "convolutional_0"
    # im2col for the 3x3 conv: (3 x 3 x 3) rows x (8 x 8) columns; the 1x1 conv needs none.
    assert plan.scratch == 27 * 64 * 4 and plan.scratch_layer == "convolutional_0"
    assert plan.weights == sum(a.nbytes for l in graph.layers for a in l.weights.values())


def test_a_batch_multiplies_the_activations_not_the_weights(tmp_path):
    graph = _net(tmp_path)
    one = memory_plan.plan(graph, infer_shapes(graph, batch=1))
    eight = memory_plan.plan(graph, infer_shapes(graph, batch=8))
    assert eight.activations == 8 * one.activations and eight.weights == one.weights


def test_a_plan_over_the_available_memory_is_refused_with_its_figures(tmp_path):
    graph = _net(tmp_path)
    shapes = infer_shapes(graph)
    need = memory_plan.plan(graph, shapes).total
    assert memory_plan.check_fits(graph, shapes, available=need).total == need
    with pytest.raises(ModelError) as e:
        memory_plan.check_fits(graph, shapes, available=need - 1)
    text = str(e.value)
    assert "convolutional_0" in text and "available" in text and "net.cfg" in text


def test_the_executor_refuses_a_fed_size_that_cannot_fit_before_computing(tmp_path, monkeypatch):
    graph = _net(tmp_path)
    graph.inputs["data"] = (1, 3, 64, 64)
    ex = Executor(graph)
    small = memory_plan.plan(graph, infer_shapes(graph)).total
    monkeypatch.setattr(memory_plan, "available_bytes", lambda: small)
    ex.run({"data": np.zeros((1, 3, 64, 64), np.float32)})  # fits exactly
    with pytest.raises(ModelError, match="batch 4 needs"):
        ex.run({"data": np.zeros((4, 3, 64, 64), np.float32)})


def test_forward_on_a_net_too_large_for_the_machine_is_one_line_not_a_memory_error(tmp_path, capsys):
    graph = _net(tmp_path, width=200000)  # 3 x 200000^2 floats: hundreds of GiB
    cs.save(graph, tmp_path / "big.cfg", tmp_path / "big.weights")
    image = tmp_path / "x.ppm"
    image.write_bytes(b"P6\n1 1\n255\n\x00\x00\x00")
    code = main(["forward", str(tmp_path / "big.cfg"), str(tmp_path / "big.weights"),
                 "--input", str(image)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "GiB" in err and "available" in err and "convolutional_0" in err
    assert "MemoryError" not in err and len(err.strip().splitlines()) == 1
