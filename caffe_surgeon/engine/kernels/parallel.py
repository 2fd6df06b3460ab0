"""Parallel and serial builds of one kernel, the choice between them, and the thread pool.

Entering a Numba parallel region costs 20-45 us on this machine (waking the
pool's worker, which may also be descheduled by other processes): more than
the whole work of a small layer. Every ``prange`` kernel is therefore compiled
twice from the same source (``prange`` is ``range`` in a serial build), and
:func:`pick` runs the serial one on one thread or for less work than
``threshold``.

The pool is Numba's OpenMP layer where GNU OpenMP is installed (:func:`prefer_openmp`):
its workers spin briefly between regions and wake promptly after an idle spell,
where TBB's run every layer of the next pass 30-60% slower (res10 at batch 1 on
2 threads: 24 ms against 31 after a 0.25 s pause). GNU OpenMP is not fork-safe:
a forked child of a process that has run a parallel region is killed by the
first one it enters. :func:`threads` is 1 in such a child, so every kernel
takes its serial build there (same tiles, the same results bit for bit).
"""
from __future__ import annotations

import os
import types

import numba as nb

from ...numba_pool import LAYER_PRIORITY_ENV

#: work (multiply-adds, or elements moved for memory-bound kernels) below which a layer runs
#: on the calling thread alone
MIN_PARALLEL_MACS = 4_000_000
MIN_PARALLEL_ELEMENTS = 200_000
#: Numba's threading layers in the order the engine prefers them (the first that loads)
LAYER_PRIORITY = LAYER_PRIORITY_ENV.split()

_state: dict = {"serial_only": False}


def dual(fn):
    """(parallel, serial) cached Numba builds of ``fn`` (the serial one under ``<name>_serial``)."""
    par = nb.njit(cache=True, nogil=True, parallel=True)(fn)
    clone = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__,
                               fn.__closure__)
    clone.__qualname__ = fn.__qualname__ + "_serial"
    clone.__module__ = fn.__module__
    clone.__doc__ = fn.__doc__
    return par, nb.njit(cache=True, nogil=True)(clone)


def _started_layer():
    """Numba's ctypes entries (get_num_threads, get and set the chunk size) of its started
    threading layer, or None where this Numba keeps them elsewhere. Numba's public
    functions take its process-wide start locks on every call: ``parallel_chunksize`` three
    times, 4.4 us, about what a small layer's GEMM costs."""
    fns = _state.get("layer")
    if fns is None:
        nb.get_num_threads()  # starts the layer, which binds the entries below
        from numba.np.ufunc import parallel as numba_parallel
        fns = tuple(getattr(numba_parallel, n, None) for n in
                    ("_get_num_threads", "_get_parallel_chunksize", "_set_parallel_chunksize"))
        fns = fns if all(callable(f) for f in fns) else ()
        _state["layer"] = fns
    return fns or None


def threads() -> int:
    """Threads a kernel may use now: Numba's count (this thread's, as
    ``numba.get_num_threads``), or 1 in a process where a parallel region would be fatal
    (see :func:`_after_fork_in_child`)."""
    if _state["serial_only"]:
        return 1
    fns = _started_layer()
    n = fns[0]() if fns else 0
    return n if n > 0 else nb.get_num_threads()  # (the public one reports a bad count)


class chunksize:
    """``with chunksize(n):`` what ``numba.parallel_chunksize(n)`` does (this thread's
    prange loops hand out ``n`` iterations at a time; the old size comes back after),
    through the layer's own entries."""

    __slots__ = ("n", "before")

    def __init__(self, n: int):
        self.n = int(n)

    def __enter__(self):
        fns = _started_layer()
        if fns:
            self.before = fns[1]()
            fns[2](self.n)
        else:
            self.before = nb.set_parallel_chunksize(self.n)
        return self

    def __exit__(self, *exc):
        fns = _started_layer()
        if fns:
            fns[2](self.before)
        else:
            nb.set_parallel_chunksize(self.before)
        return False


def pick(kernels, work: int, threshold: int | None = None):
    """The parallel build of ``kernels`` (from :func:`dual`) if worth it, else the serial one
    (``threshold`` defaults to MIN_PARALLEL_ELEMENTS)."""
    par, ser = kernels
    limit = MIN_PARALLEL_ELEMENTS if threshold is None else threshold
    return par if work >= limit and threads() > 1 else ser


#: chunks of tiles per thread for :func:`run_in_chunks` (0: Numba's default, one equal share
#: per thread)
CHUNKS_PER_THREAD = 8


def run_in_chunks(kernels, kernel, args, tiles: int) -> None:
    """``kernel(*args)``, ``kernel`` one of the builds ``kernels`` (:func:`dual`).
    The parallel build hands its ``tiles`` out in chunks as threads come free, rather than
    one half per thread: on shared cores a descheduled worker then holds up one chunk, not
    half the layer."""
    if kernel is kernels[1] or not CHUNKS_PER_THREAD:
        kernel(*args)
        return
    jobs = max(1, threads())
    with chunksize(max(1, -(-tiles // (CHUNKS_PER_THREAD * jobs)))):
        kernel(*args)


def balanced_passes(N: int, passes: int, jobs: int) -> int:
    """Passes per image for a kernel that cuts each of ``N`` images in ``passes`` (or more)
    shared out to the threads: at least ``jobs`` in all, and a multiple of ``jobs`` over
    the batch, so that the threads get equal shares (5 passes over 2 threads left one
    thread 3 of them: 1.2x where 1.5x was possible). The cut changes no result."""
    total = -(-max(N * passes, jobs) // jobs) * jobs
    return -(-total // N)


def _layer_started() -> bool:
    try:
        from numba.np.ufunc import parallel as numba_parallel
    except ImportError:  # pragma: no cover - other Numba layouts
        return True
    return bool(getattr(numba_parallel, "_is_initialized", True))


def prefer_openmp() -> None:
    """Make OpenMP Numba's first choice of threading layer, unless the user chose one
    (``NUMBA_THREADING_LAYER`` / ``NUMBA_THREADING_LAYER_PRIORITY``) or a layer has
    already started in this process (it cannot change then). Changes no result:
    the tiling depends on the shapes only."""
    if os.environ.get("NUMBA_THREADING_LAYER") or os.environ.get("NUMBA_THREADING_LAYER_PRIORITY"):
        return
    if nb.config.THREADING_LAYER != "default" or _layer_started():
        return
    nb.config.THREADING_LAYER_PRIORITY = list(LAYER_PRIORITY)


def _after_fork_in_child() -> None:
    # The child has the parent's memory but not its OpenMP worker threads: Numba kills a
    # forked process entering a region of a GNU OpenMP pool its parent started. TBB and
    # the workqueue survive a fork.
    if _state["serial_only"] or not _layer_started():
        return
    try:
        layer = nb.threading_layer()
    except ValueError:
        return
    if layer == "omp":
        _state["serial_only"] = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
