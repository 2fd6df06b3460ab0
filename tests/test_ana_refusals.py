"""ana refuses what it cannot do right before computing anything: changed inputs, bad
evaluator specs and jobs, a corrupt state file, a bad worker count.
"""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.engine.executor import Executor
from caffe_surgeon.errors import ModelError
from caffe_surgeon.workflow import ana as ana_mod
from caffe_surgeon.workflow.ana import AnaJob, AnaResult, run_ana
from caffe_surgeon.evaluation.spec import normalize_spec

from ana_data import CAFFEMODEL, FIX, TRAIN_VAL, caffe_job
from ana_data import data_root  # noqa: F401  (a module-scoped fixture)


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
        m.setattr(ana_mod, "IncrementalEvaluator", lambda *a, **k: pytest.fail("context built"))
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
    ({"criterion": "l3"}, "criterion must be one of l1, l2, bn, taylor, not 'l3'"),
    ({"divisor": 0}, "divisor must be an integer >= 1, got 0"),
    ({"model_files": [str(TRAIN_VAL), "/nonexistent.caffemodel"]}, "/nonexistent.caffemodel: model file not found"),
    ({"ignore": ["conv9"]}, "ignore names layers the model does not have: conv9"),
    ({"evaluator": {"kind": "caffe", "acc_name": "top-9", "test_iter": 1}}, "acc_name 'top-9' is not a top"),
    ({"early_stop": 0}, "early_stop must be a relative metric drop > 0 (e.g. 0.1 = 10%), got 0"),
    ({"early_stop": -0.1}, "early_stop must be a relative metric drop > 0"),
    ({"early_stop": float("nan")}, "early_stop must be a relative metric drop > 0"),
    ({"early_stop": True}, "early_stop must be a relative metric drop > 0"),
    ({"early_stop": "lots"}, "early_stop must be a number, got 'lots'"),
    ({"criterion_options": {"batches": 2}}, "criterion 'l1' takes no options"),
    ({"criterion": "taylor", "criterion_options": {"batches": 0}},
     "criterion 'taylor': batches must be an integer >= 1, got 0"),
    ({"criterion": "taylor", "criterion_options": {"batch": 2}},
     "criterion 'taylor' has no option batch (it takes batches, seed)"),
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
