"""``vai_p_caffe ana|prune|finetune -config config.prototxt``."""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from ..pruning.criteria import DATA_CRITERIA
from .common import (NO_EARLY_STOP, NO_PROGRESS_HELP, REFINE_HELP, early_stop_arg,
                     print_prune_summary, refine_arg)


def add_parsers(sub):
    for name, what in (("ana", "sensitivity analysis of every prunable group"),
                       ("prune", "prune to the config's rate using the analysis"),
                       ("finetune", "finetune the pruned model (the PyTorch extra: pip install 'caffe-surgeon[finetune]')")):
        p = sub.add_parser(name, help=what)
        p.add_argument("-config", "--config", required=True, help="vai_p config.prototxt")
        if name == "finetune":
            from .finetune import add_options
            add_options(p)
        if name == "ana":
            p.add_argument("-workers", "--workers", type=int,
                           help="parallel evaluators: this process and N-1 worker processes "
                                "(default: one per gpu id)")
            p.add_argument("-scheduler", "--scheduler", metavar="tcp://HOST:PORT",
                           help="run the evaluations on this Dask scheduler")
            p.add_argument("-restart", "--restart", action="store_true",
                           help="discard an analysis file made for other inputs and start over")
            p.add_argument("-no_progress", "--no-progress", action="store_true", help=NO_PROGRESS_HELP)
            p.add_argument("-early_stop", "--early-stop", type=early_stop_arg, metavar="DROP",
                           help="skip a group's larger ratios once its metric drops by more "
                                "than DROP (relative, e.g. 0.1); 'none' evaluates every ratio "
                                "(the default, unless the config sets early_stop)")
        if name == "prune":
            p.add_argument("-allocator", "--allocator", choices=("greedy", "threshold"),
                           default="greedy",
                           help="greedy (default): least predicted metric loss per operation saved; "
                                "threshold: the vendor's per-layer drop threshold")
            p.add_argument("-reconstruct", "--reconstruct", type=int, metavar="N",
                           help="refit, by least squares, every layer that lost input channels so that it "
                                "reproduces the original's output on the first N training images "
                                "(Caffe: the TRAIN-phase data layer; Darknet: the .data train list); "
                                "not in the vendor tool, off by default")
            p.add_argument("-refine", "--refine", type=refine_arg, metavar="N", default=0,
                           help=REFINE_HELP)


def _job(cfg):
    from ..workflow.ana import AnaJob
    spec = {"kind": "caffe", "acc_name": cfg.acc_name, "test_iter": cfg.test_iter,
            "base_dir": None}
    if cfg.label_free:
        spec["label_free"] = True
    if cfg.ssd_ap_version is not None:  # DetectionEvaluate's mAP (the solver's ap_version)
        spec["ap_version"] = cfg.ssd_ap_version
    options = {"batches": cfg.taylor_batches} if cfg.criterion in DATA_CRITERIA else {}
    return AnaJob("caffe", [str(cfg.model), str(cfg.weights)], spec, ratios=list(cfg.ratios),
                  criterion=cfg.criterion, ignore=excluded_layers(cfg),
                  divisor=cfg.channel_divisible, early_stop=cfg.early_stop,
                  criterion_options=options)


def excluded_layers(cfg) -> list[str]:
    """The layers ``exclude { layer_top: X }`` names: the one that first writes top X (a
    convolution, not the in-place BatchNorm/ReLU after it); a layer named X otherwise."""
    from .. import api
    graph = api.load(cfg.model)
    names = []
    for top in cfg.exclude:
        layer = next((l for l in graph.layers if top in l.tops and top not in l.bottoms), None) \
            or next((l for l in graph.layers if l.name == top), None)
        if layer is None:
            raise ModelError(f"pruner.exclude names layer_top '{top}', which no layer of "
                             f"{cfg.model} writes", file=cfg.file)
        if layer.name not in names:
            names.append(layer.name)
    return names


def _config(args, command):
    from ..workflow.config import read_caffe_config
    cfg = read_caffe_config(args.config)
    cfg.require("model", "weights", command=command)
    if not cfg.label_free:
        cfg.require("acc_name", command=command)
    cfg.check_files(("model", "weights"))
    return cfg


