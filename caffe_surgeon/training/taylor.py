"""First-order Taylor importance: how much the TRAIN loss would change if a channel went.

Removing output channel ``m`` of a producer is, after ``prune``'s folding, the net with
that channel's activation ``a_m`` set to zero (the BatchNorm/Scale constants it leaves
behind are folded into the consumers). To first order the loss then changes by
``-sum(a_m * dL/da_m)`` over the batch and positions (Molchanov et al. 2017, "Pruning
Convolutional Neural Networks for Resource Efficient Inference"; the vendor's
"abs x grad"). We read that sum exactly as the gradient of a gate of ones multiplied
into the producer's output (the gate formulation of Molchanov et al. 2019), so no
activation or gradient is kept.

Score of channel ``m`` = mean over N TRAIN batches of ``|sum_{batch, positions} a_m g_m|``,
with ``g`` the gradient of the TRAIN net's own weighted loss (mean over the batch, as
Caffe normalises it). Choices, and why:

- The gate sits at the producer's output (before its BatchNorm), not after the BN as in
  Molchanov 2019's ``(gamma * dL/dgamma)^2``: removal here zeroes the convolution's output
  and folds the BN's constant, which is what the pre-BN gate measures; the post-BN gate
  would measure zeroing the BN's output, a different net. It also needs no BatchNorm,
  so every producer (InnerProduct, a conv without BN) is scored the same way.
- ``|.|`` per batch, averaged (2017) rather than squared (2019): the score stays in units
  of loss, so ``--reduction sum`` over coupled producers adds expected loss changes; and
  one batch with a large gradient does not dominate the average as its square would.
- No per-layer L2 normalisation (2017 normalises each layer to compare across layers):
  channels are ranked within one group, and ana's sensitivity curves, not the scores,
  decide how much each group loses.

Deterministic given the seed: the batches are ``TrainData``'s (order, crops, mirrors a
function of the seed) and Dropout draws from a generator seeded with it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError
from ..graph import Graph
from ..pruning.criteria import DEFAULT_TAYLOR_BATCHES
from .finetune import check_train_net
from .module import build_module
from .train_data import TrainData

import torch  # noqa: E402,I001  (after .module: without torch, its one-line error)


def taylor_scores(graph: Graph, layers, batches: int = DEFAULT_TAYLOR_BATCHES, seed: int = 0,
                  base_dir=None) -> dict[str, np.ndarray]:
    """Per layer of ``layers``, the Taylor score of each channel of its first top.

    Args:
        graph: the TRAIN phase of the net, with weights (a data layer and a loss).
        layers: names of the producers to score.
        batches: TRAIN batches to average over (>= 1).
        seed: the TRAIN data's seed (order and augmentation) and Dropout's.
        base_dir: what the data layer's relative paths are taken from (default: the
            current directory, as Caffe).

    Returns:
        layer name -> float64 array, one score per output channel.
    """
    if isinstance(batches, bool) or not isinstance(batches, (int, np.integer)) or batches < 1:
        raise ModelError(f"taylor: the number of batches must be an integer >= 1, got {batches!r}")
    wanted = set(layers)
    missing = sorted(wanted - {l.name for l in graph.layers})
    if missing:
        raise ModelError(f"taylor: the TRAIN net has no layer {', '.join(missing)} to score",
                         file=graph.source_text)
    check_train_net(graph)
    module = build_module(graph, "TRAIN")
    for p in module.parameters():
        p.requires_grad_(False)  # only the gates' gradients are read
    gates: dict[str, torch.Tensor] = {}

    def gate(layer, outs):
        if layer.name not in wanted:
            return outs
        y = outs[0]
        g = torch.ones(y.shape[1], dtype=y.dtype, device=y.device, requires_grad=True)
        gates[layer.name] = g
        return [y * g.view([1, -1] + [1] * (y.dim() - 2))] + list(outs[1:])

    totals: dict[str, np.ndarray] = {}
    with TrainData(graph, base_dir=base_dir, seed=int(seed), workers=0) as data, \
            torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for i in range(int(batches)):
            gates.clear()
            out = module(data.batch(i), tap=gate)
            if not out.loss.requires_grad:
                raise ModelError("taylor: the TRAIN loss does not depend on any scored layer",
                                 file=graph.source_text)
            out.loss.backward()
            for name, g in gates.items():
                grad = np.zeros(g.shape, np.float64) if g.grad is None else \
                    g.grad.detach().to("cpu", torch.float64).numpy()
                totals[name] = totals.get(name, 0.0) + np.abs(grad)
    return {name: totals[name] / int(batches) for name in layers}


@dataclass
class TaylorCriterion:
    """The ``taylor`` criterion of one model: ``(analysis, space) -> per-channel scores``.

    Scores every producer of the analysis on first use (one pass over the batches for
    all of them) and keeps them, so ``ana``'s many plans cost one scoring.

    Attributes:
        model_files: ``[train_val.prototxt, weights]``; the TRAIN phase is run.
        batches, seed: see :func:`taylor_scores`.
        base_dir: for the data layer's relative paths (None: the current directory).
    """

    model_files: list
    batches: int = DEFAULT_TAYLOR_BATCHES
    seed: int = 0
    base_dir: object = None
    name: str = "taylor"
    scores: dict = field(default_factory=dict)

    def __call__(self, analysis, space) -> np.ndarray:
        layer = analysis.graph.layers[space.layer].name
        if layer not in self.scores:
            self._score(analysis)
        got = self.scores[layer]
        if got.size != space.size:
            raise ModelError(f"taylor: layer '{layer}' has {got.size} output channels in the "
                             f"TRAIN net and {space.size} in the model being pruned",
                             file=self.model_files[0])
        return got

    def _score(self, analysis) -> None:
        from .. import api
        if analysis.graph.framework != "caffe" or len(self.model_files) != 2:
            raise ModelError("criterion taylor scores with a Caffe model's TRAIN phase (its data "
                             "layer and loss) and weights: give the train_val prototxt and its "
                             "caffemodel, or use l1, l2 or bn")
        producers = [analysis.graph.layers[s.layer].name for s in analysis.spaces
                     if s.layer is not None and analysis.flows[s.layer].kind == "produce"]
        graph = api.load(*self.model_files, phase="TRAIN")
        self.scores.update(taylor_scores(graph, producers, self.batches, self.seed,
                                         self.base_dir))
