"""The vai_p workflow end to end on the trained Fashion-MNIST fixture.

vai_p_caffe ana -> prune (rate 0.5) -> transform -> stat, from a config.prototxt in the
vendor's format; the Darknet twin from a [pruning] INI; sensitivity allocation against
uniform L1 at the same operations reduction.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs
from assets import FASHION_DATA, needs

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "fashion"
DATASET = FASHION_DATA
COUNT = 300  # images: 6 test batches of 50

pytestmark = needs((DATASET / "t10k-images-idx3-ubyte.gz").exists(),
                   "Debian package dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from tools.make_fashion_data import make_fashion_data
    d = tmp_path_factory.mktemp("fashion")
    make_fashion_data(d, COUNT)
    for name in ("fashion_train_val.prototxt", "fashion.caffemodel", "fashion.cfg",
                 "fashion.weights", "fashion.names"):
        shutil.copy(FIX / name, d / name)
    (d / "fashion.data").write_text("classes=10\nvalid=t10k_valid.txt\nlabels=fashion.names\n"
                                    "names=fashion.names\ntop=5\n")
    return d


def run_in(d, main, argv):
    old = os.getcwd()
    os.chdir(d)  # the vendor tools resolve every path against the current directory
    try:
        return main(argv)
    finally:
        os.chdir(old)


def caffe_ana_then_prune(d, config: str, capsys) -> tuple[dict, str]:
    """Write ``config.prototxt`` in ``d``, run ``vai_p_caffe ana`` then ``prune`` there;
    returns the analysis state file and prune's output."""
    import json

    from caffe_surgeon.cli.vai_p_caffe import main
    (d / "config.prototxt").write_text(config)
    assert run_in(d, main, ["ana", "-config", "config.prototxt", "-no_progress"]) == 0
    capsys.readouterr()
    assert run_in(d, main, ["prune", "-config", "config.prototxt"]) == 0
    return json.loads((d / "ws" / ".ana.regular").read_text()), capsys.readouterr().out


CONFIG = """# vai_p_caffe config, vendor format
workspace: "ws"
gpu: "0"
test_iter: 6
acc_name: "top-1"
model: "fashion_train_val.prototxt"
weights: "fashion.caffemodel"
rate: 0.5
pruner {
  method: REGULAR
}
"""


@pytest.fixture(scope="module")
def caffe_pruned(work):
    """``vai_p_caffe ana`` then ``prune`` (rate 0.5) from CONFIG in ``work``, once; prune's output."""
    from caffe_surgeon.cli.vai_p_caffe import main
    (work / "config.prototxt").write_text(CONFIG)
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_in(work, main, ["ana", "-config", "config.prototxt", "-no_progress"]) == 0
    assert (work / "ws" / ".ana.regular").exists()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_in(work, main, ["prune", "-config", "config.prototxt"]) == 0
    return out.getvalue()


def test_caffe_ana_prune_transform_stat(work, caffe_pruned, capsys):
    from caffe_surgeon.cli.vai_p_caffe import main
    out = caffe_pruned
    assert "Analysis info found." in out and "Operations" in out and "Accuracy" in out
    rdir = work / "ws" / "regular_rate_0.5"
    assert (rdir / "sparse.caffemodel").exists() and (rdir / "final.prototxt").exists()
    # ops -50% +- 1% by the vendor's count, on the pruned TEST net
    base = cs.stat(cs.load(work / "fashion_train_val.prototxt"), {"data": (1, 1, 28, 28)}).total
    final = cs.stat(cs.load(rdir / "final.prototxt"), {"data": (1, 1, 28, 28)}).total
    assert abs(final.ops / base.ops - 0.5) <= 0.01, final.ops / base.ops
    # transform the sparse weights against the original model: same architecture as final
    assert run_in(work, main, ["transform", "-model", "fashion_train_val.prototxt", "-weights",
                               str(rdir / "sparse.caffemodel"), "-output",
                               str(rdir / "transformed.caffemodel")]) == 0
    t = cs.load(rdir / "transformed.prototxt", rdir / "transformed.caffemodel")
    f = cs.load(rdir / "final.prototxt", rdir / "transformed.caffemodel")
    assert [l.weights[k].shape for l in t.layers for k in l.weights] == \
        [l.weights[k].shape for l in f.layers for k in l.weights]
    capsys.readouterr()
    assert run_in(work, main, ["stat", "-model", str(rdir / "final.prototxt"),
                               "-input_shape", "data=1,1,28,28"]) == 0
    stat_out = capsys.readouterr().out
    assert f"{final.ops:,}".replace(",", "") in stat_out.replace(",", "")


