"""Of a layer's equivalent kernels (the same bits by construction), the faster one here.

Which of our GEMM kernels beats the BLAS for a shape was measured on a few machines
(Sapphire Rapids, Zen 3, Zen 5) and written down as rules; on another CPU, or beside
another load, a rule can pick the slower kernel (on Zen 5 under OpenBLAS's SkylakeX
kernels the direct path ran res10's 32 -> 128 3x3 layer at 0.62x the BLAS's speed).
:class:`Fastest` runs a layer's candidates in turn on its first calls, keeps the one whose
fastest call was fastest, and runs only that from then on. Every call's result is a real
one: the candidates give the same bits, which their tests check, so the choice changes
the time and never a value. ``CAFFE_SURGEON_TUNE=0`` (read at the first call) keeps the
rules' choice.
"""
from __future__ import annotations

import os
import time

#: calls of each candidate before the choice (the fastest of them counts: a noisy call is
#: slow, never fast)
TRIALS = 2

_state: dict = {}
#: the timer (tests give a scripted one)
clock = time.perf_counter


def enabled() -> bool:
    """Whether layers measure their candidates (``CAFFE_SURGEON_TUNE``, default on)."""
    if "on" not in _state:
        _state["on"] = os.environ.get("CAFFE_SURGEON_TUNE", "1") != "0"
    return _state["on"]


class Fastest:
    """A callable over equivalent callables: the first one on the first call, then each in
    turn until each has run TRIALS times, then the one whose fastest call was fastest."""

    __slots__ = ("candidates", "times", "calls", "chosen")

    def __init__(self, candidates):
        self.candidates = tuple(candidates)
        self.times = [float("inf")] * len(self.candidates)
        self.calls = 0
        self.chosen = None

    def __call__(self, *args):
        if self.chosen is not None:
            return self.chosen(*args)
        i = self.calls % len(self.candidates)
        start = clock()
        out = self.candidates[i](*args)
        self.times[i] = min(self.times[i], clock() - start)
        self.calls += 1
        if self.calls >= TRIALS * len(self.candidates):
            self.chosen = self.candidates[min(range(len(self.times)), key=self.times.__getitem__)]
        return out
