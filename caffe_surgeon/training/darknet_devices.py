"""``darknet detector train ... -gpus 0,1``: one network per device, averaged every few
iterations, as pjreddie Darknet (2018) trains on several GPUs.

Darknet's scheme (``examples/detector.c`` ``train_detector``; ``src/network.c``
``train_networks``, ``sync_nets``, ``sync_layer``), reproduced here with one process per
device (:func:`.launch.spawn`):

* every net is loaded from the same weights and its ``learning_rate`` multiplied by the
  number of devices ``n`` (a float32 product);
* each iteration loads ``n * batch`` images (``imgs = net->batch * net->subdivisions *
  ngpus``); device ``r`` trains on rows ``r*batch .. (r+1)*batch`` (``get_data_part``) with
  its own momentum, BatchNorm statistics and ``seen``;
* the iteration's loss is the devices' losses summed in device order, divided by ``n``;
* when device 0's ``get_current_batch`` is a multiple of :data:`SYNC_INTERVAL` (4),
  ``sync_nets``: ``seen += interval * (n-1) * batch`` on every net (the iteration counter
  then counts all devices' images), and each [convolutional]'s weights, biases and scales
  become ``(0 + w_0 + w_1 + ... + w_{n-1}) * (float)(1./n)``, summed in device order in
  float32. Momentum buffers and BatchNorm rolling statistics are *not* averaged (Darknet
  does not: ``merge_weights`` touches those three arrays only), so they stay per device;
* before every ``.backup``, numbered weights file and the final weights ``sync_nets(nets,
  n, 0)`` averages again (``seen`` unchanged), and device 0's net is saved: its
  statistics are the file's.

The arrays averaged are the trainer's learned arrays (:class:`.darknet_solver.DarknetSGD`'s):
every section the Darknet trainer accepts that holds learned arrays is a [convolutional],
whose weights, biases and scales are exactly what ``sync_layer`` merges.

Not Darknet, on purpose: every process builds the whole ``n * batch`` batch from the
seeded loader and keeps its share (identical batches on every device without sending
images around, at the price of ``n`` times the loading work); the sum of the devices'
arrays is gathered to each process and added in device order, so every device holds
bytes equal to a single-process run of the scheme. Each device's snapshot (its momentum,
statistics, ``seen``) is written beside the backup for ``-resume``: device 0's as the
single-device run names it, the others' as ``<name>.snapshot.rank<r>.npz``.

Which devices: :func:`choose_devices` (CUDA devices with NCCL; without CUDA only when a CPU
stand-in is asked for with ``dist_backend="gloo"``, one CPU process per id).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ModelError
from ..fileio import make_folder
from ..graph import Graph
from .darknet_data import (FINAL_BATCHES, FINAL_SIZE, SCALE_COUNT, SCALE_EVERY, SCALE_FIRST,
                           SCALE_STEP, DetectionTrainData, SeededRand)
from .darknet_finetune import NUMBERED_EVERY, NUMBERED_UNTIL, SAVE_EVERY, DetectorRun, snapshot_path

#: detector.c: ``train_networks(nets, ngpus, train, 4)``
SYNC_INTERVAL = 4
F32 = np.float32
DIST_BACKENDS = ("nccl", "gloo")


@dataclass(frozen=True)
class DeviceSet:
    """The devices of one run: ``ids`` as ``-gpus`` lists them; ``backend`` "nccl" (CUDA) or
    "gloo" (the CPU stand-in, or CUDA tensors sent through the CPU)."""

    ids: tuple
    backend: str


def single_device(gpus: str | None) -> str:
    """One ``-gpus`` id: that CUDA device (the CPU when there is none); several ids go to
    :func:`choose_devices` instead."""
    if not gpus:
        return "cpu"
    ids = [g for g in gpus.split(",") if g.strip()]
    if len(ids) != 1 or not ids[0].strip().isdigit():
        raise ModelError(f"-gpus {gpus}: give device numbers separated by commas")
    import torch
    return f"cuda:{int(ids[0])}" if torch.cuda.is_available() else "cpu"


def choose_devices(gpus: str | None, dist_backend: str | None = None) -> DeviceSet | None:
    """``-gpus`` and ``--dist-backend`` checked; None for one device (the single-device run).

    Args:
        gpus: "0,1" (None or one id: one device).
        dist_backend: None (NCCL on CUDA, refused without it), "nccl", or "gloo" (one CPU
            process per id when there is no CUDA: a stand-in for tests and CPU machines).

    Raises:
        ModelError: ids that are not device numbers; more ids than CUDA devices, or (CPU
            stand-in) than CPU cores; several ids without CUDA and without the stand-in;
            "nccl" without CUDA; an unknown backend.
    """
    import torch

    from .launch import parse_devices
    if dist_backend is not None and dist_backend not in DIST_BACKENDS:
        raise ModelError(f"--dist-backend {dist_backend}: choose one of {', '.join(DIST_BACKENDS)}")
    cuda = torch.cuda.is_available()
    if dist_backend == "nccl" and not cuda:
        raise ModelError("--dist-backend nccl needs CUDA devices and this machine has none "
                         "(--dist-backend gloo trains one CPU process per -gpus id instead)")
    ids = tuple(parse_devices(gpus))
    if len(ids) <= 1:
        return None
    if cuda:
        have = torch.cuda.device_count()
        beyond = [i for i in ids if i >= have]
        if beyond:
            raise ModelError(f"-gpus {gpus}: device(s) {beyond} do not exist; CUDA sees {have} "
                             f"device(s) (ids 0..{have - 1})")
        return DeviceSet(ids, dist_backend or "nccl")
    if dist_backend != "gloo":
        raise ModelError(f"-gpus {gpus}: this machine has no CUDA device; add --dist-backend "
                         "gloo to train one CPU process per id instead (a stand-in for tests)")
    cores = os.cpu_count() or 1
    if len(ids) > cores:
        raise ModelError(f"-gpus {gpus}: {len(ids)} CPU stand-in processes but this machine has "
                         f"{cores} CPU core(s); give at most {cores} ids")
    return DeviceSet(ids, "gloo")


def rank_snapshot_path(run: DetectorRun, rank: int) -> Path:
    """Device ``rank``'s snapshot: device 0's is the single-device run's file."""
    return snapshot_path(run) if rank == 0 else \
        Path(run.backup) / f"{run.name}.snapshot.rank{rank}.npz"


