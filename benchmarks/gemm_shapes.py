"""Our GEMM micro-kernel (``engine/kernels/microkernel.py``) against NumPy's OpenBLAS, shape by shape.

Both single-threaded, as the convolution tiles call them, in one process: per shape
the median of 9 calls of each, the ratio OpenBLAS / ours (above 1: ours faster),
whether the two agree bit for bit, and whether ``worth_it`` picks ours for it. The
shapes are the GEMMs of 1x1 and im2col convolutions (M output channels, K = input
channels x taps, N output pixels, rows of the column matrix N apart). Run:

    python benchmarks/gemm_shapes.py            # the default grid
    python benchmarks/gemm_shapes.py --quick    # a few model layers
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import cpu_model, median_time  # noqa: E402

from caffe_surgeon.engine.kernels import blas, microkernel  # noqa: E402

#: (M, K, N): MobileNet v2, yolov3-tiny, res10 and ResNet-50 layers (whole, and as the row
#: tiles of about 1 MB of columns that large maps are cut into), then a grid
LAYERS = [(96, 16, 12544), (144, 24, 3136), (24, 144, 3136), (192, 32, 784), (32, 192, 784),
          (16, 27, 43264), (32, 144, 10816), (64, 288, 2704), (32, 147, 22500), (64, 64, 3136),
          (16, 27, 9568), (32, 144, 1664), (64, 288, 832), (32, 147, 1500), (32, 288, 900),
          (256, 64, 3136), (128, 1152, 784), (1280, 320, 49), (320, 960, 49)]
GRID = [(M, K, N) for N in (12544, 3136, 784, 196, 49) for K in (16, 32, 64, 160, 320, 960)
        for M in (32, 128, 512)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the model layers only")
    args = ap.parse_args()
    gemm = blas.gemm()
    if gemm is None:
        print("no callable OpenBLAS in this NumPy: nothing to compare with")
        return 1
    blocking = microkernel.blocking()
    print(f"CPU: {cpu_model()}; micro-kernel {microkernel.MR}x{microkernel.NR}, "
          f"OpenBLAS K blocking reproduced: {blocking or 'no (the engine keeps OpenBLAS here)'}")
    q, u = blocking or (448, 16)
    rng = np.random.default_rng(0)
    print(f"{'M':>5} {'K':>5} {'N':>6}  {'OpenBLAS ms':>11} {'ours ms':>8} {'ratio':>6}  bit-equal  picked")
    ratios = []
    with blas.single_threaded():
        for M, K, N in LAYERS + ([] if args.quick else GRID):
            if M * N * K <= microkernel.SMALL_MNK:
                continue
            a = rng.standard_normal((1, M, K), dtype=np.float32)
            b = rng.standard_normal((K, N), dtype=np.float32)
            panels = microkernel.pack_weights(a)
            ref, got = np.empty((M, N), np.float32), np.empty((M, N), np.float32)

            def theirs():
                gemm(101, 111, 111, M, N, K, np.float32(1), a.ctypes.data, K, b.ctypes.data, N,
                     np.float32(0), ref.ctypes.data, N)

            def ours():
                microkernel.gemm(panels, 0, M, N, K, b.reshape(-1), 0, N, got.reshape(-1), 0, N, q, u)

            theirs(), ours()
            t_blas, t_ours = median_time(theirs, 9), median_time(ours, 9)
            picked = microkernel.worth_it(M, N, K, N)
            ratio = t_blas / t_ours
            if picked:
                ratios.append(ratio)
            print(f"{M:5d} {K:5d} {N:6d}  {t_blas * 1e3:11.3f} {t_ours * 1e3:8.3f} {ratio:6.2f}  "
                  f"{str(np.array_equal(ref, got)):9s}  {'ours' if picked else 'OpenBLAS'}")
    if ratios:
        print(f"shapes picked for ours: {len(ratios)}, OpenBLAS/ours median {np.median(ratios):.2f}, "
              f"min {min(ratios):.2f}, max {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
