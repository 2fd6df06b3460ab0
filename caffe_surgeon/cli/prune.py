"""``caffe-surgeon groups`` and ``caffe-surgeon prune``."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelError
from ..fileio import make_folder
from ..pruning.criteria import CRITERIA, DATA_CRITERIA, DEFAULT_TAYLOR_BATCHES, criterion_for
from .common import check_outputs, mean_arg, positive_int


def add_parsers(sub, add_model_args):
    p = sub.add_parser("groups", help="list the channel groups that prune together")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--ignore", nargs="+", default=[], metavar="LAYER",
                   help="layers whose output channels must stay (like ignore_layer)")

    p = sub.add_parser("prune", help="prune every prunable group and write the model plus plan.json")
    add_model_args(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help="fraction of channels to remove from every group")
    how.add_argument("--plan", help="apply this plan.json")
    how.add_argument("--ratios", help="per-layer ratios: JSON {layer: ratio} or 'layer ratio' lines")
    p.add_argument("--criterion", choices=(*CRITERIA, "lasso"), default="l1",
                   help="filter L1 norm (vendor default), L2 norm, BN gamma (network slimming), "
                        "taylor: |activation x gradient| of the TRAIN loss over --taylor-batches "
                        "batches of the model's TRAIN data layer (Molchanov et al. 2017; needs "
                        "the train_val prototxt and the PyTorch extra), "
                        "or LASSO channel selection on --calib images (He et al. 2017)")
    p.add_argument("--taylor-batches", type=positive_int, default=DEFAULT_TAYLOR_BATCHES,
                   metavar="N", help="TRAIN batches --criterion taylor averages over "
                                     f"(default {DEFAULT_TAYLOR_BATCHES})")
    p.add_argument("--seed", type=int, default=0,
                   help="--criterion taylor: the TRAIN data's order/augmentation seed (default 0)")
    p.add_argument("--reduction", choices=("sum", "mean", "max"), default="sum",
                   help="how scores of channels tied by a join combine (default sum)")
    p.add_argument("--divisor", type=int, default=1,
                   help="keep a multiple of this many channels (channel_divisible, kernel_batch)")
    p.add_argument("--mode", choices=("dense", "sparse"), default="dense")
    p.add_argument("--no-fold", action="store_true", help="do not fold removed channels' constants")
    p.add_argument("--calib", nargs="+", metavar="IMAGE_OR_NPY",
                   help="calibration images (files, a folder, or .npy arrays) for least-squares "
                        "reconstruction of the consumers and for --criterion lasso")
    p.add_argument("--calib-count", type=positive_int, default=32, help="use at most this many images")
    p.add_argument("--ignore", nargs="+", default=[], metavar="LAYER")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    img = p.add_argument_group("calibration preprocessing (as for forward)")
    img.add_argument("--mean", type=mean_arg, help="per-channel mean to subtract, e.g. 104,117,123 (Caffe)")
    img.add_argument("--scale", type=float, default=1.0)
    img.add_argument("--rgb", action="store_true")
    img.add_argument("--letterbox", action="store_true")


def run_groups(args, graph, shapes):
    from ..pruning import analyse
    a = analyse(graph, ignore=args.ignore, input_shapes=shapes)
    if args.json:
        print(json.dumps([g.describe() for g in a.groups], indent=1))
        return
    n_ok = sum(g.prunable for g in a.groups)
    print(f"{len(a.groups)} channel groups, {n_ok} prunable")
    for g in a.groups:
        state = "prunable" if g.prunable else "fixed: " + "; ".join(g.reasons)
        print(f"[{g.id}] {g.channels} channels  {', '.join(g.producers)}  ({state})")
        others = [m for m in g.members if m not in g.producers]
        if others:
            print(f"      also changes: {', '.join(others)}")


def run_prune(args, graph, shapes):
    from .. import api
    from ..pruning import Plan, analyse, apply, make_plan
    from ..pruning.plan import read_ratio_file
    a = analyse(graph, ignore=args.ignore, input_shapes=shapes)
    calib = None
    if args.calib:
        calib = load_calibration(args.calib, graph, a, args)
    if args.plan:
        plan = Plan.load(args.plan)
    else:
        ratios = read_ratio_file(args.ratios, a) if args.ratios else None
        criterion = criterion_for(args.criterion, args.model,
                                  {"batches": args.taylor_batches, "seed": args.seed}) \
            if args.criterion in DATA_CRITERIA else args.criterion
        if criterion == "lasso":
            if calib is None:
                raise ModelError("--criterion lasso needs calibration images (--calib)")
            from ..pruning.lasso import LassoCriterion
            criterion = LassoCriterion(graph, a, calib)
        plan = make_plan(a, ratio=args.ratio, ratios=ratios, criterion=criterion,
                         reduction=args.reduction, divisor=args.divisor,
                         model=" ".join(args.model))
    pruned = apply(graph, plan, args.mode, fold=not args.no_fold, analysis=a, calib=calib)
    out = Path(args.output)
    make_folder(out)
    files = [out / Path(m).name for m in args.model]
    if len(files) == 1:  # a definition without weights gets none written
        files = files[:1]
    if any(f.resolve() == Path(m).resolve() for f, m in zip(files, args.model)):
        raise ModelError(f"the output folder {out} holds the input files; choose another")
    check_outputs(files + [out / "plan.json"], list(args.model), option="-o")
    api.save(pruned, *files)
    plan.save(out / "plan.json")
    before, after = api.stat(graph, shapes).total, api.stat(pruned, shapes).total
    kept = sum(len(g.keep) for g in plan.groups)
    total = sum(g.channels for g in plan.groups)
    print(f"pruned {total - kept} of {total} channels in {len(plan.groups)} groups "
          f"({args.mode}{', folded' if not args.no_fold else ''}"
          f"{', reconstructed' if calib is not None else ''})")
    if args.mode == "dense":
        print(f"operations {before.ops:,} -> {after.ops:,} ({_delta(before.ops, after.ops)}), "
              f"params {before.params:,} -> {after.params:,} ({_delta(before.params, after.params)})")
    print(f"wrote {', '.join(str(f) for f in files)} and {out / 'plan.json'}")


def _delta(a, b) -> str:
    return f"{(b - a) / a * 100:+.1f}%" if a else "n/a"


def load_calibration(items, graph, analysis, args) -> dict:
    """Calibration batch for the net's single image input, from images or .npy arrays."""
    import numpy as np

    from ..layers.registry import feed_shapes
    from .forward import IMAGE_EXT, load_input
    feeds = feed_shapes(graph, analysis.shapes)
    image_feeds = [k for k, s in feeds.items() if len(s) == 4]
    if len(image_feeds) != 1:
        raise ModelError(f"calibration needs a net with one image input, this one has "
                         f"{len(image_feeds)} ({', '.join(image_feeds)})")
    name = image_feeds[0]
    paths = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXT | {".npy"})
        elif p.exists():
            paths.append(p)
        else:
            raise ModelError("calibration file not found", file=p)
    if not paths:
        raise ModelError(f"no calibration images in {', '.join(items)}")
    arrays = [load_input(str(p), graph, feeds[name], args) for p in paths]
    x = np.concatenate(arrays, axis=0)[: args.calib_count]
    if tuple(x.shape[1:]) != tuple(feeds[name][1:]):
        raise ModelError(f"calibration data has shape {tuple(x.shape[1:])} per image, the net "
                         f"input '{name}' needs {tuple(feeds[name][1:])}")
    out = {name: x}
    for k, s in feeds.items():  # label tops of data layers
        if k != name:
            out[k] = np.zeros((len(x),) + tuple(s[1:]), np.float32)
    return out
