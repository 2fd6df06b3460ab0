"""Winograd layers in runs of tile rows (V and M in cache) against the whole-layer path.

For each 3x3 layer that takes Winograd in the four benchmark nets (res10 SSD, ResNet-50,
yolov3-tiny; batch 1 and 8), this times ``conv.conv2d`` as the engine runs it and with
the blocked path switched off (``winograd.blocked_groups`` -> 0: transform the whole
layer, 16 GEMMs, transform back), in one process, interleaved, medians, and prints the
runs per image the engine picks (0: it keeps the whole-layer path), the ratio (above 1:
the runs are faster) and whether both outputs are equal bit for bit (they must be). Run:

    python benchmarks/winograd_runs.py [--threads 1] [--rounds 5]
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import kernel_bench_args, median_time  # noqa: E402

#: (layer, batch, C, H=W, O)
LAYERS = [
    ("res10 128->128 38x38", 1, 128, 38, 128),
    ("res10 128->256 19x19", 1, 128, 19, 256),
    ("res10 256->256 19x19", 1, 256, 19, 256),
    ("ResNet-50 res3 128->128 28x28", 1, 128, 28, 128),
    ("ResNet-50 res4 256->256 14x14", 1, 256, 14, 256),
    ("yolov3-tiny 64->128 52x52", 1, 64, 52, 128),
    ("yolov3-tiny 128->256 26x26", 1, 128, 26, 256),
    ("res10 128->128 38x38", 8, 128, 38, 128),
    ("ResNet-50 res3 128->128 28x28", 8, 128, 28, 128),
    ("yolov3-tiny 64->128 52x52", 8, 64, 52, 128),
    ("yolov3-tiny 128->256 26x26", 8, 128, 26, 256),
    ("yolov3-tiny 384->256 26x26", 8, 384, 26, 256),
]


def main() -> int:
    args = kernel_bench_args(__doc__, 3)
    from caffe_surgeon.engine.kernels import conv, winograd
    from caffe_surgeon.engine.kernels.epilogue import Epilogue
    print(f"{'layer':32s} {'batch':>5} {'runs':>4} {'whole ms':>9} {'runs ms':>8} {'ratio':>6}  bit-equal")
    rng = np.random.default_rng(0)
    engine_groups = winograd.blocked_groups
    ratios = []
    for name, n, c, h, o in LAYERS:
        x = rng.standard_normal((n, c, h, h), dtype=np.float32)
        w = rng.standard_normal((o, c, 3, 3), dtype=np.float32) * np.float32(0.05)
        ep = Epilogue(o).mul(rng.random(o, dtype=np.float32)).add(rng.random(o, dtype=np.float32)).relu()
        u = winograd.transform_weights(w)
        groups = engine_groups(n, c, o, (h, h), args.threads)

        def run():
            return conv.conv2d(x, w, None, (1, 1), (1, 1), epilogue=ep, winograd_u=u)

        times = {"whole": [], "runs": []}
        outs = {}
        try:
            for _ in range(args.rounds):
                for mode in ("whole", "runs"):
                    winograd.blocked_groups = (lambda *a: 0) if mode == "whole" else engine_groups
                    outs[mode] = run()
                    times[mode].append(median_time(run, 3))
        finally:
            winograd.blocked_groups = engine_groups
        t_whole, t_runs = statistics.median(times["whole"]), statistics.median(times["runs"])
        if groups:
            ratios.append(t_whole / t_runs)
        print(f"{name:32s} {n:5d} {groups:4d} {t_whole * 1e3:9.3f} {t_runs * 1e3:8.3f} "
              f"{t_whole / t_runs:6.2f}  {'yes' if np.array_equal(outs['whole'], outs['runs']) else 'NO'}")
    if ratios:
        print(f"whole / runs over the {len(ratios)} layers in runs: median {statistics.median(ratios):.2f}, "
              f"min {min(ratios):.2f}, max {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
