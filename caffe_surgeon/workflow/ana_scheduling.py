"""Where ``ana``'s groups are evaluated: in this process, a process pool, or a Dask cluster.

Each group's missing ratios are one task (:meth:`.IncrementalEvaluator.evaluate_group`),
taken in the order given (longest suffixes first). ``workers=N`` spreads them over
this process and N-1 spawned worker processes; ``scheduler="tcp://host:port"`` over
a Dask cluster. Workers rebuild the model and data from a plain payload
(:func:`worker_payload`) and refuse to go on if they decode other data. A
recorder (``run_ana``'s) saves each result as it arrives; results do not depend
on where or in which order the groups ran.
"""
from __future__ import annotations

import hashlib
import os
import threading
import uuid
from dataclasses import asdict, replace

from ..errors import ModelError
from .ana_evaluation import IncrementalEvaluator
from .ana_state import AnaJob, canonical_json

# ====================================================================== worker side
#: in a pool worker process: its evaluator, or the error that building it raised
_POOL_WORKER: dict = {}
#: in a worker process: the evaluator of the job it runs, by job digest (one at a time)
_WORKER_EVALUATORS: dict = {}
#: a Dask worker process runs one group at a time (evaluators are not thread-safe)
_DASK_TASK_LOCK = threading.Lock()


def worker_payload(job: AnaJob, evaluation: IncrementalEvaluator, cache_budget: int) -> dict:
    """What a worker needs: the job with absolute paths, what to check it against, and a
    label-free evaluator's reference (so workers do not run the reference model again)."""
    spec = dict(job.evaluator)
    cwd = os.getcwd()
    for k in ("data_file",):
        if spec.get(k):
            spec[k] = os.path.join(cwd, spec[k])
    spec["base_dir"] = os.path.join(cwd, spec["base_dir"]) if spec.get("base_dir") else cwd
    files = [os.path.join(cwd, f) for f in job.model_files]
    return {"job": asdict(replace(job, model_files=files, evaluator=spec)),
            "data_sha256": evaluation.data_sha256,
            "reference": evaluation.evaluator.reference_state(),
            "threads": None, "per_host": {}, "cache_budget": cache_budget}


def _set_worker_threads(threads, one_task_at_a_time: bool) -> None:
    """Run this worker's kernels on ``threads`` Numba threads (None: leave the count).

    Results do not depend on the thread count (the engine's tiling is fixed by
    the layer shapes), so workers on one host share its cores between them.
    TBB and OpenMP threads spin while waiting and then crawl when processes
    oversubscribe the cores, the workqueue layer does not, so a process running
    one task at a time switches to it (before its first parallel kernel; the
    layer never changes results).
    """
    import numba
    if one_task_at_a_time:
        try:
            from numba.np.ufunc import parallel
            started = getattr(parallel, "_is_initialized", False)
        except ImportError:  # pragma: no cover - other numba layouts
            started = True
        if not started:
            numba.config.THREADING_LAYER = "workqueue"
    if threads:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


def _worker_evaluator(payload: dict, one_task_at_a_time: bool = True) -> IncrementalEvaluator:
    """This worker process's evaluator for ``payload``'s job: built (model loaded, data
    decoded and checked against the parent's digest) on the job's first task only."""
    job_and_data = {k: payload[k] for k in ("job", "data_sha256")}
    key = hashlib.sha256(canonical_json(job_and_data)).hexdigest()
    evaluation = _WORKER_EVALUATORS.get(key)
    if evaluation is not None:
        return evaluation
    _set_worker_threads(payload.get("threads"), one_task_at_a_time)
    evaluation = IncrementalEvaluator(AnaJob(**payload["job"]),
                                      cache_budget=payload["cache_budget"],
                                      reference=payload.get("reference"))
    if evaluation.data_sha256 != payload["data_sha256"]:
        raise ModelError("a worker decoded different evaluation data than the process that "
                         "started ana (other files at the same paths?): "
                         f"sha256 {evaluation.data_sha256[:12]}... "
                         f"vs {payload['data_sha256'][:12]}...")
    _WORKER_EVALUATORS.clear()  # one job per worker process at a time
    _WORKER_EVALUATORS[key] = evaluation
    return evaluation


