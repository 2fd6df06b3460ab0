"""``vai_p_caffe finetune -config config.prototxt`` and ``caffe-surgeon finetune``: the
command-line faces of :mod:`caffe_surgeon.training.finetune` (torch is imported only
when a run starts)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..training.finetune import DEFAULT_TEMPERATURE

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
    p = sub.add_parser("finetune", help="train a model with a Caffe solver, or a Darknet .cfg "
                                         "as darknet detector train does (PyTorch extra)")
    p.add_argument("train_val", help="TRAIN/TEST prototxt (the solver's net: is ignored), or a "
                                     "Darknet .cfg")
    p.add_argument("weights", help="the caffemodel (or .weights) to start from")
    p.add_argument("--solver", help="solver.prototxt (Caffe; required there)")
    p.add_argument("--data", help="Darknet: the .data file (train=); the weights go to -o DIR "
                                  "as darknet's backup folder")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="folder for the snapshots (DIR/_iter_N.caffemodel) and the log")
    p.add_argument("--teacher", nargs="+", metavar="FILE",
                   help="label-free finetuning by distillation: learn the outputs of this model "
                        "(WEIGHTS for TRAIN_VAL, or PROTOTXT WEIGHTS) instead of the labels; the "
                        "TRAIN data layer may then list images without labels, or name a folder; "
                        "Darknet: CFG WEIGHTS of the unpruned model, whose detections are the "
                        "truths, and --data may be a plain list of images")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help=f"distillation's softmax temperature (default {DEFAULT_TEMPERATURE:g})")
    add_options(p)
    from .darknet_finetune import DIST_HELP
    p.add_argument("--dist-backend", "-dist_backend", metavar="nccl|gloo",
                   help=f"Darknet .cfg only: {DIST_HELP}")
    from .darknet_finetune import add_teacher_thresh
    add_teacher_thresh(p)


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
    """``caffe-surgeon finetune TRAIN_VAL WEIGHTS --solver S -o DIR`` (a ``.cfg``: Darknet)."""
    from ..errors import ModelError
    if Path(args.train_val).suffix.lower() == ".cfg":
        from .darknet_finetune import run_plain as run_darknet
        return run_darknet(args)
    if args.dist_backend:
        raise ModelError("--dist-backend is for Darknet training; the Caffe finetune uses nccl "
                         "on CUDA devices and gloo on the CPU", file=args.train_val)
    if not args.solver:
        raise ModelError("a Caffe model trains with a solver: add --solver solver.prototxt",
                         file=args.train_val)
    from ..fileio import make_folder
    from ..training.finetune import FinetuneRun, backend, finetune
    backend()
    from ..training.launch import parse_devices  # torch is there now
    teacher = _teacher(args)
    out = make_folder(args.output)
    run = FinetuneRun(Path(args.train_val), Path(args.weights), Path(args.solver), f"{out}/",
                      log_dir=out, resume=args.resume or "auto",
                      devices=tuple(parse_devices(args.gpus)), teacher=teacher,
                      temperature=args.temperature, max_iter=args.max_iter)
    finetune(run)
    print(f"wrote the snapshots in {out}/ (they pair with {args.train_val})")
    return 0


def _teacher(args) -> tuple | None:
    """``--teacher`` as ``(prototxt, weights)``, checked before anything is written."""
    from ..errors import ModelError
    if not args.teacher:
        return None
    if len(args.teacher) > 2:
        raise ModelError(f"--teacher takes WEIGHTS or PROTOTXT WEIGHTS, got {len(args.teacher)} "
                         "files")
    files = [args.train_val] * (2 - len(args.teacher)) + list(args.teacher)
    for f in files:
        if not Path(f).is_file():
            raise ModelError("the teacher's file does not exist", file=f)
    if not args.temperature > 0 or args.temperature == float("inf"):
        raise ModelError(f"--temperature must be a positive number, got {args.temperature:g}")
    return Path(files[0]), Path(files[1])
