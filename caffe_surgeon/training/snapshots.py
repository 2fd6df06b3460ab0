"""Training snapshots: ``<prefix>_iter_N.caffemodel`` plus ``<prefix>_iter_N.solverstate``.

A snapshot is *complete* when its solver state exists and names a weights file that
exists beside it. Both files are written atomically (temporary file + rename,
:func:`~caffe_surgeon.fileio.atomic_write`), weights first, state last: a run killed at
any moment leaves either a complete snapshot or none for that iteration (at worst an
orphan ``.caffemodel`` without its state, which is never resumed from), and a write that
fails (a full disk) removes the weights it had just written. :meth:`SnapshotSet.newest`
therefore never picks a half-written snapshot.

The state records the weights file by its name only (Caffe records the path as written),
so a snapshot folder can be moved or copied whole and still resume.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..graph import Graph

MODEL_EXT = ".caffemodel"
STATE_EXT = ".solverstate"


@dataclass(frozen=True)
class Snapshot:
    """One complete snapshot: the iteration, its weights and its solver state."""

    iteration: int
    weights: Path
    state: Path


@dataclass(frozen=True)
class SnapshotSet:
    """The snapshots of one run, named as Caffe's ``SnapshotFilename`` names them.

    Args:
        prefix: the solver's ``snapshot_prefix`` (``"dir/"`` gives ``dir/_iter_N...``).
    """

    prefix: str

    def paths(self, iteration: int) -> tuple[Path, Path]:
        """The weights and solver-state paths of the snapshot at ``iteration``."""
        base = f"{self.prefix}_iter_{int(iteration)}"
        return Path(base + MODEL_EXT), Path(base + STATE_EXT)

    def write(self, iteration: int, graph: Graph, solver) -> Snapshot:
        """Write ``graph``'s weights and ``solver``'s state for ``iteration``.

        Raises:
            ModelError: one line naming the file that could not be written; nothing of
                this snapshot is left behind then.
        """
        from ..caffe.writer import write_caffemodel
        weights, state = self.paths(iteration)
        folder = weights.parent
        if not folder.is_dir():
            from ..fileio import make_folder
            make_folder(folder)
        write_caffemodel(graph, weights)
        try:
            solver.save_state(state, learned_net=weights.name)
        except BaseException:
            weights.unlink(missing_ok=True)
            raise
        return Snapshot(int(iteration), weights, state)

    def all_complete(self) -> list[Snapshot]:
        """Every complete snapshot of this prefix, newest (highest iteration) first."""
        pattern = re.compile(re.escape(Path(self.prefix + "x").name[:-1]) +
                             r"_iter_(\d+)" + re.escape(STATE_EXT) + "$")
        folder = Path(self.prefix + "x").parent
        if not folder.is_dir():
            return []
        found = []
        for entry in os.scandir(folder):
            m = pattern.match(entry.name)
            if m and entry.is_file():
                weights, state = self.paths(int(m.group(1)))
                if weights.is_file():
                    found.append(Snapshot(int(m.group(1)), weights, state))
        return sorted(found, key=lambda s: -s.iteration)

    def newest(self) -> Snapshot | None:
        """The complete snapshot with the highest iteration, or None."""
        done = self.all_complete()
        return done[0] if done else None


def snapshot_of_state(state: Path) -> Snapshot:
    """The snapshot a solver-state file (``-resume FILE``) belongs to.

    Raises:
        ModelError: the file is not a solver state, or its weights file is missing.
    """
    from .solver_state import read_state
    state = Path(state)
    info = read_state(state)
    name = info.get("learned_net")
    if not name:
        raise ModelError("the solver state names no weights file to resume with", file=state)
    weights = state.parent / Path(name).name
    if not weights.is_file():
        raise ModelError(f"the solver state's weights file '{weights}' is missing", file=state)
    return Snapshot(int(info["iter"]), weights, state)
