"""``prune -refine N``: measure allocations near the allocator's and keep the best measured one.

Why: the allocators predict an allocation's metric by adding the drops ``ana`` measured
for each group pruned alone, as if groups did not interact. They do: on the Fashion
fixture at rate 0.5 the prediction is a 0.03 drop and the measured drop is 0.25. The
only figure that can be trusted is a measurement, so refinement measures.

The search is a deterministic first-improvement hill climb: from the current best,
the neighbours (:func:`.allocate.neighbour_allocations`: one group a grid step up,
another a step down, settled back on the operations target) are measured cheapest
predicted drop first; the first that measures strictly better becomes the current
best and the search restarts from it. It stops after N measurements or when no
neighbour is better. An allocation is never measured twice.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import ModelError
from .allocate import Allocation


@dataclass
class Refinement:
    """What ``-refine`` measured: the allocator's choice, the best found, every try."""

    start: Allocation
    start_metric: float
    best: Allocation
    best_metric: float
    tried: list = field(default_factory=list)  # (Allocation, measured metric), in order

    def note(self, metric_name: str) -> str:
        """One line: both measured figures and which allocation was kept."""
        kept = "kept the refined one" if self.best is not self.start else \
            "none measured better: kept the allocator's"
        return (f"refine: {self.start.method} allocation measured {metric_name} "
                f"{self.start_metric:.4f}; best of {len(self.tried)} neighbour allocation(s) "
                f"measured {self.best_metric:.4f}; {kept}")


def refine(start: Allocation, start_metric: float, budget: int,
           neighbours: Callable[[Allocation], list], measure: Callable[[Allocation], float],
           higher_is_better: bool = True,
           key: Callable[[Allocation], tuple] | None = None) -> Refinement:
    """Hill-climb from ``start`` with at most ``budget`` measurements.

    Args:
        start: the allocator's choice, already measured as ``start_metric``.
        budget: the most candidate allocations to measure (N of ``-refine N``), >= 0.
        neighbours: allocation -> nearby allocations on the same operations target, most
            promising first (deterministic order).
        measure: allocation -> the metric of the pruned model, measured by the evaluator.
        higher_is_better: False for losses.
        key: what makes two allocations the same model (default: their ratios); pass the
            kept channel counts so that two ratios rounding to one count are measured once.
    Returns:
        the :class:`Refinement`; ``best`` is ``start`` when nothing measured better.
    """
    if budget < 0:
        raise ModelError(f"-refine takes a number of allocations to measure >= 0, not {budget}")
    best, best_metric = start, float(start_metric)
    tried: list = []
    key = key or _ratios_key
    seen = {key(start)}
    while len(tried) < budget:
        moved = False
        for cand in neighbours(best):
            if key(cand) in seen:
                continue
            seen.add(key(cand))
            got = float(measure(cand))
            tried.append((cand, got))
            if (got > best_metric) if higher_is_better else (got < best_metric):
                best, best_metric, moved = cand, got, True
                break
            if len(tried) >= budget:
                break
        if not moved:
            break
    return Refinement(start, float(start_metric), best, best_metric, tried)


def _ratios_key(alloc: Allocation) -> tuple:
    return tuple(sorted((g, round(r, 6)) for g, r in alloc.ratios.items() if r > 0))