def finetune_advice(config, reason: str = "'vai_p_caffe finetune' arrives with the PyTorch "
                                          "training engine in a later release") -> str:
    """What to do while finetune cannot run here (``reason``), with this config's paths.

    ``sparse.caffemodel`` keeps the original shapes (it pairs with ``model``), and
    ``final.prototxt`` has the reduced ones: the pair to train is ``final.prototxt`` with
    the dense weights ``transform`` makes of the sparse file.
    """
    from ..workflow.config import read_caffe_config
    try:
        cfg = read_caffe_config(config)
        folder, model = cfg.rate_dir(), cfg.model
    except ModelError:  # the advice still holds, with placeholders for what the config lacks
        folder, model = Path("<workspace>/regular_rate_<rate>"), "<model>"
    return (f"{reason}; "
            f"meanwhile make the dense weights with 'vai_p_caffe transform -model {model} -weights "
            f"{folder / 'sparse.caffemodel'} -output {folder / 'dense.caffemodel'}' and train "
            f"{folder / 'final.prototxt'} from {folder / 'dense.caffemodel'} in your Caffe setup "
            f"(sparse.caffemodel has the shapes of {model}, not of final.prototxt)")


def run(args) -> int:
    if args.command == "finetune":
        from .finetune import run_vai_p
        return run_vai_p(args)
    cfg = _config(args, args.command)
    job = _job(cfg)
    if getattr(args, "early_stop", None) is not None:  # the command line wins over the config
        job.early_stop = None if args.early_stop == NO_EARLY_STOP else args.early_stop
    if args.command == "ana":
        return _ana(args, cfg, job)
    return _prune(args, cfg, job)


def _ana(args, cfg, job) -> int:
    from ..workflow.ana import run_ana, write_reports
    from ..workflow.report import format_sensitivity
    workers = cfg.worker_count if args.workers is None else args.workers  # -workers 0: refused
    result = run_ana(job, cfg.ana_file, workers=workers, scheduler=args.scheduler,
                     progress=not args.no_progress, restart=args.restart)
    files = write_reports(result, cfg.workspace)
    print(format_sensitivity(result.to_table()))
    print(f"Analysis completed: {cfg.ana_file}" + (f"; wrote {', '.join(map(str, files))}" if files else ""))
    return 0


def _prune(args, cfg, job) -> int:
    from ..caffe.writer import render_caffemodel, render_prototxt
    from ..fileio import atomic_write, make_folder
    from ..workflow.ana import AnaResult
    from ..workflow.calibration import calibration_images
    from ..evaluation.spec import load_eval_graph
    from ..pruning.criteria import criterion_for
    from ..workflow.prune_rate import prune_evaluator, prune_to_rate
    cfg.require("rate", command="prune")
    if not Path(cfg.ana_file).exists():
        raise ModelError(f"no analysis found at {cfg.ana_file}: run 'vai_p_caffe ana -config "
                         f"{args.config}' first", file=args.config)
    ana = AnaResult.load(cfg.ana_file)
    print("Analysis info found.")
    graph = load_eval_graph("caffe", [str(cfg.model), str(cfg.weights)], job.evaluator)
    evaluator = prune_evaluator(job, ana, cfg.ana_file, graph)
    calib = None
    if args.reconstruct is not None:  # read before anything is pruned or written
        calib = calibration_images("caffe", job.model_files, job.evaluator, args.reconstruct,
                                   graph, evaluator)
    checked = job.checked()
    criterion = criterion_for(checked.criterion, checked.model_files, checked.criterion_options)
    out = prune_to_rate(graph, ana, cfg.rate, evaluator=evaluator, criterion=criterion,
                        divisor=cfg.channel_divisible, method=args.allocator,
                        ignore=list(job.ignore), input_shapes=getattr(evaluator, "input_shapes", None),
                        calib=calib and calib.feed, refine=args.refine)
    folder = cfg.rate_dir()
    make_folder(folder)
    sparse_bytes, final_text = render_caffemodel(out.sparse), render_prototxt(out.dense)
    atomic_write(folder / "sparse.caffemodel", sparse_bytes)
    atomic_write(folder / "final.prototxt", final_text)
    out.plan.save(folder / "plan.json")
    print_prune_summary(out, calib, ana.metric_name)
    print(f"wrote {folder / 'sparse.caffemodel'}, {folder / 'final.prototxt'} and {folder / 'plan.json'} "
          f"({args.allocator} allocation{', refined' if out.refinement else ''})")
    return 0
