"""What a new user meets in the first hour (issue 19): a fresh clone without ``../shared``.

Each test here states one promise of the README and checks it from the user's side.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: zoo-dependent tests run in the copy: each must skip, never fail or error, without ../shared.
ZOO_TESTS = [
    "tests/test_darknet_io.py::test_crlf_cfg_keeps_crlf_when_an_option_changes",
    "tests/test_proto_schema.py::test_zoo_classification_sanity",
    "tests/test_proto_schema.py::test_files_that_failed_every_public_schema_now_parse",
]


def _clone_without_shared(dest: Path) -> Path:
    """Copy the tracked files of this checkout to ``dest/repo`` (nothing named shared beside it)."""
    try:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True,
                                check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot list the tracked files")
    repo = dest / "repo"
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    assert not (dest / "shared").exists()
    return repo


def _pytest(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(repo))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_clone_without_shared_collects_everything_and_zoo_tests_skip(tmp_path):
    repo = _clone_without_shared(tmp_path)
    collected = _pytest(repo, "--collect-only")
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert " error" not in collected.stdout.splitlines()[-1], collected.stdout[-3000:]
    ran = _pytest(repo, "-rs", *ZOO_TESTS)
    summary = ran.stdout.strip().splitlines()[-1]
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "failed" not in summary and "error" not in summary, summary
    assert f"{len(ZOO_TESTS)} skipped" in summary, summary


def test_progress_needs_nothing_beyond_a_plain_install():
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(d.split(">")[0].strip() == "tqdm" for d in project["dependencies"])


def test_without_matplotlib_the_plot_is_not_promised_and_stderr_says_what_to_install(
        tmp_path, monkeypatch, capsys):
    from caffe_surgeon.workflow.ana import AnaResult, write_reports
    result = AnaResult.load(REPO / "fixtures" / "ana_state" / "complete.json")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    written = write_reports(result, tmp_path)
    assert sorted(p.name for p in written) == ["ana_sensitivity.csv", "ana_sensitivity.txt"]
    assert not (tmp_path / "ana_sensitivity.png").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ana_sensitivity.png not written" in err[0]
    assert "pip install matplotlib" in err[0]
