"""What a new user meets in the first hour (issue 19): a fresh clone without ``../shared``.

Each test here states one promise of the README and checks it from the user's side.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def _pytest(repo: Path, *args: str, ci: bool = False) -> subprocess.CompletedProcess:
    """pytest in ``repo``: as on a user's machine, or (``ci``) as CI runs it."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PYTHONPATH=str(repo), **({"CI": "true"} if ci else {}))
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
    # CI has ../shared: there, its absence is a failure, not a skip
    in_ci = _pytest(repo, *ZOO_TESTS, ci=True)
    assert in_ci.returncode != 0 and "skipped" not in in_ci.stdout.strip().splitlines()[-1]


def test_progress_needs_nothing_beyond_a_plain_install():
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(d.split(">")[0].strip() == "tqdm" for d in project["dependencies"])


def test_the_plot_needs_no_plotting_library(tmp_path, monkeypatch, capsys):
    from caffe_surgeon.workflow.ana import AnaResult, write_reports
    result = AnaResult.load(REPO / "fixtures" / "ana_state" / "complete.json")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    written = write_reports(result, tmp_path)
    assert sorted(p.name for p in written) == ["ana_sensitivity.csv", "ana_sensitivity.png",
                                               "ana_sensitivity.txt"]
    assert (tmp_path / "ana_sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().err == ""


# -- item 3: prune says what its prediction assumes; -refine N measures neighbours ----------

FASHION = REPO / "fixtures" / "fashion"
STATES = REPO / "fixtures" / "ana_state"


@pytest.fixture
def fashion_prune(monkeypatch):
    """prune_to_rate on the fashion fixture with the 50-image analysis of fixtures/ana_state."""
    from caffe_surgeon.evaluation.spec import load_eval_graph
    from caffe_surgeon.workflow.ana import AnaJob, AnaResult
    from caffe_surgeon.workflow.prune_rate import prune_evaluator, prune_to_rate
    monkeypatch.chdir(FASHION)  # the job's image list is relative; nothing is written here
    job = AnaJob("caffe", ["fashion_train_val.prototxt", "fashion.caffemodel"],
                 {"kind": "caffe", "acc_name": "top-1", "test_iter": 1}, ratios=[0.3, 0.6])
    ana = AnaResult.load(STATES / "complete.json")
    graph = load_eval_graph("caffe", job.model_files, job.evaluator)
    evaluator = prune_evaluator(job, ana, STATES / "complete.json", graph)

    def run(rate, refine=0):
        return prune_to_rate(graph, ana, rate, evaluator=evaluator, refine=refine)
    return run


def test_refine_keeps_the_best_measured_allocation_on_the_same_operations_target(fashion_prune):
    plain = fashion_prune(0.5)
    refined = fashion_prune(0.5, refine=6)
    r = refined.refinement
    assert plain.refinement is None and r is not None
    assert r.start_metric == plain.summary.acc_compressed  # the greedy figure, measured
    assert 1 <= len(r.tried) <= 6
    assert r.best_metric == max([r.start_metric] + [m for _, m in r.tried])
    assert refined.summary.acc_compressed == r.best_metric  # what is written is what was measured
    assert refined.allocation.on_target and all(a.on_target for a, _ in r.tried)
    again = fashion_prune(0.5, refine=6)
    assert again.allocation.ratios == refined.allocation.ratios  # deterministic
    assert [m for _, m in again.refinement.tried] == [m for _, m in r.tried]
    assert "greedy allocation measured top-1" in r.note("top-1")


def test_prune_says_its_prediction_assumes_groups_do_not_interact(fashion_prune):
    note = fashion_prune(0.5).prediction_note()
    assert "assumes groups do not interact" in note and "measured drop" in note


def test_refine_hill_climbs_within_its_budget_and_never_measures_twice():
    from caffe_surgeon.workflow.allocate import Allocation
    from caffe_surgeon.workflow.refine import refine

    def alloc(x):
        return Allocation({0: x / 10}, 0, 1, 0.0, "greedy")
    score = {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.65, 5: 0.2}
    measured = []

    def measure(a):
        measured.append(round(a.ratios[0] * 10))
        return score[measured[-1]]

    def neighbours(a):
        x = round(a.ratios[0] * 10)
        return [alloc(v) for v in (x + 1, x - 1) if v in score]
    got = refine(alloc(1), 0.5, 10, neighbours, measure)
    assert round(got.best.ratios[0] * 10) == 3 and got.best_metric == 0.7
    assert measured == [2, 3, 4]  # 1 is the start, 2 (seen) is not measured again
    short = refine(alloc(1), 0.5, 1, neighbours, lambda a: score[round(a.ratios[0] * 10)])
    assert len(short.tried) == 1 and short.best_metric == 0.6
    lossy = refine(alloc(3), 0.7, 10, neighbours, lambda a: score[round(a.ratios[0] * 10)],
                   higher_is_better=False)
    assert lossy.best_metric == 0.2 and [m for _, m in lossy.tried] == [0.65, 0.2]


# -- item 5: -pruned with the sparse weights prune writes ---------------------------------

def _pruned_workspace(tmp_path, monkeypatch):
    """A [pruning] file whose prunedcfg is a dense cut of fashion.cfg, and the sparse weights of
    the same plan (what 'pruner prune' writes), made with caffe-surgeon prune."""
    from caffe_surgeon.cli.main import main as surgeon
    monkeypatch.chdir(FASHION)  # fashion.data's lists are relative to it; writes go to tmp_path
    assert surgeon(["prune", "fashion.cfg", "fashion.weights", "--ratio", "0.5",
                    "-o", str(tmp_path / "dense")]) == 0
    assert surgeon(["prune", "fashion.cfg", "fashion.weights", "--plan",
                    str(tmp_path / "dense" / "plan.json"), "--mode", "sparse",
                    "-o", str(tmp_path / "sparse")]) == 0
    ini = tmp_path / "pruning.cfg"
    ini.write_text(f"[pruning]\nworkspace={tmp_path / 'ws'}\ndatacfg=fashion.data\n"
                   f"modelcfg=fashion.cfg\nprunedcfg={tmp_path / 'dense' / 'fashion.cfg'}\n"
                   f"ana_out_file={tmp_path / 'ws' / 'ana.out'}\n"
                   f"prune_out_weights={tmp_path / 'ws' / 'w.prune'}\nkernel_batch=2\n")
    return ini


def test_map_pruned_on_sparse_weights_evaluates_their_dense_form_and_says_so(
        tmp_path, monkeypatch, capsys):
    from caffe_surgeon.cli.vai_p_darknet import main
    ini = _pruned_workspace(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["pruner", "map", str(ini), str(tmp_path / "dense" / "fashion.weights"),
                 "-pruned"]) == 0
    dense = capsys.readouterr()
    assert main(["pruner", "map", str(ini), str(tmp_path / "sparse" / "fashion.weights"),
                 "-pruned"]) == 0
    sparse = capsys.readouterr()
    assert sparse.out == dense.out and sparse.out.startswith("top-1: ")
    assert "is the sparse form prune writes" in sparse.err and len(sparse.err.splitlines()) == 1


def test_map_pruned_on_the_unpruned_weights_is_refused_naming_layer_and_counts(
        tmp_path, monkeypatch, capsys):
    from caffe_surgeon.cli.vai_p_darknet import main
    ini = _pruned_workspace(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["pruner", "map", str(ini), "fashion.weights", "-pruned"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "convolutional_0 16 filters" in err[0] and "has 8" in err[0], err


# -- item 6: the finetune advice pairs files that pair -------------------------------------

def test_finetune_advice_is_a_command_whose_output_pairs_with_final_prototxt(
        tmp_path, fashion_prune, capsys, monkeypatch):
    import re
    import shlex

    from caffe_surgeon import api
    from caffe_surgeon.caffe.writer import render_caffemodel, render_prototxt
    from caffe_surgeon.cli.vai_p_caffe import main
    config = tmp_path / "config.prototxt"
    config.write_text(f'workspace: "{tmp_path / "ws"}"\nmodel: "{FASHION / "fashion_train_val.prototxt"}"\n'
                      f'weights: "{FASHION / "fashion.caffemodel"}"\nacc_name: "top-1"\nrate: 0.5\n')
    out = fashion_prune(0.5)  # what prune writes into regular_rate_0.5
    folder = tmp_path / "ws" / "regular_rate_0.5"
    folder.mkdir(parents=True)
    (folder / "sparse.caffemodel").write_bytes(render_caffemodel(out.sparse))
    (folder / "final.prototxt").write_text(render_prototxt(out.dense))
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "torch", None)  # the advice is for a machine without torch
    assert main(["finetune", "-config", str(config)]) == 2
    advice = capsys.readouterr().err
    command = shlex.split(re.search(r"'vai_p_caffe (transform [^']*)'", advice).group(1))
    assert main(command) == 0
    model, weights = re.search(r"train (\S+) from (\S+) ", advice).groups()
    assert model == str(folder / "final.prototxt")
    api.load(model, weights)  # the advised pair reads: the shapes agree


# -- item 7: a Slice after a pruned producer keeps every segment -------------------------

#: a dual-path block (DPN): a 1x1 conv whose output a Slice splits into a residual part
#: (summed with the block's input) and a dense part (concatenated). The shared zoo holds
#: no such net (its one Slice, in mnist_siamese, splits the input data), so it is spelled here.
DUAL_PATH = """name: "dual_path_block"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv0" type: "Convolution" bottom: "data" top: "conv0"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu0" type: "ReLU" bottom: "conv0" top: "conv0" }
layer { name: "c1x1" type: "Convolution" bottom: "conv0" top: "c1x1"
  convolution_param { num_output: 12 kernel_size: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "c1x1" top: "c1x1" }
layer { name: "c1x1_split" type: "Slice" bottom: "c1x1" top: "c1x1_split1" top: "c1x1_split2"
  slice_param { axis: 1 slice_point: 8 } }
layer { name: "res" type: "Eltwise" bottom: "conv0" bottom: "c1x1_split1" top: "res" }
layer { name: "dense" type: "Concat" bottom: "res" bottom: "c1x1_split2" top: "dense" }
layer { name: "head" type: "Convolution" bottom: "dense" top: "head"
  convolution_param { num_output: 4 kernel_size: 1 } }
"""


@pytest.mark.parametrize("ratio,divisor", [(0.5, 2), (0.5, 1), (0.9, 2), (0.7, 4)])
def test_a_slice_segment_ranked_lowest_keeps_at_least_the_divisor(tmp_path, ratio, divisor):
    from caffe_surgeon import api
    from caffe_surgeon.engine.executor import Executor
    from caffe_surgeon.pruning import analyse, apply, make_plan
    from caffe_surgeon.pruning.plan import kept_count
    from caffe_surgeon.workflow.allocate import OpsCounter
    (tmp_path / "dpn.prototxt").write_text(DUAL_PATH)
    g = api.init(api.load(tmp_path / "dpn.prototxt"), seed=1)
    g.layers[2].weights["weight"][8:] *= 0.01  # the dense part ranks lowest: L1 would drop it all
    a = analyse(g)
    plan = make_plan(a, ratio=ratio, divisor=divisor)
    (grp,) = plan.groups
    # the floors win over the ratio: 8 + 4 channels with divisor 4 keep 4 + 4, not 4
    assert len(grp.keep) == max(kept_count(12, ratio, divisor), min(8, divisor) + min(4, divisor))
    assert len([k for k in grp.keep if k >= 8]) >= min(divisor, 4)
    dense = apply(g, plan, "dense", analysis=a)
    sparse = apply(g, plan, "sparse", analysis=a)
    (cut,) = [l for l in dense.layers if l.type == "Slice"]
    assert 0 < cut.params["slice_param"]["slice_point"][0] < len(grp.keep)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(Executor(dense).run({"data": x})["head"],
                               Executor(sparse).run({"data": x})["head"], rtol=1e-4, atol=1e-5)
    counter = OpsCounter(g, a, divisor)
    assert counter.ops({0: ratio}) == api.stat(dense).total.ops  # the allocator's count is exact


# -- item 4: forward uses the model's own preprocessing and prints it; per-image results ----

def _forward(capsys, *argv) -> list[str]:
    from caffe_surgeon.cli.main import main
    capsys.readouterr()
    assert main(["forward", *map(str, argv)]) == 0
    return capsys.readouterr().out.splitlines()


def test_forward_on_a_deploy_file_uses_the_train_val_beside_it_and_says_so(capsys):
    png = FASHION / "t10k" / "00000_ankleboot.png"  # class 9
    out = _forward(capsys, FASHION / "fashion_deploy.prototxt", FASHION / "fashion.caffemodel",
                   "--input", png)
    assert out[0].startswith("preprocessing: fashion_train_val.prototxt layer 'data' (TEST): "
                             "scale 0.00392157"), out
    assert out[-1].startswith("  prob: shape (1, 10), argmax 9 = ")
    flagged = _forward(capsys, FASHION / "fashion_deploy.prototxt",
                       FASHION / "fashion.caffemodel", "--input", png, "--scale", "1")
    assert "scale 1," in flagged[0] and "(overridden by --scale)" in flagged[0]
    assert "argmax 9 " not in flagged[-1]  # raw 0..255 pixels: the old wrong answer


def test_forward_without_a_recipe_or_with_two_says_which(tmp_path, capsys):
    for name in ("fashion_deploy.prototxt", "fashion.caffemodel", "fashion_train_val.prototxt"):
        shutil.copyfile(FASHION / name, tmp_path / name)
    text = (FASHION / "fashion_train_val.prototxt").read_text()
    (tmp_path / "other_train_val.prototxt").write_text(text.replace("0.00392156862745098", "0.5"))
    out = _forward(capsys, tmp_path / "fashion_deploy.prototxt", tmp_path / "fashion.caffemodel",
                   "--input", FASHION / "t10k" / "00000_ankleboot.png")
    assert out[0].startswith("note: 2 train_val files beside fashion_deploy.prototxt give "
                             "different preprocessing"), out
    assert out[1].startswith("preprocessing: none from the model")


def test_forward_prints_one_result_per_image_of_a_batch(capsys):
    out = _forward(capsys, FASHION / "fashion_deploy.prototxt", FASHION / "fashion.caffemodel",
                   "--input", FASHION / "sample.npy")
    assert out[1] == "  prob: shape (4, 10)"
    assert [line.split(":")[0].strip() for line in out[2:6]] == [f"image {i}" for i in range(4)]
    assert all(" argmax " in line for line in out[2:6])


def test_forward_on_a_darknet_image_names_the_net_section(capsys):
    out = _forward(capsys, FASHION / "fashion.cfg", FASHION / "fashion.weights",
                   "--input", FASHION / "t10k" / "00000_ankleboot.png")
    assert out[0] == "preprocessing: the cfg's [net] channels=1 size 28x28, resize, values in [0, 1]"
    assert "argmax 9 = " in out[-1]


# -- item 8: the smaller dead ends --------------------------------------------------------

def test_transform_of_an_unpruned_model_says_there_was_nothing_to_remove(tmp_path, capsys):
    from caffe_surgeon.cli.vai_p_caffe import main
    assert main(["transform", "-model", str(FASHION / "fashion_deploy.prototxt"), "-weights",
                 str(FASHION / "fashion.caffemodel"), "-output", str(tmp_path / "t.caffemodel")]) == 0
    out = capsys.readouterr().out
    assert "nothing was removed" in out and "(of 0)" not in out


def test_a_mistyped_option_is_named_even_when_a_required_one_is_missing(capsys):
    from caffe_surgeon.cli.main import main
    with pytest.raises(SystemExit):
        main(["prune", str(FASHION / "fashion_deploy.prototxt"), "--ration", "0.5", "-o", "x"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unrecognized option --ration (did you mean --ratio?)" in err


def test_a_negative_ratio_is_explained_as_a_fraction_of_channels(capsys):
    from caffe_surgeon.pruning.plan import kept_count
    from caffe_surgeon.errors import ModelError
    with pytest.raises(ModelError, match=r"ratio -0.2 is outside \[0, 1\): a ratio is the fraction"):
        kept_count(16, -0.2)


@pytest.mark.parametrize("argv,option", [
    (["vai_p_caffe", "stat"], "-model"), (["vai_p_caffe", "stat"], "-weights"),
    (["vai_p_caffe", "stat"], "-input_shape"), (["vai_p_caffe", "ana"], "-no_progress"),
    (["vai_p_darknet", "pruner", "ana"], "-no_progress"), (["vai_p_caffe", "prune"], "-refine"),
    (["vai_p_darknet", "pruner", "prune"], "-refine")])
def test_every_vendor_option_has_help_text(argv, option):
    import importlib
    parser = importlib.import_module(f"caffe_surgeon.cli.{argv[0]}").build_parser()
    for name in argv[1:]:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]
    action = next(a for a in parser._actions if option in a.option_strings)
    assert action.help and len(action.help) > 10


def test_darknet_valid_on_a_classifier_prints_the_lines_of_darknet_classifier_valid(
        tmp_path, monkeypatch, capsys):
    """Every running 'i: top 1: .., top k: ..' line (so the last: the list's accuracy) as the
    binary prints it; per image the path and class as well, the two outputs within float noise."""
    import re

    from caffe_surgeon.cli.vai_p_darknet import main
    from assets import darknet_binary
    exe = str(darknet_binary())
    work = tmp_path / "fashion"
    shutil.copytree(FASHION, work, ignore=shutil.ignore_patterns("ws"))  # not a local run's output
    monkeypatch.chdir(work)
    assert main(["pruner", "valid", "pruning.cfg", "fashion.weights"]) == 0
    ours = capsys.readouterr().out.splitlines()
    theirs = subprocess.run([exe, "classifier", "valid", "fashion.data", "fashion.cfg",
                             "fashion.weights"], cwd=work, capture_output=True, text=True,
                            timeout=300)
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    theirs = theirs.stdout.splitlines()
    assert len(ours) == len(theirs) == 2 * 500
    assert ours[1::2] == theirs[1::2]
    assert theirs[-1] == "499: top 1: 0.916000, top 2: 0.978000"  # .data top=2
    image_line = re.compile(r"(\S+), (-?\d+), ([\d.]+), ([\d.]+), $")
    mine, binary = ([image_line.fullmatch(line).groups() for line in lines[0::2]]
                    for lines in (ours, theirs))
    assert [m[:2] for m in mine] == [b[:2] for b in binary]
    np.testing.assert_allclose(np.array([m[2:] for m in mine], float),
                               np.array([b[2:] for b in binary], float), atol=2e-6)


def test_a_test_iter_past_the_data_says_once_that_the_evaluation_wraps_around(
        tmp_path, monkeypatch, capsys):
    """12 batches of 50 from 500 images: ana says so once on stderr (Caffe's log shows its
    data layer restarting); 10 batches fit and the evaluator notes nothing."""
    from caffe_surgeon import api
    from caffe_surgeon.cli.vai_p_caffe import main
    from caffe_surgeon.evaluation.caffe_eval import CaffeEvaluator
    work = tmp_path / "fashion"
    shutil.copytree(FASHION, work, ignore=shutil.ignore_patterns("ws"))  # not a local run's output
    config = (work / "config.prototxt").read_text()
    assert "\ntest_iter: 10 " in config
    (work / "config.prototxt").write_text(config.replace("\ntest_iter: 10 ", "\ntest_iter: 12 ")
                                          + "ratios: 0.5\n")
    monkeypatch.chdir(work)
    capsys.readouterr()
    assert main(["ana", "-config", "config.prototxt", "-no_progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    wraps = [line for line in err if "wraps around" in line]
    assert wraps == ["note: test_iter 12 x batch_size 50 = 600 images, but data layer 'data' has "
                     "500: the evaluation wraps around to its first record, as Caffe's data layer "
                     "does, so 100 of the images scored are repeats (set test_iter to at most 10 "
                     "to score each at most once)"], err
    graph = api.load("fashion_train_val.prototxt", phase="TEST")
    assert CaffeEvaluator(graph, "top-1", test_iter=10).notes == []
    assert len(CaffeEvaluator(graph, "top-1", test_iter=11).notes) == 1
