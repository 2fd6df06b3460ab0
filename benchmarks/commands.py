"""The vendor commands as a user types them, each a subprocess of this Python, timed.

Shared by the finetune benchmarks (Caffe rounds, SSD and YOLO flows): output goes to
``work/log.txt`` (appended, each command echoed first); a failure ends the benchmark with
the log's tail.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = {"vai_p_caffe": "caffe_surgeon.cli.vai_p_caffe",
           "vai_p_darknet": "caffe_surgeon.cli.vai_p_darknet",
           "caffe-surgeon": "caffe_surgeon.cli.main"}


def run_logged(work: Path, threads: int, command: str, *args: str) -> float:
    """``command ARGS`` (``vai_p_caffe``, ``vai_p_darknet`` or ``caffe-surgeon``) in ``work`` on ``threads``
    threads (torch, BLAS, Numba); its wall time in seconds."""
    n = str(threads)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=n, MKL_NUM_THREADS=n,
               OPENBLAS_NUM_THREADS=n, NUMBA_NUM_THREADS=n)
    line = f"{command} {' '.join(args)}"
    t = time.perf_counter()
    with open(work / "log.txt", "a") as log:
        log.write(f"$ {line}\n")
        log.flush()
        r = subprocess.run([sys.executable, "-m", MODULES[command], *args], cwd=work, env=env,
                           stdout=log, stderr=subprocess.STDOUT)
    if r.returncode:
        tail = (work / "log.txt").read_text().splitlines()[-15:]
        raise SystemExit(f"{line} failed:\n" + "\n".join(tail))
    return time.perf_counter() - t
