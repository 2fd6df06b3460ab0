"""The Caffe solver on torch tensors: BVLC Caffe's ``SGDSolver::ApplyUpdate``, exactly.

One update (:meth:`Solver.step_update`) does what Caffe's does, in Caffe's order:

1. ``GetLearningRate`` for the current ``iter`` (:mod:`.lr_policy`);
2. ``ClipGradients``: if the L2 norm of all gradients together exceeds
   ``clip_gradients``, scale them all down to it. Caffe clips *before* dividing by
   ``iter_size``, so with ``iter_size > 1`` the threshold applies to the summed gradient;
3. per parameter, ``Normalize`` (divide by ``iter_size``), ``Regularize``
   (L2: ``g += weight_decay * decay_mult * w``; L1: ``... * sign(w)``; nothing when that
   product is 0) and ``ComputeUpdateValue`` (:mod:`.solver_rules`) with
   ``local_rate = rate * lr_mult``;
4. ``w -= update`` for every parameter, then ``iter += 1``.

The training loop owns the gradients: it zeroes them before each iteration (Caffe's
``ClearParamDiffs``), runs ``iter_size`` forward/backward passes so that they sum in
``.grad``, and calls :meth:`Solver.step_update` once. ``.grad`` is read, never changed.

A parameter with ``lr_mult`` 0 gets no gradient in Caffe (its ``param_propagate_down``
is off), so its ``.grad`` is taken as zero here whatever torch computed; weight decay
still feeds its history, and its update is ``0 * ...``: the weights stay as they are.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ModelError
from .solver_config import SolverConfig
from .solver_loss import LossSmoother
from .solver_rules import UPDATE_RULES, histories_of, new_histories
from .solver_state import capture_rngs, read_state, restore_rngs, write_state


def _key(entry) -> tuple:
    """(layer_name, blob_index, blob_name, shape): a parameter's identity in the state."""
    return (entry[0], int(entry[1]), entry[2], tuple(entry[3].shape))


