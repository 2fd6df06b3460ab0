"""Evaluation batches: in memory up to a budget, the rest in a temporary file, memory-mapped.

An evaluator decodes its data once and feeds the same batches to every pruned
variant. A large test set decoded to float32 at the net's input size does not
fit in memory (VOC's 4952 images at 300 x 300 are 5.3 GB, per worker process),
so batches past ``memory_bytes`` are appended to an anonymous temporary file and
read back through ``mmap``: the same bits, served from the page cache while
memory allows and from disk when it does not. The file has no name (or is
unlinked at once), so a killed run leaves nothing behind.

The budget is ``memory_bytes`` or, by default, the ``CAFFE_SURGEON_FEED_MEMORY``
environment variable (bytes; suffixes K, M, G, T, optionally with B or iB: powers of
1024), else :data:`FEED_MEMORY`.
"""
from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Sequence

import numpy as np

from ..errors import ModelError

FEED_MEMORY = 2 << 30
ENV = "CAFFE_SURGEON_FEED_MEMORY"
_ALIGN = 64


def feed_memory_budget(value=None) -> int:
    """Bytes of batches an evaluator keeps in memory: ``value``, else $CAFFE_SURGEON_FEED_MEMORY,
    else :data:`FEED_MEMORY`."""
    if value is not None:
        return int(value)
    text = os.environ.get(ENV, "").strip()
    if not text:
        return FEED_MEMORY
    number = text.upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(number[-1:], 1)
    number = number[:-1] if scale > 1 else number
    try:
        budget = int(float(number) * scale)
    except (ValueError, OverflowError):
        budget = -1
    if budget < 0:
        raise ModelError(f"{ENV}={text!r}: expected a number of bytes such as 512M or 2G")
    return budget


class FeedStore(Sequence):
    """A list of feeds (blob name -> array), appended once, then read many times.

    Every array comes back read-only, in memory or over the mapping alike: the
    executor never writes into its inputs, and anything else that tried would
    fail loudly instead of changing what later variants see.
    """

    def __init__(self, memory_bytes: int | None = None, directory=None):
        self.memory_budget = feed_memory_budget(memory_bytes)
        self.directory = directory
        self._items: list = []  # a dict (in memory) or a list of (name, offset, shape, dtype)
        self.memory_bytes = 0  # held in memory
        self.spilled_bytes = 0  # written to the file
        self._file = None
        self._map: mmap.mmap | None = None

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        item = self._items[index]
        if isinstance(item, dict):
            return item
        end = max(offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
                  for _, offset, shape, dtype in item)
        mapped = self._map
        if end and (mapped is None or len(mapped) < end):
            mapped = self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return {name: np.ndarray(shape, dtype, buffer=mapped, offset=offset) if offset >= 0
                else np.empty(shape, dtype) for name, offset, shape, dtype in item}

    def append(self, feed: dict) -> None:
        arrays = {name: np.require(a, requirements="C") for name, a in feed.items()}
        size = sum(a.nbytes for a in arrays.values())
        if self._file is None and self.memory_bytes + size <= self.memory_budget:
            arrays = {name: a.view() for name, a in arrays.items()}  # the caller's stay writable
            for a in arrays.values():
                a.flags.writeable = False
            self._items.append(arrays)
            self.memory_bytes += size
            return
        if self._file is None:  # from here on, every batch goes to the file (kept in order)
            self._file = _anonymous_file(self.directory)
        item = []
        for name, a in arrays.items():
            if a.size == 0:  # nothing to map (an empty file cannot be mapped at all)
                item.append((name, -1, a.shape, a.dtype.str))
                continue
            try:
                offset = -(-self._file.seek(0, os.SEEK_END) // _ALIGN) * _ALIGN
                self._file.seek(offset)
                self._file.write(a.reshape(-1).view(np.uint8).data)  # no copy
            except OSError as e:
                raise ModelError(f"cannot spill decoded evaluation batches to "
                                 f"{self.directory or tempfile.gettempdir()}: {e.strerror} "
                                 f"({self.spilled_bytes + a.nbytes} bytes; set {ENV} to keep "
                                 f"more in memory, or TMPDIR to a larger disk)") from None
            item.append((name, offset, a.shape, a.dtype.str))
            self.spilled_bytes += a.nbytes
        self._items.append(item)

    def __getstate__(self):  # pickled (e.g. to a worker): as a plain list, in memory
        return {"feeds": [self[i] for i in range(len(self))]}

    def __setstate__(self, state):
        self.__init__(memory_bytes=1 << 62)
        for feed in state["feeds"]:
            self.append({k: np.array(v) for k, v in feed.items()})


def _anonymous_file(directory):
    """A temporary file with no name left on disk (TemporaryFile unlinks it at once),
    unbuffered so that a full disk shows at the write that fills it."""
    return tempfile.TemporaryFile(dir=directory, prefix="caffe-surgeon-feeds-", buffering=0)
