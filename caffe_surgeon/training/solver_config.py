"""``solver.prototxt`` -> :class:`SolverConfig`, checked the way Caffe checks it, and stricter.

The text is parsed by the same reader as net prototxts (protobuf's text_format against
``proto/caffe.proto``), so an unknown field is a one-line error with its line and column.
Then every field of ``SolverParameter`` falls in exactly one group of :data:`FIELD_GROUPS`:
the solver's arithmetic (reproduced exactly), the training loop's settings (kept for it),
settings that change nothing we compute (accepted, with a note), and settings we do not
reproduce (refused, naming the field and its line). A test checks that the groups cover
the schema, so a new field in ``caffe.proto`` needs a decision here.

Caffe's own read-time rewrites are applied: the legacy ``solver_type`` enum becomes the
``type`` string (both at once is an error, as in ``UpgradeSolverType``), and a missing or
directory ``snapshot_prefix`` is derived from the solver file name
(``UpgradeSnapshotPrefixProperty``; paths relative to the working directory, as Caffe).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..caffe import caffe_pb2
from ..caffe.text import message_to_dict, parse_message, top_level_fields
from ..errors import ModelError
from ..fileio import read_bytes
from .lr_policy import POLICIES, LrSchedule

#: Caffe's registered solver types (``REGISTER_SOLVER_CLASS``), case-sensitive as there
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
#: the legacy ``solver_type`` enum, by name, to the type string (``UpgradeSolverType``)
_LEGACY_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
                 "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}

#: Every SolverParameter field, by what we do with it.
FIELD_GROUPS = {
    # the update and the schedule: reproduced exactly
    "solver": ("type", "solver_type", "base_lr", "lr_policy", "gamma", "power", "stepsize",
               "stepvalue", "max_iter", "momentum", "momentum2", "delta", "rms_decay",
               "weight_decay", "regularization_type", "clip_gradients", "iter_size"),
    # the training loop's settings, kept for it
    "loop": ("net", "train_net", "test_net", "test_iter", "test_interval",
             "test_initialization", "test_compute_loss", "train_state", "test_state",
             "display", "average_loss", "random_seed", "snapshot", "snapshot_prefix",
             "snapshot_after_train", "snapshot_format", "weights", "ap_version",
             "eval_type", "show_per_class_result", "classiou_class_num"),
    # change nothing we compute: accepted, with a note
    "ignored": ("solver_mode", "device_id", "debug_info", "snapshot_diff",
                "per_parameter_reduce", "layer_wise_reduce"),
    # not reproduced: refused
    "refused": ("net_param", "train_net_param", "test_net_param", "plateau_winsize"),
}

_IGNORED_WHY = {
    "solver_mode": "the device comes from the command line (gpu: / -gpus), not the solver",
    "device_id": "the device comes from the command line (gpu: / -gpus), not the solver",
    "debug_info": "per-layer debug printing is not reproduced",
    "snapshot_diff": "snapshots hold weights only, never gradients",
    "per_parameter_reduce": "how gradients are reduced across GPUs does not change their sum",
    "layer_wise_reduce": "how gradients are reduced across GPUs does not change their sum",
}
_REFUSED_WHY = {
    "net_param": "inline net definitions are not supported; put the net in a file and name it with 'net:'",
    "train_net_param": "inline net definitions are not supported; put the net in a file and name it with 'train_net:'",
    "test_net_param": "inline net definitions are not supported; put the net in a file and name it with 'test_net:'",
    "plateau_winsize": "the SSD 'plateau' learning-rate policy is not reproduced",
}
#: integer settings Caffe would misuse when negative
_NON_NEGATIVE = ("max_iter", "display", "snapshot", "test_interval", "stepsize")


@dataclass(frozen=True)
class SolverConfig:
    """The settings of one ``solver.prototxt`` that training needs, with Caffe's defaults.

    Solver arithmetic: ``type``, ``schedule`` (:class:`~.lr_policy.LrSchedule`),
    ``momentum``, ``momentum2``, ``delta``, ``rms_decay``, ``weight_decay``,
    ``regularization_type``, ``clip_gradients`` (< 0: off), ``iter_size``.
    Loop: ``max_iter``, ``display``, ``average_loss``, ``random_seed`` (< 0: unseeded),
    ``snapshot``, ``snapshot_prefix``, ``snapshot_after_train``, the nets and tests,
    ``weights``; ``other`` holds the remaining loop fields as set in the file
    (``train_state``, ``test_state``, detection-evaluation settings); ``notes`` says
    which accepted settings are ignored and why.
    """

    file: str | None
    type: str
    schedule: LrSchedule
    momentum: float = 0.0
    momentum2: float = 0.999
    delta: float = 1e-8
    rms_decay: float = 0.99
    weight_decay: float = 0.0
    regularization_type: str = "L2"
    clip_gradients: float = -1.0
    iter_size: int = 1
    max_iter: int = 0
    display: int = 0
    average_loss: int = 1
    random_seed: int = -1
    snapshot: int = 0
    snapshot_prefix: str = ""
    snapshot_after_train: bool = True
    net: str | None = None
    train_net: str | None = None
    test_net: tuple = ()
    test_iter: tuple = ()
    test_interval: int = 0
    test_initialization: bool = True
    test_compute_loss: bool = False
    weights: tuple = ()
    other: dict = field(default_factory=dict)
    notes: tuple = ()

    @classmethod
    def from_prototxt(cls, path) -> "SolverConfig":
        """Read and check a solver file.

        Args:
            path: the ``solver.prototxt``.

        Returns:
            The config. Raises ModelError naming the file, line and field on bad input.
        """
        text = read_bytes(path, "solver prototxt").decode("utf-8", errors="surrogateescape")
        return cls.from_text(text, path)

    @classmethod
    def from_text(cls, text: str, file=None) -> "SolverConfig":
        """Like :meth:`from_prototxt`, for solver text already in memory.

        Args:
            text: the solver in protobuf text format.
            file: the name errors and the default ``snapshot_prefix`` use (may be None).
        """
        msg = caffe_pb2.SolverParameter()
        parse_message(text, msg, file)
        lines = {}
        for span in top_level_fields(text):
            lines.setdefault(span.name, text.count("\n", 0, span.start) + 1)
        return _build(msg, _Located(file, lines))

    def snapshot_path(self, iteration: int, extension: str) -> str:
        """Caffe's ``SnapshotFilename``: ``<prefix>_iter_<N><extension>``.

        Args:
            iteration: the number of updates applied when the snapshot is taken.
            extension: ``.caffemodel``, ``.solverstate``, ...
        """
        return f"{self.snapshot_prefix}_iter_{iteration}{extension}"

    def snapshot_due(self, iteration: int) -> bool:
        """Whether Caffe snapshots right after the update that made ``iter_`` = ``iteration``."""
        return bool(self.snapshot) and iteration % self.snapshot == 0

    def display_due(self, iteration: int) -> bool:
        """Whether Caffe prints loss and rate at ``iteration`` (before its update)."""
        return bool(self.display) and iteration % self.display == 0


@dataclass(frozen=True)
class _Located:
    """Raises errors at a field's line in the solver file."""

    file: str | None
    lines: dict

    def fail(self, name: str, message: str, near: str | None = None):
        """Raise at ``name``'s line, or at ``near``'s when ``name`` is not in the file."""
        line = self.lines.get(name, self.lines.get(near))
        raise ModelError(f"solver field '{name}': {message}", file=self.file, line=line)


