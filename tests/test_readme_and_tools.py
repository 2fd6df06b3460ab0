"""The README's commands and the batch script run, so documentation cannot rot."""
from __future__ import annotations

import csv
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from assets import shared_dir

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ENTRY = {"caffe-surgeon": "caffe_surgeon.cli.main", "vai_p_caffe": "caffe_surgeon.cli.vai_p_caffe",
         "vai_p_darknet": "caffe_surgeon.cli.vai_p_darknet"}


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def readme_commands():
    cmds = []
    for block in blocks("sh")[2:]:  # the first two: see the tests below
        for line in block.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "&& cd " in line:  # a recipe run in a copy of a fixture folder: its own test
                continue
            # "pip install ... && <command>": the install is CI's job; run what follows it.
            part = line.split("&&")[-1].strip()
            if part.split()[0] in ENTRY:
                cmds.append(part)
    return cmds


def test_readme_starts_with_setup_and_test_commands():
    first, second = blocks("sh")[:2]
    assert first.startswith("python -m pip install ") and "vai_p_caffe ana" in first
    assert "pytest" in second
    ci = (ROOT / ".ci" / "run").read_text()
    assert second.strip() in ci, "CI must run the README's test command"


def test_readme_quick_start_runs_the_workflow_on_the_shipped_example(tmp_path):
    """The first command, after its install, in a copy of the repository's fixtures (the
    workspace it writes stays out of the checkout): ana, then prune at the config's rate."""
    steps = [s.strip() for s in blocks("sh")[0].strip().split("&&")][1:]
    assert steps[0].startswith("cd ")
    cwd = tmp_path / steps[0].split()[1]
    shutil.copytree(ROOT / steps[0].split()[1], cwd)
    outs = []
    for step in steps[1:]:
        argv = shlex.split(step)
        proc = subprocess.run([sys.executable, "-m", ENTRY[argv[0]], *argv[1:]], cwd=cwd,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout)
    assert "baseline top-1 = 0.916" in outs[0]  # the shipped images' accuracy, as documented
    summary = {row.split("|")[1].strip(): [c.strip() for c in row.split("|")[2:5]]
               for row in outs[1].splitlines() if row.startswith("| ") and "Item" not in row}
    ops_delta = float(summary["Operations"][2].rstrip("%"))
    assert -51.0 <= ops_delta <= -49.0, summary
    assert float(summary["Accuracy"][0]) == pytest.approx(0.916, abs=1e-6)
    rdir = cwd / "ws" / "regular_rate_0.5"
    assert sorted(p.name for p in rdir.iterdir()) == ["final.prototxt", "plan.json",
                                                     "sparse.caffemodel"]
    # the README's figures: 0.668 as pruned, 0.906 refitted on the 64 shipped training images
    assert float(summary["Accuracy"][1]) == pytest.approx(0.668, abs=1e-6)
    proc = subprocess.run([*shlex.split(steps[-1].replace("vai_p_caffe", f"{sys.executable} -m "
                                                          f"{ENTRY['vai_p_caffe']}")),
                           "-reconstruct", "64"], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    refit = next(r for r in proc.stdout.splitlines() if r.startswith("| Accuracy"))
    assert float(refit.split("|")[3]) == pytest.approx(0.906, abs=1e-6)
    assert "-reconstruct 64" in README and "0.916 -> 0.906" in README and "0.916 -> 0.668" in README


#: The first line of every README shell block that writes: a folder the reader makes.
OUT_LINE = "OUT=$(mktemp -d)"


def in_tmp(command: str, tmp_path: Path) -> str:
    """The README writes under ``$OUT`` (its blocks start with ``OUT=$(mktemp -d)``); a test
    writes under its own tmp_path. Any other ``$`` or a fixed system temp path is refused."""
    assert "/tmp/" not in command, command
    out = command.replace("$OUT/", f"{tmp_path}/")
    assert "$" not in out, f"the README's commands may use $OUT/ only: {command}"
    return out


def test_readme_examples_write_only_under_a_folder_the_reader_makes():
    assert "/tmp/" not in README
    writing = [b for b in blocks("sh") if "$OUT" in b]
    assert len(writing) >= 2
    for block in writing:
        first = next(line for line in block.splitlines() if line.strip() and not line.startswith("#"))
        assert first.split("#")[0].strip() == OUT_LINE, block


def test_readme_commands_run_in_order(tmp_path):
    """In the README's order: later commands read what earlier ones wrote (the plan, the
    sparse model); the checkout's fixtures are only read."""
    commands = readme_commands()
    assert len(commands) >= 10 and any("--plan" in c for c in commands)
    before = {p: p.stat().st_mtime_ns for p in (ROOT / "fixtures").rglob("*")}
    for command in commands:
        argv = shlex.split(in_tmp(command, tmp_path))
        proc = subprocess.run([sys.executable, "-m", ENTRY[argv[0]], *argv[1:]], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (command, proc.stderr)
        assert proc.stdout.strip() or proc.stderr.strip(), command
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "fixtures").rglob("*")} == before
    assert (tmp_path / "tiny_sparse" / "transformed.caffemodel").is_file()


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    """It writes under ``tempfile.mkdtemp()``, a new folder; here the test's tmp_path."""
    import tempfile
    api = README.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", api, re.S)[0]
    assert "/tmp/" not in code and "out = tempfile.mkdtemp()" in code
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: str(tmp_path))
    monkeypatch.chdir(ROOT)  # its paths are relative to the checkout
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert "Convolution" in capsys.readouterr().out
    assert (tmp_path / "copy.caffemodel").is_file()


