"""Caffe's learning-rate policies (``SGDSolver::GetLearningRate``) at chosen iterations,
against values worked out by hand; multistep's one-increment-per-call counter included.
No torch needed: the schedule is plain arithmetic."""
from __future__ import annotations

import math

import pytest

from caffe_surgeon.training.lr_policy import LrSchedule
from caffe_surgeon.training.solver_config import SolverConfig


def schedule(text: str) -> LrSchedule:
    return SolverConfig.from_text(text, "solver.prototxt").schedule


def run_from_start(s: LrSchedule, iterations: int) -> list:
    """The rates of a fresh run, one GetLearningRate call per iteration, as Caffe calls it."""
    rates, step = [], 0
    for it in range(iterations):
        rate, step = s.rate_and_step(it, step)
        rates.append(rate)
    return rates


@pytest.mark.parametrize("text, expected", [
    ('base_lr: 0.5 lr_policy: "fixed"', {0: 0.5, 7: 0.5, 1000: 0.5}),
    # base_lr * gamma ^ floor(iter / stepsize)
    ('base_lr: 1 lr_policy: "step" gamma: 0.5 stepsize: 3',
     {0: 1.0, 2: 1.0, 3: 0.5, 5: 0.5, 6: 0.25, 9: 0.125}),
    # base_lr * gamma ^ iter
    ('base_lr: 2 lr_policy: "exp" gamma: 0.5', {0: 2.0, 1: 1.0, 3: 0.25}),
    # base_lr * (1 + gamma * iter) ^ -power
    ('base_lr: 1 lr_policy: "inv" gamma: 1 power: 0.5', {0: 1.0, 3: 0.5, 15: 0.25}),
    # base_lr * gamma ^ (stepvalues passed)
    ('base_lr: 1 lr_policy: "multistep" gamma: 0.5 stepvalue: 2 stepvalue: 5',
     {0: 1.0, 1: 1.0, 2: 0.5, 4: 0.5, 5: 0.25, 9: 0.25}),
    # base_lr * (1 - iter / max_iter) ^ power
    ('base_lr: 1 lr_policy: "poly" power: 2 max_iter: 4', {0: 1.0, 1: 0.5625, 2: 0.25, 4: 0.0}),
    # base_lr / (1 + exp(-gamma * (iter - stepsize)))
    ('base_lr: 1 lr_policy: "sigmoid" gamma: 0.5 stepsize: 4',
     {0: 1 / (1 + math.e ** 2), 4: 0.5, 8: 1 / (1 + math.e ** -2)}),
])
def test_each_policy_gives_caffes_rate(text, expected):
    s = schedule(text)
    rates = run_from_start(s, max(expected) + 1)
    for it, rate in expected.items():
        assert rates[it] == pytest.approx(rate, rel=1e-6, abs=1e-12), it
        assert s.rate_from_start(it) == pytest.approx(rate, rel=1e-6, abs=1e-12), it


def test_base_lr_is_the_float32_value_caffe_reads():
    assert schedule('base_lr: 0.01 lr_policy: "fixed"').base_lr == pytest.approx(0.009999999776482582, abs=0)


def test_multistep_counts_a_repeated_stepvalue_on_the_next_iteration():
    s = schedule('base_lr: 1 lr_policy: "multistep" gamma: 0.5 stepvalue: 2 stepvalue: 2')
    assert run_from_start(s, 5) == [1.0, 1.0, 0.5, 0.25, 0.25]
    assert [s.rate_from_start(i) for i in range(5)] == [1.0, 1.0, 0.5, 0.25, 0.25]


def test_multistep_takes_unsorted_stepvalues_in_file_order():
    # current_step only looks at stepvalue[current_step]: 2 is not seen before 5 is passed
    s = schedule('base_lr: 1 lr_policy: "multistep" gamma: 0.5 stepvalue: 5 stepvalue: 2')
    assert run_from_start(s, 8) == [1.0] * 5 + [0.5, 0.25, 0.25]
    assert [s.rate_from_start(i) for i in range(8)] == run_from_start(s, 8)


def test_multistep_counter_is_state_not_a_function_of_iter():
    # a run resumed with current_step 0 at iteration 9 drops one step per call, as Caffe does
    s = schedule('base_lr: 1 lr_policy: "multistep" gamma: 0.5 stepvalue: 2 stepvalue: 5')
    rate, step = s.rate_and_step(9, 0)
    assert (rate, step) == (0.5, 1)
    assert s.rate_and_step(10, step) == (0.25, 2)


def test_step_policy_keeps_its_counter_for_the_solver_state():
    s = schedule('base_lr: 1 lr_policy: "step" gamma: 0.5 stepsize: 3')
    assert s.rate_and_step(7, 0) == (0.25, 2)