def train_detector_on_devices(graph: Graph, run: DetectorRun, devices: DeviceSet) -> Path:
    """Train ``graph`` on ``run.data`` with one process per device; returns the final
    weights' path (device 0's net, written after the last average). Device 0 prints
    Darknet's log lines.

    Raises:
        ModelError: a resume whose snapshot was written on another number of devices, or
            one that is missing; anything a training process refused, in one line.
    """
    from .launch import spawn
    world = len(devices.ids)
    if run.resume:
        _check_resumable(run, world)
    make_folder(run.backup)
    spawn(_rank_main, world, (graph, run, devices), backend=devices.backend)
    return Path(run.backup) / f"{run.name}_final.weights"


def _check_resumable(run: DetectorRun, world: int) -> None:
    """Every device's snapshot is there, was written by a run on ``world`` devices, and all
    are at the same iteration: checked before any process starts."""
    steps = []
    for rank in range(world):
        path = rank_snapshot_path(run, rank)
        if not path.is_file():
            raise ModelError(f"nothing to resume for device {rank}: no snapshot {path} (a run "
                             f"writes one per device every {run.save_every} iterations)",
                             file=str(path))
        meta = _snapshot_meta(path)
        extra = meta.get("extra") or {}
        devices = int(extra.get("devices", 1))
        if devices != world:
            raise ModelError(f"this snapshot was written by a run on {devices} device(s); "
                             f"resume it with {devices} -gpus id(s), not {world}", file=str(path))
        steps.append((int(extra.get("batch", -1)), int(meta.get("seen", -1))))
    if len(set(steps)) != 1:
        raise ModelError(f"the devices' snapshots are out of step ((batch, seen) per device: "
                         f"{steps}): a run stopped while saving them; start again without "
                         "-resume", file=str(snapshot_path(run)))


