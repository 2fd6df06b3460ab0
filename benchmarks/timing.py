"""What every benchmark prints and how it times: the CPU's name, medians of repeated calls."""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def median_time(fn, runs: int) -> float:
    """The median wall time of ``runs`` calls of ``fn``, in seconds."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def kernel_bench_args(doc: str, calls: int):
    """Parse ``--threads`` and ``--rounds`` for a kernel benchmark described by ``doc``, set
    Numba's thread count (after the engine chose its thread pool) and print the header.
    Returns the parsed arguments."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import caffe_surgeon.engine.kernels  # noqa: F401  (the engine's thread pool choice first)
    import numba
    numba.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; {args.threads} thread(s); Numba layer {numba.threading_layer()}; "
          f"medians of {args.rounds} interleaved rounds x {calls} calls")
    return args
