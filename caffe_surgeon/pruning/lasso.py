"""LASSO channel selection (He, Zhang and Sun, "Channel Pruning for Accelerating Very Deep
Neural Networks", ICCV 2017), first step.

For a group, every consumer's linear output on sampled calibration points is
the sum of one contribution per input channel, Z_c = X_c W_c^T. Channel
coefficients beta solve

    min_beta  || sum_c Z_c - sum_c beta_c Z_c ||^2 + lam * |beta|_1

summed over the group's consumers. Only the Gram matrix G_ab = <Z_a, Z_b>
(one row and column per channel class) is needed, so memory does not grow with
the number of samples: the objective is (1 - beta)^T G (1 - beta) + lam |beta|_1.
``lam`` is bisected until about as many coefficients are non-zero as the
group keeps; the scores are |beta| (channels at zero tie and fall back to
index order). Least-squares reconstruction of the kept weights (the second
step) is :mod:`.reconstruct`, used when ``apply`` gets calibration data.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..graph import Graph
from ..layers.registry import spec_for
from .groups import ChannelAnalysis, Group
from .patches import output_size, patches, sample_positions


def lasso_cd(gram: np.ndarray, lam: float, iters: int = 200, tol: float = 1e-7) -> np.ndarray:
    """Coordinate descent for min (1-b)^T G (1-b) + lam |b|_1, from b = 1 (Numba)."""
    from ._lasso_kernel import lasso_cd as kernel
    beta = np.ones(len(gram))
    kernel(np.ascontiguousarray(gram, np.float64), float(lam), beta, iters, tol)
    return beta


class LassoCriterion:
    """A group-level criterion (``make_plan`` calls ``group_scores`` with the kept count).

    Args:
        graph: the original model (with weights).
        calib: feed name -> calibration inputs (N, ...).
        samples: output points sampled per consumer.
    """

    name = "lasso"

    def __init__(self, graph: Graph, analysis: ChannelAnalysis, calib: dict,
                 samples: int = 1000, seed: int = 0, darknet_bn: str = "pjreddie"):
        self.graph, self.analysis, self.calib = graph, analysis, calib
        self.samples, self.seed, self.darknet_bn = samples, seed, darknet_bn
        self._inputs: dict | None = None

    def _consumer_inputs(self) -> dict:
        """Sampled input patches of every consumer: layer index -> (samples, C, K)."""
        if self._inputs is not None:
            return self._inputs
        from ..engine.executor import Executor
        g, a = self.graph, self.analysis
        producers = g.producers()
        wanted = {}
        for i, layer in enumerate(g.layers):
            f = a.flows[i]
            if f.kind == "produce" and a.layer_in[i] is not None and not f.in_block \
                    and producers[i][0] is not None:
                wanted[i] = f"{g.layers[producers[i][0]].name}:{layer.bottoms[0]}"
        names = sorted({v.split(":", 1)[0] for v in wanted.values()}, key=g.index)
        values = Executor(g, darknet_bn=self.darknet_bn).run(self.calib, outputs=[],
                                                             layer_outputs=names)
        rng = np.random.default_rng(self.seed)
        n = min(len(v) for v in self.calib.values())
        per_image = max(1, -(-self.samples // n))
        out = {}
        for i, key in sorted(wanted.items()):
            x = values[key]
            layer = g.layers[i]
            w = layer.weights[next(iter(a.flows[i].in_axes))]
            if x.ndim == 4 and w.ndim == 4:
                spec = spec_for(g.framework, layer)
                if not hasattr(spec, "window"):
                    continue
                window = spec.window(layer, a.shapes.inputs[layer.name])
                img, py, px = sample_positions(len(x), output_size(x.shape[2:], window), per_image, rng)
                out[i] = patches(x, window, img, py, px)
            elif w.ndim == 2:
                e = a.layer_in[i]
                flat = x.reshape(len(x), -1).astype(np.float64)
                if len(set(e.widths)) == 1 and flat.shape[1] % len(e) == 0:
                    out[i] = flat.reshape(len(x), len(e), -1)  # (images, C, features per channel)
        self._inputs = out
        return out

    def group_scores(self, analysis: ChannelAnalysis, group: Group, keep_n: int) -> np.ndarray:
        gram = self.group_gram(group)
        if not np.any(gram):
            raise ModelError(f"LASSO cannot score group {group.id} ({', '.join(group.producers)}): "
                             "its channels reach no convolution or fully connected layer")
        return self.select(gram, keep_n)

    def group_gram(self, group: Group) -> np.ndarray:
        a, g = self.analysis, self.graph
        gram = np.zeros((group.channels, group.channels))
        for i, p in self._consumer_inputs().items():
            e = a.layer_in[i]
            nodes = np.asarray(e.nodes)
            pos = np.flatnonzero(a.node_group[nodes] == group.id)
            if not len(pos):
                continue
            layer = g.layers[i]
            name, axis = next(iter(a.flows[i].in_axes.items()))
            w = np.moveaxis(layer.weights[name], axis, 1)  # (O, C, ...)
            w = w.reshape(w.shape[0], p.shape[1], -1).astype(np.float64)
            cls = a.node_class[nodes[pos]]
            for s in range(0, p.shape[0], 256):  # bounded memory: (C, 256, O) at a time
                z = np.einsum("sck,ock->cso", p[s:s + 256, pos], w[:, pos])
                zf = z.reshape(len(pos), -1)
                np.add.at(gram, (cls[:, None], cls[None, :]), zf @ zf.T)
        return gram

    @staticmethod
    def select(gram: np.ndarray, keep_n: int) -> np.ndarray:
        """|beta| at the largest lam (bisected) that leaves at least ``keep_n`` non-zeros."""
        n = len(gram)
        if keep_n >= n:
            return np.abs(lasso_cd(gram, 0.0))
        scale = float(np.abs(gram.sum(axis=1)).max()) * 2 + 1e-30
        lo, hi = 0.0, scale  # at lam >= 2 max|G 1| every beta is 0
        best = lasso_cd(gram, lo)
        for _ in range(40):
            mid = (lo + hi) / 2
            beta = lasso_cd(gram, mid)
            nnz = int(np.count_nonzero(beta))
            if nnz >= keep_n:
                lo, best = mid, beta
                if nnz == keep_n:
                    break
            else:
                hi = mid
        return np.abs(best)