class Solver:
    """Caffe's solver over a list of torch parameters.

    Args:
        config: the solver settings (:meth:`SolverConfig.from_prototxt`).

    The parameters are passed to every :meth:`step_update` as a list of
    ``(layer_name, blob_index, blob_name, torch.nn.Parameter, lr_mult, decay_mult)`` in
    Caffe's ``learnable_params`` order (shared blobs once, at their owner). Histories are
    created on the first update, or come from a loaded state; later calls must pass the
    same parameters (names and shapes are checked).

    Attributes:
        config: the settings.
        iter: updates applied so far (Caffe's ``iter_``).
        current_step: Caffe's learning-rate step counter (``step``/``multistep``).
        histories: the history tensors in Caffe's layout (None before the first update).
        loss: the :class:`~.solver_loss.LossSmoother` for ``display``/``average_loss``.
    """

    def __init__(self, config: SolverConfig):
        self.config = config
        self.rule = UPDATE_RULES[config.type]
        self.iter = 0
        self.current_step = 0
        self.histories: list | None = None
        self.param_keys: list | None = None
        self.loss = LossSmoother(config.average_loss)

    @classmethod
    def from_prototxt(cls, path) -> "Solver":
        """A solver for the ``solver.prototxt`` at ``path`` (see :class:`SolverConfig`)."""
        return cls(SolverConfig.from_prototxt(path))

    # ------------------------------------------------------------ schedule
    def learning_rate(self, iteration: int | None = None) -> float:
        """The learning rate, as Caffe's ``GetLearningRate`` gives it.

        Args:
            iteration: None for the rate the next update will use (this solver's
                ``iter`` and ``current_step``); an iteration number for the rate a run
                started at 0 sees then (multistep's counter replayed from the start).

        Returns:
            The rate, before ``lr_mult``.
        """
        schedule = self.config.schedule
        if iteration is None:
            return schedule.rate_and_step(self.iter, self.current_step)[0]
        return schedule.rate_from_start(iteration)

    def seed_rngs(self, rank: int = 0) -> None:
        """Seed torch and NumPy with ``random_seed + rank`` when ``random_seed >= 0``, as
        Caffe seeds its generator at solver creation. Runs are repeatable; the random
        numbers are not Caffe's own (different generators)."""
        if self.config.random_seed >= 0:
            seed = self.config.random_seed + rank
            torch.manual_seed(seed)
            np.random.seed(seed % 2 ** 32)

    # ------------------------------------------------------------ update
    def step_update(self, params: list, iteration: int | None = None) -> float:
        """Apply one Caffe update to ``params`` from their accumulated ``.grad``.

        Args:
            params: ``(layer_name, blob_index, blob_name, parameter, lr_mult,
                decay_mult)`` tuples in Caffe's order.
            iteration: optional: the caller's iteration counter, checked against
                :attr:`iter` (the solver's own counter, saved in its state, is the one
                used; a disagreement means the loop and the solver drifted apart).

        Returns:
            The learning rate used (before ``lr_mult``), for display.
        """
        if iteration is not None and iteration != self.iter:
            raise ModelError(f"step_update called for iteration {iteration} but the solver "
                             f"is at iteration {self.iter}")
        weights = [entry[3] for entry in params]
        self._check_params(params)
        cfg = self.config
        rate, self.current_step = cfg.schedule.rate_and_step(self.iter, self.current_step)
        with torch.no_grad():
            diffs = [w.grad.detach().clone() if (w.grad is not None and entry[4] != 0)
                     else torch.zeros_like(w) for entry, w in zip(params, weights)]
            self._clip(diffs)
            for i, (entry, w, g) in enumerate(zip(params, weights, diffs)):
                lr_mult, decay_mult = float(entry[4]), float(entry[5])
                if cfg.iter_size != 1:
                    g.mul_(1.0 / cfg.iter_size)
                local_decay = cfg.weight_decay * decay_mult
                if local_decay:
                    g.add_(w if cfg.regularization_type == "L2" else torch.sign(w), alpha=local_decay)
                hist = histories_of(self.rule, self.histories, i, len(weights))
                diffs[i] = self.rule.compute(g, hist, cfg, rate * lr_mult, self.iter + 1)
            for w, update in zip(weights, diffs):
                w.sub_(update)
        self.iter += 1
        return rate

    def _clip(self, diffs: list) -> None:
        threshold = self.config.clip_gradients
        if threshold < 0:
            return
        norm = math.sqrt(sum(float(d.double().square().sum()) for d in diffs))
        if norm > threshold:
            scale = threshold / norm
            for d in diffs:
                d.mul_(scale)

    def _check_params(self, params: list) -> None:
        keys = [_key(entry) for entry in params]
        if self.histories is None:
            self.param_keys = keys
            self.histories = new_histories(self.rule, [entry[3] for entry in params])
            return
        if keys != self.param_keys:
            raise ModelError(f"the solver was set up for {_describe(self.param_keys, keys)}")
        device = params[0][3].device if params else None
        if self.histories and self.histories[0].device != device:
            self.histories = [h.to(device) for h in self.histories]

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything a resumed run needs: ``type``, ``iter``, ``current_step``, ``params``
        (identities), ``history`` (tensors, Caffe's layout), ``loss`` (the smoothed-loss
        window) and ``rng`` (torch and NumPy generator states, captured now)."""
        if self.histories is None:
            raise ModelError("the solver has no state before its first update")
        return {"type": self.config.type, "iter": self.iter, "current_step": self.current_step,
                "params": list(self.param_keys), "history": [h.clone() for h in self.histories],
                "loss": self.loss.state_dict(), "rng": capture_rngs()}

    def load_state_dict(self, state: dict, file=None) -> None:
        """Resume from :meth:`state_dict` (or :func:`~.solver_state.read_state`): restores
        the counters, histories, loss window and the global generators.

        Args:
            state: the state.
            file: the file it came from, for error messages.
        """
        if state["type"] != self.config.type:
            raise ModelError(f"the solver state is for a {state['type']} solver but the "
                             f"solver file says {self.config.type}", file=file)
        keys = [tuple(k) for k in state["params"]]
        expected = self.rule.histories * len(keys)
        if len(state["history"]) != expected:
            raise ModelError(f"the solver state holds {len(state['history'])} history tensors; "
                             f"{self.config.type} over {len(keys)} parameters needs {expected}",
                             file=file)
        if self.param_keys is not None and keys != self.param_keys:
            raise ModelError(f"the solver state is for {_describe(keys, self.param_keys)}", file=file)
        try:
            self.loss.load_state_dict(state["loss"])
        except ValueError as e:
            raise ModelError(str(e), file=file) from None
        self.param_keys = keys
        self.histories = [h.clone() for h in state["history"]]
        self.iter, self.current_step = int(state["iter"]), int(state["current_step"])
        restore_rngs(state["rng"])

    def save_state(self, path, learned_net: str | None = None) -> None:
        """Write :meth:`state_dict` to ``path`` atomically (format: :mod:`.solver_state`).

        Args:
            path: the state file, e.g. ``config.snapshot_path(solver.iter, ".solverstate")``.
            learned_net: the weights file saved with it, recorded for the resume.
        """
        write_state(path, self.state_dict(), learned_net)

    def load_state(self, path) -> str | None:
        """Resume from a file :meth:`save_state` wrote.

        Returns:
            The ``learned_net`` recorded in it (the weights to load with it), or None.
        """
        state = read_state(path)
        self.load_state_dict(state, file=path)
        return state["learned_net"]


def _describe(expected: list, got: list) -> str:
    """The first difference between two parameter lists, in words."""
    if len(expected) != len(got):
        return f"{len(expected)} parameters, not {len(got)}"
    for a, b in zip(expected, got):
        if a != b:
            return (f"parameter {a[2]!r} (layer {a[0]!r}, blob {a[1]}) of shape {list(a[3])}, "
                    f"not {b[2]!r} (layer {b[0]!r}, blob {b[1]}) of shape {list(b[3])}")
    return "the same parameters"
