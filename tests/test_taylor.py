"""The Taylor criterion (``--criterion taylor``): per producer channel, the mean over N
TRAIN batches of |sum over batch and positions of activation x dLoss/dactivation|, checked
against a hand computation; its wiring into prune, ana's fingerprint and the configs."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import caffe_surgeon as cs  # noqa: E402
from caffe_surgeon.errors import ModelError  # noqa: E402
from caffe_surgeon.pruning import analyse, make_plan  # noqa: E402
from caffe_surgeon.pruning.criteria import class_scores, criterion_for  # noqa: E402
from caffe_surgeon.training.taylor import taylor_scores  # noqa: E402
from test_train_data import grey_images, write_list  # noqa: E402

FASHION = Path(__file__).resolve().parents[1] / "fixtures" / "fashion"
LABELS = [0, 2, 1, 2]
SHAPES = {"data": (2, 1, 8, 8), "label": (2,)}


def tiny_net(folder: Path) -> tuple[Path, Path]:
    """ImageData (4 grey 8x8 images, batch 2) -> conv 1x1 (2 filters, no bias) ->
    InnerProduct (3 classes) -> SoftmaxWithLoss; synthetic weights, saved."""
    write_list(folder, grey_images(4), labels=LABELS)
    text = (f'name: "tiny"\nlayer {{ name: "data" type: "ImageData" top: "data" top: "label" '
            f'include {{ phase: TRAIN }} transform_param {{ scale: 0.0078125 }}\n'
            f'  image_data_param {{ source: "{folder}/list.txt" root_folder: "{folder}/img/" '
            f'batch_size: 2 is_color: false }} }}\n'
            'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            'convolution_param { num_output: 2 kernel_size: 1 bias_term: false } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" '
            'inner_product_param { num_output: 3 } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }\n')
    (folder / "tiny.prototxt").write_text(text)
    g = cs.load(folder / "tiny.prototxt", phase="TRAIN")
    cs.init(g, seed=3, input_shapes=SHAPES)
    for layer in g.layers:  # weights large enough that the scores are far from rounding
        for name in layer.weights:
            layer.weights[name] = layer.weights[name] * 50
    cs.save(g, folder / "tiny.prototxt", folder / "tiny.caffemodel")
    return folder / "tiny.prototxt", folder / "tiny.caffemodel"


def hand_scores(folder: Path, batches: int) -> np.ndarray:
    """The Taylor score of conv's channels, by the chain rule in float64."""
    g = cs.load(folder / "tiny.prototxt", folder / "tiny.caffemodel", phase="TRAIN")
    w = g.layer("conv").weights["weight"].astype(np.float64).reshape(2)   # (2, 1, 1, 1)
    W = g.layer("fc").weights["weight"].astype(np.float64)                # (3, 2 * 64)
    b = g.layer("fc").weights["bias"].astype(np.float64)
    images = grey_images(4).astype(np.float64) * 0.0078125
    total = np.zeros(2)
    for it in range(batches):
        rows = [(2 * it + k) % 4 for k in range(2)]
        x = images[rows]                                   # (N, 8, 8)
        a = w[None, :, None, None] * x[:, None]            # (N, 2, 8, 8)
        z = a.reshape(2, -1) @ W.T + b                     # (N, 3)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        onehot = np.eye(3)[[LABELS[r] for r in rows]]
        dz = (p - onehot) / 2                              # SoftmaxWithLoss: mean over the batch
        ga = (dz @ W).reshape(a.shape)                     # dLoss/da
        total += np.abs((a * ga).sum(axis=(0, 2, 3)))
    return total / batches


def test_the_taylor_score_of_a_tiny_net_equals_the_chain_rule_by_hand(tmp_path):
    files = tiny_net(tmp_path)
    want = hand_scores(tmp_path, batches=3)
    assert want.min() > 1e-3  # a meaningful comparison
    got = taylor_scores(cs.load(*files, phase="TRAIN"), ["conv"], batches=3)
    np.testing.assert_allclose(got["conv"], want, rtol=1e-4)
    # through the criterion interface, as prune and ana call it
    a = analyse(cs.load(*files, phase="TRAIN"), input_shapes=SHAPES)
    group = next(g for g in a.prunable_groups() if g.producers == ["conv"])
    crit = criterion_for("taylor", files, {"batches": 3})
    np.testing.assert_allclose(class_scores(a, group, crit), want, rtol=1e-4)
    plan = make_plan(a, ratios={group.id: 0.5}, criterion=crit)
    assert plan.criterion == "taylor"
    assert next(gp.keep for gp in plan.groups if gp.id == group.id) == [int(np.argmax(want))]


