"""``caffe-surgeon edit`` chains, the README's Edit example and the batch recipe."""
from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.cli.edit import split

from assets import FIXTURES
from edit_oracles import engine_outputs, rel

ROOT = Path(__file__).resolve().parents[1]
FASHION = FIXTURES / "fashion"


def run(*argv, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "caffe_surgeon.cli.main", "edit", *map(str, argv)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_the_grammar_splits_edits_at_their_names_and_takes_o_from_anywhere():
    head, chain, outs = split(["m.prototxt", "m.caffemodel", "--phase", "TEST", "fold-bn",
                               "--keep-unfoldable", "cut", "--outputs", "a", "b", "-o", "x.prototxt",
                               "strip", "--keep-phase", "TEST"])
    assert head == ["m.prototxt", "m.caffemodel", "--phase", "TEST"]
    assert chain == [("fold-bn", ["--keep-unfoldable"]), ("cut", ["--outputs", "a", "b"]),
                     ("strip", ["--keep-phase", "TEST"])]
    assert outs == ["x.prototxt"]
    with pytest.raises(cs.ModelError, match="name at least one edit"):
        split(["m.prototxt", "-o", "x.prototxt"])


def test_fold_then_strip_in_one_command_matches_the_api_and_the_original(tmp_path):
    proc = run(FASHION / "fashion_train_val.prototxt", FASHION / "fashion.caffemodel",
               "fold-bn", "strip", "--keep-phase", "TEST",
               "-o", tmp_path / "d.prototxt", tmp_path / "d.caffemodel")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(l.startswith("fold-bn: folded") for l in lines) == 7
    assert any(l.startswith("strip: replaced ImageData 'data'") for l in lines)
    assert lines[-1].startswith("wrote ")
    g = cs.load(FASHION / "fashion_train_val.prototxt", FASHION / "fashion.caffemodel")
    api = cs.edit.strip(cs.edit.fold_bn(g), keep_phase="TEST")
    cs.save(api, tmp_path / "a.prototxt", tmp_path / "a.caffemodel")
    assert (tmp_path / "a.prototxt").read_bytes() == (tmp_path / "d.prototxt").read_bytes()
    assert (tmp_path / "a.caffemodel").read_bytes() == (tmp_path / "d.caffemodel").read_bytes()
    d = cs.load(tmp_path / "d.prototxt", tmp_path / "d.caffemodel")
    deploy = cs.load(FASHION / "fashion_deploy.prototxt", FASHION / "fashion.caffemodel")
    x = np.load(FASHION / "sample.npy")[:1].astype(np.float32).reshape(1, 1, 28, 28)
    got = engine_outputs(d, {"data": x})  # the train_val's scores (its softmax is in the loss)
    want = engine_outputs(deploy, {"data": x}, list(got))
    assert got and all(rel(got[k], want[k]) <= 1e-5 for k in want)


def test_errors_are_one_line_and_nothing_is_written(tmp_path):
    cases = [
        (["cut", "--outputs", "nope"], "no blob named 'nope'"),
        (["set-input", "--shape", "1,1,56,56"], "fix its input"),
        (["strip", "--keep-phase", "TRAIN", "--bogus"], "unrecognized"),
        (["--phase", "TRAIN", "strip", "--keep-phase", "TEST"], "disagree"),
        (["replace-activation", "ReLU6", "ReLU"], "no layer uses the activation 'ReLU6'"),
    ]
    for words, expected in cases:
        proc = run(FASHION / "fashion_deploy.prototxt", FASHION / "fashion.caffemodel", *words,
                   "-o", tmp_path / "o.prototxt", tmp_path / "o.caffemodel")
        assert proc.returncode == 2, (words, proc.stdout, proc.stderr)
        assert expected in proc.stderr and proc.stderr.count("\n") <= 2, (words, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert not list(tmp_path.iterdir()), words


def test_without_o_it_is_a_preview(tmp_path):
    proc = run(FASHION / "fashion.cfg", FASHION / "fashion.weights", "fold-bn", cwd=tmp_path)
    assert proc.returncode == 0 and "nothing written" in proc.stdout
    assert not list(tmp_path.iterdir())


def _readme_edit_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Edit"):text.index("## Layout")]


def test_readme_edit_example_runs(tmp_path, monkeypatch, capsys):
    import tempfile
    code = re.findall(r"```python\n(.*?)```", _readme_edit_section(), re.S)[0]
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: str(tmp_path))
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert out.startswith("relu1 ['conv2a', 'res2']")
    assert "folded BatchNorm 'bn1' + Scale 'scale1' into Convolution 'conv1'" in out
    trunk = cs.load(tmp_path / "trunk.prototxt", tmp_path / "trunk.caffemodel")
    g = cs.load(FIXTURES / "caffe" / "tinynet_deploy.prototxt",
                FIXTURES / "caffe" / "tinynet.caffemodel")
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert rel(engine_outputs(trunk, {"data": x})["res2"],
               engine_outputs(g, {"data": x}, ["res2"])["res2"]) <= 1e-5


def test_batch_edit_folds_and_strips_a_folder_with_any_number_of_workers(tmp_path):
    src = tmp_path / "models"
    (src / "darknet").mkdir(parents=True)
    shutil.copy(FASHION / "fashion_deploy.prototxt", src / "fashion.prototxt")
    shutil.copy(FASHION / "fashion.caffemodel", src / "fashion.caffemodel")
    shutil.copy(FASHION / "fashion_train_val.prototxt", src / "train_val.prototxt")
    shutil.copy(FASHION / "solver.prototxt", src / "solver.prototxt")
    shutil.copy(FASHION / "fashion.cfg", src / "darknet" / "fashion.cfg")
    shutil.copy(FASHION / "fashion.weights", src / "darknet" / "fashion.weights")
    (src / "broken.prototxt").write_text('layer { name: "c" type: "Convolution" \n')
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        proc = subprocess.run([sys.executable, str(ROOT / "tools" / "batch_edit.py"), str(src),
                               "-o", str(out), "--workers", str(workers)],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs.append(out)
    rows = {r["path"]: r for r in csv.DictReader((outs[0] / "edits.csv").open())}
    assert list(rows) == sorted(rows)
    assert rows["fashion.prototxt"]["folded"] == "7" and rows["fashion.prototxt"]["kept"] == "0"
    assert int(rows["fashion.prototxt"]["params_after"]) < int(rows["fashion.prototxt"]["params_before"])
    assert rows["darknet/fashion.cfg"]["folded"] == "7"
    assert rows["train_val.prototxt"]["stripped"] == "5"  # other-phase data, 2 Accuracy, loss, data
    assert rows["solver.prototxt"]["skipped"].startswith("a solver")
    assert rows["broken.prototxt"]["error"]
    for f in sorted(p for p in outs[0].rglob("*") if p.is_file()):
        twin = outs[1] / f.relative_to(outs[0])
        assert twin.read_bytes() == f.read_bytes(), f  # the same files with 1 or 2 workers
    g = cs.load(outs[0] / "darknet" / "fashion.cfg", outs[0] / "darknet" / "fashion.weights")
    assert not any(l.params.get("batch_normalize") for l in g.layers)
