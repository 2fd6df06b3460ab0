"""The training loop: BVLC Caffe's ``Solver::Step`` around a module, a batch source and
the :class:`~.solver.Solver`.

One iteration, in Caffe's order:

1. zero the gradients (``ClearParamDiffs``);
2. test, when ``test_interval`` divides the iteration (iteration 0 only with
   ``test_initialization``), on rank 0, with the module in eval mode;
3. ``iter_size`` forward/backward passes of the *raw* loss: gradients sum in ``.grad``
   and :meth:`Solver.step_update` divides them by ``iter_size`` (Caffe's ``Normalize``);
   the loss shown is the sum over the passes / ``iter_size``, as Caffe's;
4. a non-finite loss stops the run (:class:`ModelError` naming the iteration and the
   first output blob, in net order, that holds a non-finite value); nothing is written,
   so the last good snapshot stays the newest;
5. display (smoothed loss, lr, images/s, ETA) when ``display`` divides the iteration;
6. with ``torch.distributed`` initialised: gradients (and the loss) averaged over the
   ranks with ``all_reduce``, so N ranks of batch b step as one process of batch N x b
   when the loss is a mean over the batch;
7. ``step_update``; then a snapshot when ``snapshot`` divides the new iteration count.

After ``max_iter``: a last snapshot (``snapshot_after_train``) and a last test, as Caffe.
Only rank 0 writes files.

The module contract (the torch backend, :mod:`.module`): ``m(feeds) -> (loss, tops)`` with
``tops`` in net order, ``m.train()`` / ``m.eval()``, ``m.caffe_params()`` (Caffe's
``learnable_params`` as ``(layer, blob_index, blob_name, parameter, lr_mult, decay_mult)``)
and ``m.write_back(graph) -> Graph``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..errors import ModelError
from ..graph import Graph
from .progress import TrainingLog
from .snapshots import Snapshot, SnapshotSet
from .solver import Solver

#: ``batches(first)`` -> feed dicts; ``first`` is the index of the first forward pass
#: wanted on this rank (iteration x iter_size when resuming), so a resumed run reads
#: the batches the uninterrupted run would have read.
BatchSource = Callable[[int], Iterable[dict]]
#: ``evaluate(module, iteration) -> {metric: value}``, called in eval mode, without grad
Evaluator = Callable[[object, int], dict]


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised ``torch.distributed`` group, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def snapshot_graph(module, graph: Graph, original: Graph | None = None,
                   plan=None) -> Callable[[], Graph]:
    """What a snapshot writes: the module's weights written back into ``graph`` and, with
    a plan, put back into ``original``'s shapes (:func:`~..pruning.expand.sparse_from_dense`)
    so that the snapshot pairs with the unpruned model, as ``prune``'s ``sparse.caffemodel``.
    """
    def make() -> Graph:
        trained = module.write_back(graph)
        if plan is None:
            return trained
        from ..pruning.expand import sparse_from_dense
        return sparse_from_dense(original, plan, trained)
    return make


@dataclass
class RunResult:
    """How a run ended: the solver's iteration and the snapshots written, oldest first."""

    iteration: int
    snapshots: list


