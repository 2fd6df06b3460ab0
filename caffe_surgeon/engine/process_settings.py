"""A process-wide setting held while any thread is inside a block of code.

The engine changes settings that belong to the whole process for the length of a
forward pass (NumPy's BLAS threads, glibc's malloc parameters). Passes nest (a
convolution inside a pass) and run on several threads at once, so the setting is
made when the first block is entered and undone when the last one is left.
"""
from __future__ import annotations

import threading


class OutermostBlock:
    """``with block(): ...`` runs ``enter()`` when no block is open and ``leave()`` when
    the last open block (from any thread) closes."""

    def __init__(self, enter, leave):
        self._enter, self._leave = enter, leave
        self._lock = threading.Lock()
        self.depth = 0

    def __call__(self):
        # the block itself, not a generator-based context manager: every convolution
        # opens one (nested in its pass), and contextlib's took 2.6 us of it
        return self

    def __enter__(self):
        with self._lock:
            if self.depth == 0:
                self._enter()
            self.depth += 1
        return self

    def __exit__(self, *exc):
        with self._lock:
            self.depth -= 1
            if self.depth == 0:
                self._leave()
        return False
