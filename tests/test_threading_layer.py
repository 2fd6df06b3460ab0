"""The engine's thread pool: OpenMP where installed, and forked children that still run.

GNU OpenMP is not fork-safe: Numba kills a forked child entering a parallel
region of a pool its parent started ("Terminating: fork() called from a process
already using GNU OpenMP"). Data workers, batch tools and users' own
``multiprocessing`` pools fork; a child must then run every kernel's serial
build and get the parent's results bit for bit.
"""
from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAVE_GOMP = ctypes.util.find_library("gomp") is not None

# Every parallel kernel family at batch 2: row tiles (3 -> 32 on 256x256), Winograd
# (64 -> 128 on 64x64), depthwise planes, pointwise block tiles, wide tiles (512 1x1 on
# 16x16), max pooling, shortcut, upsample, route.
NET = """[net]
width=256
height=256
channels=3

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=64
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=128
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=128
groups=128
size=3
stride=1
pad=1
activation=relu

[convolutional]
filters=64
size=1
stride=1
pad=0
activation=linear

[maxpool]
size=4
stride=4

[convolutional]
batch_normalize=1
filters=512
size=1
stride=1
pad=0
activation=leaky

[convolutional]
filters=64
size=1
stride=1
pad=0
activation=linear

[shortcut]
from=-3
activation=linear

[upsample]
stride=4

[route]
layers=-1,-6
"""

SCRIPT = r"""
import json, multiprocessing as mp, sys
import numpy as np, numba
import caffe_surgeon as cs
from caffe_surgeon.engine import Executor
g = cs.init(cs.load(sys.argv[1]), seed=0)
ex = Executor(g)
name = next(iter(g.inputs))
x = np.random.default_rng(0).random((2, 3, 256, 256), dtype=np.float32)
ref = ex.run({name: x})[g.outputs[0]]

def child(q):
    q.put(bool(np.array_equal(ex.run({name: x})[g.outputs[0]], ref)))

ctx = mp.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=child, args=(q,))
p.start()
p.join(240)
print(json.dumps({"layer": numba.threading_layer(), "exit": p.exitcode,
                  "equal": q.get(timeout=5) if p.exitcode == 0 else None}))
"""


def _run(tmp_path, **env_extra):
    cfg = tmp_path / "net.cfg"
    cfg.write_text(NET)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_THREADING_LAYER")}
    env.update(PYTHONPATH=str(ROOT), NUMBA_NUM_THREADS="2", OMP_NUM_THREADS="2", **env_extra)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(cfg)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.skipif(not HAVE_GOMP, reason="GNU OpenMP (libgomp) is not installed here")
def test_forked_child_of_an_openmp_process_runs_serial_and_agrees(tmp_path):
    got = _run(tmp_path, NUMBA_THREADING_LAYER="omp")
    assert got["layer"] == "omp"
    assert got["exit"] == 0, got  # -15: killed by Numba's OpenMP fork check
    assert got["equal"] is True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.skipif(not HAVE_GOMP, reason="GNU OpenMP (libgomp) is not installed here")
def test_engine_prefers_openmp_when_nobody_chose(tmp_path):
    got = _run(tmp_path)
    assert got["layer"] == "omp"
    assert got["exit"] == 0 and got["equal"] is True, got


def test_a_chosen_layer_is_left_alone(tmp_path):
    got = _run(tmp_path, NUMBA_THREADING_LAYER="workqueue")
    assert got["layer"] == "workqueue"
    assert got["exit"] == 0 and got["equal"] is True, got


ORDER_SCRIPT = r"""
import sys
{first}
numba.set_num_threads(2)  # starts Numba's pool before any kernel of ours is loaded
print(numba.threading_layer())
"""


@pytest.mark.skipif(not HAVE_GOMP, reason="GNU OpenMP (libgomp) is not installed here")
@pytest.mark.parametrize("first", ["import caffe_surgeon, numba", "import numba, caffe_surgeon"])
def test_openmp_even_when_the_caller_sets_threads_before_the_first_pass(first):
    # Numba picks its layer on set_num_threads: without the choice made on import, these
    # scripts ran on TBB (MobileNet v2 at batch 1 was no faster on 2 threads than on 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_THREADING_LAYER")}
    env.update(PYTHONPATH=str(ROOT), NUMBA_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", ORDER_SCRIPT.format(first=first)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == "omp"


def test_importing_the_package_does_not_load_numba():
    # load / save / stat users never pay for Numba's import
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", "import sys, caffe_surgeon; print('numba' in sys.modules)"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == "False"


def test_the_engines_chunk_size_and_thread_count_are_numbas_own():
    """``parallel.chunksize`` and ``parallel.threads`` go to the started layer's entries
    directly (Numba's public functions take its start locks every call): they must read and
    set what Numba's public API reads and sets, per thread, and put the old size back."""
    import threading

    import numba as nb

    from caffe_surgeon.engine.kernels import parallel

    before = nb.get_parallel_chunksize()
    with parallel.chunksize(7):
        assert nb.get_parallel_chunksize() == 7
        with parallel.chunksize(1):
            assert nb.get_parallel_chunksize() == 1
        assert nb.get_parallel_chunksize() == 7
    assert nb.get_parallel_chunksize() == before
    with pytest.raises(KeyError), parallel.chunksize(3):
        raise KeyError("restored on the way out")
    assert nb.get_parallel_chunksize() == before

    counts = {}

    def one_thread():
        nb.set_num_threads(1)  # Numba's count is per thread
        counts["other"] = parallel.threads()

    t = threading.Thread(target=one_thread)
    t.start()
    t.join()
    assert counts["other"] == 1
    assert parallel.threads() == nb.get_num_threads()