def test_caffe_prune_accuracy_beats_uniform_l1(work, caffe_pruned):
    """At the same operations reduction, the sensitivity allocation keeps more accuracy."""
    from caffe_surgeon.pruning import analyse, apply, make_plan
    from caffe_surgeon.workflow.allocate import OpsCounter
    from caffe_surgeon.evaluation.spec import build_evaluator, load_eval_graph
    rdir = work / "ws" / "regular_rate_0.5"
    spec = {"kind": "caffe", "acc_name": "top-1", "test_iter": 6, "base_dir": str(work)}
    g = load_eval_graph("caffe", [str(work / "fashion_train_val.prototxt"),
                                  str(work / "fashion.caffemodel")], spec)
    ev = build_evaluator(spec, g)
    shapes = ev.input_shapes
    a = analyse(g, input_shapes=shapes)
    counter = OpsCounter(g, a, 2, shapes)
    target = 0.5 * counter.ops({})
    lo, hi = 0.0, 0.95  # the uniform ratio giving the same reduction
    for _ in range(30):
        mid = (lo + hi) / 2
        if counter.ops({grp.id: mid for grp in a.prunable_groups()}) > target:
            lo = mid
        else:
            hi = mid
    uniform = apply(g, make_plan(a, ratio=hi, divisor=2), analysis=a)
    from caffe_surgeon.pruning import Plan
    plan = Plan.load(rdir / "plan.json")
    sens = apply(g, plan, analysis=a)
    acc_uniform, acc_sens = ev.evaluate(uniform), ev.evaluate(sens)
    print(f"rate 0.5: uniform L1 (ratio {hi:.3f}) top-1 {acc_uniform:.4f}, "
          f"sensitivity allocation {acc_sens:.4f}")
    assert acc_sens > acc_uniform


PRUNING_INI = """[pruning]
workspace=dws
datacfg=fashion.data
modelcfg=fashion.cfg
prunedcfg=dws/fashion-prune.cfg
ana_out_file=dws/ana.out
prune_out_weights=dws/weights.prune
criteria=0
kernel_batch=2
rate=0.5
"""


def test_darknet_ana_prune_transform(work, capsys):
    from caffe_surgeon.cli.vai_p_darknet import main
    (work / "pruning.cfg").write_text(PRUNING_INI)
    assert run_in(work, main, ["pruner", "ana", "pruning.cfg", "fashion.weights", "-no_progress"]) == 0
    assert (work / "dws" / "ana.out").exists()
    capsys.readouterr()
    assert run_in(work, main, ["pruner", "prune", "pruning.cfg", "fashion.weights"]) == 0
    out = capsys.readouterr().out
    assert "Operations" in out
    base = cs.stat(cs.load(work / "fashion.cfg")).total.ops
    pruned = cs.stat(cs.load(work / "dws" / "fashion-prune.cfg")).total.ops
    assert abs(pruned / base - 0.5) <= 0.01, pruned / base
    assert run_in(work, main, ["pruner", "transform", "pruning.cfg", "dws/weights.prune"]) == 0
    t = cs.load(work / "dws" / "model-transform.cfg", work / "dws" / "model-transform.weights")
    assert cs.stat(t).total.ops == pruned
    capsys.readouterr()
    assert run_in(work, main, ["pruner", "map", "pruning.cfg", "dws/model-transform.weights",
                               "-pruned"]) == 0  # prunedcfg with the dense weights
    assert "top-1" in capsys.readouterr().out