def _build(msg, where: _Located) -> SolverConfig:
    present = {fd.name for fd, _ in msg.ListFields()}
    for name in sorted(present & set(FIELD_GROUPS["refused"]), key=lambda n: where.lines.get(n, 0)):
        where.fail(name, _REFUSED_WHY[name])
    notes = tuple(f"{name} ignored: {_IGNORED_WHY[name]}"
                  for name in FIELD_GROUPS["ignored"] if name in present)

    solver_type = _solver_type(msg, present, where)
    schedule = _schedule(msg, present, where)
    for name in _NON_NEGATIVE:
        if getattr(msg, name) < 0:
            where.fail(name, f"must be >= 0, got {getattr(msg, name)}")
    if msg.iter_size < 1:
        where.fail("iter_size", f"must be >= 1, got {msg.iter_size}")
    if msg.average_loss < 1:
        where.fail("average_loss", f"must be >= 1, got {msg.average_loss}")
    if msg.regularization_type not in ("L1", "L2"):
        where.fail("regularization_type", f"must be L1 or L2, got '{msg.regularization_type}'")
    if solver_type in ("AdaGrad", "RMSProp") and msg.momentum != 0:
        where.fail("momentum", f"momentum cannot be used with {solver_type} "
                               f"(got {msg.momentum}); Caffe refuses it too")
    if solver_type == "RMSProp" and not 0 <= msg.rms_decay < 1:
        where.fail("rms_decay", f"must lie in [0, 1), got {msg.rms_decay}")
    if msg.snapshot_format != caffe_pb2.SolverParameter.BINARYPROTO:
        where.fail("snapshot_format", "HDF5 snapshots are not supported; snapshots are "
                                      "BINARYPROTO caffemodels")

    as_dict = message_to_dict(msg)
    other = {k: as_dict[k] for k in ("train_state", "test_state", "ap_version", "eval_type",
                                     "show_per_class_result", "classiou_class_num")
             if k in as_dict}
    return SolverConfig(
        file=where.file, type=solver_type, schedule=schedule,
        momentum=msg.momentum, momentum2=msg.momentum2, delta=msg.delta,
        rms_decay=msg.rms_decay, weight_decay=msg.weight_decay,
        regularization_type=msg.regularization_type, clip_gradients=msg.clip_gradients,
        iter_size=msg.iter_size, max_iter=msg.max_iter, display=msg.display,
        average_loss=msg.average_loss, random_seed=msg.random_seed, snapshot=msg.snapshot,
        snapshot_prefix=_snapshot_prefix(msg, present, where.file),
        snapshot_after_train=msg.snapshot_after_train,
        net=msg.net if "net" in present else None,
        train_net=msg.train_net if "train_net" in present else None,
        test_net=tuple(msg.test_net), test_iter=tuple(msg.test_iter),
        test_interval=msg.test_interval, test_initialization=msg.test_initialization,
        test_compute_loss=msg.test_compute_loss, weights=tuple(msg.weights),
        other=other, notes=notes)


