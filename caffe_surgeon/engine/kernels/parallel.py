"""Parallel and serial builds of one kernel, and the choice between them.

Entering a Numba parallel region costs 20-45 us on this machine (waking the
pool's worker, which may also be descheduled by other processes): more than
the whole work of a small layer. Every ``prange`` kernel is therefore compiled
twice from the same source (``prange`` is ``range`` in a serial build), and
:func:`pick` runs the serial one on one thread or for less work than
``threshold``.
"""
from __future__ import annotations

import types

import numba as nb

#: work (multiply-adds, or elements moved for memory-bound kernels) below which a layer runs
#: on the calling thread alone
MIN_PARALLEL_MACS = 4_000_000
MIN_PARALLEL_ELEMENTS = 200_000


def dual(fn):
    """(parallel, serial) cached Numba builds of ``fn`` (the serial one under ``<name>_serial``)."""
    par = nb.njit(cache=True, nogil=True, parallel=True)(fn)
    clone = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__,
                               fn.__closure__)
    clone.__qualname__ = fn.__qualname__ + "_serial"
    clone.__module__ = fn.__module__
    clone.__doc__ = fn.__doc__
    return par, nb.njit(cache=True, nogil=True)(clone)


def threads() -> int:
    return nb.get_num_threads()


def pick(kernels, work: int, threshold: int | None = None):
    """The parallel build of ``kernels`` (from :func:`dual`) if worth it, else the serial one
    (``threshold`` defaults to MIN_PARALLEL_ELEMENTS)."""
    par, ser = kernels
    limit = MIN_PARALLEL_ELEMENTS if threshold is None else threshold
    return par if work >= limit and nb.get_num_threads() > 1 else ser