def test_taylor_scores_are_deterministic_given_the_seed(tmp_path):
    files = tiny_net(tmp_path)
    (tmp_path / "tiny.prototxt").write_text((tmp_path / "tiny.prototxt").read_text().replace(
        "scale: 0.0078125", "scale: 0.0078125 mirror: true"))
    g = cs.load(*files, phase="TRAIN")
    one, two = (taylor_scores(g, ["conv", "fc"], 4, seed=5) for _ in range(2))
    assert all(np.array_equal(one[k], two[k]) for k in one)
    other = taylor_scores(g, ["conv"], 4, seed=6)
    assert not np.array_equal(one["conv"], other["conv"])  # mirrors drawn from another seed


def test_taylor_needs_a_train_net_torch_and_sane_options_each_a_one_line_error(tmp_path, monkeypatch):
    a = analyse(cs.load(FASHION / "fashion_deploy.prototxt", FASHION / "fashion.caffemodel"))
    crit = criterion_for("taylor", [FASHION / "fashion_deploy.prototxt", FASHION / "fashion.caffemodel"])
    with pytest.raises(ModelError, match="no loss layer"):
        class_scores(a, a.prunable_groups()[0], crit)
    with pytest.raises(ModelError, match="batches must be an integer >= 1"):
        taylor_scores(cs.load(FASHION / "fashion_train_val.prototxt", phase="TRAIN"), ["conv1"], 0)
    with pytest.raises(ModelError, match="scores from training batches"):
        class_scores(a, a.prunable_groups()[0], "taylor")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ModelError) as err:
        criterion_for("taylor", [])
    assert str(err.value) == ("--criterion taylor needs PyTorch: pip install "
                              "'caffe-surgeon[finetune]'")


def test_prune_cli_ranks_by_taylor_and_records_it_in_the_plan(tmp_path, monkeypatch, capsys):
    from caffe_surgeon.cli.main import main
    from caffe_surgeon.pruning import Plan
    monkeypatch.chdir(FASHION)  # the TRAIN data layer's paths are relative, as in Caffe
    args = ["prune", "fashion_train_val.prototxt", "fashion.caffemodel", "--ratio", "0.5",
            "--criterion", "taylor", "--taylor-batches", "2", "-o"]
    assert main(args + [str(tmp_path / "a")]) == 0
    assert main(args + [str(tmp_path / "b"), "--reduction", "max"]) == 0
    a, b = Plan.load(tmp_path / "a" / "plan.json"), Plan.load(tmp_path / "b" / "plan.json")
    assert a.criterion == "taylor" and (a.reduction, b.reduction) == ("sum", "max")
    joined = next(i for i, g in enumerate(a.groups) if len(g.producers) > 1)  # conv2a + conv2c
    assert a.groups[joined].scores != b.groups[joined].scores
    capsys.readouterr()
    assert main(["prune", str(FASHION / "fashion_deploy.prototxt"), str(FASHION / "fashion.caffemodel"),
                 "--ratio", "0.5", "--criterion", "taylor", "-o", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no loss layer" in err[0]


def test_vai_p_ana_fingerprint_holds_the_taylor_options(tmp_path, monkeypatch):
    from caffe_surgeon.cli.caffe_workflow import _job
    from caffe_surgeon.workflow.ana_state import job_inputs
    from caffe_surgeon.workflow.config import read_caffe_config
    work = tmp_path / "fashion"
    shutil.copytree(FASHION, work, ignore=shutil.ignore_patterns("ws", "t10k", "train"))
    text = (work / "config.prototxt").read_text()
    (work / "config.prototxt").write_text(text + 'criterion: "taylor"\ntaylor_batches: 3\n')
    monkeypatch.chdir(work)
    cfg = read_caffe_config("config.prototxt")
    inputs = job_inputs(_job(cfg).checked())
    assert (inputs["criterion"], inputs["criterion_options"]) == ("taylor", {"batches": 3, "seed": 0})
    (work / "config.prototxt").write_text(text)  # l1: the state file keeps its old keys
    assert "criterion_options" not in job_inputs(_job(read_caffe_config("config.prototxt")).checked())
    (work / "config.prototxt").write_text(text + "taylor_batches: 0\n")
    with pytest.raises(ModelError, match="taylor_batches"):
        read_caffe_config("config.prototxt")
