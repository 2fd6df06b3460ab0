"""Caffe's update rules, derived by hand from BVLC ``src/caffe/solvers/*_solver.cpp``.

Each case runs two or three updates of a 3-element parameter with given gradients and
compares with values worked out on paper from Caffe's formulas (written out per
iteration below, not recomputed by a second implementation). Numbers are chosen to be
exact in float32 where the formula allows.
"""
from __future__ import annotations

import math

import pytest
from assets import need_module

torch = need_module("torch")  # the [finetune] extra: fails under CI=true without it

from caffe_surgeon.errors import ModelError  # noqa: E402
from caffe_surgeon.training.solver import Solver  # noqa: E402
from caffe_surgeon.training.solver_config import SolverConfig  # noqa: E402


def solver(text: str) -> Solver:
    return Solver(SolverConfig.from_text(text, "solver.prototxt"))


def param(values, name="w", lr_mult=1.0, decay_mult=1.0):
    w = torch.nn.Parameter(torch.tensor(values, dtype=torch.float32))
    return (f"layer_{name}", 0, name, w, lr_mult, decay_mult)


def run(s: Solver, params, grads_per_iter):
    """One update per entry of ``grads_per_iter`` (a list of gradients per parameter)."""
    for grads in grads_per_iter:
        for entry, g in zip(params, grads):
            entry[3].grad = torch.tensor(g, dtype=torch.float32)
        s.step_update(params)
    return [entry[3].detach() for entry in params]


def close(got, expected, tol=1e-6):
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), rtol=tol, atol=tol)


G1, G2, G3 = [1.0, 2.0, -4.0], [2.0, 0.0, 1.0], [-1.0, 1.0, 1.0]
W0 = [1.0, -2.0, 3.0]


def test_sgd_history_holds_rate_times_gradient_plus_momentum_times_history():
    s = solver('type: "SGD" base_lr: 0.5 lr_policy: "fixed" momentum: 0.5')
    w = param(W0)
    # h1 = 0.5*G1 = [.5, 1, -2]             w = [.5, -3, 5]
    close(run(s, [w], [[G1]])[0], [0.5, -3.0, 5.0])
    # h2 = .5*h1 + .5*G2 = [1.25, .5, -.5]  w = [-.75, -3.5, 5.5]
    close(run(s, [w], [[G2]])[0], [-0.75, -3.5, 5.5])
    close(s.histories[0], [1.25, 0.5, -0.5])
    # h3 = .5*h2 + .5*G3 = [.125, .75, .25] w = [-.875, -4.25, 5.25]
    close(run(s, [w], [[G3]])[0], [-0.875, -4.25, 5.25])


def test_nesterov_steps_back_then_over():
    s = solver('type: "Nesterov" base_lr: 0.5 lr_policy: "fixed" momentum: 0.5')
    w = param(W0)
    # update = 1.5*h_new - .5*h_old; h as in the SGD case
    close(run(s, [w], [[G1]])[0], [0.25, -3.5, 6.0])          # 1.5*[.5,1,-2]
    close(run(s, [w], [[G2]])[0], [-1.375, -3.75, 5.75])      # [1.625, .25, .25]
    close(run(s, [w], [[G3]])[0], [-0.9375, -4.625, 5.125])   # [-.4375, .875, .625]


def test_adagrad_adds_delta_outside_the_root_of_the_summed_squares():
    s = solver('type: "AdaGrad" base_lr: 0.5 lr_policy: "fixed" delta: 1')
    w = param(W0)
    # h = [9, 16, 4]; update = .5 * g / (sqrt(h) + 1) = .5*[3/4, 4/5, -2/3]
    close(run(s, [w], [[[3.0, 4.0, -2.0]]])[0], [1 - 0.375, -2 - 0.4, 3 + 1 / 3])
    # h = [25, 25, 4]; update = .5*[4/6, 3/6, 0]
    close(run(s, [w], [[[4.0, 3.0, 0.0]]])[0], [0.625 - 1 / 3, -2.4 - 0.25, 3 + 1 / 3])


