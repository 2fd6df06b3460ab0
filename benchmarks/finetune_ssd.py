"""The SSD section of ``benchmarks/finetune.py`` (``--only ssd``): the shipped SSD fixture
(``fixtures/detection/ssd-fashion*``) through the flow users run, and its mAP measured by
three independent paths (issue 16, "A detection fixture with real labels", items 2 and 3).

Flow, in a scratch copy of the fixture reading the generated detection set, each step a
``vai_p_caffe`` subprocess as a user types it: ``ana``, ``prune`` at rate 0.5, ``finetune``
with ``ssd-fashion_finetune_solver.prototxt``, ``transform`` to the dense deploy model.
mAP@0.5 on the 500 test scenes, before and after each step:

- ``evaluator``: our evaluator on the TEST net (AnnotatedData -> DetectionOutput ->
  DetectionEvaluate, the SSD solver's ``Integral`` AP), as ``vai_p_caffe`` scores;
- ``ours`` / ``opencv``: the deploy net run by our engine and by OpenCV's ``cv2.dnn`` on the
  same PNG-decoded inputs, their ``DetectionOutput`` rows scored by our VOC scorer
  (``evaluation.voc_map``, all-point AP) against the set's label files.

The two deploy runs must give the same detections (each row a partner within 1e-4 on the
other side, bar ties at keep_top_k's cut: :func:`detection_difference`); the
evaluator differs from them by design: the SSD fork re-encodes each test record as JPEG
before resizing, and integrates AP without the precision envelope.

Data: ``--detset DIR`` (a folder ``tools/make_detection_fixture.py`` wrote with its
defaults), else the set is generated once into ``--cache``. Run as a script, this module
re-measures the shipped models and rewrites ``fixtures/detection/ssd-fashion_metrics.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DETECTION = ROOT / "fixtures" / "detection"
sys.path.insert(0, str(ROOT))

import caffe_surgeon as cs  # noqa: E402
from benchmarks.commands import run_logged  # noqa: E402
from caffe_surgeon.engine import Executor  # noqa: E402
from caffe_surgeon.evaluation.voc_map import voc_map  # noqa: E402

TRAIN_VAL = "ssd-fashion_train_val.prototxt"
DEPLOY = "ssd-fashion_deploy.prototxt"
WEIGHTS = "ssd-fashion.caffemodel"
CONFIG = "ssd-fashion_config.prototxt"
FINETUNE_SOLVER = "ssd-fashion_finetune_solver.prototxt"
#: what the flow copies from fixtures/detection, and links from the generated set
FIXTURE_FILES = (TRAIN_VAL, DEPLOY, WEIGHTS, CONFIG, FINETUNE_SOLVER)
SET_ENTRIES = ("train_lmdb", "test_lmdb", "labelmap.prototxt", "test_name_size.txt",
               "images", "labels", "test.txt")
TEST_SCENES = 500  # the set's default test split
TEST_BATCH = 10  # the TEST AnnotatedData batch of ssd-fashion_train_val.prototxt
CLASSES = 10
SCALE, MEAN = 0.007843, 127.5  # the data layers' transform_param
TARGET_DROP = 2.0  # mAP points below the unpruned model, after finetuning (issue 16)


# ------------------------------------------------------------------ data
def detection_set(detset, cache: Path) -> Path:
    """The generated set: ``detset`` as given, else built once into ``cache``."""
    if detset is not None:
        return Path(detset)
    from tools.make_detection_fixture import make_detection_fixture
    out = cache / "detset_seed0"
    if not out.is_dir():
        t = time.perf_counter()
        cache.mkdir(parents=True, exist_ok=True)
        make_detection_fixture(out)
        print(f"generated the detection set in {out} in {time.perf_counter() - t:.0f} s")
    return out


def test_scenes(detset: Path, count: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The first ``count`` test scenes as the deploy net takes them (BGR, ``(p - 127.5) x
    0.007843``, N x 3 x 160 x 160) and their truth, rows ``(class, x1, y1, x2, y2)`` relative,
    from the Darknet label files."""
    from PIL import Image
    lines = (detset / "test.txt").read_text().split()[:count]
    images, truths = [], []
    for line in lines:
        rgb = np.asarray(Image.open(detset / line).convert("RGB"), np.float32)
        images.append(((rgb[:, :, ::-1] - MEAN) * SCALE).transpose(2, 0, 1))
        label = detset / line.replace("images", "labels", 1).replace(".png", ".txt")
        rows = np.loadtxt(label, ndmin=2).reshape(-1, 5)
        c, x, y, w, h = rows.T
        truths.append(np.stack([c, x - w / 2, y - h / 2, x + w / 2, y + h / 2], 1))
    return np.ascontiguousarray(np.stack(images)), truths


