"""One training process per device, as the vendor's ``-gpus 0,1`` ran: ``torch.distributed``
with NCCL on CUDA devices, gloo on the CPU (tests, machines without a GPU).

Each process gets ``rank`` (its position in the device list) and joins the group before the
worker runs, so :class:`~.trainer.Trainer` sees ``torch.distributed`` initialised and
averages gradients over the ranks; only rank 0 writes files.
"""
from __future__ import annotations

import os
import socket
from typing import Callable

import torch

from ..errors import ModelError


def parse_devices(text: str | None) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``; None or empty -> ``[]`` (one process, no group)."""
    if text is None or not str(text).strip():
        return []
    try:
        ids = [int(t) for t in str(text).replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise ModelError(f"-gpus must be device numbers separated by commas, got {text!r}") from None
    if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
        raise ModelError(f"-gpus lists a device twice or a negative number: {text!r}")
    return ids


def device_for(devices: list[int], rank: int) -> torch.device:
    """The torch device of ``rank``: ``cuda:<id>`` when CUDA is present, else the CPU."""
    if devices and torch.cuda.is_available():
        if devices[rank] >= torch.cuda.device_count():
            raise ModelError(f"-gpus names device {devices[rank]} but CUDA sees "
                             f"{torch.cuda.device_count()} device(s)")
        return torch.device(f"cuda:{devices[rank]}")
    return torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, backend: str, worker: Callable, args: tuple):
    dist = torch.distributed
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        worker(rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn(worker: Callable, world: int, args: tuple = (), backend: str | None = None) -> None:
    """Run ``worker(rank, world, *args)`` in ``world`` processes joined in one group.

    Args:
        worker: a picklable (module-level) function.
        world: number of processes (devices).
        backend: "nccl" or "gloo"; default nccl when CUDA is present, else gloo.

    Raises:
        ModelError: a worker failed (its own one-line error when it raised a ModelError).
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    import torch.multiprocessing as mp
    try:
        mp.spawn(_entry, args=(world, _free_port(), backend, worker, args), nprocs=world,
                 join=True)
    except mp.ProcessRaisedException as e:
        last = [line for line in str(e).strip().splitlines() if line.strip()][-1:]
        message = last[0] if last else "a training process failed"
        prefix = "caffe_surgeon.errors.ModelError: "
        raise ModelError(message[len(prefix):] if message.startswith(prefix) else
                         f"a training process failed: {message}") from None
    except mp.ProcessExitedException as e:
        raise ModelError(f"a training process died: {e}") from None
