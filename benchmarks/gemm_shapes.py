"""Our GEMM micro-kernels against NumPy's OpenBLAS, shape by shape.

``engine/kernels/microkernel.py`` (12 channels x 16 pixels, "rows"),
``engine/kernels/channel_microkernel.py`` (48 or 64 channels x 9 or 6 pixels, "chan") and,
on AVX2 machines, ``engine/kernels/haswell_gemm.py`` (6 x 16, "avx2"), all single-threaded, as the convolution tiles call them, in one process: per shape the
median of 9 calls of each, the ratios OpenBLAS / ours (above 1: ours faster), whether
each agrees with OpenBLAS bit for bit, and which one the convolutions pick. The
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

from caffe_surgeon.engine.kernels import blas, channel_microkernel, haswell_gemm, microkernel  # noqa: E402

#: (M, K, N): MobileNet v2, yolov3-tiny, res10, ResNet-50 and Fashion-fixture layers (whole, and as the row
#: tiles of about 1 MB of columns that large maps are cut into), then a grid
LAYERS = [(96, 16, 12544), (144, 24, 3136), (24, 144, 3136), (192, 32, 784), (32, 192, 784),
          (16, 27, 43264), (32, 144, 10816), (64, 288, 2704), (32, 147, 22500), (64, 64, 3136),
          (16, 27, 9568), (32, 144, 1664), (64, 288, 832), (32, 147, 1500), (32, 288, 900),
          (256, 64, 3136), (128, 1152, 784), (1280, 320, 49), (320, 960, 49),
          # ResNet-50 on 7x7 and 14x14 maps: 1x1 channel blocks, 3x3 im2col, Winograd GEMMs
          (512, 512, 49), (128, 2048, 49), (128, 4608, 49), (256, 256, 49), (256, 1024, 196),
          (256, 512, 196), (1024, 256, 196), (512, 512, 392),
          # the Fashion fixture's per-image calls (7x7 and 14x14 maps, ana's pruned variants)
          (24, 288, 49), (64, 432, 49), (32, 288, 196), (32, 144, 196), (16, 432, 196), (64, 144, 100)]
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
    print(f"CPU: {cpu_model()}; micro-kernels {microkernel.MR}x{microkernel.NR} (rows) and "
          f"48x9 / 64x6 (chan), OpenBLAS K blocking reproduced: "
          f"{blocking or 'no (the engine keeps OpenBLAS here)'}")
    q, u = blocking or (448, 16)
    avx2 = haswell_gemm.USABLE and haswell_gemm.reproduces()
    print(f"AVX2 GEMM (haswell_gemm): {'reproduces the BLAS' if avx2 else 'not used on this machine'}")
    rng = np.random.default_rng(0)
    print(f"{'M':>5} {'K':>5} {'N':>6}  {'OpenBLAS ms':>11} {'rows ms':>8} {'ratio':>6} {'chan ms':>8} "
          f"{'ratio':>6} {'avx2 ms':>8} {'ratio':>6}  bit-equal  picked")
    picked_ratios = []
    with blas.single_threaded():
        for M, K, N in LAYERS + ([] if args.quick else GRID):
            if M * N * K <= microkernel.SMALL_MNK:
                continue
            a = rng.standard_normal((1, M, K), dtype=np.float32)
            b = rng.standard_normal((K, N), dtype=np.float32)
            panel = channel_microkernel.panel_rows(M)
            rows_panels = microkernel.pack_weights(a)
            chan_panels = microkernel.pack_weights(a, None, panel)
            ref = np.empty((M, N), np.float32)
            avx2_panels = haswell_gemm.pack_weights(a)
            got = {k: np.empty((M, N), np.float32) for k in ("rows", "chan", "avx2")}

            def theirs():
                gemm(101, 111, 111, M, N, K, np.float32(1), a.ctypes.data, K, b.ctypes.data, N,
                     np.float32(0), ref.ctypes.data, N)

            def rows():
                microkernel.gemm(rows_panels, 0, M, N, K, b.reshape(-1), 0, N, got["rows"].reshape(-1),
                                 0, N, q, u)

            def chan():
                channel_microkernel.gemm(chan_panels, 0, M, N, K, b.reshape(-1), 0, N,
                                         got["chan"].reshape(-1), 0, N, q, u, panel)

            def avx2_gemm():
                haswell_gemm.gemm(avx2_panels, 0, M, N, K, b.reshape(-1), 0, N, got["avx2"].reshape(-1),
                                  0, N, 0, haswell_gemm.tile_count(M))

            kernels = [("blas", theirs), ("rows", rows), ("chan", chan)] + ([("avx2", avx2_gemm)] if avx2 else [])
            for _, f in kernels:
                f()
            t = {name: median_time(f, 9) for name, f in kernels}
            if avx2:
                pick = "avx2" if haswell_gemm.worth_it(M, N, K, N) else "OpenBLAS"
            else:
                pick = ("chan" if channel_microkernel.worth_it(M, N, K, N) else
                        "rows" if microkernel.worth_it(M, N, K, N) else "OpenBLAS")
            if pick != "OpenBLAS":
                picked_ratios.append((pick, t["blas"] / t[pick]))
            names = [n for n, _ in kernels[1:]]
            equal = "/".join("yes" if np.array_equal(ref.view(np.uint32), got[k].view(np.uint32)) else "NO"
                             for k in names)
            avx2_cells = (f"{t['avx2'] * 1e3:8.3f} {t['blas'] / t['avx2']:6.2f}" if avx2 else f"{'-':>8} {'-':>6}")
            print(f"{M:5d} {K:5d} {N:6d}  {t['blas'] * 1e3:11.3f} {t['rows'] * 1e3:8.3f} "
                  f"{t['blas'] / t['rows']:6.2f} {t['chan'] * 1e3:8.3f} {t['blas'] / t['chan']:6.2f} "
                  f"{avx2_cells}  {equal:9s}  {pick}")
    for kind in ("rows", "chan", "avx2"):
        r = [x for k, x in picked_ratios if k == kind]
        if r:
            print(f"shapes picked for {kind}: {len(r)}, OpenBLAS/ours median {np.median(r):.2f}, "
                  f"min {min(r):.2f}, max {max(r):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
