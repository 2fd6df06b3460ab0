"""Least-squares reconstruction of the layers that lost input channels.

For each such consumer (a convolution or fully connected layer), sample
points of its output on calibration images and refit its kept weights and its
offset so that, fed the *pruned* network's activations, it reproduces the
linear output the *original* layer computed from the original activations
(He, Zhang and Sun 2017, second step; ThiNet's reconstruction):

    min_W',c  || P' W'^T + c - P W^T ||^2 + lam || W' - W0 ||^2

P / P' are sampled input patches of the original / pruned net, W0 the sliced
weights with the folded offset. The pull towards W0 keeps layers with few
samples (fully connected ones see one row per image) where folding left them.
The accumulation is chunked over images, so memory is bounded by one chunk
of activations plus a (D+1)^2 normal matrix per consumer.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..graph import Graph
from ..layers.registry import spec_for
from .groups import ChannelAnalysis
from .patches import output_size, patches, sample_positions
from .surgery import add_offset, offset_target

CHUNK = 8  # images per forward pass
CACHE_BYTES = 2 << 30  # pruned activations carried from one consumer to the next


def reconstruct(original: Graph, pruned: Graph, a: ChannelAnalysis, keep: np.ndarray,
                calib: dict, samples: int = 4096, ridge: float = 1e-3, seed: int = 0,
                darknet_bn: str = "pjreddie", create: bool = True,
                cache_bytes: int = CACHE_BYTES) -> list[str]:
    """Refit, in place, the consumers in ``pruned`` whose inputs lost channels.

    Args:
        original / pruned: the model before and after :func:`apply` (dense or sparse).
        a, keep: the original model's channel analysis and per-node keep mask.
        calib: feed name -> array (N, ...) of calibration inputs.
        samples: output points sampled per consumer (spread over the images).
        ridge: strength of the pull towards the folded weights, relative to the
            mean diagonal of the normal matrix.
        cache_bytes: pruned activations kept between consumers (results do not depend on it).
    Returns:
        The names of the refitted layers. A layer with fewer sampled rows than
        twice its unknowns (e.g. a fully connected layer with few images) keeps
        its folded weights.
    """
    from ..engine.executor import Executor

    jobs = _jobs(original, pruned, a, keep)
    for job in jobs:
        job.create = create
    if not jobs:
        return []
    n = min(len(v) for v in calib.values())
    if n < 1:
        raise ModelError("calibration data is empty")
    producers = original.producers()
    versions = {job.index: (producers[job.index][0], original.layers[job.index].bottoms[0])
                for job in jobs}
    ex_o = Executor(original, darknet_bn=darknet_bn)
    rng = np.random.default_rng(seed)
    per_image = max(1, -(-samples // n))
    chunks = [{k: v[i:i + CHUNK] for k, v in calib.items()} for i in range(0, n, CHUNK)]
    # the original's inputs of every consumer; nothing after the last one runs (a metric
    # layer there would read labels calibration images do not have)
    wanted = set(versions.values())
    originals = []
    for c in chunks:
        got = ex_o.prefix(c, max(versions) + 1, keep=wanted)
        originals.append({v: got[v] for v in wanted})
    done = []
    # Sequential: each layer is fitted to the inputs the already refitted layers
    # before it produce, so errors do not pile up along the net. A refit changes
    # only its own layer and the offset after it, so each chunk's pruned values
    # are carried from one consumer to the next (one forward pass in all) while
    # they fit in ``cache_bytes``; chunks over it start again from the input.
    carried: dict[int, tuple[int, dict]] = {}
    for job in jobs:
        version = versions[job.index]
        ex_p = Executor(pruned, darknet_bn=darknet_bn)
        for c, (chunk, vo) in enumerate(zip(chunks, originals)):
            start, values = carried.pop(c, (0, None))
            values = ex_p.prefix(chunk, job.index) if values is None else \
                ex_p.advance(values, start, job.index)
            job.add(vo[version], values[version], per_image, rng)
            if sum(a.nbytes for s in carried.values() for a in s[1].values()) + \
                    sum(a.nbytes for a in values.values()) <= cache_bytes:
                carried[c] = (job.index, values)
        if job.solve(ridge):
            done.append(job.layer.name)
    return done


class _Job:
    """Normal equations of one consumer."""

    def __init__(self, index, layer, orig_layer, flow, window, in_cols, out_rows, in_shape):
        self.index, self.layer, self.flow, self.window = index, layer, flow, window
        self.in_cols, self.out_rows = in_cols, out_rows  # kept columns / rows (original indices)
        self.name = next(iter(flow.in_axes))
        w = orig_layer.weights[self.name]
        self.w_orig = w.reshape(w.shape[0], -1).astype(np.float64)  # (O, C*K)
        self.k = int(np.prod(w.shape[2:], dtype=np.int64)) if w.ndim == 4 else 1
        self.in_shape = in_shape
        d = len(in_cols) * self.k + 1
        self.gram = np.zeros((d, d))
        self.rows = 0
        self.cross = np.zeros((d, len(out_rows)))

    def add(self, x_orig, x_pruned, per_image, rng):
        if self.window is None:  # fully connected: one row per image
            p_o = x_orig.reshape(len(x_orig), -1).astype(np.float64)
            p_p = x_pruned.reshape(len(x_pruned), -1)
            p_p = (p_p if p_p.shape[1] == len(self.in_cols) else p_p[:, self.in_cols]).astype(np.float64)
        else:
            p_o, p_p = self._patches(x_orig, x_pruned, per_image, rng)
        target = p_o @ self.w_orig[self.out_rows].T
        p1 = np.concatenate([p_p, np.ones((len(p_p), 1))], axis=1)
        self.gram += p1.T @ p1
        self.cross += p1.T @ target
        self.rows += len(p1)

    def _patches(self, x_o, x_p, per_image, rng):
        img, py, px = sample_positions(len(x_o), output_size(x_o.shape[2:], self.window),
                                       per_image, rng)
        if x_p.shape[1] != len(self.in_cols):  # sparse model: pick the kept channels
            x_p = x_p[:, self.in_cols]
        return [patches(x, self.window, img, py, px).reshape(len(img), -1) for x in (x_o, x_p)]

    def effective_offset(self, graph) -> np.ndarray:
        """The additive offset of the layer's linear output, for the kept output rows."""
        target = offset_target(graph, self.a, self.index)
        if target is None:
            return np.zeros(len(self.out_rows))
        layer, name, sign, factor = target
        arr = layer.weights[name].astype(np.float64)
        idx = self.out_rows if len(arr) != len(self.out_rows) else np.arange(len(arr))
        return sign * arr[idx] / factor

    def solve(self, ridge) -> bool:
        if self.rows < 2 * len(self.gram):
            return False  # too few samples to pin down the weights: keep the folded ones
        layer, flow = self.layer, self.flow
        w = layer.weights[self.name]
        dense = w.shape[1] == len(self.in_cols) and w.shape[0] == len(self.out_rows)
        rows = slice(None) if w.shape[0] == len(self.out_rows) else self.out_rows
        cols = slice(None) if w.shape[1] == len(self.in_cols) else self.in_cols
        w0 = w[rows][:, cols].reshape(len(self.out_rows), -1).astype(np.float64)
        # c is the change of the layer's additive offset against the original layer;
        # folding already moved it by f, which is where the pull towards init starts
        fold = self.effective_offset(self.pruned) - self.effective_offset(self.original)
        init = np.concatenate([w0.T, fold[None]], axis=0)  # (D+1, O')
        lam = ridge * max(np.trace(self.gram) / len(self.gram), 1e-12)
        eye = lam * np.eye(len(self.gram))
        try:
            if offset_target(self.pruned, self.a, self.index, self.create) is None:
                # nowhere to put an offset: it stays at the folded one, the weights are
                # fitted for that offset (the last unknown moved to the right-hand side)
                g, c = self.gram[:-1], self.cross[:-1]
                rhs = c - np.outer(g[:, -1], fold) + lam * init[:-1]
                sol = np.vstack([np.linalg.solve(g[:, :-1] + eye[:-1, :-1], rhs), fold[None]])
            else:
                sol = np.linalg.solve(self.gram + eye, self.cross + lam * init)
        except np.linalg.LinAlgError:
            return False
        new_w = sol[:-1].T.astype(np.float32).reshape((len(self.out_rows), -1) + w.shape[2:])
        out = w.copy()
        if dense:
            out[...] = new_w
        else:
            r = np.arange(w.shape[0]) if isinstance(rows, slice) else self.out_rows
            c = np.arange(w.shape[1]) if isinstance(cols, slice) else self.in_cols
            out[np.ix_(r, c)] = new_w
        layer.weights[self.name] = out
        add_offset(self.pruned, self.a, self.index, sol[-1] - fold, self.out_rows, self.create)
        return True


