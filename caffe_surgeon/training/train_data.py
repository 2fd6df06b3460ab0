"""TRAIN-phase batches from the net's own data layer, as Caffe's data layers make them.

``ImageData`` (a list file, with ``shuffle``) and LMDB ``Data`` layers are read through
the evaluation readers (``evaluation/caffe_data.py``) and transformed by the same
``Transform`` (mean file or values, then ``scale``, as ``data_transformer.cpp`` orders
them), plus what only TRAIN does: a random ``crop_size`` corner, a random mirror flip,
``rand_skip``, and reshuffling every epoch. Which record and which augmentation each
item gets is a pure function of ``(seed, item number)`` (``train_order.py``), so:

- without shuffle, crops or mirroring, batches come in Caffe's order (list files line
  by line, LMDB in key order, wrapping at the end) and a run can be compared step by
  step with Caffe's own;
- any batch can be rebuilt from its iteration number: a resumed run sees exactly the
  batches the uninterrupted run saw from that iteration on (``state`` / ``check_state``
  guard against resuming on another source, seed or global batch);
- ranks split one global stream. With ``world`` processes of ``batch_size`` items each,
  iteration ``i``'s global batch is items ``[i * G, (i + 1) * G)`` with
  ``G = world * batch_size``, in Caffe order, and rank ``r`` takes items
  ``[i * G + r * batch_size, i * G + (r + 1) * batch_size)``. Concatenating the ranks'
  batches gives the batch of one process whose data layer has ``batch_size: G``.
  (Caffe's own multi-GPU ``DataLayer`` deals records round-robin instead, record ``k``
  to rank ``k % world``; the global batch holds the same records either way.)

SSD's ``AnnotatedData`` layer reads its LMDB the same way (key order, wrapping) and goes
through the fork's own TRAIN augmentation and label blob instead (``ssd_train_data.py``).

Batches are built ahead in background workers (``prefetch`` batches at most in flight,
so memory stays bounded); a decoding error reaches the consumer as a one-line
``ModelError`` naming the file or record.

Example::

    g = cs.load("train_val.prototxt", phase="TRAIN")
    with TrainData(g, base_dir="model/", seed=1, rank=r, world=2) as data:
        for it, batch in data.batches(start=resume_iter):
            ...  # batch["data"]: float32 (B, C, H, W); batch["label"]: float32 (B,)
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing
import sys
import threading

import numpy as np

from ..errors import ModelError
from ..evaluation.caffe_eval import data_format, open_data_layer
from ..graph import Graph
from .train_order import TrainOrder, augmentation

F32 = np.float32
_ENV_LOCK = threading.Lock()  # guards each process's shared LMDB handle
# transform_param fields of the SSD fork's TRAIN augmentation: AnnotatedData only (ssd_augment.py).
_SSD_TRANSFORM = ("resize_param", "noise_param", "distort_param", "expand_param",
                  "emit_constraint")


class TrainData:
    """The TRAIN batches of one rank.

    Args:
        graph: the TRAIN-phase graph (``cs.load(train_val, phase="TRAIN")``).
        base_dir: folder relative paths in the prototxt are taken from (default: the
            current directory, as Caffe does).
        seed: an int >= 0, the same on every rank (the solver's ``random_seed``).
        rank, world: this process and the number of processes sharing the global batch.
        prefetch: batches built ahead of the consumer (at least 1).
        workers: background workers (0: build each batch in the consumer, no prefetch).
        processes: workers are forked processes (default: threads). On
            2 cores beside a CPU trainer step (Fashion-MNIST 60k, batch 64, 26 x 26 crops,
            a 3-conv net at ~13 ms per step), one thread left the trainer waiting on data
            0.4% of the time (PNG list ~3400 images/s overall, raw LMDB ~4200) and one
            process 1-4% with lower throughput (~2700 / ~3900: results are pickled back,
            and the process competes with torch's threads); Pillow and LMDB release the
            GIL while they decode and read, and torch while it computes. Processes pay off
            with many cores and costly (large JPEG) decoding.
        labelled: False: images only (label-free training, e.g. distillation). Batches
            hold the data top alone; an ImageData ``source`` may then list paths without
            labels or be a folder of images; a Data (LMDB) layer's labels are dropped.
    """

    def __init__(self, graph: Graph, base_dir=None, seed: int = 0, rank: int = 0,
                 world: int = 1, prefetch: int = 4, workers: int = 1, processes: bool = False,
                 labelled: bool = True):
        self.net_file = graph.source[0] if graph.source else None
        for name, value, low in (("seed", seed, 0), ("world", world, 1), ("rank", rank, 0),
                                 ("prefetch", prefetch, 1), ("workers", workers, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ModelError(f"TrainData: {name} must be an integer >= {low}, got {value!r}")
        if rank >= world:
            raise ModelError(f"TrainData: rank {rank} is not below world {world}")
        _refuse_untrainable(graph, self.net_file)
        annotated = _annotated(graph)  # SSD: its own augmentation (ssd_train_data.py)
        layer, transform, source, batch_size, p = open_data_layer(graph, base_dir,
                                                                  training=annotated,
                                                                  labelled=labelled)
        self.layer, self.tops = layer.name, list(layer.tops if labelled else layer.tops[:1])
        self.batch_size, self.world, self.rank, self.seed = batch_size, int(world), int(rank), int(seed)
        self.global_batch = self.batch_size * self.world
        self.source_size = len(source)
        self.shuffle, self.rand_skip = bool(p.get("shuffle", False)), int(p.get("rand_skip", 0))
        where = f"{self.net_file}: layer '{self.layer}'" if self.net_file else f"layer '{self.layer}'"
        order = TrainOrder(self.source_size, self.seed, self.shuffle, self.rand_skip, where)
        keys = source.keys() if data_format(layer) in ("datum_db", "annotated_db") else None
        if annotated:
            from .ssd_train_data import AnnotatedBatchMaker
            self._make = AnnotatedBatchMaker(layer, layer.params, source, order,
                                             keys, self.tops, self.batch_size, self.world,
                                             self.rank, self.net_file, base_dir)
        else:
            self._make = BatchMaker(source, transform, order, keys, self.tops, self.batch_size,
                                    self.world, self.rank, self.net_file, self.layer)
        self.prefetch = int(prefetch)
        self._pool = None
        self._workers, self._processes = int(workers), bool(processes)

    # ------------------------------------------------------------------ batches
    def items(self, iteration: int) -> np.ndarray:
        """Global item numbers of this rank's batch at ``iteration``."""
        return self._make.items(_iteration(iteration))

    def records(self, iteration: int) -> list[tuple[int, tuple[int, int] | None, bool]]:
        """What this rank's batch at ``iteration`` is made of: per row, ``(record index,
        crop corner (top, left) or None, mirrored)`` (reads the records only for a crop)."""
        return self._make.plan(_iteration(iteration))[1]

    def batch(self, iteration: int) -> dict[str, np.ndarray]:
        """This rank's batch at ``iteration``, built now in the calling thread:
        ``{data top: float32 (B, C, H, W), label top: float32 (B,)}`` (no label top when
        the data is unlabelled)."""
        return self._make(_iteration(iteration))

    def batches(self, start: int = 0, stop: int | None = None):
        """``(iteration, batch)`` from ``start`` up to ``stop`` (exclusive; None: forever),
        built ahead by the workers. Equal to ``batch(iteration)`` for each iteration."""
        start = _iteration(start)
        if self._workers == 0:
            it = start
            while stop is None or it < stop:
                yield it, self._make(it)
                it += 1
            return
        pool = self._executor()
        pending: collections.deque = collections.deque()
        nxt = start
        try:
            while True:
                while len(pending) < self.prefetch and (stop is None or nxt < stop):
                    pending.append((nxt, self._submit(pool, nxt)))
                    nxt += 1
                if not pending:
                    return
                it, future = pending.popleft()
                yield it, self._result(future)
        finally:
            for _, future in pending:
                future.cancel()

    def epoch(self, iteration: int) -> int:
        """Which pass over the source this rank's batch at ``iteration`` starts in."""
        return self._make.order.epoch(int(self.items(iteration)[0]))

    # ------------------------------------------------------------------ resume
    def state(self, iteration: int) -> dict:
        """A small record to save beside a solver snapshot taken before ``iteration``.
        Everything else (source position, shuffle and augmentation draws) derives from it."""
        return {"iteration": _iteration(iteration), "seed": self.seed,
                "global_batch": self.global_batch, "source_size": self.source_size,
                "shuffle": self.shuffle, "rand_skip": self.rand_skip}

    def check_state(self, state: dict, file=None) -> int:
        """Refuse resuming from a ``state`` written for another stream; return its iteration.
        The number of ranks may change as long as the global batch stays the same."""
        mine = self.state(0)
        bad = [f"{k} {state.get(k)!r} (now {v!r})" for k, v in mine.items()
               if k != "iteration" and state.get(k) != v]
        if bad:
            raise ModelError("the saved data state does not fit this data layer: "
                             + ", ".join(bad), file=file, layer=self.layer)
        return _iteration(state.get("iteration", -1))

    # ------------------------------------------------------------------ workers
    def _executor(self):
        if self._pool is None:
            if self._processes:
                self._pool = cf.ProcessPoolExecutor(
                    self._workers, mp_context=_worker_context(),
                    initializer=_install, initargs=(self._make,))
            else:
                self._pool = cf.ThreadPoolExecutor(self._workers, thread_name_prefix="train-data")
        return self._pool

    def _submit(self, pool, iteration: int):
        if self._processes:
            return pool.submit(_make_installed, iteration)
        return pool.submit(self._make, iteration)

    def _result(self, future) -> dict:
        try:
            return future.result()
        except cf.BrokenExecutor:
            self.close()
            raise ModelError("a data worker process died while decoding (out of memory?); "
                             "rerun with fewer workers or processes=False",
                             file=self.net_file, layer=self.layer) from None

    def close(self) -> None:
        """Stop the workers; pending batches are dropped. Safe to call twice."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "TrainData":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BatchMaker:
    """Builds one rank's batch from its iteration number. Plain data only (the source's
    file names or LMDB keys, the transform's mean), so it travels to worker processes."""

    def __init__(self, source, transform, order: TrainOrder, keys, tops, batch_size: int,
                 world: int, rank: int, net_file, layer: str):
        self.source, self.transform, self.order, self.keys = source, transform, order, keys
        self.tops, self.batch_size, self.world, self.rank = tops, batch_size, world, rank
        self.net_file, self.layer = net_file, layer
        self._env, self._users = None, 0  # this process's LMDB handle, and its readers now

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_env": None, "_users": 0}

    def items(self, iteration: int) -> np.ndarray:
        first = (iteration * self.world + self.rank) * self.batch_size
        return np.arange(first, first + self.batch_size, dtype=np.int64)

    def plan(self, iteration: int, shapes=None):
        """``(items, [(record, corner, mirrored), ...])``. A corner depends on its image's
        size, so with a crop and no ``shapes`` the batch's records are read to learn them."""
        items = self.items(iteration)
        records = self.order.records(items)
        t = self.transform
        if shapes is None:
            cropped = any(t.crop)
            shapes = [image.shape[1:] for image, _, _ in self._load(records)] if cropped \
                else [(0, 0)] * len(items)
        draws = augmentation(self.order.seed, items, shapes, t.crop, t.mirror)
        return items, [(int(r), at, flip) for r, (at, flip) in zip(records, draws)]

    def _load(self, records) -> list[tuple[np.ndarray, int, bool]]:
        """``(image, label, decoded)`` of each record, in order."""
        if self.keys is not None:
            return self._load_lmdb(records)
        out = []
        for r in records:
            image, label = self.source.load_one(r)
            out.append((image, label, True))
        return out

    def __call__(self, iteration: int) -> dict[str, np.ndarray]:
        items = self.items(iteration)
        records = [int(r) for r in self.order.records(items)]
        try:
            loaded = self._load(records)
        except ModelError:
            raise
        except Exception as e:  # a reader bug or an OS error: still one line, still located
            raise ModelError(f"reading batch {iteration} ({self._describe(records[0])} ...): "
                             f"{type(e).__name__}: {e}", file=self.net_file,
                             layer=self.layer) from None
        for r, (image, _, decoded) in zip(records, loaded):
            self.transform.check(tuple(image.shape), self._describe(r), decoded)
        _, plan = self.plan(iteration, [image.shape[1:] for image, _, _ in loaded])
        data = [self.transform(image, decoded, at, flip)
                for (image, _, decoded), (_, at, flip) in zip(loaded, plan)]
        for r, x in zip(records, data):  # Caffe shapes a batch by its first image
            if x.shape != data[0].shape:
                raise ModelError(f"{self._describe(r)} gives {x.shape} (C, H, W) but "
                                 f"{self._describe(records[0])} in the same batch gives "
                                 f"{data[0].shape}; without crop_size the images of a batch "
                                 "need one size", file=self.net_file, layer=self.layer)
        batch = {self.tops[0]: np.stack(data)}
        if len(self.tops) > 1:
            batch[self.tops[1]] = np.asarray([label for _, label, _ in loaded], F32)
        return batch

    def _load_lmdb(self, records) -> list[tuple[np.ndarray, int, bool]]:
        """LMDB records through one handle per process, shared by its threads (LMDB opens a
        database once per process) and closed when no batch is being read, so an evaluator
        of the same database can open it between batches."""
        with _ENV_LOCK:
            if self._env is None:
                self._env = self.source.open()
            self._users += 1
        try:
            return self.source.load_keyed([(r, self.keys[r]) for r in records], self._env)
        finally:
            with _ENV_LOCK:
                self._users -= 1
                if self._users == 0:
                    self._env.close()
                    self._env = None

    def _describe(self, record: int) -> str:
        if self.keys is not None:
            return f"{self.source.path} record {record} (key {self.keys[record].decode('latin-1')!r})"
        return self.source.describe(record)


def _annotated(graph: Graph) -> bool:
    return any(not l.bottoms and data_format(l) == "annotated_db" for l in graph.layers)


def _refuse_untrainable(graph: Graph, net_file) -> None:
    """The SSD fork's TRAIN augmentation belongs to AnnotatedData (``ssd_train_data.py``);
    on other data layers it is refused."""
    for layer in graph.layers:
        if layer.bottoms or data_format(layer) is None:
            continue
        if data_format(layer) == "annotated_db":  # its settings, checked before any reading
            from .ssd_augment import SsdAugmentation
            SsdAugmentation(layer.params.get("transform_param", {}),
                            layer.params.get("annotated_data_param", {}), net_file, layer.name)
            continue
        tp = layer.params.get("transform_param", {})
        used = [k for k in _SSD_TRANSFORM if tp.get(k)]
        if used:
            raise ModelError(f"transform_param.{used[0]} (the SSD fork's TRAIN augmentation) "
                             "is not supported for training yet", file=net_file, layer=layer.name)


def _iteration(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ModelError(f"TrainData: an iteration must be an integer >= 0, got {value!r}")
    return int(value)


def _worker_context():
    """Fork where the platform has it: a spawned worker imports the user's ``__main__``
    again, which reruns a training script that lacks ``if __name__ == "__main__"``. The
    forked worker only touches NumPy, Pillow and lmdb, never torch or CUDA state."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods and sys.platform != "darwin"
                                       else "spawn")


_INSTALLED: BatchMaker | None = None  # the batch maker of this worker process


def _install(maker: BatchMaker) -> None:
    global _INSTALLED
    _INSTALLED = maker


def _make_installed(iteration: int) -> dict[str, np.ndarray]:
    return _INSTALLED(iteration)