def _snapshot_meta(path: Path) -> dict:
    """The ``meta`` record :meth:`.DarknetTrainer.save_snapshot` writes (``seen``, ``extra``)."""
    try:
        with np.load(path) as z:
            return json.loads(bytes(z["meta"]).decode())
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"not a trainer snapshot: {e}", file=str(path)) from None


class SharedBatchData(DetectionTrainData):
    """The loader of ``n * batch`` images per iteration, with the multi-scale rule's 608 on
    the iteration counter as ``sync_nets`` advances it (``get_current_batch + 200 >
    max_batches`` at the loop that resizes)."""

    def __init__(self, data_file, graph, *, world: int, **kw):
        super().__init__(data_file, graph, **kw)
        self.world = world

    def size(self, k: int) -> tuple[int, int]:
        if not self.settings.multiscale:
            return self.settings.width, self.settings.height
        block = k // SCALE_EVERY
        if self.max_batches is not None and \
                counted_batches(block * SCALE_EVERY, self.world) + FINAL_BATCHES > self.max_batches:
            return FINAL_SIZE, FINAL_SIZE
        dim = (SeededRand(self.seed, 1, block)() % SCALE_COUNT + SCALE_FIRST) * SCALE_STEP
        return dim, dim


def counted_batches(loops: int, world: int, interval: int = SYNC_INTERVAL) -> int:
    """``get_current_batch`` after ``loops`` iterations from ``seen = 0`` on ``world``
    devices: each sync adds ``interval * (world - 1)`` batches.

    Example: 2 devices, interval 4: after 3 loops 3, after 4 loops 8, after 5 loops 9.
    """
    return loops + (world - 1) * interval * (loops // interval)


# ---------------------------------------------------------------------- one process per device
def _rank_main(rank: int, world: int, graph: Graph, run: DetectorRun, devices: DeviceSet) -> None:
    _train_rank(graph, run, devices, rank, world,
                log=(lambda line: print(line, flush=True)) if rank == 0 else (lambda line: None))


def _train_rank(graph: Graph, run: DetectorRun, devices: DeviceSet, rank: int, world: int,
                log: Callable[[str], None]) -> None:
    """Device ``rank``'s share of ``train_detector`` with ``train_networks``."""
    from .darknet_trainer import DarknetTrainer
    from .launch import device_for
    group = _Group(devices.backend, device_for(list(devices.ids), rank), world)
    if run.max_batches is not None:
        graph.meta["max_batches"] = int(run.max_batches)
    trainer = DarknetTrainer(graph, device=str(group.device))
    trainer.seen = 0  # -clear
    # detector.c: nets[i]->learning_rate *= ngpus (a float times an int)
    trainer.settings = dataclasses.replace(
        trainer.settings, learning_rate=float(F32(trainer.settings.learning_rate) * F32(world)))
    start, seed, avg = 0, run.seed, None
    snap = rank_snapshot_path(run, rank)
    if run.resume:
        extra = trainer.load_snapshot(snap) or {}
        start, seed, avg = int(extra["batch"]), int(extra["seed"]), extra.get("avg")
        log(f"resuming at iteration {trainer.iteration} (seen {trainer.seen}) on {world} "
            f"devices from {snap}")
    settings = trainer.settings
    share = settings.batch
    backup = Path(run.backup)
    data = SharedBatchData(run.data, graph, world=world, seed=seed, batch_size=share * world,
                           max_batches=settings.max_batches)
    log(f"{run.name}: learning rate {settings.learning_rate:g} ({world} devices), momentum "
        f"{settings.momentum:g}, decay {settings.decay:g}; {len(data.items)} training images")

    def save(what: str, i: int, k: int) -> None:
        group.average(trainer, 0)  # sync_nets(nets, ngpus, 0) before each save
        if what == "backup":
            _save_snapshots(group, trainer, snap, rank, {"batch": k, "seed": seed, "avg": avg,
                                                         "devices": world})
        if rank == 0:
            trainer.save_weights(backup / (f"{run.name}.backup" if what == "backup" else
                                           f"{run.name}_{i}.weights"))

    k = start
    with data:
        tick = time.perf_counter()
        for images, truths in data.batches(start):
            if trainer.iteration >= settings.max_batches:
                break
            rows = slice(rank * share, (rank + 1) * share)  # get_data_part
            own = trainer.train(images[rows], truths[rows])
            loss = float(_sum_f32(v for (v,) in group.gather_floats([own])) / F32(world))
            k += 1
            if trainer.iteration % SYNC_INTERVAL == 0:
                group.average(trainer, SYNC_INTERVAL)
            avg = loss if avg is None else avg * .9 + loss * .1
            i = trainer.iteration
            now = time.perf_counter()
            log(f"{i}: {loss:f}, {avg:f} avg, {trainer.rate():f} rate, {now - tick:f} seconds, "
                f"{i * share * world} images")
            tick = now
            if i % run.save_every == 0:
                save("backup", i, k)
            if i % NUMBERED_EVERY == 0 or (i < NUMBERED_UNTIL and i % SAVE_EVERY == 0):
                save("numbered", i, k)
    # the resume point is the state before the final average, which an uninterrupted run
    # does not make
    _save_snapshots(group, trainer, snap, rank, {"batch": k, "seed": seed, "avg": avg,
                                                 "devices": world})
    group.average(trainer, 0)
    if rank == 0:
        trainer.save_weights(backup / f"{run.name}_final.weights")


def _save_snapshots(group, trainer, snap: Path, rank: int, extra: dict) -> None:
    """Every device writes its snapshot, device 0 last: a run stopped in between leaves
    device 0's older than the others', which a resume refuses (:func:`_check_resumable`)."""
    if rank:
        trainer.save_snapshot(snap, extra)
    group.barrier()
    if not rank:
        trainer.save_snapshot(snap, extra)
    group.barrier()


def _sum_f32(values) -> np.float32:
    total = F32(0)
    for v in values:
        total = F32(total + F32(v))
    return total


class _Group:
    """The process group as ``sync_nets`` needs it: gather in device order, then add."""

    def __init__(self, backend: str, device, world: int):
        import torch
        self.torch, self.dist = torch, torch.distributed
        self.device, self.world = device, world
        if str(device).startswith("cuda"):  # NCCL's communicator and barrier use the current device
            torch.cuda.set_device(device)
        # NCCL moves CUDA tensors; gloo moves CPU ones
        self.wire = device if backend == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        self.dist.barrier()

    def gather_floats(self, values: list) -> list[tuple]:
        """Each device's ``values`` (float64), in device order."""
        t = self.torch.tensor(values, dtype=self.torch.float64, device=self.wire)
        parts = [self.torch.empty_like(t) for _ in range(self.world)]
        self.dist.all_gather(parts, t)
        return [tuple(p.cpu().tolist()) for p in parts]

    def average(self, trainer, interval: int) -> None:
        """``sync_nets(nets, n, interval)``: advance ``seen``, then every learned array
        becomes ``(0 + a_0 + ... + a_{n-1}) * (float)(1./n)`` in float32."""
        torch = self.torch
        trainer.seen += interval * (self.world - 1) * trainer.settings.batch
        params = [p for p, _, _ in trainer.sgd.params.values()]
        with torch.no_grad():
            flat = torch.cat([p.reshape(-1) for p in params]).to(self.wire)
            parts = [torch.empty_like(flat) for _ in range(self.world)]
            self.dist.all_gather(parts, flat)
            total = torch.zeros_like(flat)
            for part in parts:  # device order, as sync_layer's loop
                total += part
            total *= float(F32(1. / self.world))  # scal_cpu's float ALPHA
            total = total.to(params[0].device)
            at = 0
            for p in params:
                p.copy_(total[at:at + p.numel()].view_as(p))
                at += p.numel()
