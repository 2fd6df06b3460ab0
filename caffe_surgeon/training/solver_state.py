"""The solver state file (our ``.solverstate``): everything a run needs to resume bit-exactly.

Caffe's ``SolverState`` proto holds ``iter``, ``current_step``, the history blobs and the
name of the weights file. A resumed Caffe run still differs from an uninterrupted one: the
smoothed-loss window restarts and the random generators are reseeded. This file adds both.

Format: a NumPy ``.npz`` archive (a zip of ``.npy`` members; no pickles, read with
``allow_pickle=False``), written atomically:

- ``meta``: a uint8 array holding UTF-8 JSON::

      {"format": "caffe-surgeon-solverstate", "version": 1,
       "type": "SGD", "iter": 3, "current_step": 0, "learned_net": "x_iter_3.caffemodel",
       "params": [[layer_name, blob_index, blob_name, shape], ...],
       "loss": {"window": 20, "seen": 3},
       "rng": {"numpy": {"pos": 624, "has_gauss": 0, "cached_gaussian": 0.0},
               "cuda_devices": 0}}

- ``history_000`` ...: the history tensors in Caffe's layout (one per parameter in Caffe's
  ``learnable_params`` order, then a second block for AdaDelta and Adam), in the dtype
  the parameters had;
- ``loss_losses``, ``loss_value``: the smoothed-loss window (float32);
- ``rng_torch``, ``rng_cuda_<k>``, ``rng_numpy_keys``: the torch CPU, torch CUDA and
  NumPy global generator states.
"""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import torch

from ..errors import ModelError
from ..fileio import atomic_write, read_bytes

FORMAT = "caffe-surgeon-solverstate"
VERSION = 1


def capture_rngs() -> dict:
    """The torch (CPU and every CUDA device) and NumPy global generator states."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": list(cuda),
            "numpy": {"kind": kind, "keys": np.asarray(keys, np.uint32), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}


def restore_rngs(rngs: dict) -> None:
    """Put back what :func:`capture_rngs` returned. CUDA states are restored only when
    the number of devices is the same (a run moved to other hardware cannot be exact)."""
    torch.set_rng_state(rngs["torch"])
    if rngs["cuda"] and torch.cuda.is_available() and len(rngs["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rngs["cuda"])
    n = rngs["numpy"]
    np.random.set_state((n["kind"], n["keys"], n["pos"], n["has_gauss"], n["cached_gaussian"]))


def write_state(path, state: dict, learned_net: str | None = None) -> None:
    """Write a :meth:`Solver.state_dict` to ``path`` atomically.

    Args:
        path: the file, e.g. ``<snapshot_prefix>_iter_<N>.solverstate``.
        state: the solver's state dict.
        learned_net: the weights file written with it, recorded as Caffe records it.
    """
    rngs = state["rng"]
    meta = {"format": FORMAT, "version": VERSION, "type": state["type"],
            "iter": state["iter"], "current_step": state["current_step"],
            "learned_net": learned_net,
            "params": [[k[0], k[1], k[2], list(k[3])] for k in state["params"]],
            "loss": {"window": state["loss"]["window"], "seen": state["loss"]["seen"]},
            "rng": {"numpy": {k: rngs["numpy"][k] for k in ("pos", "has_gauss", "cached_gaussian")},
                    "cuda_devices": len(rngs["cuda"])}}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8),
              "loss_losses": state["loss"]["losses"],
              "loss_value": np.asarray(state["loss"]["value"], np.float32),
              "rng_torch": rngs["torch"].numpy(),
              "rng_numpy_keys": rngs["numpy"]["keys"]}
    for i, h in enumerate(state["history"]):
        arrays[f"history_{i:03d}"] = h.detach().cpu().numpy()
    for i, s in enumerate(rngs["cuda"]):
        arrays[f"rng_cuda_{i}"] = s.numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def read_state(path) -> dict:
    """Read a file :func:`write_state` wrote.

    Returns:
        The state dict (:meth:`Solver.load_state_dict` checks it against the solver),
        plus ``learned_net``. Raises ModelError naming the file if it is not one.
    """
    data = read_bytes(path, "solver state")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ModelError(f"not a caffe-surgeon solver state of version {VERSION} "
                             f"(format {meta.get('format')!r}, version {meta.get('version')!r})",
                             file=path)
        return _state_from(meta, arrays)
    except (ValueError, KeyError, TypeError, AttributeError, OSError, zipfile.BadZipFile) as e:
        raise ModelError(f"not a caffe-surgeon solver state ({type(e).__name__}: {e}); "
                         "Caffe's own binary .solverstate files are not read", file=path) from None


def _state_from(meta: dict, arrays: dict) -> dict:
    count = sum(1 for k in arrays if k.startswith("history_"))
    rng_numpy = dict(meta["rng"]["numpy"], kind="MT19937", keys=arrays["rng_numpy_keys"])
    return {"type": meta["type"], "iter": int(meta["iter"]),
            "current_step": int(meta["current_step"]), "learned_net": meta["learned_net"],
            "params": [(p[0], int(p[1]), p[2], tuple(p[3])) for p in meta["params"]],
            "history": [torch.from_numpy(arrays[f"history_{i:03d}"].copy()) for i in range(count)],
            "loss": dict(meta["loss"], losses=arrays["loss_losses"],
                         value=np.float32(arrays["loss_value"])),
            "rng": {"torch": torch.from_numpy(arrays["rng_torch"].copy()),
                    "cuda": [torch.from_numpy(arrays[f"rng_cuda_{i}"].copy())
                             for i in range(meta["rng"]["cuda_devices"])],
                    "numpy": rng_numpy}}
