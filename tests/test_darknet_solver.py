"""Darknet's learning-rate schedule against libdarknet's own ``get_current_rate``: for every
policy, a cfg with a single weightless layer is loaded with a header-only weights file
holding ``seen``, and the rate Darknet computes must equal ours bit for bit (both float32).
Also the [net] parsing and the update rule's arithmetic."""
from __future__ import annotations

import json

import numpy as np
import pytest

import libdarknet_oracle as lo
from assets import need_module, needs

from caffe_surgeon.errors import ModelError
from caffe_surgeon.graph import Graph
from caffe_surgeon.training.darknet_solver import NetSettings, current_rate, net_settings

needs_lib = needs(lo.available(), "libdarknet.so (Debian package darknet) missing")

BATCH = 8  # batch=16, subdivisions=2: get_current_batch = seen / 16
POLICIES = {
    "constant": "policy=constant\nburn_in=10\npower=2",
    "step": "policy=step\nstep=7\nscale=0.3\nburn_in=3",
    "steps": "policy=steps\nsteps=5,12,20\nscales=.5,.25,3\nburn_in=4\npower=3",
    "exp": "policy=exp\ngamma=0.93",
    "poly": "policy=poly\npower=1.7\nmax_batches=40\nburn_in=6",
    "sigmoid": "policy=sigmoid\ngamma=0.5\nstep=15",
}
UPDATES = [0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 15, 16, 19, 20, 21, 30, 39, 40]


def _cfg_text(policy_lines: str) -> str:
    return (f"[net]\nbatch=16\nsubdivisions=2\nwidth=2\nheight=2\nchannels=1\n"
            f"learning_rate=0.0137\n{policy_lines}\n\n[maxpool]\nsize=1\nstride=1\n")


def _settings(policy_lines: str) -> NetSettings:
    meta = {}
    for line in policy_lines.splitlines():
        key, value = line.split("=")
        meta[key] = value
    meta.update(batch="16", subdivisions="2", learning_rate="0.0137")
    return net_settings(Graph("darknet", meta=meta))


@needs_lib
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_gives_libdarknets_rate_at_every_update(tmp_path, policy):
    cfg = tmp_path / f"{policy}.cfg"
    cfg.write_text(_cfg_text(POLICIES[policy]))
    seens = [u * 16 + extra for u in UPDATES for extra in (0, 8)]
    lo.call("rate", cfg, tmp_path / "rates.json", *seens, timeout=120)
    theirs = json.loads((tmp_path / "rates.json").read_text())
    s = _settings(POLICIES[policy])
    ours = [current_rate(s, seen // 16) for seen in seens]
    assert ours == theirs, [(seen, a, b) for seen, a, b in zip(seens, ours, theirs) if a != b]


def test_sigmoid_before_its_step_is_zero_because_darknet_subtracts_in_size_t():
    s = _settings(POLICIES["sigmoid"])
    assert current_rate(s, 14) == 0.0
    assert current_rate(s, 15) == pytest.approx(0.0137 / 2, rel=1e-6)
    assert current_rate(s, 16) == pytest.approx(0.0137 / (1 + np.exp(.5)), rel=1e-6)


def test_burn_in_ramps_with_the_power_then_the_policy_takes_over():
    s = _settings(POLICIES["steps"])
    assert current_rate(s, 2) == pytest.approx(0.0137 * (2 / 4) ** 3, rel=1e-6)
    assert current_rate(s, 4) == pytest.approx(0.0137, rel=1e-6)
    assert current_rate(s, 12) == pytest.approx(0.0137 * .5 * .25, rel=1e-6)
    assert current_rate(s, 25) == pytest.approx(0.0137 * .5 * .25 * 3, rel=1e-6)


@pytest.mark.parametrize("lines, needle", [
    ("policy=steps\nsteps=5,12\nscales=.5", "steps= has 2 values and scales= has 1"),
    ("policy=steps\nsteps=5", "needs both steps= and scales="),
    ("policy=random", "policy=random is not supported"),
    ("policy=step\nadam=1", "adam=1 cannot be trained"),
])
def test_bad_or_unsupported_net_settings_are_one_line_errors(lines, needle):
    with pytest.raises(ModelError) as e:
        _settings(lines)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_update_is_darknets_decay_then_step_then_momentum():
    """update_convolutional_layer on one weight and one bias, twice, by hand."""
    torch = need_module("torch")
    from caffe_surgeon.training.darknet_solver import DarknetSGD
    s = NetSettings(batch=4, subdivisions=2, momentum=.9, decay=.01)
    w = torch.tensor([2.0], requires_grad=True)
    b = torch.tensor([1.0], requires_grad=True)
    sgd = DarknetSGD(s, {"w": (w, True, 1.0), "b": (b, False, 0.5)})
    f32 = np.float32
    uw, ub, wv, bv = f32(0), f32(0), f32(2), f32(1)
    for grad in (3.0, -1.0):
        w.grad, b.grad = torch.tensor([grad]), torch.tensor([grad])
        sgd.accumulate()
        sgd.apply(0.1)
        uw, ub = uw - f32(grad), ub - f32(grad)
        uw = uw + f32(-.01 * 4) * wv
        wv = wv + f32(.1 / 4) * uw
        bv = bv + f32(.05 / 4) * ub
        uw, ub = uw * f32(.9), ub * f32(.9)
    assert w.item() == pytest.approx(float(wv), rel=1e-7)
    assert b.item() == pytest.approx(float(bv), rel=1e-7)
    assert w.grad is None and b.grad is None