def test_rmsprop_keeps_a_decayed_mean_square():
    s = solver('type: "RMSProp" base_lr: 0.5 lr_policy: "fixed" delta: 1 rms_decay: 0.75')
    w = param(W0)
    # h = .25*g^2 = [1, 4, 9]; update = .5*g/(sqrt(h)+1) = [.5, 2/3, -.75]
    close(run(s, [w], [[[2.0, 4.0, -6.0]]])[0], [0.5, -2 - 2 / 3, 3.75])
    # h = .75*[1,4,9] + .25*[0,4,36] = [.75, 4, 15.75]
    h = [0.75, 4.0, 15.75]
    update = [0.0, 0.5 * 2 / (math.sqrt(h[1]) + 1), 0.5 * 6 / (math.sqrt(h[2]) + 1)]
    close(run(s, [w], [[[0.0, 2.0, 6.0]]])[0], [0.5, -2 - 2 / 3 - update[1], 3.75 - update[2]])


def test_adadelta_uses_momentum_as_decay_and_delta_inside_both_roots():
    s = solver('type: "AdaDelta" base_lr: 0.5 lr_policy: "fixed" momentum: 0.5 delta: 1')
    w = param(W0)
    # gs = .5*g^2 = [.5, 2, 8]; step = g*sqrt((0+1)/(gs+1)); us = .5*step^2
    step1 = [1 / math.sqrt(1.5), 2 / math.sqrt(3.0), -4 / 3]
    us = [0.5 * x * x for x in step1]                        # [1/3, 2/3, 8/9]
    expected1 = [w0 - 0.5 * st for w0, st in zip(W0, step1)]
    close(run(s, [w], [[G1]])[0], expected1)
    close(s.histories[1], us)
    # gs = .5*[.5,2,8] + .5*[4,0,1] = [2.25, 1, 4.5]
    gs = [2.25, 1.0, 4.5]
    step2 = [g * math.sqrt((u + 1) / (q + 1)) for g, u, q in zip(G2, us, gs)]
    close(run(s, [w], [[G2]])[0], [e - 0.5 * st for e, st in zip(expected1, step2)])
    close(s.histories[0], gs)


def test_adam_folds_the_bias_correction_into_the_rate():
    s = solver('type: "Adam" base_lr: 0.5 lr_policy: "fixed" momentum: 0.5 momentum2: 0.75 delta: 0.5')
    w = param(W0)
    # t=1: m = .5*G1, v = .25*G1^2, correction = sqrt(1-.75)/(1-.5) = 1
    m1 = [0.5 * g for g in G1]
    v1 = [0.25 * g * g for g in G1]
    expected1 = [w0 - 0.5 * 1.0 * m / (math.sqrt(v) + 0.5) for w0, m, v in zip(W0, m1, v1)]
    close(run(s, [w], [[G1]])[0], expected1)
    # t=2: correction = sqrt(1-.5625)/(1-.25); delta is added to the uncorrected sqrt(v)
    m2 = [0.5 * m + 0.5 * g for m, g in zip(m1, G2)]
    v2 = [0.75 * v + 0.25 * g * g for v, g in zip(v1, G2)]
    corr = math.sqrt(1 - 0.5625) / 0.75
    expected2 = [e - 0.5 * corr * m / (math.sqrt(v) + 0.5) for e, m, v in zip(expected1, m2, v2)]
    close(run(s, [w], [[G2]])[0], expected2)
    close(s.histories[1], v2)


def test_a_rate_change_does_not_rescale_past_momentum_as_pytorch_sgd_does():
    # the rate halves after the first update (step policy, stepsize 1)
    s = solver('type: "SGD" base_lr: 1 lr_policy: "step" gamma: 0.5 stepsize: 1 momentum: 0.5')
    w = param([0.0, 0.0, 0.0])
    g = [1.0, 1.0, 1.0]
    # Caffe: h1 = 1*g; h2 = .5*h1 + .5*g = g; w = -2g
    close(run(s, [w], [[g], [g]])[0], [-2.0, -2.0, -2.0])
    # PyTorch: buf1 = g, w -= 1*buf1; buf2 = .5*g + g, w -= .5*buf2 = .75g -> -1.75g
    t = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([t], lr=1.0, momentum=0.5)
    for lr in (1.0, 0.5):
        opt.param_groups[0]["lr"] = lr
        t.grad = torch.tensor(g)
        opt.step()
    close(t.detach(), [-1.75, -1.75, -1.75])


@pytest.mark.parametrize("kind, expected", [("L2", [1.5, -3.0, 0.0]), ("L1", [1.75, -3.75, 0.0])])
def test_l2_decay_adds_w_and_l1_decay_adds_its_sign(kind, expected):
    s = solver(f'base_lr: 1 lr_policy: "fixed" weight_decay: 0.25 regularization_type: "{kind}"')
    close(run(s, [param([2.0, -4.0, 0.0])], [[[0.0, 0.0, 0.0]]])[0], expected)


