"""NumPy's own OpenBLAS, called single-threaded from inside our thread pool.

Convolutions run as independent tiles in one Numba ``prange`` (one TBB pool,
work-stealing, the calling thread taking tiles too), each tile calling
``cblas_sgemm`` on strided sub-matrices (no copies: the GEMM reads the weight
block and column block in place and writes straight into the NCHW output).
The BLAS must then compute each call on the calling thread: a second,
statically partitioned pool inside every tile would fight TBB's for the cores
(on 2 shared cores its idle workers spin, and the other pool's barriers stall
for whole scheduler time slices).

:data:`GEMM` is the ctypes function ``cblas_sgemm`` (64-bit integers) of the
OpenBLAS NumPy is linked with, found by symbol in its library, or None (then
the kernels fall back to ``np.matmul``). :func:`single_threaded` sets that
OpenBLAS to one thread for the duration of a forward pass and restores it.
"""
from __future__ import annotations

import ctypes
import glob
import os
import threading

from ctypes import c_float, c_int, c_int64, c_void_p

from ..process_settings import OutermostBlock

ROW_MAJOR, NO_TRANS = 101, 111

_lock = threading.Lock()
_state = {"probed": False, "gemm": None, "get": None, "set": None, "saved": None}


def _libraries():
    import numpy as np
    root = os.path.dirname(np.__file__)
    paths = sorted(glob.glob(os.path.join(root, os.pardir, "numpy.libs", "*openblas*.so*")))
    paths += sorted(glob.glob(os.path.join(root, ".dylibs", "*openblas*")))
    try:  # a NumPy linked with a system OpenBLAS: whatever is mapped into this process
        with open("/proc/self/maps") as f:
            paths += sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line
                             and "scipy.libs" not in line})
    except OSError:
        pass
    return paths


def core_name() -> str | None:
    """The CPU core whose kernels NumPy's OpenBLAS runs here (``Haswell`` on AVX2 machines,
    Zen included; ``SkylakeX``, ...), or None when it does not say."""
    for path in _libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"):
            if hasattr(lib, name):
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = [], ctypes.c_char_p
                return fn().decode()
    return None


def _probe():
    for path in _libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        gemm = next((getattr(lib, n) for n in ("scipy_cblas_sgemm64_", "cblas_sgemm64_")
                     if hasattr(lib, n)), None)
        get = next((getattr(lib, n) for n in ("scipy_openblas_get_num_threads64_",
                                               "openblas_get_num_threads64_") if hasattr(lib, n)), None)
        set_ = next((getattr(lib, n) for n in ("scipy_openblas_set_num_threads64_",
                                                "openblas_set_num_threads64_") if hasattr(lib, n)), None)
        if gemm is None or get is None or set_ is None:
            continue
        gemm.argtypes = [c_int, c_int, c_int, c_int64, c_int64, c_int64, c_float, c_void_p, c_int64,
                         c_void_p, c_int64, c_float, c_void_p, c_int64]
        gemm.restype = None
        get.argtypes, get.restype = [], c_int
        set_.argtypes, set_.restype = [c_int], None
        return gemm, get, set_
    return None, None, None


def gemm():
    """NumPy's OpenBLAS ``cblas_sgemm`` (ctypes, int64 sizes), or None."""
    with _lock:
        if not _state["probed"]:
            _state["gemm"], _state["get"], _state["set"] = _probe()
            _state["probed"] = True
        return _state["gemm"]


def _one_thread():
    if gemm() is None:
        return
    with _lock:
        n = _state["get"]()
        _state["saved"] = n
        if n != 1:
            _state["set"](1)


def _restore():
    with _lock:
        if _state["gemm"] is not None and _state["saved"] not in (None, 1):
            _state["set"](_state["saved"])


#: ``with single_threaded():`` NumPy's BLAS on one thread inside the block (re-entrant,
#: thread-safe; restored when the outermost block closes)
single_threaded = OutermostBlock(_one_thread, _restore)
