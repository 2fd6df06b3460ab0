"""``darknet detector train`` as a loop over :class:`.DarknetTrainer` and the data loader.

``train_detector`` (``examples/detector.c``, pjreddie 2018): batches of ``[net] batch``
images from the ``.data``'s train list (:class:`.darknet_data.DetectionTrainData`, multi-scale
included), ``train_network`` on each until ``get_current_batch`` reaches ``max_batches``, one
line per iteration (``i: loss, avg avg, rate rate, seconds seconds, images images``), and
the weights saved as Darknet saves them: ``<backup>/<name>.backup`` every 100 iterations,
``<backup>/<name>_<i>.weights`` every 100 below 1000 and every 10000, and
``<backup>/<name>_final.weights`` at the end. ``<name>`` is the cfg's file stem (``basecfg``).

Differences, on purpose: training starts from ``seen = 0`` (``detector train -clear``: a
pruned model's weights carry the original run's counter, which would end the schedule
before it starts); the loader is seeded (Darknet seeds from the clock); and beside every
``.backup`` a snapshot ``<name>.snapshot.npz`` (momentum, ``seen``, the loader's position and
seed, the running average) lets ``resume`` continue bit for bit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ModelError
from ..fileio import make_folder
from ..graph import Graph
from .darknet_data import DetectionTrainData
from .darknet_trainer import DarknetTrainer

#: detector.c: a .backup every SAVE_EVERY iterations; numbered weights at those below
#: NUMBERED_UNTIL and every NUMBERED_EVERY
SAVE_EVERY, NUMBERED_UNTIL, NUMBERED_EVERY = 100, 1000, 10000


@dataclass(frozen=True)
class DetectorRun:
    """One ``detector train``.

    Attributes:
        data: the ``.data`` file (``train=``).
        backup: folder for the weights and the snapshot.
        name: the files' stem (Darknet's ``basecfg`` of the cfg).
        seed: the loader's seed (a resumed run keeps its own).
        resume: continue from ``<backup>/<name>.snapshot.npz``.
        max_batches: replaces the cfg's ``max_batches`` (also the ``poly`` horizon).
        device: torch device.
        save_every: iterations between ``.backup`` saves (Darknet: 100).
        teacher: label-free: a :class:`.darknet_pseudo.Teacher` whose detections are the
            truths; ``data`` may then be a plain list of images.
    """

    data: Path
    backup: Path
    name: str
    seed: int = 0
    resume: bool = False
    max_batches: int | None = None
    device: str = "cpu"
    save_every: int = SAVE_EVERY
    teacher: object | None = None


def snapshot_path(run: DetectorRun) -> Path:
    return Path(run.backup) / f"{run.name}.snapshot.npz"


def train_detector(graph: Graph, run: DetectorRun, log: Callable[[str], None] = print) -> Path:
    """Train ``graph`` (cfg + weights) on ``run.data``; returns the final weights' path.

    Raises:
        ModelError: anything the trainer or the loader refuses, before the first batch; a
            ``resume`` without a snapshot.
    """
    if run.max_batches is not None:
        graph.meta["max_batches"] = int(run.max_batches)
    trainer = DarknetTrainer(graph, device=run.device)
    trainer.seen = 0  # -clear
    start, seed, avg = 0, run.seed, None
    snap = snapshot_path(run)
    if run.resume:
        if not snap.is_file():
            raise ModelError(f"nothing to resume: no snapshot {snap} (a run writes one every "
                             f"{run.save_every} iterations)", file=str(snap))
        extra = trainer.load_snapshot(snap) or {}
        if int(extra.get("devices", 1)) != 1:  # darknet_devices.py's, one per device
            raise ModelError(f"this snapshot was written by a run on {extra['devices']} devices; "
                             f"resume it with as many -gpus ids", file=str(snap))
        start, seed, avg = int(extra["batch"]), int(extra["seed"]), extra.get("avg")
        log(f"resuming at iteration {trainer.iteration} (seen {trainer.seen}) from {snap}")
    settings = trainer.settings
    backup = make_folder(run.backup)
    if run.teacher is None:
        data = DetectionTrainData(run.data, graph, seed=seed, max_batches=settings.max_batches)
    else:  # the pseudo-labels are kept beside the snapshot, for a resumed run
        from .darknet_pseudo import PseudoLabelledData
        data = PseudoLabelledData(run.data, graph, run.teacher, seed=seed,
                                  max_batches=settings.max_batches,
                                  cache=backup / f"{run.name}.pseudo_labels.npz")
    remaining = max(0, settings.max_batches - trainer.iteration)
    log(f"{run.name}: learning rate {settings.learning_rate:g}, momentum "
        f"{settings.momentum:g}, decay {settings.decay:g}; {len(data.items)} training images")
    k = start
    with data:
        tick = time.perf_counter()
        for images, truths in data.batches(start, start + remaining):
            loss = trainer.train(images, truths)
            k += 1
            avg = loss if avg is None else avg * .9 + loss * .1
            i = trainer.iteration
            now = time.perf_counter()
            log(f"{i}: {loss:f}, {avg:f} avg, {trainer.rate():f} rate, {now - tick:f} seconds, "
                f"{i * settings.batch} images")
            tick = now
            if i % run.save_every == 0:
                trainer.save_weights(backup / f"{run.name}.backup")
                trainer.save_snapshot(snap, {"batch": k, "seed": seed, "avg": avg})
            if i % NUMBERED_EVERY == 0 or (i < NUMBERED_UNTIL and i % SAVE_EVERY == 0):
                trainer.save_weights(backup / f"{run.name}_{i}.weights")
            if i >= settings.max_batches:
                break
    final = backup / f"{run.name}_final.weights"
    trainer.save_weights(final)
    trainer.save_snapshot(snap, {"batch": k, "seed": seed, "avg": avg})
    return final
