"""``ana``: sensitivity analysis with prefix reuse, resumable state, workers and Dask.

Uses the trained Fashion-MNIST fixture on the first 200 t10k images (4 Caffe
batches of 50) and three ratios, so a whole analysis is 18 evaluations.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import caffe_surgeon as cs
from caffe_surgeon.engine.executor import Executor
from caffe_surgeon.errors import ModelError
from caffe_surgeon.evaluation import CaffeEvaluator
from caffe_surgeon.pruning import analyse
from caffe_surgeon.workflow import ana as ana_mod
from caffe_surgeon.workflow import ana_scheduling
from caffe_surgeon.workflow.ana import AnaResult, run_ana, write_reports
from caffe_surgeon.workflow.ana_evaluation import IncrementalEvaluator
from assets import need_module
from caffe_surgeon.evaluation.spec import CaffeAgreementEvaluator

from ana_data import CAFFEMODEL, N, RATIOS, ROOT, TRAIN_VAL, caffe_job, from_scratch, same_metric
from ana_data import data_root  # noqa: F401  (a module-scoped fixture)


# ---------------------------------------------------------------- exactness
def test_baseline_and_every_result_equal_full_forward_evaluations(data_root, tmp_path, monkeypatch):
    starts = []
    real_run = Executor.run

    def spy(self, inputs=None, outputs=None, **kw):
        if inputs is None or next(iter(inputs.values())).shape[0] > 1:  # not apply's 1-image fold
            starts.append(kw.get("start", 0))
        return real_run(self, inputs, outputs, **kw)

    monkeypatch.setattr(Executor, "run", spy)
    state = tmp_path / "ws" / ".ana.regular"  # the folder is created
    result = run_ana(caffe_job(data_root), state, progress=False)
    monkeypatch.setattr(Executor, "run", real_run)

    g = cs.load(TRAIN_VAL, CAFFEMODEL, phase="TEST")
    ev = CaffeEvaluator(g, "loss", test_iter=N // 50, base_dir=data_root)
    a = analyse(g, input_shapes=ev.input_shapes)
    assert result.baseline == ev.evaluate(g)  # bit for bit: same float
    assert result.metric_name == "loss" and result.complete
    assert [x["id"] for x in result.groups] == [x.id for x in a.prunable_groups()]
    assert len(result.groups) == 6 and result.evaluated == result.forward_evaluations - 1 == 18
    values = set()
    for grp in a.prunable_groups():
        for r in RATIOS:
            got = result.metric(grp.id, r)
            assert same_metric(got, from_scratch(g, ev, a, grp.id, r)), (grp.producers, r)
            values.add(got)
    assert len(values) == 18 and result.baseline not in values  # every pruning changed the loss
    # only the layers from each group's first consumer on were recomputed: conv1 -> conv2a,
    # conv2a+conv2c -> conv2b, conv2b -> conv2c, b3a and b3b (through the Concat) -> conv4, conv4 -> fc
    consumers = {g.index(n) for n in ("conv2a", "conv2b", "conv2c", "conv4", "fc")}
    assert consumers == {6, 10, 14, 29, 33}
    assert set(starts) == {0} | consumers
    assert starts.count(0) == N // 50  # the baseline only

    again = AnaResult.load(state)
    assert again.to_json() == state.read_text() == result.to_json()
    assert again.metric(1, 0.5) == result.metric(1, 0.5) and again.metric(1, 0.6) is None
    table = again.to_table()
    assert [r.group for r in table.rows] == ["conv1", "conv2a", "conv2b", "b3a", "b3b", "conv4"]
    assert table.rows[1].layers == ("conv2a", "conv2c") and table.rows[1].channels == 32
    files = write_reports(again, state.parent)
    assert [f.name for f in files][:2] == ["ana_sensitivity.txt", "ana_sensitivity.csv"]
    text = files[0].read_text()
    assert "baseline loss" in text and "conv2a,conv2c" in text
    assert files[1].read_text().splitlines()[0] == "group,layers,channels,baseline_loss,0.25,0.5,0.75"
    d = json.loads(state.read_text())
    assert d["format"] == "caffe-surgeon-ana" and d["version"] == 1
    assert d["done"] == {"baseline": True, "evaluations": 18, "total": 18, "complete": True}
    assert sorted(d["results"]["0"]) == ["0.25", "0.5", "0.75"]
    assert [f["name"] for f in d["inputs"]["model_files"]] == ["fashion_train_val.prototxt",
                                                               "fashion.caffemodel"]


def test_caffe_label_free_agreement(data_root, tmp_path):
    result = run_ana(caffe_job(data_root, acc="top-1", ratios=[0.5], label_free=True),
                     tmp_path / ".ana.regular", progress=False)
    g = cs.load(TRAIN_VAL, CAFFEMODEL, phase="TEST")
    ev = CaffeAgreementEvaluator(g, N // 50, str(data_root), acc_name="top-1")
    assert ev.score_blob == "fc" and result.metric_name == "top-1 agreement"
    assert result.baseline == 1.0
    a = analyse(g, input_shapes=ev.input_shapes)
    for grp in a.prunable_groups():
        assert same_metric(result.metric(grp.id, 0.5), from_scratch(g, ev, a, grp.id, 0.5))
    assert min(result.results[0].values()) < 1.0


# ---------------------------------------------------------------- resume
RUNNER = """
import json, sys, time
from caffe_surgeon.workflow.ana import AnaJob, run_ana
job = AnaJob(**json.loads(sys.argv[1]))
run_ana(job, sys.argv[2], progress=False, on_result=lambda *a: time.sleep(0.5))
"""


def test_resume_after_sigkill_finishes_the_rest_only(data_root, tmp_path):
    job = caffe_job(data_root)
    state = tmp_path / ".ana.regular"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(dataclasses.asdict(job)),
                             str(state)], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    done = 0
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists():
                done = json.loads(state.read_text())["done"]["evaluations"]
                if done >= 3:
                    break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    before = json.loads(state.read_text())
    done = before["done"]["evaluations"]
    assert 3 <= done < 18 and before["done"]["complete"] is False

    seen = []
    result = run_ana(job, state, progress=False, on_result=lambda *a: seen.append(a[:2]))
    assert result.evaluated == len(seen) == 18 - done
    assert result.forward_evaluations == 18 - done  # no baseline, nothing repeated
    recorded = {(int(gid), float(r)) for gid, row in before["results"].items() for r in row}
    assert not recorded & set(seen)

    reference = tmp_path / "uninterrupted.json"
    run_ana(job, reference, progress=False)
    assert state.read_bytes() == reference.read_bytes()
    again = run_ana(job, state, progress=False)  # complete: nothing to do
    assert again.evaluated == again.forward_evaluations == 0
    assert state.read_bytes() == reference.read_bytes()


# ---------------------------------------------------------------- parallel
@pytest.fixture(scope="module")
def serial_bytes(data_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("serial") / "ana.json"
    run_ana(caffe_job(data_root), path, progress=False)
    return path.read_bytes()


def test_two_worker_processes_give_the_same_bytes(data_root, tmp_path, serial_bytes):
    state = tmp_path / "ana.json"
    result = run_ana(caffe_job(data_root), state, workers=2, progress=False)
    assert result.evaluated == 18
    assert state.read_bytes() == serial_bytes


def test_two_workers_are_this_process_and_one_spawned(data_root, tmp_path, serial_bytes,
                                                      monkeypatch):
    """This process evaluates units too (no idle parent); slowed here, the spawned worker
    takes most of the others. An error in this process's share, or in the worker while
    this process is mid-unit, stops the run with that error and leaves no thread running."""
    mine = []
    real_unit = IncrementalEvaluator.evaluate_group

    def slow_unit(self, gid, ratios, baseline):
        mine.append(gid)
        for item in real_unit(self, gid, ratios, baseline):
            time.sleep(1.5)
            yield item

    # this process only (workers are spawned)
    monkeypatch.setattr(IncrementalEvaluator, "evaluate_group", slow_unit)
    state = tmp_path / "ana.json"
    result = run_ana(caffe_job(data_root), state, workers=2, progress=False)
    assert 1 <= len(mine) <= 4 and len(set(mine)) == len(mine)  # the worker did 2 or more
    assert result.evaluated == 18 and state.read_bytes() == serial_bytes

    real_payload = ana_scheduling.worker_payload
    monkeypatch.setattr(ana_scheduling, "worker_payload",
                        lambda *a: dict(real_payload(*a), data_sha256="0" * 64))
    with pytest.raises(ModelError, match="decoded different evaluation data"):
        run_ana(caffe_job(data_root), tmp_path / "broken.json", workers=2, progress=False)
    assert not [t for t in threading.enumerate() if t.name == "ana-evaluate-here"]
    monkeypatch.setattr(ana_scheduling, "worker_payload", real_payload)

    def failing_unit(self, gid, ratios, baseline):
        raise ModelError(f"group {gid} failed here")
        yield

    monkeypatch.setattr(IncrementalEvaluator, "evaluate_group", failing_unit)
    with pytest.raises(ModelError, match="failed here"):
        run_ana(caffe_job(data_root), tmp_path / "fail.json", workers=2, progress=False)
    assert AnaResult.load(tmp_path / "fail.json").baseline is not None
    assert not [t for t in threading.enumerate() if t.name == "ana-evaluate-here"]


def test_feeds_kept_in_a_mapped_file_give_the_same_bytes(data_root, tmp_path, serial_bytes,
                                                         monkeypatch):
    monkeypatch.setenv("CAFFE_SURGEON_FEED_MEMORY", "0")  # every batch spilled, workers too
    ctx = IncrementalEvaluator(caffe_job(data_root))
    assert ctx.evaluator.feeds.memory_bytes == 0 and ctx.evaluator.feeds.spilled_bytes > 0
    state = tmp_path / "ana.json"
    run_ana(caffe_job(data_root), state, workers=2, progress=False)
    assert state.read_bytes() == serial_bytes


def test_shared_kept_counts_are_evaluated_once(data_root, tmp_path):
    """divisor 8: conv1 (16 channels) keeps 16 at 0.25 (= the baseline) and 8 at 0.5 and 0.75."""
    job = dataclasses.replace(caffe_job(data_root), divisor=8)
    serial = run_ana(job, tmp_path / "serial.json", progress=False)
    assert serial.metric(0, 0.25) == serial.baseline
    assert serial.metric(0, 0.5) == serial.metric(0, 0.75) != serial.baseline
    assert serial.evaluated == 18 and serial.forward_evaluations < 19
    g = cs.load(TRAIN_VAL, CAFFEMODEL, phase="TEST")
    ev = CaffeEvaluator(g, "loss", test_iter=N // 50, base_dir=data_root)
    a = analyse(g, input_shapes=ev.input_shapes)
    for grp in a.prunable_groups():
        for r in RATIOS:
            assert same_metric(serial.metric(grp.id, r), from_scratch(g, ev, a, grp.id, r, divisor=8))
    parallel = run_ana(job, tmp_path / "parallel.json", workers=2, progress=False)
    assert parallel.forward_evaluations == serial.forward_evaluations
    assert (tmp_path / "parallel.json").read_bytes() == (tmp_path / "serial.json").read_bytes()


# ---------------------------------------------------------------- early stop
def _drops(result: AnaResult, gid: int) -> list[float]:
    return [ana_mod.relative_drop(result.baseline, result.metric(gid, r)) for r in result.ratios]


@pytest.fixture(scope="module")
def early_limit(data_root, serial_bytes):
    """A drop limit that stops some groups at their first or second ratio and not others."""
    full = AnaResult.from_json(serial_bytes.decode())
    firsts = sorted(_drops(full, g["id"])[0] for g in full.groups)
    limit = (firsts[len(firsts) // 2 - 1] + firsts[len(firsts) // 2]) / 2
    return full, limit


def test_early_stop_skips_the_ratios_after_the_first_drop_beyond_the_limit(
        data_root, tmp_path, early_limit, serial_bytes):
    full, limit = early_limit
    job = dataclasses.replace(caffe_job(data_root), early_stop=limit)
    state = tmp_path / ".ana.regular"
    cut = run_ana(job, state, progress=False)
    stopped, ran = {}, 0
    for g in full.groups:
        gid, drops = g["id"], _drops(full, g["id"])
        beyond = [k for k, d in enumerate(drops) if d > limit]
        last = beyond[0] if beyond else len(RATIOS) - 1
        for k, r in enumerate(RATIOS):
            if k <= last:  # measured, and bit-equal to the full run's value
                assert cut.metric(gid, r) == full.metric(gid, r), (gid, r)
            else:
                assert cut.metric(gid, r) is None and r in cut.skipped(gid), (gid, r)
        if last < len(RATIOS) - 1:
            stopped[str(gid)] = RATIOS[last]
        ran += last + 1
    assert 0 < len(stopped) < len(full.groups)  # the limit splits the groups
    assert cut.complete and cut.evaluated == ran == cut.forward_evaluations - 1
    assert cut.skipped_count == 18 - ran
    saved = json.loads(state.read_text())
    assert saved["early_stop"] == {"drop": limit, "stopped": stopped}
    assert saved["done"] == {"baseline": True, "complete": True, "evaluations": ran,
                             "skipped": 18 - ran, "total": 18}
    again = AnaResult.load(state)
    assert again.early_stop == limit and again.complete and again.missing(0) == []
    table = again.to_table()
    assert f"early stop at a relative drop of {limit:g}: {len(stopped)} group(s) stopped" in table.note
    from caffe_surgeon.workflow.report import format_sensitivity
    text = format_sensitivity(table)
    assert text.endswith(table.note)
    body = text.splitlines()[3:3 + len(full.groups)]
    assert sum(line.split().count("-") for line in body) == 18 - ran

    # the same rule in two worker processes: the same bytes
    run_ana(job, tmp_path / "parallel.json", workers=2, progress=False)
    assert (tmp_path / "parallel.json").read_bytes() == state.read_bytes()

    # a later run without early stop keeps every measured value and evaluates only the rest
    seen = []
    rest = run_ana(dataclasses.replace(job, early_stop=None), state, progress=False,
                   on_result=lambda *a: seen.append(a[:2]))
    assert rest.evaluated == len(seen) == 18 - ran and rest.complete
    assert all(r in cut.skipped(gid) for gid, r in seen)
    assert state.read_bytes() == serial_bytes
    # a stricter limit later: nothing to evaluate, nothing measured is dropped
    stricter = run_ana(dataclasses.replace(job, early_stop=limit / 2), state, progress=False)
    assert stricter.evaluated == 0 and stricter.done == 18 and stricter.complete


def test_early_stop_bookkeeping_with_shared_kept_counts_and_bad_baselines(data_root, tmp_path,
                                                                          monkeypatch):
    """16 channels, divisor 8: ratios 0.5 and 0.75 both keep 8. A run killed after recording
    0.5 (which stopped the group) but before 0.75 must still evaluate 0.75: an uninterrupted
    run records it with the same value."""
    res = AnaResult(1.0, "top-1", [{"id": 0, "producers": ["c"], "members": ["c"], "channels": 16}],
                    {0: {0.25: 0.99, 0.5: 0.5}}, [0.25, 0.5, 0.75, 0.9], "l1", "x", divisor=8,
                    early_stop=0.1)
    assert res.stopped_at(0) == 0.5
    assert res.skipped(0) == [] and res.missing(0) == [0.75, 0.9]  # 0.9 keeps 8 as well
    res.divisor = 4  # now 0.75 keeps 4 and 0.9 keeps 4: skipped
    assert res.skipped(0) == [0.75, 0.9] and res.missing(0) == [] and res.complete
    for base in (0.0, float("nan")):
        monkeypatch.setattr(IncrementalEvaluator, "baseline", lambda self, b=base: b)
        job = dataclasses.replace(caffe_job(data_root, ratios=[0.5]), early_stop=0.1)
        with pytest.raises(ModelError, match="cannot be done for a baseline that is 0 or not finite"):
            run_ana(job, tmp_path / f"b{base}.json", progress=False)


def test_prune_chooses_only_measured_ratios_after_an_early_stop(data_root, tmp_path, early_limit):
    from caffe_surgeon.workflow.prune_rate import prune_to_rate
    full, limit = early_limit
    job = dataclasses.replace(caffe_job(data_root), early_stop=limit)
    cut = run_ana(job, tmp_path / "cut.json", progress=False)
    g = cs.load(TRAIN_VAL, CAFFEMODEL, phase="TEST")
    ev = CaffeEvaluator(g, "loss", test_iter=N // 50, base_dir=data_root)
    by_producers = {tuple(gr["producers"]): gr["id"] for gr in cut.groups}
    a = analyse(g, input_shapes=ev.input_shapes)
    reachable = 0
    for rate in (0.2, 0.35, 0.5):
        for method in ("greedy", "threshold"):
            try:
                out = prune_to_rate(g, cut, rate, divisor=1, method=method,
                                    input_shapes=ev.input_shapes)
            except ModelError as e:
                assert "early stop skipped the larger ratios of" in str(e)
                assert "rerun ana without early stop" in str(e)
                continue
            reachable += 1
            assert abs(out.allocation.reduction - rate) <= 0.01
            for gid, r in out.allocation.ratios.items():
                ana_gid = by_producers[tuple(a.group(gid).producers)]
                measured = [x for x in RATIOS if cut.metric(ana_gid, x) is not None]
                assert r <= max(measured) + 1e-9, (rate, method, gid, r, measured)
    assert reachable  # the low rate at least is reachable from the measured ratios
    # every group cut short at its first ratio: nothing reaches a rate that needs more
    tiny = dataclasses.replace(job, early_stop=1e-9)
    first_only = run_ana(tiny, tmp_path / "first.json", progress=False)
    assert first_only.done == len(first_only.groups)
    with pytest.raises(ModelError, match="early stop skipped the larger ratios of 6 group"):
        prune_to_rate(g, first_only, 0.6, divisor=1, input_shapes=ev.input_shapes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dask_cluster_gives_the_same_bytes(data_root, tmp_path, serial_bytes):
    distributed = need_module("distributed")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                               "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                       "--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
                                      cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        client = None
        deadline = time.monotonic() + 120
        while client is None:
            try:
                client = distributed.Client(address, timeout="5s", set_as_default=False)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        try:
            client.wait_for_workers(1, timeout=120)
        finally:
            client.close()
        state = tmp_path / "ana.json"
        result = run_ana(caffe_job(data_root), state, scheduler=address, progress=False)
        assert result.evaluated == 18 and result.forward_evaluations == 19
        assert state.read_bytes() == serial_bytes
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


