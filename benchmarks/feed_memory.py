"""Memory of an evaluator's decoded data: everything in memory against a small budget.

A Caffe TEST net with an ImageData layer reads ``--images`` synthetic colour
JPEGs (640 x 480) resized to ``--size`` (default 300, SSD's), so the decoded
float32 feeds are ``images x 3 x size x size x 4`` bytes (1.08 GB at 1000).
Each setup runs in a fresh process and reports:

* peak of memory allocated by Python and NumPy while decoding (tracemalloc),
* anonymous resident memory (``RssAnon``) after decoding - what cannot be
  dropped under pressure, unlike the page cache behind the mapped file,
* decode time and the median time of ``--passes`` evaluations of a small net
  whose first layer (4 x 4 average pooling) reads every pixel of every batch,
  as each ana variant starting at the input does.

Setups: ``CAFFE_SURGEON_FEED_MEMORY`` = 1T (all in memory: the reference) and
``--budget`` (default 128M: the rest mapped). The metric must be the same.

    python benchmarks/feed_memory.py [--images 1000] [--size 300] [--budget 128M] [--passes 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

NET = """name: "feedbench"
layer {{ name: "data" type: "ImageData" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ scale: 0.0078125 mean_value: 104 mean_value: 117 mean_value: 123 }}
  image_data_param {{ source: "list.txt" root_folder: "img/" batch_size: {batch}
    new_height: {size} new_width: {size} is_color: true }} }}
layer {{ name: "down" type: "Pooling" bottom: "data" top: "down" pooling_param {{ pool: AVE kernel_size: 4 stride: 4 }} }}
layer {{ name: "conv" type: "Convolution" bottom: "down" top: "conv"
  convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param {{ pool: AVE global_pooling: true }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param {{ num_output: 4 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" }}
"""

CHILD = r"""
import json, os, sys, time, tracemalloc
sys.path.insert(0, sys.argv[2])
import numpy as np
import caffe_surgeon as cs
from caffe_surgeon.evaluation import CaffeEvaluator
folder, iters, passes = sys.argv[1], int(sys.argv[3]), int(sys.argv[4])
g = cs.load(os.path.join(folder, "net.prototxt"), phase="TEST")
cs.init(g, seed=0)
CaffeEvaluator(g, "acc", test_iter=1, base_dir=folder).evaluate(g)  # kernels compiled, not timed
tracemalloc.start()
t = time.perf_counter()
ev = CaffeEvaluator(g, "acc", test_iter=iters, base_dir=folder)
decode = time.perf_counter() - t
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
anon = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("RssAnon"))
times, metric = [], None
for _ in range(passes):
    t = time.perf_counter()
    metric = ev.evaluate(g)
    times.append(time.perf_counter() - t)
print(json.dumps({"peak": peak, "anon": anon, "decode": decode, "eval": times, "metric": metric,
                  "memory": ev.feeds.memory_bytes, "spilled": ev.feeds.spilled_bytes}))
"""


def make_data(folder: Path, images: int, size: int, batch: int) -> int:
    from PIL import Image
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    lines = []
    for i in range(images):
        shifted = np.roll(base, i * 7, axis=1)  # different pixels, cheap to make
        Image.fromarray(shifted).save(folder / "img" / f"{i}.jpg", quality=90)
        lines.append(f"{i}.jpg {i % 4}\n")
    (folder / "list.txt").write_text("".join(lines))
    (folder / "net.prototxt").write_text(NET.format(batch=batch, size=size))
    return images // batch


def run(folder: Path, iters: int, passes: int, budget: str) -> dict:
    env = dict(os.environ, CAFFE_SURGEON_FEED_MEMORY=budget)
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(ROOT), str(iters), str(passes)],
                         env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"child failed ({budget}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--budget", default="128M")
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="feedbench_") as tmp:
        folder = Path(tmp)
        iters = make_data(folder, args.images, args.size, args.batch)
        feeds = iters * args.batch * 3 * args.size * args.size * 4
        print(f"caffe-surgeon feed memory benchmark: {iters * args.batch} images -> "
              f"{args.size}x{args.size}x3 float32 = {feeds / 2**20:.0f} MiB of feeds; {os.cpu_count()} cores")
        rows = {}
        for label, budget in (("in memory", "1T"), (f"budget {args.budget}", args.budget)):
            r = rows[label] = run(folder, iters, args.passes, budget)
            print(f"  {label:>14}: peak allocated {r['peak'] / 2**20:7.0f} MiB, RssAnon after decode "
                  f"{r['anon'] / 2**20:7.0f} MiB, in memory {r['memory'] / 2**20:6.0f} MiB, mapped "
                  f"{r['spilled'] / 2**20:6.0f} MiB; decode {r['decode']:.2f} s, evaluation median "
                  f"{statistics.median(r['eval']):.2f} s; metric {r['metric']:.6f}")
        ref, low = rows["in memory"], rows[f"budget {args.budget}"]
        if ref["metric"] != low["metric"]:
            sys.exit("the metric differs between the two setups")
        print(f"  budget/in memory: peak allocated {low['peak'] / ref['peak']:.3f}x, RssAnon "
              f"{low['anon'] / ref['anon']:.3f}x, decode time {low['decode'] / ref['decode']:.2f}x, "
              f"evaluation time {statistics.median(low['eval']) / statistics.median(ref['eval']):.2f}x "
              "(same metric)")


if __name__ == "__main__":
    main()
