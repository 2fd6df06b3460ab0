"""ana state files written by an earlier caffe-surgeon still load, resume and rewrite
byte for byte (``fixtures/ana_state``; see its README for the job that made them)."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from caffe_surgeon.engine.executor import Executor
from caffe_surgeon.workflow.ana import AnaJob, AnaResult, run_ana
from caffe_surgeon.workflow.report import format_sensitivity

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "fashion"
STATES = ROOT / "fixtures" / "ana_state"


@pytest.fixture
def job(monkeypatch) -> AnaJob:
    """The fixtures' job; base_dir None reads the images relative to fixtures/fashion."""
    if not (FIX / "t10k_list.txt").is_file():
        pytest.skip("fixtures/fashion is missing")
    monkeypatch.chdir(FIX)  # read only: every file these tests write is under tmp_path
    return AnaJob("caffe", ["fashion_train_val.prototxt", "fashion.caffemodel"],
                  {"kind": "caffe", "acc_name": "top-1", "test_iter": 1}, ratios=[0.3, 0.6])


def copy_state(name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    shutil.copyfile(STATES / name, path)
    return path


@pytest.mark.parametrize("name", ["complete.json", "partial.json", "early_stop.json"])
def test_old_state_files_load_and_rewrite_to_the_same_bytes(name, tmp_path):
    old = (STATES / name).read_bytes()
    result = AnaResult.load(STATES / name)
    assert result.to_json().encode() == old
    result.save(tmp_path / name)
    assert (tmp_path / name).read_bytes() == old


@pytest.mark.parametrize("name,early_stop", [("complete.json", None), ("early_stop.json", 0.05)])
def test_complete_old_state_file_resumes_without_evaluating(name, early_stop, job, tmp_path,
                                                            monkeypatch):
    def no_forward(*a, **k):
        raise AssertionError("a finished analysis evaluated again")
    state = copy_state(name, tmp_path)
    monkeypatch.setattr(Executor, "run", no_forward)  # the data are still decoded and hashed
    monkeypatch.setattr(Executor, "prefix", no_forward)
    result = run_ana(dataclasses.replace(job, early_stop=early_stop), state, progress=False)
    assert result.complete and result.evaluated == result.forward_evaluations == 0
    assert state.read_bytes() == (STATES / name).read_bytes()
    want = format_sensitivity(AnaResult.load(STATES / name).to_table())
    assert format_sensitivity(result.to_table()) == want


def test_partial_old_state_file_resumes_to_the_complete_one(job, tmp_path):
    state = copy_state("partial.json", tmp_path)
    before = AnaResult.load(state)
    seen = []
    result = run_ana(job, state, progress=False, on_result=lambda gid, r, v: seen.append((gid, r)))
    assert before.done == 5 and result.evaluated == len(seen) == 12 - 5
    assert result.forward_evaluations == 12 - 5  # the baseline is not evaluated again
    assert not {(gid, r) for gid, row in before.results.items() for r in row} & set(seen)
    assert state.read_bytes() == (STATES / "complete.json").read_bytes()


def test_the_same_analysis_written_again_gives_the_same_bytes(job, tmp_path):
    fresh = tmp_path / "fresh.json"
    run_ana(job, fresh, progress=False)
    assert fresh.read_bytes() == (STATES / "complete.json").read_bytes()