def test_batch_stat_on_the_zoo(tmp_path):
    zoo = shared_dir() / "zoo"
    out = tmp_path / "zoo.csv"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "batch_stat.py"), str(zoo), "-o", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    definitions = [p for p in zoo.rglob("*") if p.suffix in (".prototxt", ".cfg")]
    assert len(rows) == len(definitions)
    alex = rows["caffe/xilinx_pruning/alexnetBNnoLRN_train_val.prototxt"]
    assert alex["error"] == "" and int(alex["layers"]) > 20
    # Solvers and vai_p configs are not nets: skipped, saying what they are.
    solver = rows["caffe/bvlc/lenet_solver.prototxt"]
    assert not solver["error"] and solver["skipped"].startswith("a solver")
    assert rows["caffe/xilinx_pruning/config.prototxt"]["skipped"].startswith("a vai_p_caffe config")
    # A Data-layer net without crop_size says what to give.
    assert "input shape" in rows["caffe/bvlc/lenet_train_test.prototxt"]["error"]


def test_batch_stat_skips_solvers_label_maps_and_vai_p_configs_saying_why_and_takes_input_shape(
        tmp_path):
    fashion = ROOT / "fixtures" / "fashion"
    for name in ("solver.prototxt", "config.prototxt", "pruning.cfg", "fashion_deploy.prototxt"):
        shutil.copy(fashion / name, tmp_path / name)
    (tmp_path / "labelmap.prototxt").write_text(
        'item { name: "none_of_the_above" label: 0 display_name: "background" }\n')
    (tmp_path / "lmdb_net.prototxt").write_text(  # the size of a Data layer: from --input-shape
        'layer { name: "d" type: "Data" top: "data" data_param { source: "db" backend: LMDB } }\n'
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
        'convolution_param { num_output: 4 kernel_size: 3 } }\n')
    (tmp_path / "broken.prototxt").write_text('layer { name: "c" type: "Convolution" \n')

    def run(*extra):
        proc = subprocess.run([sys.executable, str(ROOT / "tools" / "batch_stat.py"), str(tmp_path),
                               *extra], capture_output=True, text=True, timeout=300, cwd=ROOT)
        rows = {r["path"]: r for r in csv.DictReader(proc.stdout.splitlines())}
        return proc, rows

    proc, rows = run()
    assert proc.returncode == 0, proc.stderr
    assert rows["solver.prototxt"]["skipped"] == "a solver (parses as caffe.SolverParameter), not a net definition"
    assert rows["labelmap.prototxt"]["skipped"].startswith("an SSD label map (parses as caffe.LabelMap)")
    assert rows["config.prototxt"]["skipped"] == "a vai_p_caffe config, not a net definition"
    assert rows["pruning.cfg"]["skipped"] == "a vai_p_darknet [pruning] config, not a net definition"
    assert all(not rows[n]["error"] for n in ("solver.prototxt", "labelmap.prototxt",
                                              "config.prototxt", "pruning.cfg"))
    assert rows["fashion_deploy.prototxt"]["error"] == "" and int(rows["fashion_deploy.prototxt"]["ops"]) > 0
    assert "broken.prototxt" in rows["broken.prototxt"]["error"] and not rows["broken.prototxt"]["skipped"]
    assert "give the input shape" in rows["lmdb_net.prototxt"]["error"]
    assert proc.stderr.strip() == ("3 models, 1 read, 2 errors; 4 files skipped as not nets "
                                   "(solvers, label maps, vai_p configs)")

    proc, rows = run("--input-shape", "data=1,1,8,8")
    assert rows["lmdb_net.prototxt"]["error"] == ""
    assert int(rows["lmdb_net.prototxt"]["params"]) == 4 * 9 + 4
    assert "names data, which the net does not take" not in rows["fashion_deploy.prototxt"]["error"]
    proc, _ = run("--input-shape", "data=1,x")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --input-shape 'data=1,x': dims must be integers like data=1,3,224,224"]
