"""A hand-written torch module keeping the training backend's contract (a test double for
the trainer tests), its data, and a script entry that trains (optionally killing itself)."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import caffe_surgeon as cs
from caffe_surgeon.pruning import copy_graph
from caffe_surgeon.training.snapshots import SnapshotSet
from caffe_surgeon.training.solver import Solver
from caffe_surgeon.training.trainer import Trainer, snapshot_graph

NET = """name: "tiny"
input: "data" input_shape { dim: 1 dim: 8 dim: 1 dim: 1 }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param { num_output: 6 } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 3 } }
"""
SOLVER = """base_lr: 0.1 momentum: 0.9 weight_decay: 0.0005 lr_policy: "step" gamma: 0.5
stepsize: 4 max_iter: {max_iter} snapshot: {snapshot} snapshot_prefix: "{prefix}"
random_seed: 7 display: 2 iter_size: {iter_size}
"""
TEACHER = np.random.default_rng(123).standard_normal((8, 3)).astype(np.float32)


class TinyNet(torch.nn.Module):
    """ip1 -> relu -> dropout -> ip2, softmax cross-entropy (mean over the batch)."""

    def __init__(self, graph, dropout=0.5):
        super().__init__()
        p = torch.nn.Parameter
        self.w = torch.nn.ParameterDict({
            f"{l.name}__{k}": p(torch.from_numpy(np.array(v, np.float32)))
            for l in graph.layers for k, v in l.weights.items()})
        self.dropout = dropout

    def forward(self, feeds):
        x = feeds["data"].reshape(feeds["data"].shape[0], -1)
        h = F.relu(x @ self.w["ip1__weight"].T + self.w["ip1__bias"])
        h = F.dropout(h, self.dropout, self.training)
        logits = h @ self.w["ip2__weight"].T + self.w["ip2__bias"]
        loss = F.cross_entropy(logits, feeds["label"].long())
        return loss, {"ip1": h, "ip2": logits, "loss": loss}

    def caffe_params(self):
        return [(k.split("__")[0], i % 2, k.split("__")[1], v, 1.0 + i % 2, 1.0 - i % 2)
                for i, (k, v) in enumerate(self.w.items())]

    def write_back(self, graph):
        out = copy_graph(graph)
        for l in out.layers:
            for k in list(l.weights):
                l.weights[k] = self.w[f"{l.name}__{k}"].detach().cpu().numpy().astype(np.float32).copy()
        return out


def net_graph(folder: Path, seed=3):
    path = Path(folder) / "tiny.prototxt"
    path.write_text(NET)
    g = cs.load(path)
    cs.init(g, seed)
    return g


def solver_file(folder: Path, max_iter=10, snapshot=3, iter_size=1, prefix=None) -> Path:
    path = Path(folder) / "solver.prototxt"
    path.write_text(SOLVER.format(max_iter=max_iter, snapshot=snapshot, iter_size=iter_size,
                                  prefix=prefix or f"{folder}/snap/"))
    return path


def batch(i: int, size: int = 8, rows: slice | None = None, poison_at: int = -1):
    """Forward pass i's batch: the same for every run, sliced to ``rows`` (a rank's share)."""
    rng = np.random.default_rng(1000 + i)
    x = rng.standard_normal((size, 8, 1, 1)).astype(np.float32)
    label = np.argmax(x.reshape(size, 8) @ TEACHER, axis=1).astype(np.float32)
    if i == poison_at:
        x[0, 0] = np.inf
    rows = rows or slice(None)
    return {"data": x[rows], "label": label[rows]}


def batches(size=8, rows=None, poison_at=-1, kill_at=-1):
    def source(first):
        i = first
        while True:
            if i == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch(i, size, rows, poison_at)
            i += 1
    return source


def train(folder: Path, graph, solver_path, *, resume=None, size=8, rows=None, poison_at=-1,
          kill_at=-1, evaluator=None, log=None, dropout=0.5):
    """Build the double from ``graph`` (a snapshot's weights when resuming) and train."""
    solver = Solver.from_prototxt(solver_path)
    module = TinyNet(graph, dropout)
    trainer = Trainer(module, solver, batches(size, rows, poison_at, kill_at),
                      snapshots=SnapshotSet(solver.config.snapshot_prefix),
                      graph_for_snapshot=snapshot_graph(module, graph), evaluator=evaluator,
                      log=log, layer_of={"ip1": "ip1", "ip2": "ip2", "loss": "loss"})
    result = trainer.run(resume)
    return module, result


def weights_of(module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in module.w.items()}


if __name__ == "__main__":  # python finetune_double.py FOLDER KILL_AT
    folder = Path(sys.argv[1])
    torch.set_num_threads(1)
    train(folder, net_graph(folder), folder / "solver.prototxt", kill_at=int(sys.argv[2]))
