#!/usr/bin/env python3
"""Finetuning on the Fashion fixture: accuracy recovered by the vendor's iterative loop, and
training speed against a hand-written PyTorch module of the same net (issue 15, items 1-2).

Accuracy (``rounds``): in a scratch copy of ``fixtures/fashion``, the vendor's commands as a
user types them, each a subprocess: ``vai_p_caffe ana`` once (on the 500 TEST images the
config's ``test_iter`` reads), then for each rate 0.3 -> 0.5 -> 0.7 ``prune`` with
``weights:`` the previous round's last snapshot and ``finetune`` with the shipped
``solver.prototxt`` scaled to ``--epochs`` passes over the 60,000 Fashion-MNIST training
images (its multistep points scale with it). Top-1 is measured on all 10,000 t10k images
with our NumPy engine on the deploy net, after pruning and after finetuning, beside each
round's wall time. The last snapshot is then ``transform``-ed into the dense deploy model
and OpenCV's ``readNetFromCaffe`` must give the same predictions (and so the same top-1).

The images are written once as PNGs + list files (``tools.fashion_mnist.write_image_folder``,
the fixture's own layout) into ``--cache`` and linked into the scratch folder.

Speed (``speed``): :class:`~caffe_surgeon.training.module.CaffeModule` of the fixture's TRAIN
net against :class:`HandNet`, the same net written out in PyTorch, with the same weights, on
the same real batches, alternating, same thread count: images/s of forward + backward
(medians of ``--runs``), and the ratio (target >= 0.9).

Threads: the machines are 2 shared cores; torch's default (one thread per core) collapses
when another process is busy, so every training process here runs ``--threads`` (default 1)
OpenMP threads.

Distillation and Taylor rows (issue item 1) run only where their entry points exist
(``caffe_surgeon.training.distill``; "taylor" in ``pruning.criteria.CRITERIA``); otherwise
they print "not available".

Usage:
    python benchmarks/finetune.py [--epochs 5] [--threads 1] [--runs 7] [--cache DIR]
    python benchmarks/finetune.py --quick        # a few hundred iterations, image subsets
    python benchmarks/finetune.py --only speed   # or rounds
    python benchmarks/finetune.py --only ssd [--detset DIR]   # benchmarks/finetune_ssd.py
    python benchmarks/finetune.py --only yolo [--yolo-batches 500] [--detset DIR]
                                                 # benchmarks/finetune_yolo.py
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT / "fixtures" / "fashion"
sys.path.insert(0, str(ROOT))

import caffe_surgeon as cs  # noqa: E402
from benchmarks.timing import cpu_model  # noqa: E402
from caffe_surgeon.caffe.text import top_level_fields  # noqa: E402
from caffe_surgeon.engine import Executor  # noqa: E402
from benchmarks.commands import run_logged  # noqa: E402
from benchmarks.finetune_ssd import add_ssd_arguments, ssd_flow  # noqa: E402

UNPRUNED_TOP1 = 0.9193  # fixtures/fashion/metrics.json, all 10,000 t10k images
RATES = (0.3, 0.5, 0.7)
#: what the issue asks for, in top-1 points below UNPRUNED_TOP1, per rate
TARGET_DROP = {0.5: 0.5, 0.7: 1.5}
FIXTURE_FILES = ("config.prototxt", "solver.prototxt", "fashion_train_val.prototxt",
                 "fashion_deploy.prototxt", "fashion.caffemodel")
TRAIN_BATCH = 64  # fashion_train_val.prototxt, TRAIN ImageData
BASE_ITERS = 1000  # the shipped solver's max_iter, which its stepvalues are sized for
QUICK_ITERS = 200  # per round with --quick (without --iters)


# ------------------------------------------------------------------ data
def image_folder(cache: Path, kind: str, count: int) -> Path:
    """``cache/<kind>_<count>/`` with ``<kind>/`` PNGs and ``<kind>_list.txt``, written once
    (a half-written folder has no ``done`` marker and is written again)."""
    from tools.fashion_mnist import read_idx, write_image_folder
    folder = cache / f"{kind}_{count}"
    if not (folder / "done").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        t = time.perf_counter()
        images, labels = read_idx(kind)
        write_image_folder(folder, kind, count, images[:count], labels[:count])
        (folder / "done").write_text("")
        print(f"wrote {count} {kind} images to {folder} in {time.perf_counter() - t:.0f} s")
    return folder


def t10k_arrays(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` t10k images as the TEST layer feeds them (N,1,28,28 x 1/255)."""
    from tools.fashion_mnist import read_idx
    images, labels = read_idx("t10k")
    return (images[:count, None].astype(np.float32) / 255.0, labels[:count].astype(np.int64))


