"""``ana``: sensitivity of the metric to pruning each channel group alone.

As the vendor's ``vai_p_caffe ana`` / ``vai_p_darknet pruner ana`` do: one
baseline evaluation, then for every prunable group and every ratio, a model
with only that group pruned (channels ranked by ``criterion``, kept count a
multiple of ``divisor``; dense surgery with offset folding) is evaluated.
:func:`run_ana` puts together the parts, each in its own module:

- :mod:`.ana_state`: the job (:class:`AnaJob`), its fingerprint, and the state file
  (:class:`AnaResult`) that records every result and lets a later run resume;
- :mod:`.ana_evaluation`: the incremental evaluation of a group's variants, which
  runs only the layers pruning changes (runs of ana are bit-identical whatever
  the worker count);
- :mod:`.ana_scheduling`: where the groups run (``workers=N``: this process and
  N-1 worker processes; ``scheduler="tcp://host:port"``: a Dask cluster);
- :mod:`.report`: the sensitivity table, CSV and plot (:func:`write_reports`).

Early stop (opt-in, ``early_stop=D``; off by default, as the vendor evaluates
every ratio). A group's ratios run in increasing order, and once one costs a
relative drop ``|baseline - v| / |baseline|`` above ``D`` the group's larger
ratios are skipped: they are recorded as skipped, never estimated, so every
value in the file is a measurement. This is what cuts the time below the
operation-count bound of exact reuse (pruning more of a group rarely wins the
metric back, but it can: curves are noisy). ``prune`` then chooses only among
the evaluated ratios, and says so when the rate cannot be reached without the
skipped ones. The rule is not part of the inputs: a later run with another
``D`` (or none) keeps every measured value and evaluates what its own rule
still needs, so an early-stopped analysis can be completed later.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from ..errors import ModelError
from ..fileio import make_folder
from .ana_evaluation import CACHE_BUDGET, IncrementalEvaluator
from .ana_scheduling import check_scheduler, run_in_process_pool, run_on_dask, run_serially
from .ana_state import (DEFAULT_RATIOS, FORMAT, VERSION, AnaJob, AnaResult, job_inputs, ratio_key,
                        read_resumable, relative_drop, start_or_resume)


def run_ana(job: AnaJob, state_path, workers: int = 1, scheduler=None, progress: bool = True,
            restart: bool = False, on_result=None, cache_budget: int = CACHE_BUDGET) -> AnaResult:
    """Run (or resume) the sensitivity analysis of ``job``; returns the complete result.

    Args:
        state_path: the state file; created (with its folder), resumed, or refused when it
            belongs to other inputs (``restart=True`` discards it instead).
        workers: local evaluators sharing this process's Numba threads: this process
            and ``workers - 1`` worker processes. Those are spawned, so a script calling
            this with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
        scheduler: a Dask scheduler address ``tcp://host:port`` (or a ``distributed.Client``):
            the groups are evaluated there; model and data paths must be readable by the
            workers. Each worker process uses its host's cores divided by the worker
            threads on that host. ``workers`` is then ignored. None (or the config
            values "auto", "serial", "process") evaluates locally.
        progress: a tqdm progress bar with ETA on stderr (if tqdm is installed).
        on_result: called as ``on_result(gid, ratio, metric)`` after each result is saved.
        cache_budget: bytes of original activations kept (one checkpoint per batch, carried
            from group to group); batches over it recompute their prefix per variant.
    """
    job = job.checked()
    scheduler = check_scheduler(workers, scheduler)
    state_path = Path(state_path)
    inputs = job_inputs(job)
    previous = read_resumable(state_path, inputs, restart)
    make_folder(state_path.parent)

    evaluation = IncrementalEvaluator(job, show_progress=False, cache_budget=cache_budget)
    evaluation.evaluator.print_notes()
    inputs["data_sha256"] = evaluation.data_sha256
    reference = evaluation.evaluator.reference_state()
    if reference is not None:  # for a prune from other weights (label-free scores)
        from .reference_file import save_reference
        save_reference(state_path, reference, evaluation.data_sha256)
    result = start_or_resume(previous, state_path, job, inputs, evaluation.group_records(),
                             evaluation.evaluator.metric_name)

    bar = _progress_bar(progress, result.total + 1 - result.skipped_count,
                        result.done + (result.baseline is not None))
    recorder = _ResultRecorder(result, bar, on_result)
    try:
        if job.early_stop is not None:  # groups judge their drops against it
            recorder.baseline(evaluation)
            if not math.isfinite(result.baseline) or result.baseline == 0:
                raise ModelError(f"early stop measures drops relative to the baseline "
                                 f"{result.metric_name} = {result.baseline}, which cannot be "
                                 "done for a baseline that is 0 or not finite; run ana without "
                                 "early stop")
        tasks = [(g["id"], result.missing(g["id"])) for g in result.groups]
        tasks = [(gid, ratios) for gid, ratios in tasks if ratios]
        # longest suffixes first
        tasks.sort(key=lambda task: (evaluation.first_changed_layer(task[0]), task[0]))
        if scheduler is not None:
            run_on_dask(scheduler, job, evaluation, recorder, tasks, cache_budget)
        elif workers > 1 and len(tasks) > 1:
            run_in_process_pool(workers, job, evaluation, recorder, tasks, cache_budget)
        else:
            run_serially(evaluation, recorder, tasks)
        result.save()
    finally:
        if bar is not None:
            bar.close()
    return result


class _ResultRecorder:
    """Records finished evaluations: result, state file, progress bar, callback."""

    def __init__(self, result: AnaResult, bar, on_result):
        self.result, self.bar, self.on_result = result, bar, on_result

    def baseline(self, evaluation: IncrementalEvaluator) -> None:
        """Evaluate the baseline unless the resumed file has it, then save the file."""
        result = self.result
        if result.baseline is None:
            result.baseline = evaluation.baseline()
            result.forward_evaluations += 1
            if self.bar is not None:
                self.bar.update(1)
        result.save()

    def finish(self, gid: int, values: dict, forwards: int) -> None:
        """``values``: ratio -> metric, None for "keeps every channel" (= the baseline)."""
        result = self.result
        row = result.results.setdefault(gid, {})
        for r in sorted(values):
            v = values[r]
            row[float(r)] = float(result.baseline if v is None else v)
            result.evaluated += 1
        result.forward_evaluations += forwards
        result.save()
        if self.bar is not None:
            if result.early_stop is not None:
                self.bar.total = result.total + 1 - result.skipped_count
            self.bar.update(len(values))
        if self.on_result is not None:
            for r in sorted(values):
                self.on_result(gid, r, row[float(r)])


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # a core dependency, but a stripped environment still runs: say so once
        print("note: no progress bar: it needs tqdm (pip install tqdm)", file=sys.stderr)
        return None
    return tqdm(total=total, initial=initial, desc="ana", unit="eval", dynamic_ncols=True)


def write_reports(result: AnaResult, workspace) -> list[Path]:
    """Write ``ana_sensitivity.txt`` (table), ``.csv`` and ``.png`` into ``workspace``,
    atomically; return the paths written."""
    from .report import write_sensitivity_reports
    return write_sensitivity_reports(result.to_table(), workspace)


__all__ = ["AnaJob", "AnaResult", "run_ana", "write_reports", "job_inputs", "ratio_key",
           "relative_drop",
           "DEFAULT_RATIOS", "FORMAT", "VERSION"]
