"""``vai_p_darknet pruner finetune pruning.cfg [weights]`` and ``caffe-surgeon finetune
CFG WEIGHTS --data D -o DIR``: Darknet detector training (:mod:`caffe_surgeon.training.
darknet_finetune`, torch imported only when a run starts)."""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelError

RESUME_HELP = ("continue from the snapshot the last run left in the backup folder "
               "(<name>.snapshot.npz), bit for bit")
MAX_BATCHES_HELP = "stop after N iterations (replaces the cfg's max_batches)"
#: several -gpus ids (training/darknet_devices.py checks the choice)
DIST_HELP = ("several -gpus ids: nccl (CUDA devices, the default there) or gloo (without CUDA: "
             "one CPU process per id, a stand-in for tests)")


def add_darknet_options(p) -> None:
    """The options ``vai_p_darknet pruner finetune`` adds to the workflow's common ones."""
    from .common import positive_int
    p.add_argument("-resume", "--resume", action="store_true", help=RESUME_HELP)
    p.add_argument("-max_batches", "--max-batches", type=positive_int, metavar="N",
                   help=MAX_BATCHES_HELP)
    p.add_argument("-seed", "--seed", type=int, default=0, help="the data loader's seed")
    p.add_argument("-dist_backend", "--dist-backend", metavar="nccl|gloo", help=DIST_HELP)
    p.add_argument("-teacher", "--teacher", metavar="WEIGHTS",
                   help="label-free finetuning by distillation: modelcfg with these (the "
                        "unpruned) weights is the teacher, its detections on datacfg's train= "
                        "images are the truths (no labels/ read)")
    add_teacher_thresh(p)


def add_teacher_thresh(p) -> None:
    """``--teacher-thresh``, for both faces (see :mod:`caffe_surgeon.training.darknet_pseudo`)."""
    from ..training.darknet_pseudo import DEFAULT_THRESH
    p.add_argument("-teacher_thresh", "--teacher-thresh", type=float, default=DEFAULT_THRESH,
                   metavar="P", help="Darknet distillation: class probability a teacher "
                                     f"detection needs to become a truth (default {DEFAULT_THRESH:g})")


def run_vai_p(args, conf) -> int:
    """Train ``prunedcfg`` from ``prune_out_weights`` (or the weights given): dense weights
    for prunedcfg; the sparse form ``prune`` writes (modelcfg's shapes) is made dense first."""
    from ..training.finetune import backend
    backend()
    conf.check_files(("modelcfg", "datacfg", "prunedcfg"))
    weights = Path(args.weights) if args.weights else Path(conf.prune_out_weights)
    if not weights.is_file():
        raise ModelError("weights file not found (run 'vai_p_darknet pruner prune' first, or "
                         "pass the weights after the config)", file=weights)
    teacher = _teacher(args, [conf.modelcfg, args.teacher]) if args.teacher else None
    graph = _pruned_graph(conf, weights)
    backup = _backup_folder(conf.datacfg, Path(conf.workspace) / "backup")
    return _train(graph, args, conf.datacfg, backup, Path(conf.prunedcfg).stem, teacher)


def run_plain(args) -> int:
    """``caffe-surgeon finetune CFG WEIGHTS --data D -o DIR``."""
    from .. import api
    from ..training.finetune import backend
    backend()
    if not args.data:
        raise ModelError("a Darknet model trains on a .data file: add --data FILE.data (with "
                         "--teacher, a plain list of images will do)", file=args.train_val)
    teacher = None
    if getattr(args, "teacher", None):
        if len(args.teacher) > 2:
            raise ModelError(f"--teacher takes WEIGHTS or CFG WEIGHTS, got {len(args.teacher)} "
                             "files")
        teacher = _teacher(args, [args.train_val] * (2 - len(args.teacher)) + list(args.teacher))
    graph = api.load(args.train_val, args.weights)
    return _train(graph, args, Path(args.data), Path(args.output), Path(args.train_val).stem,
                  teacher)


def _teacher(args, files):
    """The distillation teacher ``(cfg, weights)``, checked before anything is written."""
    from ..training.darknet_pseudo import Teacher
    if getattr(args, "gpus", None) and len(args.gpus.split(",")) > 1:
        raise ModelError("label-free (--teacher) training runs on one device; give one -gpus id")
    return Teacher(Path(files[0]), Path(files[1]), thresh=args.teacher_thresh)


def _train(graph, args, data, backup, name, teacher=None) -> int:
    from ..training.darknet_devices import choose_devices, single_device, train_detector_on_devices
    from ..training.darknet_finetune import DetectorRun, train_detector
    gpus = getattr(args, "gpus", None)
    devices = choose_devices(gpus, getattr(args, "dist_backend", None))  # before any file
    run = DetectorRun(Path(data), Path(backup), name, seed=getattr(args, "seed", 0) or 0,
                      resume=bool(getattr(args, "resume", False)),
                      max_batches=getattr(args, "max_batches", None) or getattr(args, "max_iter", None),
                      device=single_device(gpus) if devices is None else "cpu", teacher=teacher)
    final = train_detector(graph, run) if devices is None else \
        train_detector_on_devices(graph, run, devices)
    print(f"wrote {final} and the backups in {run.backup}")
    return 0


def _pruned_graph(conf, weights):
    """prunedcfg with ``weights``; weights with modelcfg's shapes (prune's sparse output) are
    transformed to the dense model first, saying so."""
    import sys

    from .. import api
    from ..pruning.transform import transform
    try:
        return api.load(conf.prunedcfg, weights)
    except ModelError:
        try:
            sparse = api.load(conf.modelcfg, weights)
        except ModelError:
            api.load(conf.prunedcfg, weights)  # fits neither: prunedcfg's own error
            raise
    names = [sparse.layers[i].name for i in conf.ignore_layer if i < len(sparse.layers)]
    dense = transform(sparse, ignore=names).dense
    for want, got in zip(api.load(conf.prunedcfg).layers, dense.layers):
        if want.params.get("filters") != got.params.get("filters"):
            raise ModelError(f"these weights have the shapes of modelcfg {conf.modelcfg}; their "
                             f"zeroed channels give layer {got.name} {got.params.get('filters')} "
                             f"filters where prunedcfg has {want.params.get('filters')}",
                             file=weights)
    print(f"note: {weights} is the sparse form prune writes (modelcfg's shapes); training its "
          f"dense form, the model of {conf.prunedcfg}", file=sys.stderr)
    return dense


def _backup_folder(data_file, default: Path) -> Path:
    """The ``.data``'s ``backup=`` (Darknet's; relative to the current directory), else
    ``default``."""
    from ..evaluation.darknet_data import read_data_cfg
    data = read_data_cfg(data_file)
    return Path(data.options["backup"]) if "backup" in data.options else default
