"""What every evaluator offers: cached input feeds, and a score over network outputs.

``ana`` and ``prune`` evaluate hundreds of variants of one model on the same
data, so decoding happens once, in the evaluator's constructor. The caller
runs the network itself - possibly resuming from cached prefix activations -
and hands the outputs back::

    ev = CaffeEvaluator(graph, acc_name="top-1", test_iter=10)
    ex = Executor(variant)
    results = [ex.run(feed, **ev.run_args) for feed in ev.feeds]
    metric = ev.score(results)          # == ev.evaluate(variant)

``run_args`` are keyword arguments for :meth:`Executor.run` (``outputs`` and
``layer_outputs``); ``score`` reads only those keys from each result dict.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np


class Evaluator:
    """Base class: subclasses fill ``feeds``, ``outputs``, ``layer_outputs`` and ``_score``.

    Attributes:
        feeds: one dict (blob name -> float32 array) per batch, in evaluation order (a
            :class:`~.feed_store.FeedStore`: batches past its memory budget are read-only
            views of a mapped temporary file).
        outputs: blob names the score reads from each result.
        layer_outputs: layer names whose outputs the score reads (keyed ``"layer:top"``).
        metric_name: what the float means, for reports ("top-1", "mAP@0.5", ...).
        notes: settings that were ignored or approximated, for the user to see.
    """

    feeds: Sequence[dict[str, np.ndarray]]
    outputs: list[str]
    layer_outputs: list[str]
    metric_name: str = ""
    darknet_bn: str = "pjreddie"
    show_progress: bool = False

    def __init__(self):
        self.feeds = []
        self.outputs = []
        self.layer_outputs = []
        self.notes: list[str] = []

    def print_notes(self) -> None:
        """Each note as one "note: ..." line on stderr: what the run approximated or repeated,
        where Caffe's log would show it. Commands call it once, in the process that reports
        (not in the worker processes that build the same evaluator)."""
        for note in self.notes:
            print(f"note: {note}", file=sys.stderr)

    @property
    def run_args(self) -> dict[str, Any]:
        """Keyword arguments for ``Executor.run`` that compute what :meth:`score` needs."""
        return {"outputs": list(self.outputs), "layer_outputs": list(self.layer_outputs)}

    def reference_state(self):
        """Label-free evaluators: what they derived from the reference model's run (pass it
        as ``reference=`` to build an equal evaluator without running the model again).
        None for evaluators that score against labels."""
        return None

    def decode(self) -> Sequence[dict[str, np.ndarray]]:
        """Read and decode the data files again and return fresh feeds (``feeds`` is
        this, computed once by the constructor)."""
        raise NotImplementedError

    def score(self, results: list[dict[str, np.ndarray]]) -> float:
        """The metric from one result dict per feed (same order as :attr:`feeds`)."""
        if len(results) != len(self.feeds):
            from ..errors import ModelError
            raise ModelError(f"score needs one result per feed: got {len(results)} results "
                             f"for {len(self.feeds)} feeds")
        return float(self._score(results))

    def _score(self, results):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def run(self, graph, executor=None) -> list[dict[str, np.ndarray]]:
        """Forward every feed through ``graph`` and return the results :meth:`score` reads."""
        from ..engine import Executor
        ex = executor or Executor(graph, darknet_bn=self.darknet_bn)
        feeds = progress(self.feeds, self.show_progress, "evaluating", len(self.feeds))
        return [ex.run(feed, **self.run_args) for feed in feeds]

    def evaluate(self, graph, executor=None) -> float:
        """Convenience: run ``graph`` on every feed and score it."""
        return self.score(self.run(graph, executor))


def progress(iterable, enabled: bool, desc: str, total: int | None = None):
    """``iterable`` with a tqdm progress bar when asked for and tqdm is installed."""
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # optional dependency: no bar, same results
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False)
