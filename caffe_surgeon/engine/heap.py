"""Freed activation memory kept in the process between layers and forward passes (glibc).

glibc's malloc serves an array over its mmap threshold (at most 32 MB) with a
fresh ``mmap`` and gives it back to the kernel on free, so every large
activation of every forward pass is page-faulted in again: zeroing 4 KiB pages
one fault at a time costs more than the convolution that writes them (measured,
2 threads, batch 8: yolov3-tiny's first layer, 88 MB, 42 ms with the faults and
20 ms without; res10 SSD 163 -> 137 ms per pass, ResNet-50 358 -> 334 ms).

Inside :func:`keep_freed` large blocks come from the heap instead of mmap, and
the heap is not trimmed, so a freed activation's pages serve the next layer or
pass. What the process holds beyond its live arrays is bounded by the largest
pass it ran (the freed blocks are reused first). Outside the block, glibc's
defaults for new allocations are restored, except that up to ``KEEP_BYTES`` of
freed heap stays mapped for the next pass. ``CAFFE_SURGEON_KEEP_HEAP=0`` turns
all of this off; on a C library without ``mallopt`` it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

from .process_settings import OutermostBlock

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
#: glibc's default for M_MMAP_MAX, restored on the way out
MMAP_MAX_DEFAULT = 65536
#: freed heap kept mapped between passes (glibc trims the heap top above this)
KEEP_BYTES = 1 << 30
#: M_TRIM_THRESHOLD inside a pass: never trim
NO_TRIM = (1 << 31) - 1

_lock = threading.Lock()
_state = {"probed": False, "mallopt": None}


def _mallopt():
    if not _state["probed"]:
        _state["probed"] = True
        if os.environ.get("CAFFE_SURGEON_KEEP_HEAP", "1") == "0":
            return None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            fn = libc.mallopt
            fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            if ctypes.CDLL(None).gnu_get_libc_version:  # glibc's parameters, not another libc's
                _state["mallopt"] = fn
        except (OSError, AttributeError):
            pass
    return _state["mallopt"]


def active() -> bool:
    """Whether freed memory is kept (glibc with ``mallopt``, not turned off)."""
    with _lock:
        return _mallopt() is not None


def _enter():
    with _lock:
        fn = _mallopt()
    if fn is not None:
        fn(M_TRIM_THRESHOLD, NO_TRIM)
        fn(M_MMAP_MAX, 0)


def _leave():
    with _lock:
        fn = _mallopt()
    if fn is not None:
        fn(M_MMAP_MAX, MMAP_MAX_DEFAULT)
        fn(M_TRIM_THRESHOLD, KEEP_BYTES)


#: ``with keep_freed():`` large allocations from the untrimmed heap inside the block
#: (re-entrant, thread-safe)
keep_freed = OutermostBlock(_enter, _leave)
