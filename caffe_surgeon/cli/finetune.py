"""``vai_p_caffe finetune -config config.prototxt`` and ``caffe-surgeon finetune``: the
command-line faces of :mod:`caffe_surgeon.training.finetune` (torch is imported only
when a run starts)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

RESUME_HELP = ("resume from this solver state (FILE.solverstate); without it a run resumes "
               "from the newest complete snapshot in its folder, if there is one")
GPUS_HELP = "device ids, one training process each (CUDA when present, else the CPU): 0,1"


def add_options(p) -> None:
    from .common import positive_int
    p.add_argument("-gpus", "--gpus", metavar="IDS", help=GPUS_HELP)
    p.add_argument("-resume", "--resume", metavar="STATE", help=RESUME_HELP)
    p.add_argument("-max_iter", "--max-iter", type=positive_int, metavar="N",
                   help="stop after N iterations (replaces the solver's max_iter)")


def add_parser(sub) -> None:
    p = sub.add_parser("finetune", help="train a model with a Caffe solver (PyTorch extra)")
    p.add_argument("train_val", help="TRAIN/TEST prototxt (the solver's net: is ignored)")
    p.add_argument("weights", help="the caffemodel to start from")
    p.add_argument("--solver", required=True, help="solver.prototxt")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="folder for the snapshots (DIR/_iter_N.caffemodel) and the log")
    add_options(p)


def run_vai_p(args) -> int:
    """``vai_p_caffe finetune -config``: train ``regular_rate_<rate>/``'s pruned model."""
    from ..errors import ModelError
    from ..training.finetune import backend, finetune, vai_p_run
    from ..workflow.config import read_caffe_config
    from .caffe_workflow import finetune_advice
    try:
        backend()  # before any file is written
    except ModelError as e:  # what to do meanwhile, with this config's paths
        raise ModelError(finetune_advice(args.config, e.message)) from None
    from ..training.launch import parse_devices  # torch is there now
    cfg = read_caffe_config(args.config)
    run = dataclasses.replace(vai_p_run(cfg, tuple(parse_devices(args.gpus)),
                                        args.resume or "auto"), max_iter=args.max_iter)
    finetune(run)
    print(f"wrote {run.net_out}, {run.net_out.parent / 'solver_finetune.prototxt'} and the "
          f"snapshots in {run.snapshot_prefix} (they pair with {cfg.model})")
    return 0


def run_plain(args) -> int:
    """``caffe-surgeon finetune TRAIN_VAL WEIGHTS --solver S -o DIR``."""
    from ..fileio import make_folder
    from ..training.finetune import FinetuneRun, backend, finetune
    backend()
    from ..training.launch import parse_devices  # torch is there now
    out = make_folder(args.output)
    run = FinetuneRun(Path(args.train_val), Path(args.weights), Path(args.solver), f"{out}/",
                      log_dir=out, resume=args.resume or "auto",
                      devices=tuple(parse_devices(args.gpus)), max_iter=args.max_iter)
    finetune(run)
    print(f"wrote the snapshots in {out}/ (they pair with {args.train_val})")
    return 0