# ------------------------------------------------------------------ detections
def split_rows(out: np.ndarray, count: int) -> list[np.ndarray]:
    """``DetectionOutput``'s ``(1, 1, K, 7)`` rows ``(image, label, conf, x1, y1, x2, y2)``
    per image (a row of image -1 means none), each sorted by label, then confidence down.
    OpenCV 4.x pads its output to keep_top_k rows an image with rows of zeros, which no
    detection is (confidence_threshold is above 0): they are dropped."""
    rows = np.asarray(out, np.float64).reshape(-1, 7)
    rows = rows[rows[:, 2] > 0]
    per = []
    for i in range(count):
        r = rows[rows[:, 0] == i]
        per.append(r[np.lexsort((-r[:, 2], r[:, 1]))])
    return per


def ours_detections(deploy: Path, weights: Path, x: np.ndarray, batch: int = 25):
    ex = Executor(cs.load(deploy, weights))
    per = []
    for i in range(0, len(x), batch):
        part = x[i:i + batch]
        per += split_rows(ex.run({"data": part})["detection_out"], len(part))
    return per


def opencv_detections(deploy: Path, weights: Path, x: np.ndarray, batch: int = 25):
    import cv2
    net = cv2.dnn.readNetFromCaffe(str(deploy), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    per = []
    for i in range(0, len(x), batch):
        part = np.ascontiguousarray(x[i:i + batch])
        net.setInput(part, "data")
        per += split_rows(net.forward("detection_out"), len(part))
    return per


def deploy_map(per_image: list[np.ndarray], truths: list[np.ndarray]) -> float:
    """VOC mAP@0.5 of DetectionOutput rows (label l is class l - 1) against ``truths``."""
    dets = [np.column_stack([r[:, 1] - 1, r[:, 2], r[:, 3:7]]) for r in per_image]
    return voc_map(dets, truths, CLASSES).mean


def detection_difference(a: list[np.ndarray], b: list[np.ndarray], tol: float = 1e-4):
    """Our detections against OpenCV's, row by row: ``(max |difference| over rows that
    have a partner within tol, rows without one, of those the rows that are a tie at
    keep_top_k's cut)``.

    A cut tie: the last kept place goes to one of two detections whose confidences agree
    to float rounding; each engine may keep the other, which is then partnerless on both
    sides at the image's lowest kept confidence.
    """
    worst, unmatched, at_cut = 0.0, 0, 0
    for ra, rb in zip(a, b):
        for mine, other in ((ra, rb), (rb, ra)):
            if not len(mine):
                continue
            if not len(other):
                unmatched += len(mine)
                continue
            diff = np.abs(mine[:, None, :] - other[None, :, :]).max(2).min(1)
            worst = max(worst, float(diff[diff <= tol].max(initial=0.0)))
            lost = diff > tol
            unmatched += int(lost.sum())
            at_cut += int((lost & (mine[:, 2] - min(ra[:, 2].min(), rb[:, 2].min()) <= tol)).sum())
    return worst, unmatched, at_cut


def evaluator_map(folder: Path, train_val: Path, weights: Path, test_iter: int) -> float:
    """Our evaluator on the TEST net, as ``vai_p_caffe`` scores a model."""
    from caffe_surgeon.evaluation.spec import build_evaluator, load_eval_graph
    spec = {"kind": "caffe", "acc_name": "detection_eval", "test_iter": test_iter,
            "base_dir": str(folder)}
    graph = load_eval_graph("caffe", [str(train_val), str(weights)], spec)
    return float(build_evaluator(spec, graph).evaluate(graph))


def measure(folder: Path, deploy: Path, weights: Path, x, truths, train_val=None) -> dict:
    """mAP by the three paths (the evaluator only with ``train_val``), and the agreement of
    our deploy detections with OpenCV's."""
    ours = ours_detections(deploy, weights, x)
    cv = opencv_detections(deploy, weights, x)
    worst, unmatched, at_cut = detection_difference(ours, cv)
    r = {"map_ours": deploy_map(ours, truths), "map_opencv": deploy_map(cv, truths),
         "max_abs_diff": worst, "rows_without_partner": unmatched,
         "of_which_cut_ties": at_cut,
         "detections": int(sum(len(p) for p in ours))}
    if train_val is not None:
        r["map_evaluator"] = evaluator_map(folder, train_val, weights, len(x) // TEST_BATCH)
    return r


# ------------------------------------------------------------------ the flow
def add_ssd_arguments(ap) -> None:
    """This section's options on ``benchmarks/finetune.py``'s parser."""
    ap.add_argument("--detset", type=Path, help="the generated detection set (default: "
                    "generated once into --cache)")
    ap.add_argument("--ssd-iters", type=int, help="SSD finetune iterations (default: the "
                    f"shipped {FINETUNE_SOLVER}'s max_iter)")
    ap.add_argument("--ssd-keep", type=Path, help="copy the transformed SSD, the log and the "
                    "figures here")


def scratch(work: Path, detset: Path) -> Path:
    """A copy of the SSD fixture with the generated set's data linked in beside it."""
    for name in FIXTURE_FILES:
        shutil.copy(DETECTION / name, work / name)
    for name in SET_ENTRIES:
        os.symlink((detset / name).resolve(), work / name)
    return work


def last_snapshot(folder: Path) -> Path:
    snaps = sorted(folder.glob("_iter_*.caffemodel"), key=lambda p: int(p.stem.split("_")[-1]))
    if not snaps:
        raise SystemExit(f"finetune wrote no snapshot in {folder}")
    return snaps[-1]


def row(step: str, seconds, m: dict) -> str:
    ev = f"{m['map_evaluator']:.4f}" if "map_evaluator" in m else "-"
    s = "-" if seconds is None else f"{seconds:.0f}"
    return (f"| {step} | {s} | {ev} | {m['map_ours']:.4f} | {m['map_opencv']:.4f} | "
            f"{m['max_abs_diff']:.1e} | {m['rows_without_partner']} "
            f"({m['of_which_cut_ties']}) |")


def ssd_flow(args) -> dict:
    """The flow on the SSD fixture; prints a table and returns its figures."""
    detset = detection_set(args.detset, args.cache)
    x, truths = test_scenes(detset, TEST_SCENES)
    print(f"\n## SSD fixture: vai_p_caffe ana, prune 0.5, finetune, transform "
          f"({args.threads} thread(s); mAP@0.5 on the {TEST_SCENES} test scenes)\n")
    print("| step | wall s | mAP evaluator (TEST net) | mAP ours (deploy, VOC) | "
          "mAP OpenCV (deploy, VOC) | max abs diff ours vs OpenCV | rows without a partner "
          "(of which keep_top_k cut ties) |\n|---|---|---|---|---|---|---|")
    figures = {}
    with tempfile.TemporaryDirectory(prefix="ftbench_ssd_") as tmp:
        work = scratch(Path(tmp), detset)
        tv, deploy = work / TRAIN_VAL, work / DEPLOY
        figures["unpruned"] = m = measure(work, deploy, work / WEIGHTS, x, truths, tv)
        print(row("unpruned", None, m), flush=True)
        ana_s = run_logged(work, args.threads, "vai_p_caffe", "ana", "-config", CONFIG, "-no_progress")
        print(f"| ana | {ana_s:.0f} | | | | | |", flush=True)
        prune_s = run_logged(work, args.threads, "vai_p_caffe", "prune", "-config", CONFIG)
        folder = work / "ws" / "regular_rate_0.5"
        figures["pruned"] = m = measure(work, deploy, folder / "sparse.caffemodel", x, truths, tv)
        print(row("prune 0.5", prune_s, m), flush=True)
        extra = ("-max_iter", str(args.ssd_iters)) if args.ssd_iters else ()
        finetune_s = run_logged(work, args.threads, "vai_p_caffe", "finetune", "-config", CONFIG, *extra)
        snap = last_snapshot(folder / "snapshots")
        figures["finetuned"] = m = measure(work, deploy, snap, x, truths, tv)
        print(row(f"finetune ({snap.stem})", finetune_s, m), flush=True)
        dense = work / "dense.caffemodel"
        transform_s = run_logged(work, args.threads, "vai_p_caffe", "transform", "-model", DEPLOY,
                              "-weights", str(snap), "-output", str(dense))
        figures["transformed"] = m = measure(work, dense.with_suffix(".prototxt"), dense, x,
                                             truths)
        print(row("transform (dense deploy)", transform_s, m), flush=True)
        g0 = cs.load(deploy, work / WEIGHTS)
        g1 = cs.load(dense.with_suffix(".prototxt"), dense)
        figures["seconds"] = {"ana": ana_s, "prune": prune_s, "finetune": finetune_s,
                              "transform": transform_s}
        figures["params"] = [sum(int(np.asarray(v).size) for l in g.layers
                                 for v in l.weights.values()) for g in (g0, g1)]
        drop = 100 * (figures["unpruned"]["map_ours"] - figures["transformed"]["map_ours"])
        verdict = "ok" if drop <= TARGET_DROP else "MISSED"
        print(f"\nparameters {figures['params'][0]:,} -> {figures['params'][1]:,}; "
              f"mAP drop after finetuning {drop:.2f} points (target <= {TARGET_DROP}: {verdict})")
        if args.ssd_keep:
            keep = Path(args.ssd_keep)
            keep.mkdir(parents=True, exist_ok=True)
            for p in (dense, dense.with_suffix(".prototxt"), work / "log.txt"):
                shutil.copy(p, keep / p.name)
            (keep / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    return figures


# ------------------------------------------------------------------ the fixture's figures
SAMPLE_SCENES = 40  # what tests/test_ssd_fixture.py re-measures (its fast subset)
METRICS = DETECTION / "ssd-fashion_metrics.json"
PRUNED_DEPLOY = "ssd-fashion-pruned0.5_deploy.prototxt"
PRUNED_WEIGHTS = "ssd-fashion-pruned0.5.caffemodel"


def model_figures(detset: Path, deploy: Path, weights: Path, train_val=None) -> dict:
    """A shipped model's mAP by every path on the whole test split and on its first
    :data:`SAMPLE_SCENES` scenes, and the agreement of our detections with OpenCV's."""
    out = {}
    for count in (TEST_SCENES, SAMPLE_SCENES):
        x, truths = test_scenes(detset, count)
        out[f"first_{count}"] = measure(detset, deploy, weights, x, truths, train_val)
    return out


def record(detset: Path, extra: dict) -> dict:
    """Measure the shipped SSD (and, where shipped, its pruned + finetuned + transformed
    version) and write ``ssd-fashion_metrics.json``, keeping ``extra`` (the training and
    flow figures, measured by their own runs) beside them."""
    from caffe_surgeon.fileio import atomic_write
    figures = dict(extra)
    figures["unpruned"] = model_figures(detset, DETECTION / DEPLOY, DETECTION / WEIGHTS,
                                        DETECTION / TRAIN_VAL)
    if (DETECTION / PRUNED_WEIGHTS).is_file():
        figures["pruned_finetuned_transformed"] = model_figures(
            detset, DETECTION / PRUNED_DEPLOY, DETECTION / PRUNED_WEIGHTS)
    atomic_write(METRICS, json.dumps(figures, indent=1, sort_keys=True) + "\n")
    return figures


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="Re-measure the shipped SSD fixture and write "
                                 f"{METRICS.name} (the flow: benchmarks/finetune.py --only ssd)")
    ap.add_argument("--detset", type=Path, help="the generated set (default: generated once "
                    "into --cache)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "caffe_surgeon_fashion")
    ap.add_argument("--extra", type=Path, help="a JSON object of further figures to keep")
    args = ap.parse_args(argv)
    extra = json.loads(args.extra.read_text()) if args.extra else (
        {k: v for k, v in json.loads(METRICS.read_text()).items()
         if k not in ("unpruned", "pruned_finetuned_transformed")} if METRICS.is_file() else {})
    print(json.dumps(record(detection_set(args.detset, args.cache), extra), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