class Trainer:
    """Caffe's training loop over ``module``.

    Args:
        module: the trainable net (contract above), already on its device.
        solver: the solver (its ``config`` holds every loop setting).
        batches: the training data (:data:`BatchSource`); values are arrays or tensors.
        snapshots: where snapshots go (None: none written).
        graph_for_snapshot: makes the graph a snapshot writes (:func:`snapshot_graph`).
        evaluator: the ``test_interval`` test (None: no tests).
        log: display and CSV/plot (None: a display-only log to stdout on rank 0).
        layer_of: blob name -> layer name, for the non-finite message.
    """

    def __init__(self, module, solver: Solver, batches: BatchSource, *,
                 snapshots: SnapshotSet | None = None,
                 graph_for_snapshot: Callable[[], Graph] | None = None,
                 evaluator: Evaluator | None = None, log: TrainingLog | None = None,
                 layer_of: dict | None = None):
        if snapshots is not None and graph_for_snapshot is None:
            raise ValueError("snapshots need graph_for_snapshot")
        self.module, self.solver, self.batches = module, solver, batches
        self.snapshots, self.graph_for_snapshot = snapshots, graph_for_snapshot
        self.evaluator = evaluator
        self.rank, self.world = distributed_rank_world()
        self.log = log if log is not None else TrainingLog(None, solver.config.max_iter)
        self.layer_of = dict(layer_of or {})
        self.params = list(module.caffe_params())
        self.written: list[Snapshot] = []

    # ------------------------------------------------------------ run
    def run(self, resume: Snapshot | None = None) -> RunResult:
        """Train up to ``max_iter``; from ``resume``'s solver state if given (the module
        must already hold that snapshot's weights), else from iteration 0 with the
        generators seeded by ``random_seed + rank``."""
        cfg = self.solver.config
        if resume is not None:
            self.solver.load_state(resume.state)
        else:
            self.solver.seed_rngs(self.rank)
        start = self.solver.iter
        stream = iter(self.batches(start * cfg.iter_size))
        self.module.train()
        self.log.start(start)
        while self.solver.iter < cfg.max_iter:
            self._iteration(stream)
        it = self.solver.iter
        if self.snapshots is not None and cfg.snapshot_after_train and it > start and \
                not cfg.snapshot_due(it):
            self._snapshot()
        if self._test_due(it) and it > start:
            self._test(it)
        return RunResult(it, list(self.written))

    def _test_due(self, it: int) -> bool:
        cfg = self.solver.config
        return self.evaluator is not None and bool(cfg.test_interval) and \
            it % cfg.test_interval == 0 and (it > 0 or cfg.test_initialization)

    def _iteration(self, stream: Iterator[dict]) -> None:
        cfg, it = self.solver.config, self.solver.iter
        for entry in self.params:
            entry[3].grad = None  # ClearParamDiffs (None reads as zero in step_update)
        if self._test_due(it):
            self._test(it)
        loss = 0.0
        for _ in range(cfg.iter_size):
            try:
                feeds = next(stream)
            except StopIteration:
                raise ModelError(f"the training data ran out at iteration {it}") from None
            total, tops = self.module(self._on_device(feeds))[:2]  # (loss, blobs, ...)
            self._check_finite(total, tops, it)
            total.backward()
            loss += float(total.detach())
        loss /= cfg.iter_size
        if self.world > 1:
            loss = self._average_over_ranks(loss)
        smoothed = self.solver.loss.update(loss)
        if self.rank == 0:
            self.log.train(it, smoothed, self.solver.learning_rate(), cfg.display_due(it))
        self.solver.step_update(self.params, it)
        if self.snapshots is not None and cfg.snapshot_due(self.solver.iter):
            self._snapshot()

    # ------------------------------------------------------------ pieces
    def _on_device(self, feeds: dict) -> dict:
        device = self.params[0][3].device if self.params else torch.device("cpu")
        return {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray)
                    else v).to(device) for k, v in feeds.items()}

    def _check_finite(self, total, tops: dict, it: int) -> None:
        bad = torch.tensor([0.0 if bool(torch.isfinite(total.detach()).all()) else 1.0])
        if self.world > 1:  # every rank stops together
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if not bad.item():
            return
        where = "the loss of another rank"
        for blob, value in tops.items():
            if torch.is_tensor(value) and value.is_floating_point() and \
                    not bool(torch.isfinite(value.detach()).all()):
                layer = self.layer_of.get(blob)
                where = f"blob '{blob}'" + (f" (layer '{layer}')" if layer else "")
                break
        else:
            if not bool(torch.isfinite(total.detach()).all()):
                where = "the weighted loss sum"
        newest = f"; the last snapshot is {self.written[-1].weights}" if self.written else ""
        raise ModelError(f"the loss became non-finite at iteration {it}: the first output "
                         f"that did is {where}{newest}")

    def _average_over_ranks(self, loss: float) -> float:
        dist = torch.distributed
        grads = []
        for entry in self.params:
            p = entry[3]
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads] +
                         [torch.tensor([loss], dtype=grads[0].dtype if grads else torch.float32)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        return float(flat[-1])

    def _test(self, it: int) -> None:
        if self.rank != 0:
            return
        self.module.eval()
        try:
            with torch.no_grad():
                metrics = self.evaluator(self.module, it)
        finally:
            self.module.train()
        self.log.test(it, dict(metrics or {}))

    def _snapshot(self) -> None:
        if self.rank != 0:
            return
        with torch.no_grad():
            graph = self.graph_for_snapshot()
        self.written.append(self.snapshots.write(self.solver.iter, graph, self.solver))
        print(f"Snapshotting to {self.written[-1].weights}", file=self.log.out, flush=True)
