"""Label-free finetuning by distillation (``distill: true`` / ``--teacher``): the loss and
its gradient against a hand computation, the net it trains (losses and labels gone), and
on the Fashion fixture, a 0.5-pruned model recovering without a single label."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import caffe_surgeon as cs  # noqa: E402
from caffe_surgeon.errors import ModelError  # noqa: E402
from caffe_surgeon.training.distill import (SOFTMAX, SQUARED, DistillModule,  # noqa: E402
                                            distillation_net)
from caffe_surgeon.training.module import build_module  # noqa: E402

FASHION = Path(__file__).resolve().parents[1] / "fixtures" / "fashion"

TINY = '''name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 4 dim: 5 } shape { dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
'''


def tiny(path: Path, seed: int):
    path.write_text(TINY)
    g = cs.load(path, phase="TRAIN")
    cs.init(g, seed=seed)
    rng = np.random.default_rng(seed)
    g.layer("fc").weights["weight"] = rng.standard_normal((3, 5)).astype(np.float32)
    g.layer("fc").weights["bias"] = rng.standard_normal(3).astype(np.float32)
    return g


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_the_distillation_loss_and_its_gradient_equal_a_hand_computation(tmp_path):
    student, teacher = tiny(tmp_path / "s.prototxt", 1), tiny(tmp_path / "t.prototxt", 2)
    net, targets = distillation_net(student)
    assert targets == [("fc", SOFTMAX)] and [l.name for l in net.layers] == ["data", "fc"]
    assert net.layers[0].tops == ["data"]  # the label is neither fed nor read
    T = 4.0
    m = DistillModule(build_module(net), build_module(distillation_net(teacher)[0], "TEST"),
                      targets, T)
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    out = m({"data": x})
    out.loss.backward()
    Ws, bs = (student.layer("fc").weights[k].astype(np.float64) for k in ("weight", "bias"))
    Wt, bt = (teacher.layer("fc").weights[k].astype(np.float64) for k in ("weight", "bias"))
    zs, zt = x @ Ws.T + bs, x @ Wt.T + bt
    ps, pt = softmax(zs / T), softmax(zt / T)
    want = T * T * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))
    np.testing.assert_allclose(out.loss.item(), want, rtol=1e-5)
    dz = T * (ps - pt) / len(x)  # d(T^2 KL)/dzs = T^2 * (ps - pt) / T, mean over the batch
    params = {(p.layer, p.blob_name): p.param for p in m.caffe_params()}
    np.testing.assert_allclose(params["fc", "weight"].grad.numpy(), dz.T @ x, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(params["fc", "bias"].grad.numpy(), dz.sum(0), rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in m.teacher.parameters())
    m.train()
    assert m.student.training and not m.teacher.training


def test_outputs_a_loss_reads_without_a_softmax_are_matched_by_squared_difference(tmp_path):
    text = TINY.replace('type: "SoftmaxWithLoss"', 'type: "EuclideanLoss"').replace(
        "shape { dim: 4 } }", "shape { dim: 4 dim: 3 } }")
    (tmp_path / "r.prototxt").write_text(text)
    s = cs.load(tmp_path / "r.prototxt", phase="TRAIN")
    cs.init(s, seed=1)
    t = cs.load(tmp_path / "r.prototxt", phase="TRAIN")
    cs.init(t, seed=2)
    net, targets = distillation_net(s)
    assert targets == [("fc", SQUARED)]
    m = DistillModule(build_module(net), build_module(distillation_net(t)[0], "TEST"), targets)
    x = np.ones((4, 5), np.float32)
    zs = x @ s.layer("fc").weights["weight"].T + s.layer("fc").weights["bias"]
    zt = x @ t.layer("fc").weights["weight"].T + t.layer("fc").weights["bias"]
    np.testing.assert_allclose(m({"data": x}).loss.item(), np.mean((zs - zt) ** 2), rtol=1e-5)


def test_a_net_with_nothing_to_match_or_a_label_read_elsewhere_is_refused(tmp_path):
    (tmp_path / "n.prototxt").write_text(TINY.replace(
        'layer { name: "loss"', 'layer { name: "l2" type: "Power" bottom: "label" top: "l2" }\n'
        'layer { name: "loss"'))
    with pytest.raises(ModelError, match="top 'label' is read"):
        distillation_net(cs.load(tmp_path / "n.prototxt", phase="TRAIN"))
    with pytest.raises(ModelError, match="no loss or Accuracy"):
        distillation_net(cs.load(FASHION / "fashion_deploy.prototxt"))
    with pytest.raises(ModelError, match="temperature must be > 0"):
        DistillModule(None, None, [], 0)


def test_the_config_reads_distill_and_temperature(tmp_path):
    from caffe_surgeon.workflow.config import read_caffe_config
    base = (FASHION / "config.prototxt").read_text()
    (tmp_path / "c.prototxt").write_text(base)
    cfg = read_caffe_config(tmp_path / "c.prototxt", base_dir=FASHION)
    assert (cfg.distill, cfg.temperature) == (False, 4.0)
    (tmp_path / "c.prototxt").write_text(base + "distill: true\ntemperature: 2.5\n")
    cfg = read_caffe_config(tmp_path / "c.prototxt", base_dir=FASHION)
    assert (cfg.distill, cfg.temperature) == (True, 2.5)
    (tmp_path / "c.prototxt").write_text(base + "temperature: 0\n")
    with pytest.raises(ModelError, match=r"c.prototxt:\d+:\d+: field 'temperature' is 0"):
        read_caffe_config(tmp_path / "c.prototxt", base_dir=FASHION)


def test_vai_p_finetune_with_distill_teaches_with_the_configs_model_and_weights(tmp_path):
    from caffe_surgeon.training.finetune import vai_p_run
    from caffe_surgeon.workflow.config import read_caffe_config
    base = (FASHION / "config.prototxt").read_text().replace('"ws"', f'"{tmp_path}/ws"')
    (tmp_path / "c.prototxt").write_text(base + "distill: true\ntemperature: 3\n")
    cfg = read_caffe_config(tmp_path / "c.prototxt", base_dir=FASHION)
    (cfg.rate_dir()).mkdir(parents=True)
    for name in ("sparse.caffemodel", "plan.json"):
        (cfg.rate_dir() / name).write_bytes(b"")
    run = vai_p_run(cfg)
    assert run.teacher == (FASHION / "fashion_train_val.prototxt", FASHION / "fashion.caffemodel")
    assert run.temperature == 3.0 and run.weights == cfg.rate_dir() / "sparse.caffemodel"
    (tmp_path / "c.prototxt").write_text(base)
    assert vai_p_run(read_caffe_config(tmp_path / "c.prototxt", base_dir=FASHION)).teacher is None


def test_teacher_option_errors_are_one_line_before_anything_is_written(tmp_path, capsys):
    from caffe_surgeon.cli.main import main
    base = [str(FASHION / "fashion_train_val.prototxt"), str(FASHION / "fashion.caffemodel"),
            "--solver", str(FASHION / "solver.prototxt"), "-o", str(tmp_path / "out")]
    for extra, message in ((["--teacher", "a", "b", "c"], "WEIGHTS or PROTOTXT WEIGHTS"),
                           (["--teacher", str(tmp_path / "none.caffemodel")], "does not exist"),
                           (["--teacher", str(FASHION / "fashion.caffemodel"),
                             "--temperature", "-1"], "positive")):
        assert main(["finetune", *base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def top1(prototxt, weights, cwd) -> float:
    from caffe_surgeon.evaluation.spec import build_evaluator
    g = cs.load(cwd / prototxt, weights, phase="TEST")
    ev = build_evaluator({"kind": "caffe", "acc_name": "top-1", "test_iter": 10,
                          "base_dir": str(cwd)}, g)
    return float(ev.evaluate(g))


def test_distillation_without_labels_recovers_a_half_pruned_fashion_model(tmp_path, monkeypatch):
    """Labels removed from the TRAIN list; the teacher is the unpruned model. Measured
    (500 t10k images): top-1 0.094 after L1 pruning of half of every group's channels ->
    0.622 after 20 iterations on the 64 shipped training images (batch 64, base_lr 0.001)."""
    from caffe_surgeon.pruning import analyse, apply, make_plan
    from caffe_surgeon.training.finetune import FinetuneRun, finetune
    work = tmp_path / "fashion"
    shutil.copytree(FASHION, work, ignore=shutil.ignore_patterns("ws"))
    lines = (work / "train_list.txt").read_text().splitlines()
    (work / "train_list.txt").write_text("".join(l.rsplit(" ", 1)[0] + "\n" for l in lines))
    solver = (work / "solver.prototxt").read_text()
    solver = solver.replace("max_iter: 1000", "max_iter: 20").replace(
        "test_interval: 200", "test_interval: 0").replace("snapshot: 500", "snapshot: 0")
    (work / "solver.prototxt").write_text(solver)
    monkeypatch.chdir(work)
    g = cs.load("fashion_train_val.prototxt", "fashion.caffemodel")
    a = analyse(g, input_shapes={"data": (1, 1, 28, 28), "label": (1,)})
    plan = make_plan(a, ratio=0.5, divisor=2)
    cs.save(apply(g, plan, "sparse", fold=True, analysis=a, keep_layout=True),
            work / "pruned.prototxt", work / "sparse.caffemodel")
    plan.save(work / "plan.json")
    before = top1("fashion_train_val.prototxt", work / "sparse.caffemodel", work)
    with pytest.raises(ModelError, match="expected 'path label'"):  # labels are gone
        finetune(FinetuneRun(work / "fashion_train_val.prototxt", work / "sparse.caffemodel",
                             work / "solver.prototxt", f"{work}/plain/", plan=work / "plan.json",
                             log_dir=work))
    run = FinetuneRun(work / "fashion_train_val.prototxt", work / "sparse.caffemodel",
                      work / "solver.prototxt", f"{work}/snap/", plan=work / "plan.json",
                      log_dir=work, teacher=(work / "fashion_train_val.prototxt",
                                             work / "fashion.caffemodel"))
    (work / "snap").mkdir()
    assert finetune(run) == 20
    after = top1("fashion_train_val.prototxt", work / "snap" / "_iter_20.caffemodel", work)
    print(f"top-1 on 500 t10k images: pruned {before:.3f} -> distilled without labels {after:.3f}")
    assert before < 0.8 and after > before + 0.1
