"""Caffe's learning-rate policies (``SGDSolver::GetLearningRate``), as pure functions.

Caffe keeps one piece of state for the schedule, ``current_step_``: the ``step`` policy
overwrites it with ``iter / stepsize`` and the ``multistep`` policy advances it by at most
one per call, when ``iter >= stepvalue[current_step]``. Because of that counter,
``stepvalue: 100  stepvalue: 100`` drops the rate at iterations 100 *and* 101, and
unsorted step values are taken in file order. :func:`rate_and_step` reproduces one
call; :func:`rate_from_start` gives what a run that started at iteration 0 (one call per
iteration, as Caffe's solver makes) sees at a given iteration, for plots and displays.

Nothing here imports torch: the schedule can be drawn without the finetune extra.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

#: the policies BVLC Caffe defines; SSD's ``plateau`` is refused (it needs the loss)
POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


@dataclass(frozen=True)
class LrSchedule:
    """The fields of ``SolverParameter`` that the learning rate depends on.

    Values are as protobuf reads them (floats rounded to float32, as Caffe sees them).
    Validation (``stepsize > 0`` for ``step``, ...) happens when the solver file is
    read (:mod:`.solver_config`), where the line of the field is known.
    """

    base_lr: float
    policy: str
    gamma: float = 0.0
    power: float = 0.0
    stepsize: int = 0
    stepvalue: tuple = ()
    max_iter: int = 0

    def rate_and_step(self, iteration: int, current_step: int) -> tuple[float, int]:
        """One call of Caffe's ``GetLearningRate``.

        Args:
            iteration: the solver's ``iter_``: updates applied so far.
            current_step: the counter as the previous call left it (0 at the start).

        Returns:
            ``(rate, current_step)``: the learning rate of this update and the counter
            to keep for the next call (and for the solver state).
        """
        p, base = self.policy, self.base_lr
        if p == "fixed":
            return base, current_step
        if p == "step":
            current_step = iteration // self.stepsize
            return base * self.gamma ** current_step, current_step
        if p == "exp":
            return base * self.gamma ** iteration, current_step
        if p == "inv":
            return base * (1.0 + self.gamma * iteration) ** (-self.power), current_step
        if p == "multistep":
            if current_step < len(self.stepvalue) and iteration >= self.stepvalue[current_step]:
                current_step += 1
            return base * self.gamma ** current_step, current_step
        if p == "poly":
            return base * (1.0 - iteration / self.max_iter) ** self.power, current_step
        if p == "sigmoid":
            return base / (1.0 + math.exp(-self.gamma * (iteration - self.stepsize))), current_step
        raise ValueError(f"unknown lr_policy {p!r}")  # SolverConfig refuses it first

    def step_from_start(self, iteration: int) -> int:
        """``current_step`` after Caffe's calls at iterations 0..``iteration`` of a fresh run.

        Only ``step`` and ``multistep`` move the counter. For multistep the k-th
        increment happens at ``max(stepvalue[k], iteration of the previous one + 1)``.
        """
        if self.policy == "step":
            return iteration // self.stepsize
        if self.policy != "multistep":
            return 0
        step, at = 0, 0
        while step < len(self.stepvalue):
            at = max(at, self.stepvalue[step])
            if at > iteration:
                break
            step += 1
            at += 1
        return step

    def rate_from_start(self, iteration: int) -> float:
        """The learning rate at ``iteration`` of a run that started at iteration 0."""
        before = self.step_from_start(iteration - 1) if iteration > 0 else 0
        return self.rate_and_step(iteration, before)[0]
