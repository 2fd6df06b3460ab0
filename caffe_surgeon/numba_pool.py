"""Numba's thread pool choice, made when ``caffe_surgeon`` is imported (before Numba is).

Numba picks its threading layer on the first parallel use or ``numba.set_num_threads``
call, whoever makes it: a script that sets the thread count before our first forward
pass would otherwise start TBB, whose workers made every 2-thread pass 30-60% slower
(:mod:`.engine.kernels.parallel`; MobileNet v2 at batch 1 ran no faster on 2 threads than on 1).
Importing Numba here would cost every ``load``/``stat`` user a quarter second, so the
choice goes where Numba reads it on import: ``NUMBA_THREADING_LAYER_PRIORITY``.
"""
from __future__ import annotations

import os
import sys

#: GNU OpenMP first where it loads (``NUMBA_THREADING_LAYER_PRIORITY``'s format)
LAYER_PRIORITY_ENV = "omp tbb workqueue"


def prefer_openmp_early() -> None:
    """OpenMP as Numba's first choice unless the user chose a layer (either environment
    variable) or one has started. With Numba not yet imported, through the environment
    (which child processes then inherit, with the same choice)."""
    if os.environ.get("NUMBA_THREADING_LAYER") or os.environ.get("NUMBA_THREADING_LAYER_PRIORITY"):
        return
    if "numba" not in sys.modules:
        os.environ["NUMBA_THREADING_LAYER_PRIORITY"] = LAYER_PRIORITY_ENV
        return
    from .engine.kernels import parallel  # Numba is loaded already: this costs nothing more
    parallel.prefer_openmp()
