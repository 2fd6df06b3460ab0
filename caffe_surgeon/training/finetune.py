"""``vai_p_caffe finetune`` and ``caffe-surgeon finetune``: files in, snapshots out.

The pruned model is trained dense (``plan.json`` applied to the sparse weights, exact
slicing), and every snapshot is put back into the original shapes
(:func:`~..pruning.expand.sparse_from_dense`), so ``snapshots/_iter_N.caffemodel`` pairs
with the config's ``model`` as ``prune``'s ``sparse.caffemodel`` does: the vendor's loop
prune -> finetune -> (``weights:`` the last snapshot) -> prune at a higher rate works.

Without a plan (``caffe-surgeon finetune TRAIN_VAL WEIGHTS``) the net trains as it is and
its snapshots pair with TRAIN_VAL.

The torch backend (:mod:`.module`) and the TRAIN-phase data (:mod:`.train_data`) are
imported when a run starts; without them the command is a one-line error.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..fileio import atomic_write, make_folder, read_bytes

#: distillation's softmax temperature when none is given. Hinton et al. (2015) soften the
#: teacher's outputs so that the small probabilities of the wrong classes (which ones the
#: model finds similar) carry gradient; at T = 1 a confident classifier's softmax is nearly
#: one-hot and teaches little more than a label. 2-5 is where small-class-count
#: classifiers do best in the KD literature; 4 is the customary middle, and the loss is
#: scaled by T^2 so its gradient stays as large as at T = 1 (the solver's base_lr still fits).
DEFAULT_TEMPERATURE = 4.0

#: what finetune writes into the rate folder
NET_NAME, SOLVER_NAME, SNAPSHOT_DIR = "net_finetune.prototxt", "solver_finetune.prototxt", "snapshots"


@dataclass(frozen=True)
class FinetuneRun:
    """Everything one training process needs (plain paths and values: picklable for
    :func:`.launch.spawn`).

    Attributes:
        train_val: the TRAIN/TEST prototxt the weights pair with (the original model).
        weights: its weights (sparse form with a plan) at the start or at ``resume``.
        solver: the solver file; ``snapshot_prefix`` below replaces its own.
        snapshot_prefix: e.g. ``<rate dir>/snapshots/`` (Caffe's naming: ``_iter_N``).
        plan: ``plan.json`` of the pruned model, or None (train ``train_val`` as it is).
        net_out: where the dense TRAIN net is written (None: not written).
        log_dir: where ``finetune_log.csv``/``.png`` go.
        resume: a solver-state file, "auto" (the newest complete snapshot, if any) or None.
        devices: device ids (``-gpus``); [] or one id: one process.
        acc_name, test_iter: the TEST-phase metric for ``test_interval`` (None: no tests).
        teacher: ``(prototxt, weights)`` of the model to distil from (label-free: the TRAIN
            net's losses are dropped and no label is read, :mod:`.distill`); None: train
            on the labels with the net's own losses.
        temperature: the distillation's softmax temperature.
        max_iter: replaces the solver's ``max_iter`` (None: the solver's).
    """

    train_val: Path
    weights: Path
    solver: Path
    snapshot_prefix: str
    plan: Path | None = None
    net_out: Path | None = None
    log_dir: Path | None = None
    resume: str | None = "auto"
    devices: tuple = ()
    acc_name: str | None = None
    test_iter: int = 0
    teacher: tuple | None = None
    temperature: float = DEFAULT_TEMPERATURE
    max_iter: int | None = None


def backend(what: str = "finetune"):
    """The torch backend module, or a one-line ModelError saying that ``what`` needs it."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ModelError(f"{what} needs PyTorch: pip install 'caffe-surgeon[finetune]'") from None
    import importlib
    try:
        return importlib.import_module(f"{__package__}.module")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith(f"{__package__}."):
            raise ModelError(f"{what} needs the training backend (caffe_surgeon.training."
                             f"{e.name.rsplit('.', 1)[-1]}), which this installation does not "
                             "have yet") from None
        raise


def check_train_net(graph) -> None:
    """A TRAIN net must read data and have a loss (named one-line errors otherwise)."""
    from ..layers.registry import spec_for
    roles = [spec_for(graph.framework, l).roles for l in graph.layers]
    src = graph.source_text
    if not any("data_source" in r for r in roles) and not graph.inputs:
        raise ModelError("the TRAIN phase of the net has no data layer: nothing to train on",
                         file=src)
    if not any("loss" in r for r in roles):
        raise ModelError("the TRAIN phase of the net has no loss layer (SoftmaxWithLoss, "
                         "EuclideanLoss, ...): nothing to minimise", file=src)


def solver_text_for(solver_file: Path, net: str, snapshot_prefix: str) -> str:
    """The solver's text with ``net`` and ``snapshot_prefix`` pointing at finetune's files
    (``train_net``/``test_net``/``net`` lines removed; every other line kept as written)."""
    from ..caffe.text import top_level_fields
    text = read_bytes(solver_file, "solver prototxt").decode("utf-8", "surrogateescape")
    drop = {"net", "train_net", "test_net", "snapshot_prefix"}
    spans = sorted((s for s in top_level_fields(text) if s.name in drop), key=lambda s: s.start)
    for span in reversed(spans):
        text = text[:span.start] + text[span.end:]
    text = re.sub(r"\n[ \t]*\n+", "\n", text).rstrip() + "\n"
    return text + f'net: "{net}"\nsnapshot_prefix: "{snapshot_prefix}"\n'


def vai_p_run(cfg, devices: tuple = (), resume: str | None = "auto") -> FinetuneRun:
    """The run ``vai_p_caffe finetune -config`` makes of a config (files checked)."""
    cfg.require("model", "solver", "rate", command="finetune")
    cfg.check_files(("model", "solver"))
    if cfg.distill:  # the teacher is the model prune started from
        cfg.require("weights", command="finetune (distill: true)")
        cfg.check_files(("weights",))
    folder = cfg.rate_dir()
    for name in ("sparse.caffemodel", "plan.json"):
        if not (folder / name).is_file():
            raise ModelError(f"no {name} in {folder}: run 'vai_p_caffe prune -config "
                             f"{cfg.file}' first", file=folder / name)
    make_folder(folder / SNAPSHOT_DIR)
    prefix = f"{folder / SNAPSHOT_DIR}/"
    atomic_write(folder / SOLVER_NAME, solver_text_for(cfg.solver, NET_NAME, f"{SNAPSHOT_DIR}/"))
    return FinetuneRun(Path(cfg.model), folder / "sparse.caffemodel", Path(cfg.solver), prefix,
                       plan=folder / "plan.json", net_out=folder / NET_NAME, log_dir=folder,
                       resume=resume, devices=tuple(devices),
                       acc_name=None if cfg.label_free else cfg.acc_name, test_iter=cfg.test_iter,
                       teacher=(Path(cfg.model), Path(cfg.weights)) if cfg.distill else None,
                       temperature=cfg.temperature)


def finetune(run: FinetuneRun) -> int:
    """Train ``run`` in one process per device; return the last iteration."""
    backend()
    from .launch import spawn
    if len(run.devices) > 1:
        spawn(_rank_main, len(run.devices), (run,))
        return -1
    return _train(run, 0, 1)


def _rank_main(rank: int, world: int, run: FinetuneRun) -> None:
    _train(run, rank, world)


def _train(run: FinetuneRun, rank: int, world: int) -> int:
    import torch

    from .. import api
    from ..pruning.plan import Plan
    from ..pruning.surgery import apply
    from .launch import device_for
    from .progress import TrainingLog, read_log_rows
    from .snapshots import SnapshotSet, snapshot_of_state
    from .solver import Solver
    from .solver_config import SolverConfig
    from .trainer import Trainer, snapshot_graph

    module_lib = backend()
    from .train_data import TrainData
    config = dataclasses.replace(SolverConfig.from_prototxt(run.solver),
                                 snapshot_prefix=run.snapshot_prefix)
    if run.max_iter is not None:
        config = dataclasses.replace(config, max_iter=run.max_iter)
    snapshots = SnapshotSet(run.snapshot_prefix)
    start = None
    if run.resume == "auto":
        start = snapshots.newest()
    elif run.resume:
        start = snapshot_of_state(Path(run.resume))
    weights = start.weights if start is not None else run.weights
    if start is not None and rank == 0:
        print(f"Resuming from {start.state} (iteration {start.iteration})", flush=True)
    original = api.load(run.train_val, weights, phase="TRAIN")
    check_train_net(original)
    plan = Plan.load(run.plan) if run.plan is not None else None
    dense = apply(original, plan, "dense", fold=False) if plan is not None else original
    if run.net_out is not None and rank == 0:
        from ..caffe.writer import render_prototxt
        atomic_write(run.net_out, render_prototxt(dense))
    device = device_for(list(run.devices), rank)
    if run.teacher is None:
        module = module_lib.build_module(dense, phase="TRAIN").to(device)
    else:
        module = _distill_module(module_lib, dense, run).to(device)
    data = TrainData(dense, base_dir=None, seed=max(config.random_seed, 0), rank=rank,
                     world=world, labelled=run.teacher is None)
    solver = Solver(config)
    rows = read_log_rows(run.log_dir, start.iteration) if start is not None and run.log_dir else []
    log = TrainingLog(run.log_dir if rank == 0 else None, config.max_iter,
                      data.batch_size * config.iter_size * world, rows=rows)
    evaluator = _evaluator(run, plan, module, weights) if run.acc_name and config.test_interval \
        else None
    layer_of = {}
    for layer in dense.layers:
        for top in layer.tops:
            layer_of.setdefault(top, layer.name)
    try:
        trainer = Trainer(module, solver, lambda first: (data.batch(i) for i in itertools.count(first)),
                          snapshots=snapshots,
                          graph_for_snapshot=snapshot_graph(module, dense, original, plan),
                          evaluator=evaluator, log=log, layer_of=layer_of)
        with torch.enable_grad():
            return trainer.run(start).iteration
    finally:
        data.close()


def _distill_module(module_lib, dense, run: FinetuneRun):
    """The pruned TRAIN net as a student of ``run.teacher`` (:mod:`.distill`)."""
    from .. import api
    from .distill import DistillModule, distillation_net
    student, targets = distillation_net(dense)
    teacher, _ = distillation_net(api.load(*run.teacher, phase="TRAIN"))
    return DistillModule(module_lib.build_module(student, phase="TRAIN"),
                         module_lib.build_module(teacher, phase="TEST"), targets, run.temperature)


def _evaluator(run: FinetuneRun, plan, module, weights):
    """The TEST-phase metric of the trained weights, with the NumPy engine and the
    evaluators ``ana``/``prune`` use (so the numbers compare with theirs)."""
    from .. import api
    from ..evaluation.spec import build_evaluator
    from ..pruning.surgery import apply
    test = api.load(run.train_val, weights, phase="TEST")
    test_dense = apply(test, plan, "dense", fold=False) if plan is not None else test
    ev = build_evaluator({"kind": "caffe", "acc_name": run.acc_name, "test_iter": run.test_iter,
                          "base_dir": None}, test_dense)

    def evaluate(m, iteration):
        return {run.acc_name: float(ev.evaluate(m.write_back(test_dense)))}
    return evaluate
