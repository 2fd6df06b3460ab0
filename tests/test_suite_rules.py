"""The suite's own rules: a missing oracle fails under CI=true and skips elsewhere; CI's
rotating shard of the slow sweeps covers every slow case."""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SLOW_SHARDS, in_shard, slow_shard

TESTS = Path(__file__).resolve().parent

TINY_SUITE = '''
from assets import missing_oracle, needs, zoo


def test_direct():
    missing_oracle("the frobnicator is not installed")


@needs(False, "the widget is absent")
def test_marked():
    pass


def test_zoo_file():
    zoo("no/such/model.prototxt")
'''

CONFTEST = f'''
import importlib.util

spec = importlib.util.spec_from_file_location("suite_conftest", {str(TESTS / "conftest.py")!r})
suite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite)
pytest_configure = suite.pytest_configure
pytest_runtest_setup = suite.pytest_runtest_setup
'''


def run_tiny_suite(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_tiny.py").write_text(TINY_SUITE)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:randomly",
                           "-p", "no:cacheprovider", str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_missing_oracles_fail_under_ci(tmp_path):
    proc = run_tiny_suite(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout
    # a marked test fails in its setup (pytest counts an error), the others in their body
    assert "2 failed, 1 error" in proc.stdout, proc.stdout
    shared = TESTS.parents[1] / "shared"  # a fresh clone alone has none: that is the reason then
    zoo_why = ("zoo file no/such/model.prototxt not found" if shared.is_dir()
               else f"shared folder not found at {shared}")
    for why in ("the frobnicator is not installed", "the widget is absent", zoo_why):
        assert f"CI=true and {why}" in proc.stdout, proc.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_missing_oracles_skip_outside_ci(tmp_path, ci):
    proc = run_tiny_suite(tmp_path, ci)
    assert proc.returncode == 0, proc.stdout
    assert "3 skipped" in proc.stdout and "failed" not in proc.stdout, proc.stdout
    assert "the widget is absent" in proc.stdout


def test_slow_shard_setting(monkeypatch):
    assert slow_shard("2/6") == (2, 6)
    assert slow_shard("0") is None and slow_shard("off") is None
    for bad in ("6/6", "x", "1/", "-1/3"):
        with pytest.raises(pytest.UsageError, match="CAFFE_SURGEON_SLOW_SHARD"):
            slow_shard(bad)
    monkeypatch.setenv("CI", "true")
    assert slow_shard(None) is not None  # CI runs a shard by default
    monkeypatch.delenv("CI")
    assert slow_shard(None) is None


def test_auto_shard_rotates_through_every_shard_by_date():
    start = datetime.date(2025, 1, 1)
    picked = [slow_shard("auto", start + datetime.timedelta(days=i)) for i in range(SLOW_SHARDS)]
    assert {k for k, _ in picked} == set(range(SLOW_SHARDS))
    assert {n for _, n in picked} == {SLOW_SHARDS}


def test_every_slow_case_is_in_exactly_one_shard():
    ids = [f"tests/test_x.py::test_y[case{i}]" for i in range(600)]
    counts = [sum(in_shard(i, (k, SLOW_SHARDS)) for i in ids) for k in range(SLOW_SHARDS)]
    assert sum(counts) == len(ids)
    assert min(counts) > 0.6 * len(ids) / SLOW_SHARDS  # roughly even
