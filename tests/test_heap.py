"""A forward pass reuses the pages freed by the previous one instead of faulting in new ones."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from caffe_surgeon.engine import heap

ROOT = Path(__file__).resolve().parents[1]

# 3 -> 16 channels on 1024x1024: a 64 MB activation, over glibc's largest mmap threshold
NET = "[net]\nwidth=1024\nheight=1024\nchannels=3\n\n[convolutional]\nfilters=16\nsize=3\nstride=1\n" \
      "pad=1\nactivation=leaky\n\n[maxpool]\nsize=2\nstride=2\n"

PASS = r"""
import json, resource, sys
import numpy as np
import caffe_surgeon as cs
from caffe_surgeon.engine import Executor
g = cs.init(cs.load(sys.argv[1]), seed=0)
ex = Executor(g)
name = next(iter(g.inputs))
x = np.random.default_rng(0).random((1, 3, 1024, 1024), dtype=np.float32)
first = ex.run({name: x})[g.outputs[0]].copy()
ex.run({name: x})
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
again = ex.run({name: x})[g.outputs[0]]
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
print(json.dumps({"faults": faults, "same": bool(np.array_equal(first, again))}))
"""


def _third_pass(tmp_path, keep: str) -> dict:
    cfg = tmp_path / "big.cfg"
    cfg.write_text(NET)
    env = dict(os.environ, CAFFE_SURGEON_KEEP_HEAP=keep, PYTHONPATH=str(ROOT),
               NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PASS, str(cfg)], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not heap.active(), reason="glibc's mallopt is not available here")
def test_later_passes_reuse_freed_pages(tmp_path):
    kept = _third_pass(tmp_path, "1")
    fresh = _third_pass(tmp_path, "0")
    assert kept["same"] and fresh["same"]
    # 64 MB + 16 MB of activations are 20480 pages: with the heap kept, the pass touches
    # only pages it already has (a few for Python's own objects)
    assert kept["faults"] < 64, kept
    assert fresh["faults"] > 4 * max(kept["faults"], 8), (kept, fresh)


def test_keep_freed_is_reentrant():
    with heap.keep_freed():
        with heap.keep_freed():
            assert heap.keep_freed.depth == 2
        assert heap.keep_freed.depth == 1
    assert heap.keep_freed.depth == 0
