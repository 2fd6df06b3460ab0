"""``vai_p_darknet pruner ana|prune|valid|map|finetune pruning/cfg [weights]``.

``pruning/cfg`` is the vendor's INI file with a ``[pruning]`` section
(``caffe_surgeon/workflow/config.py`` lists the keys). ``prune`` takes the
``rate`` key (fraction of operations to remove); without it, the vendor's
``threshold`` (its meaning is not published; read as the vendor's successor
uses its t): each group at its largest analysed ratio whose relative metric
drop is at most ``threshold``.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from .common import (NO_EARLY_STOP, NO_PROGRESS_HELP, REFINE_HELP, early_stop_arg,
                     print_prune_summary, refine_arg)

COMMANDS = ("ana", "prune", "valid", "map", "finetune")


def add_parsers(sub):
    helps = {"ana": "sensitivity analysis of every prunable group",
             "prune": "prune to the config's rate: writes prunedcfg and prune_out_weights",
             "valid": "detections (or classifications) of the valid list, in Darknet's results format",
             "map": "mAP@0.5 (detectors) or top-1/top-k (classifiers) on the valid list",
             "finetune": "train prunedcfg from prune_out_weights as darknet detector train does"}
    for name in COMMANDS:
        p = sub.add_parser(name, help=helps[name])
        p.add_argument("cfg", help="the [pruning] config file")
        p.add_argument("weights", nargs="?", help="weights (default: modelcfg's weights are required)")
        p.add_argument("-gpus", "--gpus", help="comma list; one evaluation worker per id")
        if name == "ana":
            p.add_argument("-scheduler", "--scheduler", metavar="tcp://HOST:PORT")
            p.add_argument("-restart", "--restart", action="store_true")
            p.add_argument("-no_progress", "--no-progress", action="store_true", help=NO_PROGRESS_HELP)
            p.add_argument("-early_stop", "--early-stop", type=early_stop_arg, metavar="DROP",
                           help="skip a group's larger ratios once its metric drops by more "
                                "than DROP (relative, e.g. 0.1); 'none' evaluates every ratio "
                                "(the default, unless the config sets early_stop)")
        if name == "prune":
            p.add_argument("-allocator", "--allocator", choices=("greedy", "threshold"),
                           default="greedy")
            p.add_argument("-reconstruct", "--reconstruct", type=int, metavar="N",
                           help="refit, by least squares, every layer that lost input channels so that it "
                                "reproduces the original's output on the first N training images "
                                "(Caffe: the TRAIN-phase data layer; Darknet: the .data train list); "
                                "not in the vendor tool, off by default")
            p.add_argument("-refine", "--refine", type=refine_arg, metavar="N", default=0,
                           help=REFINE_HELP)
        if name == "finetune":
            from .darknet_finetune import add_darknet_options
            add_darknet_options(p)
        if name in ("valid", "map"):
            p.add_argument("-pruned", "--pruned", action="store_true",
                           help="evaluate prunedcfg (with these weights) instead of modelcfg")


def run(args) -> int:
    from ..workflow.config import read_darknet_pruning
    conf = read_darknet_pruning(args.cfg)
    if args.command == "finetune":
        from .darknet_finetune import run_vai_p
        return run_vai_p(args, conf)
    conf.check_files(("modelcfg",) + (("datacfg",) if conf.datacfg is not None else ()))
    if conf.datacfg is None and not conf.label_free:
        raise ModelError("the [pruning] section needs datacfg (or label_free=1)", file=args.cfg)
    if not args.weights:
        raise ModelError(f"'vai_p_darknet pruner {args.command}' needs a weights file after the config")
    if not Path(args.weights).is_file():
        raise ModelError("weights file not found", file=args.weights)
    cfg_path = conf.prunedcfg if getattr(args, "pruned", False) else conf.modelcfg
    spec = _spec(conf, cfg_path)
    workers = len(args.gpus.split(",")) if args.gpus else conf.worker_count
    if args.command == "ana":
        return _ana(args, conf, spec, workers)
    if args.command == "prune":
        return _prune(args, conf, spec)
    return _valid(args, conf, spec, cfg_path)


def _spec(conf, cfg_path) -> dict:
    from .. import api
    graph = api.load(cfg_path)
    from ..detection.darknet_boxes import head_layers
    detector = bool(head_layers(graph))
    kind = "darknet-detector" if detector else "darknet-classifier"
    return {"kind": kind, "data_file": str(conf.datacfg) if conf.datacfg else None,
            "label_free": bool(conf.label_free), "max_images": None}


def _ignore_names(conf) -> list[str]:
    from .. import api
    graph = api.load(conf.modelcfg)
    bad = [i for i in conf.ignore_layer if not 0 <= i < len(graph.layers)]
    if bad:
        raise ModelError(f"ignore_layer lists {bad}, but {conf.modelcfg} has layers 0..{len(graph.layers) - 1}",
                         file=conf.file)
    return [graph.layers[i].name for i in conf.ignore_layer]


def _job(args, conf, spec):
    from ..workflow.ana import AnaJob
    return AnaJob("darknet", [str(conf.modelcfg), str(args.weights)], spec, ratios=list(conf.ratios),
                  criterion=conf.criterion, ignore=_ignore_names(conf), divisor=conf.kernel_batch,
                  early_stop=_early_stop(args, conf))


def _early_stop(args, conf):
    """The command line wins over the [pruning] key; ``-early_stop none`` turns it off."""
    flag = getattr(args, "early_stop", None)
    if flag is None:
        return conf.early_stop
    return None if flag == NO_EARLY_STOP else flag


def _ana(args, conf, spec, workers) -> int:
    from ..workflow.ana import run_ana, write_reports
    from ..workflow.report import format_sensitivity
    result = run_ana(_job(args, conf, spec), conf.ana_out_file, workers=workers,
                     scheduler=args.scheduler, progress=not args.no_progress, restart=args.restart)
    write_reports(result, Path(conf.ana_out_file).parent)
    print(format_sensitivity(result.to_table()))
    print(f"Analysis completed: {conf.ana_out_file}")
    return 0


def _prune(args, conf, spec) -> int:
    from ..darknet.writer import write_darknet
    from ..fileio import make_folder
    from ..workflow.ana import AnaResult
    from ..workflow.calibration import calibration_images
    from ..evaluation.spec import load_eval_graph
    from ..workflow.prune_rate import prune_evaluator, prune_to_rate
    if conf.rate is None and conf.threshold is None:
        raise ModelError("'prune' needs rate=<fraction of operations to remove> (or the "
                         "vendor's threshold=<relative metric drop per layer>) in [pruning]",
                         file=conf.file)
    if not Path(conf.ana_out_file).exists():
        raise ModelError(f"no analysis at {conf.ana_out_file}: run 'vai_p_darknet pruner ana' first")
    job = _job(args, conf, spec)
    ana = AnaResult.load(conf.ana_out_file)
    graph = load_eval_graph("darknet", job.model_files, spec)
    evaluator = prune_evaluator(job, ana, conf.ana_out_file, graph)
    calib = None
    if args.reconstruct is not None:  # read before anything is pruned or written
        calib = calibration_images("darknet", job.model_files, spec, args.reconstruct, graph,
                                   evaluator)
    out = prune_to_rate(graph, ana, conf.rate, evaluator=evaluator, criterion=conf.criterion,
                        divisor=conf.kernel_batch, method=args.allocator, ignore=job.ignore,
                        calib=calib and calib.feed, darknet_bn=job.darknet_bn,
                        threshold=conf.threshold, refine=args.refine)
    make_folder(Path(conf.prunedcfg).parent)
    make_folder(Path(conf.prune_out_weights).parent)
    # the dense cfg, and the sparse weights (original shapes) that finetune/transform start from
    write_darknet(out.dense, conf.prunedcfg, None)
    write_darknet(out.sparse, None, conf.prune_out_weights)
    out.plan.save(Path(conf.prune_out_weights).with_suffix(".plan.json"))
    print_prune_summary(out, calib, ana.metric_name)
    how = f"{args.allocator} allocation" if conf.rate is not None else \
        f"threshold {conf.threshold:g}: operations -{out.allocation.rate:.2%}"
    print(f"wrote {conf.prunedcfg} and {conf.prune_out_weights} ({how})")
    return 0


def _dense_of_sparse(conf, weights, spec):
    """``-pruned`` with the sparse weights ``prune`` writes (modelcfg's shapes, removed channels
    zeroed): they do not fit prunedcfg, so transform them to the dense model here, saying so.

    Raises the original size error when the weights fit neither cfg."""
    import sys

    from ..evaluation.spec import load_eval_graph
    from ..pruning.transform import transform
    try:
        sparse = load_eval_graph("darknet", [str(conf.modelcfg), str(weights)], spec)
    except ModelError:
        load_eval_graph("darknet", [str(conf.prunedcfg), str(weights)], spec)  # its own error
        raise
    dense = transform(sparse, ignore=_ignore_names(conf)).dense
    from .. import api
    for want, got in zip(api.load(conf.prunedcfg).layers, dense.layers):
        for key in ("filters", "output"):
            if want.params.get(key) != got.params.get(key):
                raise ModelError(f"these weights have the shapes of modelcfg {conf.modelcfg}, and "
                                 f"its zeroed channels give layer {got.name} {got.params.get(key)} "
                                 f"{key} where prunedcfg {conf.prunedcfg} has "
                                 f"{want.params.get(key)}: pass the weights prune wrote with that "
                                 "cfg, or leave out -pruned", file=weights)
    print(f"note: {weights} is the sparse form prune writes (the shapes of modelcfg "
          f"{conf.modelcfg}, not of prunedcfg {conf.prunedcfg}); evaluating its dense form, "
          "transformed here ('vai_p_darknet pruner transform' writes it)", file=sys.stderr)
    return dense


def _valid(args, conf, spec, cfg_path) -> int:
    from ..evaluation.darknet_valid import classifier_valid_lines, write_detector_valid
    from ..evaluation.spec import build_evaluator, load_eval_graph
    if spec["kind"] == "darknet-classifier":  # darknet's figures: top 1 and the .data's top
        spec = dict(spec, metric="top-k")
    try:
        graph = load_eval_graph("darknet", [str(cfg_path), str(args.weights)], spec)
    except ModelError:
        if not getattr(args, "pruned", False):
            raise
        graph = _dense_of_sparse(conf, args.weights, spec)
    ev = build_evaluator(spec, graph)
    results = ev.run(graph)
    if spec["kind"] == "darknet-detector":
        if args.command == "valid":
            files = write_detector_valid(ev, results, Path(conf.workspace) / "results")
            print(f"wrote {len(files)} result files to {Path(conf.workspace) / 'results'}")
        else:
            print(f"mAP@0.5 = {ev.score(results):.4f}")
    elif args.command == "valid":
        print("\n".join(classifier_valid_lines(ev, results)))
    elif spec["label_free"]:
        print(f"{ev.metric_name}: {ev.score(results):.4f}")
    else:
        print(", ".join(f"{k}: {v:.4f}" for k, v in ev.accuracies(results).items()))
    return 0
