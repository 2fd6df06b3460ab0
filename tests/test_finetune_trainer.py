"""The training loop (caffe_surgeon/training/trainer.py) with a hand-written module that
keeps the backend's contract: Caffe's iteration order, iter_size, snapshots and exact
resume (also after SIGKILL), non-finite stops, atomic snapshots, two gloo ranks."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from assets import need_module

torch = need_module("torch")

import caffe_surgeon as cs  # noqa: E402
from caffe_surgeon.errors import ModelError  # noqa: E402
from caffe_surgeon.training.progress import TrainingLog  # noqa: E402
from caffe_surgeon.training.snapshots import SnapshotSet  # noqa: E402

from finetune_double import NET, net_graph, solver_file, train, weights_of  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-exact comparisons between runs in and out of process
    yield
    torch.set_num_threads(before)


def _snapshot_graph(folder, snap):
    (folder / "tiny.prototxt").write_text(NET)
    return cs.load(folder / "tiny.prototxt", snap.weights)


def test_iterations_and_learning_rate_per_step_follow_the_solver(tmp_path):
    out = io.StringIO()
    log = TrainingLog(tmp_path, 10, images_per_iter=8, out=out)
    module, result = train(tmp_path, net_graph(tmp_path), solver_file(tmp_path), log=log)
    assert result.iteration == 10
    lines = [l for l in out.getvalue().splitlines() if l.startswith("Iteration")]
    assert [int(l.split(",")[0].split()[1]) for l in lines] == [0, 2, 4, 6, 8]
    # step policy, stepsize 4, gamma 0.5: 0.1 until 3, 0.05 from 4, 0.025 from 8
    assert [float(l.split("lr = ")[1].split(",")[0]) for l in lines] == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert all("images/s" in l and "ETA" in l for l in lines[1:])
    csv = (tmp_path / "finetune_log.csv").read_text().splitlines()
    assert csv[0] == "iteration,phase,name,value" and len(csv) == 1 + 2 * 5
    # snapshots every 3 iterations, and at the end
    assert [s.iteration for s in result.snapshots] == [3, 6, 9, 10]


def test_same_seed_gives_the_same_weights(tmp_path):
    a, _ = train(tmp_path / "a", net_graph(_mk(tmp_path / "a")), solver_file(tmp_path / "a"))
    b, _ = train(tmp_path / "b", net_graph(_mk(tmp_path / "b")), solver_file(tmp_path / "b"))
    for k, v in weights_of(a).items():
        assert v.tobytes() == weights_of(b)[k].tobytes(), k


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_iter_size_two_of_half_batches_steps_as_one_full_batch(tmp_path):
    # iter_size 2: pass 2i reads the first half of batch i, pass 2i+1 the second half
    from caffe_surgeon.training.solver import Solver
    from caffe_surgeon.training.trainer import Trainer
    from finetune_double import TinyNet, batch

    def halves(first):
        i = first
        while True:
            yield batch(i // 2, 8, slice(0, 4) if i % 2 == 0 else slice(4, 8))
            i += 1
    folder = _mk(tmp_path / "h")
    module = TinyNet(net_graph(folder), dropout=0.0)
    ref = TinyNet(net_graph(folder), dropout=0.0)
    Trainer(module, Solver.from_prototxt(solver_file(folder, snapshot=0, iter_size=2)),
            halves).run()
    Trainer(ref, Solver.from_prototxt(solver_file(_mk(tmp_path / "r"), snapshot=0)),
            lambda first: (batch(i) for i in range(first, 10 ** 6))).run()
    for k, v in weights_of(ref).items():
        np.testing.assert_allclose(weights_of(module)[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_resume_from_a_snapshot_ends_bit_exactly_as_the_uninterrupted_run(tmp_path):
    whole, _ = train(_mk(tmp_path / "w"), net_graph(tmp_path / "w"), solver_file(tmp_path / "w"))
    folder = _mk(tmp_path / "r")
    solver_path = solver_file(folder, max_iter=6)
    train(folder, net_graph(folder), solver_path)
    solver_file(folder, max_iter=10)
    snap = SnapshotSet(f"{folder}/snap/").newest()
    assert snap.iteration == 6
    resumed, result = train(folder, _snapshot_graph(folder, snap), solver_path, resume=snap)
    assert result.iteration == 10
    for k, v in weights_of(whole).items():
        assert v.tobytes() == weights_of(resumed)[k].tobytes(), k


def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    whole, _ = train(_mk(tmp_path / "w"), net_graph(tmp_path / "w"), solver_file(tmp_path / "w"))
    folder = _mk(tmp_path / "k")
    solver_path = solver_file(folder)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    # killed while reading the batch of iteration 8: snapshots 3 and 6 are on disk
    proc = subprocess.run([sys.executable, str(HERE / "finetune_double.py"), str(folder), "8"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    snap = SnapshotSet(f"{folder}/snap/").newest()
    assert snap.iteration == 6
    resumed, _ = train(folder, _snapshot_graph(folder, snap), solver_path, resume=snap)
    for k, v in weights_of(whole).items():
        assert v.tobytes() == weights_of(resumed)[k].tobytes(), k


def test_automatic_resume_picks_the_newest_complete_snapshot_never_a_half_written_one(tmp_path):
    folder = _mk(tmp_path)
    train(folder, net_graph(folder), solver_file(folder, max_iter=6))
    snap_dir = folder / "snap"
    (snap_dir / "_iter_9.caffemodel").write_bytes(b"weights without their state")
    (snap_dir / "._iter_12.solverstate.x1y2.tmp").write_bytes(b"half")
    (snap_dir / "_iter_15.solverstate").write_bytes(b"a state whose weights are gone")
    newest = SnapshotSet(f"{snap_dir}/").newest()
    assert newest.iteration == 6 and newest.weights.name == "_iter_6.caffemodel"


def test_a_non_finite_loss_stops_naming_the_iteration_and_layer_and_keeps_the_last_snapshot(tmp_path):
    folder = _mk(tmp_path)
    with pytest.raises(ModelError) as err:
        train(folder, net_graph(folder), solver_file(folder), poison_at=7)
    msg = str(err.value)
    assert "\n" not in msg and "iteration 7" in msg and "layer 'ip1'" in msg, msg
    assert "_iter_6.caffemodel" in msg
    assert SnapshotSet(f"{folder}/snap/").newest().iteration == 6
    assert sorted(p.name for p in (folder / "snap").iterdir()) == [
        "_iter_3.caffemodel", "_iter_3.solverstate", "_iter_6.caffemodel", "_iter_6.solverstate"]


def test_a_full_disk_while_snapshotting_is_one_line_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    folder = _mk(tmp_path)
    real = os.replace

    def full(src, dst):
        if str(dst).endswith("_iter_6.solverstate"):
            raise OSError(28, "No space left on device")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(ModelError, match="No space left on device") as err:
        train(folder, net_graph(folder), solver_file(folder))
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in (folder / "snap").iterdir()) == [
        "_iter_3.caffemodel", "_iter_3.solverstate"]


def test_tests_run_at_test_interval_honouring_test_initialization(tmp_path):
    folder = _mk(tmp_path)
    path = solver_file(folder, max_iter=6, snapshot=0)
    path.write_text(path.read_text() + "test_interval: 3 test_initialization: false\n")
    seen = []

    def evaluate(module, it):
        assert not module.training
        seen.append(it)
        return {"top-1": 0.5}
    out = io.StringIO()
    train(folder, net_graph(folder), path, evaluator=evaluate, log=TrainingLog(folder, 6, out=out))
    assert seen == [3, 6]
    assert "Testing net: top-1 = 0.5" in out.getvalue()


def _rank_worker(rank, world, folder, queue_path):
    torch.set_num_threads(1)
    folder = Path(folder)
    share = 8 // world
    module, _ = train(folder, net_graph(folder), folder / "solver.prototxt",
                      rows=slice(rank * share, (rank + 1) * share), dropout=0.0)
    if rank == 0:
        np.savez(queue_path, **weights_of(module))


def test_two_gloo_ranks_give_the_weights_of_one_process_with_the_total_batch(tmp_path):
    from caffe_surgeon.training.launch import spawn
    folder = _mk(tmp_path / "d")
    solver_file(folder, snapshot=0)
    spawn(_rank_worker, 2, (str(folder), str(tmp_path / "ranks.npz")), backend="gloo")
    one_folder = _mk(tmp_path / "one")
    solver_file(one_folder, snapshot=0)
    one, _ = train(one_folder, net_graph(one_folder), one_folder / "solver.prototxt", dropout=0.0)
    ranks = np.load(tmp_path / "ranks.npz")
    for k, v in weights_of(one).items():
        np.testing.assert_allclose(ranks[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    # only rank 0 wrote: its final snapshot, once
    assert sorted(p.name for p in (folder / "snap").iterdir()) == [
        "_iter_10.caffemodel", "_iter_10.solverstate"]
