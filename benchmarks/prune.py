"""Time pruning and writing a ResNet-50-sized model (issue 4, target: seconds).

Prints the median of several runs of: channel analysis, L1 plan at 50%,
dense surgery with offset folding (one forward pass), writing prototxt +
caffemodel; and, as the same-run reference, plain read + write of the model.

    python benchmarks/prune.py [--runs 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import caffe_surgeon as cs  # noqa: E402
from caffe_surgeon.pruning import analyse, apply, make_plan  # noqa: E402

ZOO = ROOT.parent / "shared" / "zoo" / "caffe" / "resnet" / "ResNet-50-deploy.prototxt"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not ZOO.exists():
        sys.exit(f"needs {ZOO}")
    tmp = Path(tempfile.mkdtemp())
    g = cs.load(ZOO)
    cs.init(g, seed=0)
    cs.save(g, tmp / "r50.prototxt", tmp / "r50.caffemodel")
    steps = {k: [] for k in ("read+write (reference)", "load", "analyse", "plan", "apply (fold)",
                             "write", "prune total")}
    for _ in range(args.runs):
        t0 = time.perf_counter()
        ref = cs.load(tmp / "r50.prototxt", tmp / "r50.caffemodel")
        cs.save(ref, tmp / "c.prototxt", tmp / "c.caffemodel")
        steps["read+write (reference)"].append(time.perf_counter() - t0)
        t = [time.perf_counter()]
        g = cs.load(tmp / "r50.prototxt", tmp / "r50.caffemodel"); t.append(time.perf_counter())
        a = analyse(g); t.append(time.perf_counter())
        plan = make_plan(a, ratio=0.5); t.append(time.perf_counter())
        d = apply(g, plan, analysis=a); t.append(time.perf_counter())
        cs.save(d, tmp / "p.prototxt", tmp / "p.caffemodel"); t.append(time.perf_counter())
        for name, a0, a1 in zip(("load", "analyse", "plan", "apply (fold)", "write"), t, t[1:]):
            steps[name].append(a1 - a0)
        steps["prune total"].append(t[-1] - t[0])
    ref = statistics.median(steps["read+write (reference)"])
    print(f"ResNet-50 ({sum(l.weights[k].size for l in g.layers for k in l.weights):,} weights), "
          f"50% L1, dense, median of {args.runs}:")
    for k, v in steps.items():
        m = statistics.median(v)
        print(f"  {k:<24} {m:7.3f} s   ratio to read+write {m / ref:5.2f}")


if __name__ == "__main__":
    main()