def _solver_type(msg, present: set, where: _Located) -> str:
    if "solver_type" in present:
        if "type" in present:
            where.fail("solver_type", "the legacy solver_type enum and the type string "
                                      "cannot both be given (Caffe refuses it too)")
        name = caffe_pb2.SolverParameter.SolverType.Name(msg.solver_type)
        return _LEGACY_TYPES[name]
    if msg.type not in SOLVER_TYPES:
        near = [t for t in SOLVER_TYPES if t.lower() == msg.type.lower()]
        hint = f" (Caffe's names are case-sensitive: '{near[0]}')" if near else ""
        where.fail("type", f"unknown solver type '{msg.type}'{hint}; "
                           f"known: {', '.join(SOLVER_TYPES)}")
    return msg.type


def _schedule(msg, present: set, where: _Located) -> LrSchedule:
    if "base_lr" not in present:
        where.fail("base_lr", "is not set (Caffe would train with a learning rate of 0)")
    policy = msg.lr_policy
    if "lr_policy" not in present:
        where.fail("lr_policy", f"is not set; one of {', '.join(POLICIES)}")
    if policy not in POLICIES:
        where.fail("lr_policy", f"unknown policy '{policy}'; known: {', '.join(POLICIES)}")
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and msg.gamma < 0:
        where.fail("gamma", f"must be >= 0 for lr_policy {policy}, got {msg.gamma}")
    if policy in ("step", "sigmoid") and msg.stepsize <= 0:
        where.fail("stepsize", f"must be > 0 for lr_policy {policy}, got {msg.stepsize}",
                   near="lr_policy")
    if policy == "multistep" and not msg.stepvalue:
        where.fail("stepvalue", "lr_policy multistep needs at least one stepvalue", near="lr_policy")
    if policy == "poly" and msg.max_iter <= 0:
        where.fail("max_iter", f"must be > 0 for lr_policy poly, got {msg.max_iter}",
                   near="lr_policy")
    return LrSchedule(base_lr=msg.base_lr, policy=policy, gamma=msg.gamma, power=msg.power,
                      stepsize=msg.stepsize, stepvalue=tuple(msg.stepvalue),
                      max_iter=msg.max_iter)


def _snapshot_prefix(msg, present: set, file) -> str:
    """Caffe's ``UpgradeSnapshotPrefixProperty``: missing -> the solver file without its
    extension; a directory -> that directory / the solver file's stem."""
    if "snapshot_prefix" not in present:
        return str(Path(file).with_suffix("")) if file is not None else ""
    prefix = msg.snapshot_prefix
    if file is not None and os.path.isdir(prefix):
        return str(Path(prefix) / Path(file).stem)
    return prefix