def test_early_stop_from_the_command_line_and_the_ini(work, capsys):
    import json
    from caffe_surgeon.cli import vai_p_caffe, vai_p_darknet
    (work / "config_es.prototxt").write_text(CONFIG.replace('"ws"', '"ws_es"'))
    argv = ["ana", "-config", "config_es.prototxt", "-no_progress", "-early_stop", "0.02"]
    assert run_in(work, vai_p_caffe.main, argv) == 0
    out = capsys.readouterr().out
    state = json.loads((work / "ws_es" / ".ana.regular").read_text())
    assert state["early_stop"]["drop"] == 0.02 and state["done"]["complete"]
    assert state["done"]["skipped"] > 0  # the 9-ratio curves of this model fall past 2%
    assert f"early stop at a relative drop of 0.02: {len(state['early_stop']['stopped'])} group(s)" in out
    assert run_in(work, vai_p_caffe.main, argv[:-2] + ["-early_stop", "-1"]) == 2
    assert "early_stop must be a relative metric drop > 0" in capsys.readouterr().err

    (work / "pruning_es.cfg").write_text(PRUNING_INI.replace("dws", "dws_es") + "early_stop=0.02\n")
    assert run_in(work, vai_p_darknet.main, ["pruner", "ana", "pruning_es.cfg", "fashion.weights",
                                             "-no_progress"]) == 0
    state = json.loads((work / "dws_es" / "ana.out").read_text())
    assert state["early_stop"]["drop"] == 0.02 and state["done"]["skipped"] > 0
    done = state["done"]["evaluations"]
    # the command line overrides the INI: every ratio, measured values kept
    assert run_in(work, vai_p_darknet.main, ["pruner", "ana", "pruning_es.cfg", "fashion.weights",
                                             "-no_progress", "-early_stop", "none"]) == 0
    state = json.loads((work / "dws_es" / "ana.out").read_text())
    assert "early_stop" not in state and state["done"]["complete"]
    assert state["done"]["evaluations"] == state["done"]["total"] > done
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        run_in(work, vai_p_darknet.main, ["pruner", "ana", "pruning_es.cfg", "fashion.weights",
                                          "-early_stop", "lots"])
    assert exit_.value.code == 2
    assert "expected a relative drop like 0.1, or none; got 'lots'" in capsys.readouterr().err


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.replace('acc_name: "top-1"', 'acc_name: "top-9"'), "top-9"),
    (lambda c: c.replace("test_iter: 6", "test_iter: 6\nlearning_rate: 0.1"), "learning_rate"),
    (lambda c: c.replace('weights: "fashion.caffemodel"', 'weights: "missing.caffemodel"'),
     "missing.caffemodel"),
    (lambda c: c.replace('workspace: "ws"', 'workspace: "fashion.caffemodel"'),
     "fashion.caffemodel: cannot create the folder"),  # a file in the way
    (lambda c: c.replace('gpu: "0"', 'gpu: "\u00b2"'), "field 'gpu'"),  # "²".isdigit()
])
def test_bad_config_fails_before_any_evaluation(work, capsys, edit, message):
    from caffe_surgeon.cli.vai_p_caffe import main
    (work / "bad.prototxt").write_text(edit(CONFIG).replace('workspace: "ws"', 'workspace: "ws_bad"'))
    assert run_in(work, main, ["ana", "-config", "bad.prototxt", "-no_progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (work / "ws_bad" / ".ana.regular").exists()


def test_empty_image_list_and_unreadable_image_are_refused(work, capsys, tmp_path):
    from caffe_surgeon.cli.vai_p_caffe import main
    d = tmp_path / "w"
    shutil.copytree(work, d, ignore=shutil.ignore_patterns("ws*", "dws*", "t10k_lmdb*"))
    (d / "t10k_list.txt").write_text("")
    (d / "config.prototxt").write_text(CONFIG)
    assert run_in(d, main, ["ana", "-config", "config.prototxt", "-no_progress"]) == 2
    assert "t10k_list.txt" in capsys.readouterr().err
    first = sorted((d / "t10k").iterdir())[0]
    (d / "t10k_list.txt").write_text(f"{first.name} 3\n")
    first.write_bytes(b"not a png")
    assert run_in(d, main, ["ana", "-config", "config.prototxt", "-no_progress"]) == 2
    assert first.name in capsys.readouterr().err


def test_prune_reads_the_analysis_only_with_its_own_settings_and_reference(work, capsys, tmp_path):
    """prune's baseline comes from the analysis, its measurement from the config: they must be
    the same evaluation. A later round from other weights still compares, label-free, with
    the analysed model (ana's reference file), not with itself."""
    import re

    from caffe_surgeon.cli.vai_p_caffe import main
    d = tmp_path / "w"
    shutil.copytree(work, d, ignore=shutil.ignore_patterns("ws*", "dws*", "t10k_lmdb*"))
    config = CONFIG.replace("rate: 0.5", "rate: 0.3\nlabel_free: true")
    _, out = caffe_ana_then_prune(d, config, capsys)
    assert (d / "ws" / ".ana.regular.reference.npz").exists()

    def accuracy(text):
        row = next(line for line in text.splitlines() if line.startswith("| Accuracy"))
        return [float(x) for x in re.findall(r"-?\d+\.?\d*(?:e-?\d+)?", row)]

    first = accuracy(out)
    assert first[0] == 1.0 and first[1] < 1.0
    sparse = "ws/regular_rate_0.3/sparse.caffemodel"
    shutil.copy(d / sparse, d / "round1.caffemodel")
    (d / "round2.prototxt").write_text(config.replace("fashion.caffemodel", "round1.caffemodel"))
    assert run_in(d, main, ["prune", "-config", "round2.prototxt"]) == 0
    # the same channels go (they rank lowest), so the same agreement with the original: not 1
    assert accuracy(capsys.readouterr().out)[:2] == first[:2]
    (d / "ws" / ".ana.regular.reference.npz").unlink()
    assert run_in(d, main, ["prune", "-config", "round2.prototxt"]) == 2
    assert "outputs (.ana.regular.reference.npz) are missing" in capsys.readouterr().err

    for edit, message in [
        (lambda c: c.replace("label_free: true", ""),
         "evaluator field 'label_free' changed from True to False"),
        (lambda c: c.replace("test_iter: 6", "test_iter: 2"), "'test_iter' changed from 6 to 2"),
        (lambda c: c.replace("rate: 0.3", 'rate: 0.3\ncriterion: "l2"'), "criterion changed"),
        (lambda c: c.replace("rate: 0.3", "rate: 0.3\nchannel_divisible: 4"), "divisor changed"),
        (lambda c: c.replace("method: REGULAR", 'method: REGULAR\n  exclude { layer_top: "conv1" }'),
         "ignore changed"),
    ]:
        (d / "other.prototxt").write_text(edit(config))
        before = (d / sparse).read_bytes()
        assert run_in(d, main, ["prune", "-config", "other.prototxt"]) == 2
        err = capsys.readouterr().err
        assert "measured with other settings" in err and message in err, err
        assert (d / sparse).read_bytes() == before  # nothing written


def test_exclude_names_top_blobs_and_finds_the_layer_that_writes_them(work, capsys, tmp_path,
                                                                     monkeypatch):
    # real nets name a convolution's top differently from the layer (conv1 -> bn1 ...)
    import re

    from caffe_surgeon.cli.caffe_workflow import excluded_layers
    from caffe_surgeon.cli.vai_p_caffe import main
    from caffe_surgeon.workflow.config import read_caffe_config
    text = (work / "fashion_train_val.prototxt").read_text()
    (tmp_path / "net.prototxt").write_text(re.sub(r'(top|bottom): "conv4"', r'\1: "c4out"', text))
    shutil.copy(work / "fashion.caffemodel", tmp_path / "fashion.caffemodel")
    config = CONFIG.replace("fashion_train_val.prototxt", "net.prototxt").replace(
        "method: REGULAR", 'method: REGULAR\n  exclude { layer_top: "c4out" }\n'
        '  exclude { layer_top: "conv1" }')
    (tmp_path / "config.prototxt").write_text(config)
    monkeypatch.chdir(tmp_path)  # the vendor's paths are relative to the current folder
    assert excluded_layers(read_caffe_config("config.prototxt")) == ["conv4", "conv1"]
    (tmp_path / "config.prototxt").write_text(config.replace('"c4out"', '"nothing"'))
    assert run_in(tmp_path, main, ["ana", "-config", "config.prototxt", "-no_progress"]) == 2
    err = capsys.readouterr().err
    assert "layer_top 'nothing', which no layer of" in err and err.count("\n") == 1


def test_transform_never_overwrites_its_inputs_or_itself(tmp_path, capsys):
    from caffe_surgeon.cli import vai_p_caffe, vai_p_darknet
    for name in ("fashion_train_val.prototxt", "fashion.caffemodel", "fashion.cfg", "fashion.weights"):
        shutil.copy(FIX / name, tmp_path / name)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    (tmp_path / "folder.caffemodel").mkdir()
    base = ["transform", "-model", "fashion_train_val.prototxt", "-weights", "fashion.caffemodel"]
    for output, message in [("fashion_train_val.caffemodel", "would overwrite the input"),
                            ("fashion.caffemodel", "would overwrite the input"),
                            ("out.prototxt", "two outputs would be written to one file"),
                            ("folder.caffemodel", "is a folder")]:
        assert run_in(tmp_path, vai_p_caffe.main, base + ["-output", output]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    for output, message in [("fashion", "would overwrite the input"),
                            ("fashion.weights", "would overwrite the input")]:
        assert run_in(tmp_path, vai_p_darknet.main,
                      ["pruner", "transform", "fashion.cfg", "fashion.weights", "-o", output]) == 2
        assert message in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    # a dotted prefix keeps its dots: fashion.round1 -> fashion.round1.cfg / .weights
    assert run_in(tmp_path, vai_p_darknet.main, ["pruner", "transform", "fashion.cfg",
                                                 "fashion.weights", "-o", "fashion.round1"]) == 0
    assert (tmp_path / "fashion.round1.cfg").exists() and (tmp_path / "fashion.round1.weights").exists()
    assert run_in(tmp_path, vai_p_caffe.main, base + ["-output", "dense.caffemodel"]) == 0
    assert (tmp_path / "dense.prototxt").exists()
    assert all((tmp_path / n).read_bytes() == b for n, b in before.items())


def test_workers_zero_is_refused_before_any_evaluation(work, capsys):
    from caffe_surgeon.cli.vai_p_caffe import main
    (work / "w0.prototxt").write_text(CONFIG.replace('workspace: "ws"', 'workspace: "ws_w0"'))
    assert run_in(work, main, ["ana", "-config", "w0.prototxt", "-no_progress", "-workers", "0"]) == 2
    assert "workers must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not (work / "ws_w0" / ".ana.regular").exists()


def test_darknet_prune_by_the_vendors_threshold_when_no_rate(work, capsys, tmp_path):
    """An unmodified vendor [pruning] file has threshold=, no rate=: each group goes to its
    largest analysed ratio whose relative drop is within it."""
    import json

    from caffe_surgeon.cli.vai_p_darknet import main
    d = tmp_path / "w"
    shutil.copytree(work, d, ignore=shutil.ignore_patterns("ws*", "dws*", "t10k_lmdb*"))
    (d / "pruning.cfg").write_text(PRUNING_INI.replace("ratios=", "#").replace(
        "rate=0.5", "ratios=0.2,0.5,0.8\nthreshold=0.02"))
    assert run_in(d, main, ["pruner", "ana", "pruning.cfg", "fashion.weights", "-no_progress"]) == 0
    state = json.loads((d / "dws" / "ana.out").read_text())
    base = state["baseline"]
    want = {}
    for g in state["groups"]:
        ok = [float(r) for r, v in state["results"][str(g["id"])].items() if (base - v) / base <= 0.02]
        want[g["producers"][0]] = max(ok) if ok else None
    assert None in want.values() or len(set(want.values())) > 1  # a real choice per group
    capsys.readouterr()
    assert run_in(d, main, ["pruner", "prune", "pruning.cfg", "fashion.weights"]) == 0
    out = capsys.readouterr().out
    assert "threshold 0.02: operations -" in out
    plan = json.loads((d / "dws" / "weights.plan.json").read_text())
    got = {g["producers"][0]: g.get("ratio") for g in plan["groups"]}
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in want.items() if v}, (got, want)
    (d / "pruning.cfg").write_text(PRUNING_INI.replace("rate=0.5\n", ""))
    assert run_in(d, main, ["pruner", "prune", "pruning.cfg", "fashion.weights"]) == 2
    assert "needs rate=" in capsys.readouterr().err