def with_fields(text: str, values: dict) -> str:
    """Prototxt text with each named top-level field replaced by ``values[name]`` (a list
    gives a repeated field), every other line kept as written."""
    spans = sorted((s for s in top_level_fields(text) if s.name in values), key=lambda s: s.start)
    for span in reversed(spans):
        text = text[:span.start] + text[span.end:]
    lines = [f"{k}: {v}" for k, vs in values.items() for v in (vs if isinstance(vs, list) else [vs])]
    return re.sub(r"\n[ \t]*\n+", "\n", text).rstrip() + "\n" + "\n".join(lines) + "\n"


def scaled_solver(iters: int) -> str:
    """The shipped solver with ``max_iter`` = ``iters``, its multistep points scaled alike,
    one snapshot and one test (500 images) at the end."""
    base = (FASHION / "solver.prototxt").read_text()
    steps = [int(v) for v in re.findall(r"^stepvalue:\s*(\d+)", base, re.M)]
    return with_fields(base, {
        "max_iter": iters, "stepvalue": [max(1, round(s * iters / BASE_ITERS)) for s in steps],
        "snapshot": iters, "test_interval": iters, "test_initialization": "false",
        "display": max(1, iters // 10)})


def scratch(work: Path, train: Path, test: Path) -> Path:
    """A copy of the fixture reading the cached train and t10k images."""
    for name in FIXTURE_FILES:
        shutil.copy(FASHION / name, work / name)
    for folder, kind in ((train, "train"), (test, "t10k")):
        os.symlink(folder / kind, work / kind)
        os.symlink(folder / f"{kind}_list.txt", work / f"{kind}_list.txt")
    return work


# ------------------------------------------------------------------ commands
def top1(deploy: Path, weights: Path, x: np.ndarray, y: np.ndarray, batch: int = 500):
    """(top-1, predictions) of ``weights`` on the deploy net with our NumPy engine (sparse
    weights run as they are: removed channels are exact zeros)."""
    ex = Executor(cs.load(deploy, weights))
    pred = np.concatenate([ex.run({"data": x[i:i + batch]})["prob"].argmax(1)
                           for i in range(0, len(x), batch)])
    return float((pred == y).mean()), pred


def last_snapshot(folder: Path) -> Path:
    snaps = sorted(folder.glob("_iter_*.caffemodel"), key=lambda p: int(p.stem.split("_")[-1]))
    if not snaps:
        raise SystemExit(f"finetune wrote no snapshot in {folder}")
    return snaps[-1]


@dataclass
class Round:
    rate: float
    pruned: float
    finetuned: float
    prune_s: float
    finetune_s: float
    snapshot: Path


def prune_and_finetune(work: Path, rate: float, weights: str, iters: int, threads: int,
                       data, extra: dict | None = None) -> Round:
    """One vendor round in ``work``: config at ``rate`` from ``weights``, prune, finetune."""
    cfg = work / "config.prototxt"
    cfg.write_text(with_fields(cfg.read_text(), {"rate": rate, "weights": f'"{weights}"',
                                                 **(extra or {})}))
    (work / "solver.prototxt").write_text(scaled_solver(iters))
    prune_s = run_logged(work, threads, "vai_p_caffe", "prune", "-config", "config.prototxt")
    folder = work / "ws" / f"regular_rate_{rate:g}"
    deploy = work / "fashion_deploy.prototxt"
    pruned, _ = top1(deploy, folder / "sparse.caffemodel", *data)
    finetune_s = run_logged(work, threads, "vai_p_caffe", "finetune", "-config", "config.prototxt")
    snap = last_snapshot(folder / "snapshots")
    finetuned, _ = top1(deploy, snap, *data)
    return Round(rate, pruned, finetuned, prune_s, finetune_s, snap)


def opencv_agreement(work: Path, snapshot: Path, threads: int, x, y, batch: int = 500):
    """``transform`` the last snapshot into the dense deploy model; (ours top-1, OpenCV top-1,
    fraction of equal predictions) on ``x``."""
    import cv2
    cv2.setNumThreads(threads)
    out = work / "dense.caffemodel"
    run_logged(work, threads, "vai_p_caffe", "transform", "-model", "fashion_deploy.prototxt",
            "-weights", str(snapshot), "-output", str(out))
    proto = out.with_suffix(".prototxt")
    ours, pred = top1(proto, out, x, y, batch)
    net = cv2.dnn.readNetFromCaffe(str(proto), str(out))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_pred = []
    for i in range(0, len(x), batch):
        net.setInput(np.ascontiguousarray(x[i:i + batch]), "data")
        cv_pred.append(net.forward("prob").reshape(len(x[i:i + batch]), -1).argmax(1))
    cv_pred = np.concatenate(cv_pred)
    return ours, float((cv_pred == y).mean()), float((cv_pred == pred).mean())


def rounds(args, cache: Path) -> None:
    n_train, n_test = (4096, 1000) if args.quick else (60000, 10000)
    train, test = image_folder(cache, "train", n_train), image_folder(cache, "t10k", n_test)
    iters = args.iters or (QUICK_ITERS if args.quick else
                           max(1, round(args.epochs * n_train / TRAIN_BATCH)))
    data = t10k_arrays(n_test)
    print(f"\n## Iterative pruning + finetuning ({n_train} training images, {iters} iterations "
          f"a round = {iters * TRAIN_BATCH / n_train:.2f} epochs, batch {TRAIN_BATCH}, "
          f"{args.threads} thread(s); top-1 on {n_test} t10k images)")
    with tempfile.TemporaryDirectory(prefix="ftbench_") as tmp:
        work = scratch(Path(tmp), train, test)
        start, _ = top1(work / "fashion_deploy.prototxt", work / "fashion.caffemodel", *data)
        ana_s = run_logged(work, args.threads, "vai_p_caffe", "ana", "-config", "config.prototxt", "-no_progress")
        print(f"unpruned top-1 {start:.4f}; ana (once, 500 TEST images) {ana_s:.0f} s\n")
        print("| round | rate | top-1 pruned | top-1 finetuned | drop vs unpruned (points) "
              "| target | prune s | finetune s | round s |")
        print("|---|---|---|---|---|---|---|---|---|")
        weights, done = "fashion.caffemodel", []
        for i, rate in enumerate(RATES, 1):
            r = prune_and_finetune(work, rate, weights, iters, args.threads, data)
            drop = 100 * (start - r.finetuned)
            target = TARGET_DROP.get(rate)
            verdict = "" if target is None else f"<= {target} {'ok' if drop <= target else 'MISSED'}"
            print(f"| {i} | {rate} | {r.pruned:.4f} | {r.finetuned:.4f} | {drop:.2f} | {verdict} | "
                  f"{r.prune_s:.0f} | {r.finetune_s:.0f} | {r.prune_s + r.finetune_s:.0f} |",
                  flush=True)
            weights, done = str(r.snapshot.relative_to(work)), done + [r]
        ours, cv, agree = opencv_agreement(work, done[-1].snapshot, args.threads, *data)
        print(f"\ndense model of round {len(done)} (transform): top-1 ours {ours:.4f}, "
              f"OpenCV {cv:.4f}, equal predictions {agree:.4f}")
        for row in (distill_row, taylor_row):
            row(args, cache, train, test, iters, data, start)


# ------------------------------------------------------------------ optional rows
def distill_row(args, cache, train, test, iters, data, start) -> None:
    """Rate 0.5 in one round by distillation from the unpruned model, without labels
    (target: within 1 point). Runs where ``caffe_surgeon.training.distill`` exists and the
    config takes ``distill: true``."""
    if importlib.util.find_spec("caffe_surgeon.training.distill") is None:
        print("distillation at 0.5 (no labels): not available on this branch")
        return
    with tempfile.TemporaryDirectory(prefix="ftbench_distill_") as tmp:
        work = scratch(Path(tmp), train, test)
        run_logged(work, args.threads, "vai_p_caffe", "ana", "-config", "config.prototxt", "-no_progress")
        r = prune_and_finetune(work, 0.5, "fashion.caffemodel", iters, args.threads, data,
                               {"distill": "true"})
        print(f"distillation at 0.5 (no labels): top-1 pruned {r.pruned:.4f} -> "
              f"{r.finetuned:.4f}, drop {100 * (start - r.finetuned):.2f} points (target <= 1), "
              f"{r.prune_s + r.finetune_s:.0f} s")


def taylor_row(args, cache, train, test, iters, data, start) -> None:
    """Taylor against L1 at 0.5 in one round from the unpruned model, before and after
    finetuning. Runs where "taylor" is one of ``pruning.criteria.CRITERIA``."""
    from caffe_surgeon.pruning.criteria import CRITERIA
    if "taylor" not in CRITERIA:
        print("Taylor vs L1 at 0.5: not available on this branch")
        return
    print("\n| criterion (rate 0.5, one round) | top-1 pruned | top-1 finetuned | s |\n|---|---|---|---|")
    for criterion in ("l1", "taylor"):
        with tempfile.TemporaryDirectory(prefix=f"ftbench_{criterion}_") as tmp:
            work = scratch(Path(tmp), train, test)
            cfg = work / "config.prototxt"
            cfg.write_text(with_fields(cfg.read_text(), {"criterion": criterion}))
            run_logged(work, args.threads, "vai_p_caffe", "ana", "-config", "config.prototxt", "-no_progress")
            r = prune_and_finetune(work, 0.5, "fashion.caffemodel", iters, args.threads, data)
            print(f"| {criterion} | {r.pruned:.4f} | {r.finetuned:.4f} | "
                  f"{r.prune_s + r.finetune_s:.0f} |")


# ------------------------------------------------------------------ speed
SPEED_WORKER = r"""
import json, statistics, sys, time
import torch
sys.path.insert(0, sys.argv[2])
from benchmarks.finetune import speed_measure
print(json.dumps(speed_measure(**json.loads(sys.argv[1]))))
"""


def hand_net():
    """The fixture's TRAIN net written out in PyTorch (conv/bn/scale/relu, pool, eltwise,
    concat, fc, softmax loss), as a PyTorch user would: ``F.batch_norm`` with the stored
    statistics (the prototxt's ``use_global_stats: true``) and Scale as its affine part."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class HandNet(nn.Module):
        CONVS = (("conv1", 1, 16, 3), ("conv2a", 16, 32, 3), ("conv2b", 32, 32, 3),
                 ("conv2c", 32, 32, 3), ("b3a", 32, 24, 1), ("b3b", 32, 24, 3),
                 ("conv4", 48, 64, 3))

        def __init__(self, graph):
            super().__init__()
            w = {l.name: l.weights for l in graph.layers}
            t = lambda a: torch.tensor(np.asarray(a, np.float32))  # noqa: E731
            self.conv = nn.ParameterDict()
            self.gamma, self.beta = nn.ParameterDict(), nn.ParameterDict()
            for name, cin, cout, k in self.CONVS:
                self.conv[name] = nn.Parameter(t(w[name]["weight"]))
                bn = w[f"{name}/bn"]
                factor = float(np.asarray(bn["scale_factor"]).ravel()[0])
                factor = 1.0 / factor if factor else 0.0
                self.register_buffer(f"{name}_mean", t(bn["mean"]) * factor)
                self.register_buffer(f"{name}_var", t(bn["variance"]) * factor)
                scale = w[f"{name}/scale"]
                self.gamma[name] = nn.Parameter(t(scale["scale"]))
                self.beta[name] = nn.Parameter(t(scale["bias"]))
            self.fc_w = nn.Parameter(t(w["fc"]["weight"]))
            self.fc_b = nn.Parameter(t(w["fc"]["bias"]))

        def cb(self, name, x, relu=True):
            k = self.conv[name].shape[-1]
            x = F.conv2d(x, self.conv[name], padding=k // 2)
            x = F.batch_norm(x, getattr(self, f"{name}_mean"), getattr(self, f"{name}_var"),
                             self.gamma[name], self.beta[name], False, 0.0, 1e-5)
            return F.relu(x) if relu else x

        def forward(self, data, label):
            x = F.max_pool2d(self.cb("conv1", data), 2, 2)
            a = self.cb("conv2a", x)
            c = self.cb("conv2c", self.cb("conv2b", a), relu=False)
            x = F.max_pool2d(F.relu(a + c), 2, 2)
            x = torch.cat([self.cb("b3a", x), self.cb("b3b", x)], 1)
            x = self.cb("conv4", x)
            fc = F.linear(x.flatten(1), self.fc_w, self.fc_b)
            return F.cross_entropy(fc, label.long())

    return HandNet


def speed_measure(threads: int, runs: int, steps: int, batch: int) -> dict:
    """In this process: images/s of forward + backward of ours and of HandNet, alternating."""
    import torch
    from caffe_surgeon.training.module import build_module
    from tools.fashion_mnist import read_idx
    torch.set_num_threads(threads)
    graph = cs.load(FASHION / "fashion_train_val.prototxt", FASHION / "fashion.caffemodel",
                    phase="TRAIN")
    ours, hand = build_module(graph, "TRAIN"), hand_net()(graph).train()
    images, labels = read_idx("train")
    n = batch * steps
    xs = torch.from_numpy(images[:n, None].astype(np.float32) / 255.0).split(batch)
    ys = torch.from_numpy(labels[:n].astype(np.float32)).split(batch)
    loss_ours = float(ours({"data": xs[0], "label": ys[0]}).loss)
    loss_hand = float(hand(xs[0], ys[0]))
    if abs(loss_ours - loss_hand) > 1e-4 * max(1.0, abs(loss_hand)):
        raise SystemExit(f"HandNet is not the same net: loss {loss_hand} vs ours {loss_ours}")
    step_ours = lambda x, y: ours({"data": x, "label": y}).loss.backward()  # noqa: E731
    step_hand = lambda x, y: hand(x, y).backward()  # noqa: E731
    times = {"ours": [], "hand": []}
    for step in (step_ours, step_hand):  # warm-up
        for x, y in zip(xs[:3], ys[:3]):
            step(x, y)
    for _ in range(runs):
        for key, step in (("ours", step_ours), ("hand", step_hand)):
            time.sleep(0.05)  # let the other's worker threads go idle
            t = time.perf_counter()
            for x, y in zip(xs, ys):
                step(x, y)
            times[key].append(n / (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in times.items()} | {"loss": loss_ours}


def speed(args) -> None:
    steps = 5 if args.quick else 20
    runs = 3 if args.quick else args.runs
    print(f"\n## Training speed: CaffeModule vs hand-written PyTorch (forward + backward, "
          f"batch {TRAIN_BATCH}, {steps} batches a run, median of {runs} alternating runs)\n")
    print("| threads | ours img/s | hand-written img/s | ratio (target >= 0.9) |\n|---|---|---|---|")
    for threads in sorted({1, args.threads}):
        spec = {"threads": threads, "runs": runs, "steps": steps, "batch": TRAIN_BATCH}
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
        import json
        out = subprocess.run([sys.executable, "-c", SPEED_WORKER, json.dumps(spec), str(ROOT)],
                             env=env, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            raise SystemExit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {threads} | {r['ours']:.0f} | {r['hand']:.0f} | {r['ours'] / r['hand']:.2f} |",
              flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 5: measured on this fixture, rate 0.5 / 0.7 end -0.79 / -2.35 points after 2 epochs a
    # round, -0.35 / -1.53 after 4, -0.26 / -1.28 after 5 (targets 0.5 / 1.5)
    ap.add_argument("--epochs", type=float, default=5.0,
                    help="passes over the training images per round (default 5)")
    ap.add_argument("--iters", type=int, help="iterations per round (overrides --epochs)")
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads (default 1)")
    ap.add_argument("--runs", type=int, default=7, help="timed runs per side (speed)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "caffe_surgeon_fashion",
                    help="where the training and t10k images are written once")
    ap.add_argument("--quick", action="store_true",
                    help=f"4096 training images, 1000 t10k images, {QUICK_ITERS} iterations a round")
    ap.add_argument("--only", choices=("rounds", "speed", "ssd", "yolo"))
    add_ssd_arguments(ap)  # --detset too, which the yolo section shares
    ap.add_argument("--yolo-batches", type=int, default=500,
                    help="yolo: finetune iterations (batches of 32) after pruning")
    args = ap.parse_args(argv)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); Python {platform.python_version()}")
    if args.only in (None, "speed"):
        speed(args)
    if args.only in (None, "rounds"):
        rounds(args, args.cache)
    if args.only in (None, "ssd"):
        ssd_flow(args)
    if args.only in (None, "yolo"):
        from benchmarks.finetune_yolo import yolo
        yolo(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