def _jobs(original, pruned, a, keep) -> list[_Job]:
    from .surgery import _columns
    jobs = []
    for i, layer in enumerate(pruned.layers):
        flow = a.flows[i]
        e = a.layer_in[i]
        if flow.kind != "produce" or e is None or flow.in_block or len(flow.in_axes) != 1:
            continue
        name, axis = next(iter(flow.in_axes.items()))
        orig = original.layers[i]
        w = orig.weights.get(name)
        if w is None or axis != 1 or flow.out_axes.get(name) != 0 or w.ndim not in (2, 4):
            continue  # deconvolutions and transposed layouts are left as folded
        in_shape = a.shapes.inputs[layer.name][0]
        cols = _columns(keep, e, in_shape, w.shape[1])
        if cols.all():
            continue
        window = None
        if w.ndim == 4:
            spec = spec_for(original.framework, orig)
            if not hasattr(spec, "window"):
                continue
            window = spec.window(orig, a.shapes.inputs[layer.name])
            if original.framework == "darknet" and window[3] != (1, 1):
                continue  # darknet's dilated padding rule is not modelled here
        out_e = (a.layer_out[i] or [None])[0]
        out_rows = np.flatnonzero(keep[out_e.nodes]) if out_e is not None else np.arange(w.shape[0])
        job = _Job(i, layer, orig, flow, window, np.flatnonzero(cols), out_rows, in_shape)
        job.a, job.index, job.original, job.pruned = a, i, original, pruned
        jobs.append(job)
    return jobs
