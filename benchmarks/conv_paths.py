"""Convolution layers with our micro-kernels against the same layers on OpenBLAS alone.

For each layer (shapes from yolov3-tiny, res10 SSD, ResNet-50 and MobileNet v2 at batch
1) this times ``conv.conv2d`` with the engine's choice of kernels and with OpenBLAS only
(``microkernel.blocking`` forced off: im2col or in-place columns + OpenBLAS, and
Winograd where it applies), in one process, interleaved, medians of 9 calls, and prints
which path the layer takes, the ratio (above 1: ours faster) and whether the two outputs
are equal bit for bit (they must be: which GEMM ran never changes a result). Run:

    python benchmarks/conv_paths.py [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import cpu_model, median_time  # noqa: E402

#: (model, input C, H=W, output channels, kernel, stride, pad)
LAYERS = [
    ("ResNet-50 conv1", 3, 224, 64, 7, 2, 3),
    ("ResNet-50 res2 3x3", 64, 56, 64, 3, 1, 1),
    ("ResNet-50 res4 1x1 in", 1024, 14, 256, 1, 1, 0),
    ("ResNet-50 res4 1x1 out", 256, 14, 1024, 1, 1, 0),
    ("ResNet-50 res5 3x3", 512, 7, 512, 3, 1, 1),
    ("ResNet-50 res5 1x1 out", 512, 7, 2048, 1, 1, 0),
    ("ResNet-50 res5 1x1 in", 2048, 7, 512, 1, 1, 0),
    ("ResNet-50 res4 3x3 (Winograd)", 256, 14, 256, 3, 1, 1),
    ("yolov3-tiny 32->64", 32, 104, 64, 3, 1, 1),
    ("yolov3-tiny 16->32", 16, 208, 32, 3, 1, 1),
    ("res10 32->128", 32, 38, 128, 3, 1, 1),
    ("MobileNet v2 160->960", 160, 7, 960, 1, 1, 0),
    ("MobileNet v2 960->160", 960, 7, 160, 1, 1, 0),
    ("MobileNet v2 96->576", 96, 14, 576, 1, 1, 0),
    ("MobileNet v2 16->96", 16, 112, 96, 1, 1, 0),
    ("res10 stem 3->32 7x7/2", 3, 300, 32, 7, 2, 3),
    ("res10 32->32", 32, 75, 32, 3, 1, 1),
    ("res10 head 128->16", 128, 38, 16, 3, 1, 1),
    ("res10 head 256->24", 256, 19, 24, 3, 1, 1),
    ("yolov3-tiny 3->16", 3, 416, 16, 3, 1, 1),
    ("ResNet-50 res2 1x1 out", 64, 56, 256, 1, 1, 0),
    ("ResNet-50 res2 1x1 in", 256, 56, 64, 1, 1, 0),
    ("ResNet-50 res3 1x1 out", 128, 28, 512, 1, 1, 0),
    ("MobileNet v2 144->24", 144, 56, 24, 1, 1, 0),
]


def _path(conv, x_shape, w_shape, stride, pad, out_hw) -> str:
    from caffe_surgeon.engine.kernels import direct_conv, direct_conv_thin, parallel, pointwise_conv
    if conv.use_winograd(x_shape, w_shape, (stride,) * 2, (1, 1), 1, (pad,) * 2):
        return "Winograd"
    if direct_conv.use(x_shape, w_shape, (stride,) * 2, (1, 1), 1, out_hw):
        return "direct"
    N, O, K = x_shape[0], w_shape[0], w_shape[1] * w_shape[2] * w_shape[3]
    big = N * O * K * out_hw[0] * out_hw[1] >= parallel.MIN_PARALLEL_MACS
    tiling = conv.gemm_tiling(N, 1, O, K, *out_hw, conv.TILES if big else 1)
    smallest = conv.smallest_gemm(tiling, N, 1, O, K, *out_hw)
    if direct_conv_thin.use(w_shape, (stride,) * 2, 1, smallest):
        return "thin"
    if pointwise_conv.use(w_shape, (stride,) * 2, (pad,) * 2, 1, out_hw[0] * out_hw[1], smallest):
        return "pointwise"
    return "GEMM tiles"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import numba
    numba.set_num_threads(args.threads)
    from caffe_surgeon.engine.kernels import blas, conv, microkernel
    from caffe_surgeon.engine.kernels.epilogue import Epilogue
    if blas.gemm() is None:
        print("no callable OpenBLAS in this NumPy: nothing to compare with")
        return 1
    blocking = microkernel.blocking()
    print(f"CPU: {cpu_model()}; {args.threads} thread(s); OpenBLAS K blocking reproduced: "
          f"{blocking or 'no (the engine keeps OpenBLAS here: nothing to compare)'}")
    if blocking is None:
        return 0
    print(f"{'layer':30s} {'path':10s} {'OpenBLAS ms':>11} {'ours ms':>8} {'ratio':>6}  bit-equal")
    rng = np.random.default_rng(0)
    ratios = []
    for name, C, H, O, k, s, p in LAYERS:
        x = rng.standard_normal((1, C, H, H), dtype=np.float32)
        w = rng.standard_normal((O, C, k, k), dtype=np.float32) * np.float32(0.05)
        b = rng.standard_normal(O, dtype=np.float32)
        ep = Epilogue(O).mul(rng.random(O, dtype=np.float32)).relu()
        u = conv.winograd_weights({}, name, w, (s, s), (1, 1), 1)

        def run():
            return conv.conv2d(x, w, b, (s, s), (p, p), epilogue=ep, winograd_u=u)

        times = {"blas": [], "ours": []}
        outs = {}
        for _ in range(3):
            for mode in ("blas", "ours"):
                microkernel._state["blocking"] = None if mode == "blas" else blocking
                outs[mode] = run()
                times[mode].append(median_time(run, 3))
        microkernel._state["blocking"] = blocking
        t_blas, t_ours = statistics.median(times["blas"]), statistics.median(times["ours"])
        ratios.append(t_blas / t_ours)
        oh = outs["ours"].shape[2]
        print(f"{name:30s} {_path(conv, x.shape, w.shape, s, p, (oh, oh)):10s} "
              f"{t_blas * 1e3:11.3f} {t_ours * 1e3:8.3f} {t_blas / t_ours:6.2f}  "
              f"{'yes' if np.array_equal(outs['blas'], outs['ours']) else 'NO'}")
    print(f"OpenBLAS / ours over {len(ratios)} layers: median {statistics.median(ratios):.2f}, "
          f"min {min(ratios):.2f}, max {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