def _evaluate_whole_group(evaluation: IncrementalEvaluator, gid: int, ratios, baseline: float):
    """A worker's task: every ratio of group ``gid``, returned together with the forward
    passes it ran."""
    values, forwards = {}, 0
    for r, metric, ran in evaluation.evaluate_group(gid, ratios, baseline):
        values[r] = metric
        forwards += ran
    return gid, values, forwards


def _start_pool_worker(payload: dict) -> None:
    _POOL_WORKER["payload"] = payload
    try:
        _POOL_WORKER["evaluation"] = _worker_evaluator(payload)
    except Exception as e:  # reported with the first task, which names it
        _POOL_WORKER["error"] = e


def _evaluate_group_in_pool(gid: int, ratios, baseline: float):
    if "error" in _POOL_WORKER:
        raise _POOL_WORKER["error"]
    return _evaluate_whole_group(_POOL_WORKER["evaluation"], gid, ratios, baseline)


def _evaluate_group_on_dask(payload: dict, gid: int, ratios, baseline: float):
    """A Dask task: the evaluator is built once per worker process and kept for later groups.

    A process evaluates one group at a time (its evaluator and executor are not shared
    between threads), on its host's cores divided by the worker processes there.
    """
    try:
        from distributed import get_worker
        worker = get_worker()
        state = getattr(worker, "state", worker)
        single = int(getattr(state, "nthreads", 1)) == 1
        procs = len(payload["per_host"].get(_host_of_address(worker.address), [])) or 1
        threads = max(1, (os.cpu_count() or 1) // procs)
    except (ImportError, ValueError):
        single, threads = False, None  # not inside a worker: the thread-safe default layer
    with _DASK_TASK_LOCK:
        evaluation = _worker_evaluator(dict(payload, threads=threads), single)
        _set_worker_threads(threads, False)  # Numba's thread count is per calling thread
        return _evaluate_whole_group(evaluation, gid, ratios, baseline)


def _host_of_address(address: str) -> str:
    return address.split("://")[-1].rsplit(":", 1)[0]


# ====================================================================== this process's side
def check_scheduler(workers, scheduler):
    """The Dask scheduler to use (an address or a Client), or None to evaluate locally;
    ModelError for a bad ``workers`` count or scheduler."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ModelError(f"ana: workers must be an integer >= 1, got {workers!r}")
    if scheduler is None or isinstance(scheduler, str) and scheduler in ("", "auto", "serial",
                                                                        "process"):
        return None
    if isinstance(scheduler, str):
        if "://" not in scheduler:
            raise ModelError(f"ana: scheduler must be a Dask address like tcp://host:8786, "
                             f"got {scheduler!r}")
        return scheduler
    if hasattr(scheduler, "submit") or hasattr(scheduler, "scheduler_address"):
        return scheduler  # a distributed Client or cluster object
    raise ModelError(f"ana: scheduler must be a Dask address or Client, got {scheduler!r}")


def run_serially(evaluation: IncrementalEvaluator, recorder, group_tasks) -> None:
    """Every group in this process, each result recorded as it comes."""
    recorder.baseline(evaluation)
    for gid, ratios in group_tasks:
        for r, metric, ran in evaluation.evaluate_group(gid, ratios, recorder.result.baseline):
            recorder.finish(gid, {r: metric}, int(ran))


def run_in_process_pool(workers, job, evaluation, recorder, group_tasks, cache_budget):
    """``workers`` evaluators: this process (it has the model and data already) and
    ``workers - 1`` spawned processes, each taking the next task when it is free."""
    import multiprocessing
    import queue
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    import numba
    n = min(workers, len(group_tasks))
    threads = max(1, numba.get_num_threads() // n)  # this host's cores, shared
    payload = worker_payload(job, evaluation, cache_budget)
    payload["threads"] = threads
    # spawn: a fresh interpreter per worker (forking a process with running Numba/TBB
    # threads is unsafe)
    pool = ProcessPoolExecutor(max_workers=n - 1,
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_pool_worker, initargs=(payload,))
    pending, lock = deque(group_tasks), threading.Lock()
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    baseline = recorder.result.baseline  # known first with early stop, else None

    def take():
        with lock:
            return pending.popleft() if pending else None

    def submit() -> int:
        task = take()
        if task is None:
            return 0
        fut = pool.submit(_evaluate_group_in_pool, task[0], task[1], baseline)
        fut.add_done_callback(lambda f: events.put(("group", f)))
        return 1

    def evaluate_here():  # this process's share, one ratio at a time (saved as it comes)
        try:
            numba.set_num_threads(threads)  # per calling thread
            while not cancel.is_set() and (task := take()) is not None:
                for r, metric, ran in evaluation.evaluate_group(task[0], task[1], baseline):
                    events.put(("ratio", (task[0], {r: metric}, int(ran))))
                    if cancel.is_set():
                        return
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            events.put(("error", e))
        finally:
            events.put(("done", None))

    in_flight, here = 0, None
    try:
        # Workers set up (decode, reference run) while this process evaluates the baseline.
        for _ in range(n - 1):
            in_flight += submit()
        recorder.baseline(evaluation)
        here = threading.Thread(target=evaluate_here, name="ana-evaluate-here", daemon=True)
        here.start()
        running_here = True
        while in_flight or running_here:
            kind, item = events.get()
            if kind == "group":
                in_flight -= 1
                try:
                    gid, values, forwards = item.result()
                except BrokenProcessPool as e:
                    raise ModelError(f"an ana worker process died ({e}); if run_ana is called from "
                                     "a script, guard the call with if __name__ == '__main__': "
                                     "(worker processes are spawned and import the main module), "
                                     "and check memory: each worker holds the model and the "
                                     "decoded data") from None
                recorder.finish(gid, values, forwards)
                in_flight += submit()
            elif kind == "ratio":
                recorder.finish(*item)
            elif kind == "error":
                raise item
            else:
                running_here = False
    except BaseException:
        cancel.set()
        if here is not None:
            here.join()  # its current ratio ends first: no kernel left running behind the caller
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def run_on_dask(scheduler, job, evaluation, recorder, group_tasks, cache_budget):
    """Every group as one task on the Dask cluster at ``scheduler``; this process evaluates
    the baseline while the workers set up."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ModelError("a Dask scheduler was given but the 'distributed' package is not "
                         "installed (pip install distributed)") from None
    payload = worker_payload(job, evaluation, cache_budget)
    own = not isinstance(scheduler, Client)
    if own:
        address = getattr(scheduler, "scheduler_address", scheduler)
        try:
            client = Client(address, timeout="30s", set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ModelError(f"cannot reach the Dask scheduler at {address}: {e}") from None
    else:
        client = scheduler
    try:
        hosts: dict[str, list] = {}
        for address in client.scheduler_info().get("workers", {}):
            hosts.setdefault(_host_of_address(address), []).append(address)
        payload["per_host"] = hosts
        run = uuid.uuid4().hex[:12]  # fresh keys: never a stale result of an earlier run
        baseline = recorder.result.baseline  # known first with early stop, else None
        # the payload goes with every task: scattering it first would need workers up now
        futures = [client.submit(_evaluate_group_on_dask, payload, gid, rs, baseline, pure=False,
                                 key=f"ana-{run}-group-{gid}")
                   for gid, rs in group_tasks]
        recorder.baseline(evaluation)
        for fut in as_completed(futures, loop=client.loop):
            gid, values, forwards = fut.result()
            recorder.finish(gid, values, forwards)
    except BaseException:
        for fut in futures if "futures" in locals() else []:
            fut.cancel()
        raise
    finally:
        if own:
            client.close()
