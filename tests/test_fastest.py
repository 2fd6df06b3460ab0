"""A layer's equivalent kernels measured on its first calls, the fastest kept."""
import numpy as np
import pytest

from caffe_surgeon.engine.kernels import conv, fastest, haswell_gemm, microkernel


class _Clock:
    """A scripted timer: each candidate call advances it by its next duration."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _candidate(name, durations, clock, log):
    durations = iter(durations)

    def run(x):
        log.append(name)
        clock.now += next(durations)
        return (name, x)
    return run


def test_each_candidate_runs_in_turn_then_the_fastest_alone(monkeypatch):
    clock, log = _Clock(), []
    monkeypatch.setattr(fastest, "clock", clock)
    f = fastest.Fastest([_candidate("slow", [4.0] * 9, clock, log), _candidate("quick", [1.0] * 9, clock, log)])
    # the first call is the first candidate's (a layer run once keeps the rules' choice)
    assert f(1) == ("slow", 1)
    for i in range(2, 2 * fastest.TRIALS + 1):
        f(i)
    assert log == ["slow", "quick"] * fastest.TRIALS
    assert [f(i)[0] for i in range(5)] == ["quick"] * 5
    assert log[-5:] == ["quick"] * 5


def test_the_fastest_call_of_each_counts_not_the_first(monkeypatch):
    clock, log = _Clock(), []
    monkeypatch.setattr(fastest, "clock", clock)
    # the first candidate's second call was disturbed (30), its first was the fastest of all
    f = fastest.Fastest([_candidate("a", [1.0, 30.0], clock, log), _candidate("b", [2.0, 2.0], clock, log)])
    for _ in range(2 * fastest.TRIALS):
        f(0)
    assert f.chosen is f.candidates[0] and f.times == [1.0, 2.0]


def _own_kernels_here():
    return microkernel.blocking() is not None or (haswell_gemm.USABLE and haswell_gemm.enabled())


#: (N, C, H, O, k, stride, pad); the first takes our GEMM on AVX2 (K 16) and AVX-512 alike
CASES = [(1, 16, 56, 64, 1, 1, 0), (1, 32, 38, 128, 3, 1, 1), (1, 144, 28, 24, 1, 1, 0),
         (2, 64, 14, 64, 3, 1, 1)]


@pytest.mark.parametrize("case", CASES)
def test_a_tuned_layer_gives_the_same_bits_on_every_call(case, monkeypatch):
    if not _own_kernels_here():
        pytest.skip("no GEMM kernel of ours reproduces this machine's BLAS: one candidate")
    monkeypatch.setitem(fastest._state, "on", True)
    N, C, H, O, k, s, p = case
    rng = np.random.default_rng(4)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w = rng.standard_normal((O, C, k, k), dtype=np.float32) * np.float32(0.1)
    b = rng.standard_normal(O, dtype=np.float32)
    plans = {}
    outs = [conv.conv2d(x, w, b, (s, s), (p, p), plans=plans, plan_key="l") for _ in range(2 * fastest.TRIALS + 2)]
    tuned = plans["l"].run
    if case == CASES[0]:
        assert isinstance(tuned, fastest.Fastest)
    if isinstance(tuned, fastest.Fastest):
        assert tuned.chosen is not None and len(tuned.candidates) == 2
    for out in outs[1:]:
        np.testing.assert_array_equal(out.view(np.uint32), outs[0].view(np.uint32))
    monkeypatch.setitem(fastest._state, "on", False)
    rules = conv.conv2d(x, w, b, (s, s), (p, p), plans={}, plan_key="l")
    np.testing.assert_array_equal(rules.view(np.uint32), outs[0].view(np.uint32))


def test_tuning_off_keeps_the_rules_choice(monkeypatch):
    monkeypatch.setitem(fastest._state, "on", False)
    x = np.ones((1, 16, 20, 20), np.float32)
    w = np.ones((32, 16, 3, 3), np.float32)
    plans = {}
    conv.conv2d(x, w, None, (1, 1), (1, 1), plans=plans, plan_key="l")
    assert not isinstance(plans["l"].run, fastest.Fastest)
