"""Solver state: an interrupted run resumes bit-exactly (histories, counters, the smoothed
loss window and the random generators), the file holds no pickles and is written
atomically, and a state that does not fit is a one-line error naming the file."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from assets import need_module

torch = need_module("torch")  # the [finetune] extra: fails under CI=true without it

from caffe_surgeon.errors import ModelError  # noqa: E402
from caffe_surgeon.training.solver import Solver  # noqa: E402
from caffe_surgeon.training.solver_config import SolverConfig  # noqa: E402
from caffe_surgeon.training.solver_loss import LossSmoother  # noqa: E402

TYPES = {
    "SGD": "momentum: 0.9",
    "Nesterov": "momentum: 0.9",
    "AdaGrad": "",
    "RMSProp": "rms_decay: 0.9",
    "AdaDelta": "momentum: 0.95 delta: 1e-6",
    "Adam": "momentum: 0.9 momentum2: 0.999",
}
COMMON = ('base_lr: 0.05 lr_policy: "multistep" gamma: 0.5 stepvalue: 2 stepvalue: 4 '
          'weight_decay: 0.01 clip_gradients: 3 iter_size: 2 average_loss: 4 random_seed: 7 ')


def make_solver(kind: str) -> Solver:
    return Solver(SolverConfig.from_text(f'{COMMON} type: "{kind}" {TYPES[kind]}'))


def make_params(values=None):
    shapes = [(2, 3), (3,)]
    values = values or [torch.linspace(-1, 1, 6).reshape(2, 3), torch.tensor([0.5, -0.25, 0.0])]
    return [(f"ip{i}", i, f"ip{i}_{i}", torch.nn.Parameter(v.clone().reshape(s)), 1.0 + i, 1.0 - i)
            for i, (v, s) in enumerate(zip(values, shapes))]


def train(solver: Solver, params, steps: int) -> None:
    """Gradients drawn from both global generators, a loss through the smoother."""
    for _ in range(steps):
        for entry in params:
            w = entry[3]
            noise = np.random.standard_normal(tuple(w.shape)).astype(np.float32)
            w.grad = torch.randn(w.shape) + torch.from_numpy(noise) + w.detach()
        solver.loss.update(float(sum((e[3].detach() ** 2).sum() for e in params)))
        solver.step_update(params)


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_three_steps_saved_and_resumed_equal_six_steps_bit_for_bit(kind, tmp_path):
    straight = make_solver(kind)
    straight.seed_rngs()
    params = make_params()
    train(straight, params, 6)

    first = make_solver(kind)
    first.seed_rngs()
    half = make_params()
    train(first, half, 3)
    path = tmp_path / "run_iter_3.solverstate"
    first.save_state(path, learned_net="run_iter_3.caffemodel")
    saved_weights = [e[3].detach().clone() for e in half]
    torch.manual_seed(12345)  # another process, other generator states
    np.random.seed(54321)

    resumed = make_solver(kind)
    assert resumed.load_state(path) == "run_iter_3.caffemodel"
    assert (resumed.iter, resumed.learning_rate()) == (3, pytest.approx(0.025))
    again = make_params(saved_weights)
    train(resumed, again, 3)

    assert resumed.iter == straight.iter == 6 and resumed.current_step == straight.current_step == 2
    for a, b in zip(params, again):
        assert torch.equal(a[3], b[3]), a[2]
    for a, b in zip(straight.histories, resumed.histories):
        assert torch.equal(a, b)
    assert resumed.loss.value == straight.loss.value


def test_the_state_file_is_an_npz_without_pickles_and_leaves_no_temporary_files(tmp_path):
    s = make_solver("Adam")
    train(s, make_params(), 1)
    s.save_state(tmp_path / "a.solverstate")
    assert [p.name for p in tmp_path.iterdir()] == ["a.solverstate"]
    with np.load(tmp_path / "a.solverstate", allow_pickle=False) as z:
        assert {"meta", "history_000", "history_003", "rng_torch", "rng_numpy_keys"} <= set(z.files)
        assert "history_004" not in z.files  # Adam: 2 parameters x (m, v)


def test_a_file_that_is_not_a_state_is_a_one_line_error(tmp_path):
    bad = tmp_path / "caffe.solverstate"
    bad.write_bytes(b"\x08\x03\x12\x10not an npz")
    with pytest.raises(ModelError) as info:
        make_solver("SGD").load_state(bad)
    assert str(info.value).startswith(f"{bad}: not a caffe-surgeon solver state")
    assert "\n" not in str(info.value)
    member = tmp_path / "other.npz"
    np.savez(member, meta=np.frombuffer(b'{"format": "x"}', np.uint8))
    with pytest.raises(ModelError, match="format 'x'"):
        make_solver("SGD").load_state(member)


def test_a_state_that_does_not_fit_the_solver_is_refused(tmp_path):
    s = make_solver("SGD")
    params = make_params()
    train(s, params, 1)
    path = tmp_path / "s.solverstate"
    s.save_state(path)
    with pytest.raises(ModelError, match=f"^{path}: the solver state is for a SGD solver but the "
                                         "solver file says Adam$"):
        make_solver("Adam").load_state(path)
    with pytest.raises(ModelError, match="holds 4 losses but average_loss is 5"):
        Solver(dataclasses.replace(make_solver("SGD").config, average_loss=5)).load_state(path)
    other = make_solver("SGD")
    train(other, make_params()[:1], 1)
    with pytest.raises(ModelError, match=f"^{path}: the solver state is for 2 parameters, not 1$"):
        other.load_state(path)


def test_loaded_histories_are_checked_against_the_parameters_at_the_next_update(tmp_path):
    s = make_solver("SGD")
    train(s, make_params(), 1)
    s.save_state(tmp_path / "s.solverstate")
    resumed = make_solver("SGD")
    resumed.load_state(tmp_path / "s.solverstate")
    wrong = [(name, i, blob, torch.nn.Parameter(torch.zeros(4)), lr, dm)
             for name, i, blob, _, lr, dm in make_params()]
    with pytest.raises(ModelError, match=r"shape \[2, 3\], not 'ip0_0' \(layer 'ip0', blob 0\) of shape \[4\]"):
        train(resumed, wrong, 1)


def test_no_state_before_the_first_update():
    with pytest.raises(ModelError, match="no state before its first update"):
        make_solver("SGD").state_dict()


def test_saving_into_a_missing_folder_is_a_one_line_error(tmp_path):
    s = make_solver("SGD")
    train(s, make_params(), 1)
    with pytest.raises(ModelError, match="does not exist"):
        s.save_state(tmp_path / "missing" / "s.solverstate")


def test_loss_smoother_is_caffes_running_mean_over_the_window():
    s = LossSmoother(3)
    # filling: means of all so far; then smoothed += (new - oldest) / 3
    assert [float(s.update(x)) for x in (1, 2, 3, 4, 5, 9)] == [1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def test_learning_rate_gives_the_next_updates_rate_or_a_fresh_runs():
    s = make_solver("SGD")
    assert [s.learning_rate(i) for i in range(6)] == pytest.approx([0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125])
    train(s, make_params(), 2)
    assert s.learning_rate() == pytest.approx(0.025) and s.current_step == 0


def test_random_seed_makes_runs_repeatable():
    s = make_solver("SGD")
    s.seed_rngs()
    a = (torch.randn(3), np.random.standard_normal(3))
    s.seed_rngs()
    b = (torch.randn(3), np.random.standard_normal(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
