"""The unpruned model's outputs that label-free scores compare with, kept beside the analysis.

A label-free metric is agreement with the model ``ana`` analysed. A later
``prune`` may start from other weights (the vendor flow: prune, finetune, prune
again with ``weights`` set to the finetuned snapshot), so it cannot recompute
that reference from its own model. ``ana`` therefore writes the reference next
to its state file (``<state>.reference.npz``: NumPy arrays, no pickles) with the
digest of the evaluation data it belongs to, and ``prune`` reads it back.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..fileio import atomic_write


def reference_path(state_path) -> Path:
    return Path(f"{state_path}.reference.npz")


def save_reference(state_path, reference, data_sha256: str) -> Path:
    """Write ``reference`` (an evaluator's ``reference_state()``: one array, or a list of
    arrays) for the evaluation data ``data_sha256``; atomic."""
    single = isinstance(reference, np.ndarray)
    items = [reference] if single else list(reference)
    arrays = {f"item{i}": np.asarray(a) for i, a in enumerate(items)}
    buf = io.BytesIO()
    np.savez(buf, data_sha256=np.array(data_sha256), kind=np.array("array" if single else "list"),
             count=np.array(len(items)), **arrays)
    path = reference_path(state_path)
    atomic_write(path, buf.getvalue())
    return path


def load_reference(state_path):
    """``(reference, data_sha256)`` saved for ``state_path``, or None when there is no file.
    The caller checks the digest against its evaluator's (:func:`check_data`)."""
    path = reference_path(state_path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stored, kind, count = str(z["data_sha256"]), str(z["kind"]), int(z["count"])
            items = [z[f"item{i}"] for i in range(count)]
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise ModelError(f"cannot read the analysed model's reference outputs: {e}; run ana "
                         "again to rewrite it", file=path) from None
    return (items[0] if kind == "array" else items), stored


def check_data(state_path, stored: str, data_sha256: str) -> None:
    if stored != data_sha256:
        raise ModelError(f"the analysed model's reference outputs belong to other evaluation data "
                         f"(sha256 {stored[:12]}..., now {data_sha256[:12]}...); run ana again",
                         file=reference_path(state_path))