def test_decay_mult_scales_the_decay_and_lr_mult_the_rate():
    s = solver('base_lr: 0.5 lr_policy: "fixed" weight_decay: 0.25')
    a = param([2.0, -4.0, 0.0], "a", lr_mult=2.0, decay_mult=0.0)
    b = param([2.0, -4.0, 0.0], "b", lr_mult=1.0, decay_mult=2.0)
    g = [1.0, 1.0, 1.0]
    got_a, got_b = run(s, [a, b], [[g, g]])
    close(got_a, [2 - 1.0, -4 - 1.0, -1.0])                # rate .5*2, no decay
    close(got_b, [2 - 0.5 * (1 + 1.0), -4 - 0.5 * (1 - 2.0), -0.5])  # g + .5*w


def test_lr_mult_zero_leaves_the_weights_and_ignores_any_gradient():
    s = solver('base_lr: 0.5 lr_policy: "fixed" momentum: 0.5 weight_decay: 0.25')
    frozen = param(W0, "frozen", lr_mult=0.0)
    got = run(s, [frozen], [[G1], [G2]])[0]
    close(got, W0)
    close(s.histories[0], [0.0, 0.0, 0.0])


def test_clip_gradients_scales_all_parameters_by_their_joint_norm():
    s = solver('base_lr: 1 lr_policy: "fixed" clip_gradients: 2.5')
    a, b = param([0.0, 0.0, 0.0], "a"), param([0.0, 0.0], "b")
    got_a, got_b = run(s, [a, b], [[[3.0, 0.0, 0.0], [0.0, 4.0]]])   # norm 5 -> scale .5
    close(got_a, [-1.5, 0.0, 0.0])
    close(got_b, [0.0, -2.0])
    got_a, got_b = run(s, [a, b], [[[1.0, 0.0, 0.0], [0.0, 1.0]]])   # norm 1.41: untouched
    close(got_a, [-2.5, 0.0, 0.0])
    close(got_b, [0.0, -3.0])


def test_clipping_sees_the_summed_gradient_before_iter_size_division_and_decay():
    # Caffe's ApplyUpdate: ClipGradients, then per parameter Normalize and Regularize
    s = solver('base_lr: 1 lr_policy: "fixed" clip_gradients: 4 iter_size: 2 weight_decay: 1')
    a, b = param([0.0, 0.0, 0.0], "a"), param([0.0, 0.0], "b")
    # summed norm 5 > 4: scale .8, then / 2 -> [1.2, 0, 0], [0, 1.6] (decay of w=0 adds 0)
    got_a, got_b = run(s, [a, b], [[[3.0, 0.0, 0.0], [0.0, 4.0]]])
    close(got_a, [-1.2, 0.0, 0.0])
    close(got_b, [0.0, -1.6])


def test_iter_size_accumulation_equals_one_batch_of_the_union():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3), torch.randn(4)
    text = 'base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.01'

    def train(iter_size):
        s = solver(text + f" iter_size: {iter_size}")
        w = param([0.5, -0.5, 0.25])
        for _ in range(3):
            w[3].grad = None
            for part in torch.chunk(torch.arange(4), iter_size):  # Caffe: one batch per pass
                ((x[part] @ w[3] - y[part]) ** 2).mean().backward()
            s.step_update([w])
        return w[3].detach()

    torch.testing.assert_close(train(2), train(1), rtol=1e-6, atol=1e-7)


def test_the_callers_iteration_must_match_the_solvers():
    s = solver('base_lr: 1 lr_policy: "fixed"')
    w = param(W0)
    w[3].grad = torch.zeros(3)
    s.step_update([w], 0)
    with pytest.raises(ModelError, match="iteration 5 but the solver is at iteration 1"):
        s.step_update([w], 5)


def test_a_different_parameter_list_is_refused_by_name_and_shape():
    s = solver('base_lr: 1 lr_policy: "fixed"')
    run(s, [param(W0, "a")], [[G1]])
    with pytest.raises(ModelError, match=r"parameter 'a' \(layer 'layer_a', blob 0\) of shape \[3\], "
                                        r"not 'b' \(layer 'layer_b', blob 0\) of shape \[2\]"):
        run(s, [param([1.0, 2.0], "b")], [[[1.0, 1.0]]])
