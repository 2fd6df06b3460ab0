"""Numerical kernels. Each Numba kernel has a slow NumPy twin in ``reference.py`` that the tests compare it with.

Importing this package compiles nothing; kernels are compiled on first call
(and cached on disk, ``cache=True``), so paths that never run a forward pass
never pay for Numba.

Threads: every parallel kernel is a Numba ``prange`` (one pool, sized by
``NUMBA_NUM_THREADS``, OpenMP where installed: see ``parallel.py``); BLAS is
called single-threaded from inside it (see ``blas.py``), so that two thread
pools never compete for the cores. Thin GEMMs run on our own micro-kernel
(``microkernel.py``) where it reproduces that BLAS bit for bit.
"""
from __future__ import annotations

from . import cache_stamp, parallel

cache_stamp.refresh()
parallel.prefer_openmp()
