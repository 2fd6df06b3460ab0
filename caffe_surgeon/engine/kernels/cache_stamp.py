"""Numba's disk cache of the kernels, dropped whenever any kernel source changes.

Numba checks a cached function against its own source file only. The kernels
inline helpers from other files (``epilogue._stages_row`` into the convolution,
Winograd, depthwise and Eltwise kernels), so after an edit or an upgrade that
changes such a helper, the cache would keep serving machine code built from
the old helper: wrong results, or a crash when signatures changed. The stamp
is the SHA-256 of every ``.py`` file of this package; when the one stored next
to the cache differs, the cache files are deleted (and rebuilt on first call).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba as nb

HERE = Path(__file__).resolve().parent
STAMP = "caffe_surgeon_kernels.sha256"


def sources_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(HERE.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@nb.njit(cache=True)
def _probe():  # never called: its dispatcher names the folder Numba caches this package in
    return 0


def cache_folder() -> Path | None:
    try:
        return Path(_probe._cache._cache_path)
    except AttributeError:  # another Numba's internals: leave its cache alone
        return None


def refresh(folder: Path | None = None) -> bool:
    """Delete the cached kernels if they may come from other sources; True if it did."""
    folder = cache_folder() if folder is None else folder
    if folder is None:
        return False
    try:  # a fresh install: stamp the folder before Numba fills it
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    digest = sources_digest()
    stamp = folder / STAMP
    try:
        if stamp.read_text().strip() == digest:
            return False
    except OSError:
        pass
    removed = False
    for f in list(folder.glob("*.nbi")) + list(folder.glob("*.nbc")):
        try:
            f.unlink()
            removed = True
        except OSError:  # another process removed it first, or a read-only install
            pass
    try:
        tmp = folder / f"{STAMP}.{os.getpid()}.tmp"
        tmp.write_text(digest + "\n")
        os.replace(tmp, stamp)
    except OSError:
        pass
    return removed
