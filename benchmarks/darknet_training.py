#!/usr/bin/env python3
"""Darknet training on a full-size zoo cfg against libdarknet.so: agreement and speed.

A zoo detector cfg (default pjreddie ``yolov3-tiny.cfg``, 416 x 416, 80 classes) with its
``[net]`` batch set to ``--batch`` (one forward per update, no burn-in, so the first update
moves the weights), random He-scaled weights and random images with 1-3 boxes each are
trained ``--iterations`` times by libdarknet's ``train_network`` (ctypes, in a subprocess:
``tests/libdarknet_oracle.py train``) and by ``DarknetTrainer``. Printed: each iteration's
loss on both sides, the worst relative error over every array (to its largest value, and to
the largest change training made), and the wall time of each side (libdarknet's includes
loading the cfg and weights and saving the weights; ours the same). A float64 run of ours
is the yardstick for float32 rounding: where ours (float32) and libdarknet differ by about as
much as ours differs from ours in float64, the difference is rounding (the BatchNorm
backward subtracts large, nearly equal sums), not a formula.

Threads: both sides run ``--threads`` OpenMP threads (the machines are 2 shared cores).

Usage:
    python benchmarks/darknet_training.py [--cfg ZOO_CFG] [--batch 2] [--iterations 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default=str(ROOT.parent / "shared" / "zoo" / "darknet" / "pjreddie"
                                         / "yolov3-tiny.cfg"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    import libdarknet_oracle as lo
    from test_darknet_training import random_batches, random_weights, worst_errors

    from caffe_surgeon.darknet.reader import read_darknet
    from caffe_surgeon.training.darknet_trainer import DarknetTrainer
    from caffe_surgeon.training.torch_darknet_train import HEADS
    if not lo.available():
        print("libdarknet.so (Debian package darknet) is not installed")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text = Path(args.cfg).read_text()
        cfg = tmp / Path(args.cfg).name
        lines = []
        for line in text.splitlines():
            key = line.split("=")[0].strip()
            if key in ("batch", "subdivisions", "burn_in"):
                continue
            lines.append(line)
            if line.strip() in ("[net]", "[network]"):
                lines += [f"batch={args.batch}", "subdivisions=1"]
        cfg.write_text("\n".join(lines) + "\n")
        weights = random_weights(cfg, tmp / "start.weights", seed=1)
        images, truths = random_batches(cfg, args.iterations, seed=2)
        rows = max(HEADS[l.type].rows for l in read_darknet(cfg).layers if l.type in HEADS)
        np.save(tmp / "images.npy", images)
        np.save(tmp / "truths.npy", np.ascontiguousarray(truths[:, :, :rows]))
        t0 = time.perf_counter()
        lo.call("train", cfg, weights, tmp / "images.npy", tmp / "truths.npy", tmp,
                str(args.iterations), timeout=3600)
        theirs_s = time.perf_counter() - t0
        their_losses = json.loads((tmp / "losses.json").read_text())
        t0 = time.perf_counter()
        trainer = DarknetTrainer(read_darknet(cfg, weights), region_backward="cpu")
        ours = [trainer.train(images[k], truths[k]) for k in range(args.iterations)]
        trainer.save_weights(tmp / "ours.weights")
        ours_s = time.perf_counter() - t0
        reference = read_darknet(cfg, tmp / f"{args.iterations}.weights")
        start = read_darknet(cfg, weights)
        to_value, _ = worst_errors(trainer, reference)
        to_change, _ = worst_errors(trainer, reference, start)
        wide = DarknetTrainer(read_darknet(cfg, weights), region_backward="cpu", dtype="float64")
        for k in range(args.iterations):
            wide.train(images[k], truths[k])
        wide.save_weights(tmp / "wide.weights")
        rounding, _ = worst_errors(trainer, read_darknet(cfg, tmp / "wide.weights"), start)
        wide_to_darknet, _ = worst_errors(wide, reference, start)
    print(f"{Path(args.cfg).name}: batch {args.batch}, {args.iterations} iteration(s), "
          f"{args.threads} thread(s)")
    for k, (a, b) in enumerate(zip(ours, their_losses), 1):
        print(f"  iteration {k}: loss {a:.6f} (libdarknet {b:.6f}, rel {abs(a - b) / b:.1e})")
    for what, errors in (("ours vs libdarknet, to the array's value", to_value),
                         ("ours vs libdarknet, to the change", to_change),
                         ("ours float64 vs libdarknet, to the change", wide_to_darknet),
                         ("ours float32 vs ours float64, to the change", rounding)):
        worst = max(errors, key=errors.get)
        print(f"  worst error, {what}: {errors[worst]:.2e} ({worst})")
    print(f"  wall time: ours {ours_s:.1f} s, libdarknet {theirs_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
