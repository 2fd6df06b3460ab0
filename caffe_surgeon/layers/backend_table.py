"""The bookkeeping every backend table shares: forwards and stated refusals per
(framework, layer type), each type claimed once.

The NumPy engine (``engine/ops.py``) and the torch trainer (``training/torch_ops.py``) each
hold one :class:`BackendTable`; what an entry is (a function, a ``TorchOp``) and how a
missing forward is reported stay with the backend. Imports nothing numerical, so either
backend can use it without pulling in the other.
"""
from __future__ import annotations

from typing import Callable


class BackendTable:
    """Forwards (:attr:`entries`) and refusals (:attr:`refusals`) of one backend.

    Args:
        label: how the backend is named in registration errors ("torch" gives "torch
            refusal of ..."); "" for the engine.
        load: imports the backend's forward modules, which register themselves.
    """

    def __init__(self, label: str, load: Callable[[], None]):
        self.label, self._load = label, load
        self.entries: dict[tuple[str, str], object] = {}
        #: (framework, type) -> why this backend has no forward for a type with a spec.
        self.refusals: dict[tuple[str, str], str] = {}

    def _claim(self, framework: str, t: str) -> None:
        if (framework, t) in self.entries or (framework, t) in self.refusals:
            where = f"in the {self.label} backend" if self.label else "(forward or refusal)"
            raise RuntimeError(f"{framework} {t} registered twice {where}")

    def add(self, framework: str, types, entry) -> None:
        """Register ``entry`` as the forward of every type in ``types``."""
        for t in types:
            self._claim(framework, t)
            self.entries[(framework, t)] = entry

    def refuse(self, framework: str, types, reason: str) -> None:
        """State that this backend has no forward for ``types``, and why (one line)."""
        if not reason or "\n" in reason:
            who = f"{self.label} refusal" if self.label else "refusal"
            raise RuntimeError(f"{who} of {framework} {types} needs a one-line reason")
        for t in types:
            self._claim(framework, t)
            self.refusals[(framework, t)] = reason

    def tables(self) -> tuple[dict, dict]:
        """(entries, refusals) with every forward module loaded."""
        self._load()
        return self.entries, self.refusals

    def refused(self, framework: str) -> dict[str, str]:
        """Layer type -> reason, for the types of ``framework`` this backend refuses."""
        self._load()
        return {t: why for (f, t), why in self.refusals.items() if f == framework}

    def lookup(self, framework: str, layer_type: str):
        """(entry or None, refusal or None) for one layer type, forward modules loaded."""
        self._load()
        return self.entries.get((framework, layer_type)), self.refusals.get((framework, layer_type))

    def known(self, framework: str) -> list[str]:
        """The sorted types of ``framework`` that have a forward."""
        return sorted(t for f, t in self.entries if f == framework)
