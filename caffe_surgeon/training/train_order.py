"""Which record, crop corner and mirror flip each TRAIN item gets: pure functions of
``(seed, item)``, so any batch can be rebuilt from its iteration number alone.

Items are numbered from the start of training, 0, 1, 2, ... in the order a single
process with the *global* batch would read them (see ``train_data.py`` for how ranks
split a global batch). Item ``t`` reads source position ``p = t + skip``:

- without ``shuffle``, record ``p % N``: list files line by line, LMDB in key order,
  wrapping to the first record at the end, as ``image_data_layer.cpp`` (``lines_id_ = 0``)
  and ``data_layer.cpp`` (``cursor->SeekToFirst()``) do;
- with ``shuffle`` (ImageData only), record ``order(e)[p % N]`` for epoch ``e = p // N``:
  Caffe shuffles the list once at setup and again each time it wraps; here epoch ``e``'s
  permutation is drawn from ``SeedSequence([seed, e])``.

``rand_skip``: Caffe starts at ``caffe_rng_rand() % rand_skip``; here the skip is drawn
from the seed, so it is the same on every rank and after a resume.

Crop and mirror: Caffe draws ``do_mirror = mirror && Rand(2)`` and, at TRAIN with a crop,
``h_off = Rand(H - crop + 1)``, ``w_off = Rand(W - crop + 1)`` for each image. The same
distributions are drawn here from a counter-based generator (splitmix64 of the seed,
the stream and the item number), so an item's augmentation does not depend on which
batch, rank or worker builds it. Caffe's own random stream (Boost's mt19937 seeded from
the global generator, which weight fillers also consume) is not reproduced: runs with
crops or mirroring can be compared with Caffe in distribution, not image by image.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)  # splitmix64's increment (Steele et al. 2014)
# One stream per independent draw, so adding a draw never shifts the others.
STREAM_MIRROR, STREAM_ROW, STREAM_COL, STREAM_SKIP = 1, 2, 3, 4


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise on uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def uniforms(seed: int, stream: int, items) -> np.ndarray:
    """One float64 in [0, 1) per item: a pure function of (seed, stream, item)."""
    t = np.asarray(items, dtype=np.int64).astype(_U64)
    with np.errstate(over="ignore"):
        key = _mix(np.array([seed % 2 ** 64], _U64) + _U64(stream) * _GOLDEN)
        bits = _mix(key + (t + _U64(1)) * _GOLDEN)
    return (bits >> _U64(11)).astype(np.float64) * 2.0 ** -53


def below(u: np.ndarray, n) -> np.ndarray:
    """``Rand(n)``'s distribution: integers uniform in [0, n) from uniforms ``u``."""
    return np.minimum((u * n).astype(np.int64), np.asarray(n, np.int64) - 1)


class TrainOrder:
    """Record index of every item, for a source of ``size`` records.

    Args:
        size: number of records (N).
        seed: the run's seed (an int >= 0), the same on every rank.
        shuffle: reshuffle every epoch (ImageData's ``shuffle``).
        rand_skip: the layer's ``rand_skip`` (0: none).
        where: names the layer in errors, e.g. ``"train_val.prototxt: layer 'data'"``.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = False, rand_skip: int = 0,
                 where: str = "data layer"):
        self.size, self.seed, self.shuffle = int(size), int(seed), bool(shuffle)
        self.skip = int(below(uniforms(seed, STREAM_SKIP, [0]), rand_skip)[0]) if rand_skip else 0
        if self.skip >= self.size:
            raise ModelError(f"{where}: rand_skip {rand_skip} drew a skip of {self.skip} but the "
                             f"source has only {self.size} records (Caffe: 'Not enough points "
                             "to skip')")
        self._orders: dict[int, np.ndarray] = {}

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of records read in epoch ``epoch`` (cached, two epochs at most)."""
        order = self._orders.get(epoch)
        if order is None:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
            order = rng.permutation(self.size)
            # replaced, never changed in place: worker threads may read the cache meanwhile
            self._orders = {**{e: o for e, o in self._orders.items() if e == epoch - 1},
                            epoch: order}
        return order

    def records(self, items) -> np.ndarray:
        """Record index of each item number."""
        p = np.asarray(items, np.int64) + self.skip
        if not self.shuffle:
            return p % self.size
        epochs, pos = np.divmod(p, self.size)
        out = np.empty_like(p)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self.epoch_order(int(e))[pos[sel]]
        return out

    def epoch(self, item: int) -> int:
        """The epoch (pass over the source) that item ``item`` falls in."""
        return (int(item) + self.skip) // self.size


def augmentation(seed: int, items, shapes, crop: tuple[int, int], mirror: bool):
    """Crop corner and flip of each item: ``[((top, left) or None, flip), ...]``.

    ``shapes``: each item's image (height, width); ``crop``: (crop_h, crop_w), 0 for none.
    Without a crop the whole image is kept (corner None); without ``mirror`` no flips."""
    items = np.asarray(items, np.int64)
    flips = uniforms(seed, STREAM_MIRROR, items) < 0.5 if mirror else np.zeros(len(items), bool)
    ch, cw = crop
    out = []
    rows, cols = uniforms(seed, STREAM_ROW, items), uniforms(seed, STREAM_COL, items)
    for k, (h, w) in enumerate(shapes):
        at = None
        if ch or cw:
            at = (int(below(rows[k], h - (ch or h) + 1)), int(below(cols[k], w - (cw or w) + 1)))
        out.append((at, bool(flips[k])))
    return out
