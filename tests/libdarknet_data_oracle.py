"""libdarknet's detection training data (``load_data_detection``), run in a subprocess.

Like ``libdarknet_oracle.py`` (darknet exits on a file it cannot open, and keeps
global state): :func:`load_detection` runs this file in a fresh interpreter, which
calls ``srand(seed)``, records the next ``calls`` values of glibc's ``rand()``, calls
``srand(seed)`` again and then ``load_data_detection``. Darknet's calls then consume
exactly the recorded values, so a test can feed them to our loader's pure function
and compare bits. ``data`` and ``matrix`` are mirrored from
``/usr/lib/darknet/include/darknet.h``.

Command: ``detection OUT.npz SEED CALLS N W H BOXES CLASSES JITTER HUE SAT EXP PATH...``
saves ``X`` (N, 3, H, W), ``y`` (N, BOXES, 5) and ``rands`` (CALLS,).
"""
from __future__ import annotations

import ctypes as C
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

LIB = Path("/usr/lib/darknet/libdarknet.so")


class Matrix(C.Structure):
    _fields_ = [("rows", C.c_int), ("cols", C.c_int), ("vals", C.POINTER(C.POINTER(C.c_float)))]


class Data(C.Structure):
    _fields_ = [("w", C.c_int), ("h", C.c_int), ("X", Matrix), ("y", Matrix),
                ("shallow", C.c_int), ("num_boxes", C.POINTER(C.c_int)),
                ("boxes", C.c_void_p)]


def available() -> bool:
    return LIB.exists()


def load_detection(out, seed: int, calls: int, n: int, w: int, h: int, classes: int,
                   jitter: float, hue: float, saturation: float, exposure: float, paths,
                   boxes: int = 90, cwd=None):
    """Run ``load_data_detection`` in a subprocess (in ``cwd``: relative ``paths`` start
    there, as in darknet); returns ``(X, y, rands)``."""
    args = [sys.executable, __file__, "detection", str(out), seed, calls, n, w, h, boxes,
            classes, jitter, hue, saturation, exposure, *map(str, paths)]
    out = Path(out).resolve()
    args[3] = str(out)
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300,
                          cwd=cwd,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0 or not Path(out).exists():
        raise RuntimeError(f"libdarknet load_data_detection failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout)[-2000:]}")
    got = np.load(out)
    return got["X"], got["y"], got["rands"]


def _main(argv):
    cmd, out = argv[0], argv[1]
    if cmd != "detection":
        raise SystemExit(f"unknown command {cmd}; see the module docstring")
    seed, calls, n, w, h, boxes, classes = (int(v) for v in argv[2:9])
    jitter, hue, sat, exp = (float(v) for v in argv[9:13])
    paths = [p.encode() for p in argv[13:]]
    libc = C.CDLL(None)
    lib = C.CDLL(str(LIB))
    lib.load_data_detection.restype = Data
    lib.load_data_detection.argtypes = [C.c_int, C.POINTER(C.c_char_p), C.c_int, C.c_int,
                                        C.c_int, C.c_int, C.c_int, C.c_float, C.c_float,
                                        C.c_float, C.c_float]
    libc.srand(seed)
    rands = [libc.rand() for _ in range(calls)]
    libc.srand(seed)
    arr = (C.c_char_p * len(paths))(*paths)
    d = lib.load_data_detection(n, arr, len(paths), w, h, boxes, classes, jitter, hue, sat, exp)
    X = np.stack([np.ctypeslib.as_array(d.X.vals[i], shape=(3 * h * w,)).copy()
                  for i in range(n)]).reshape(n, 3, h, w)
    y = np.stack([np.ctypeslib.as_array(d.y.vals[i], shape=(5 * boxes,)).copy()
                  for i in range(n)]).reshape(n, boxes, 5)
    np.savez(out, X=X, y=y, rands=np.asarray(rands, np.int64))


if __name__ == "__main__":
    _main(sys.argv[1:])
