"""Runs a Graph in topological order on NCHW float32 arrays.

Blob versions: with in-place layers one name is written several times, so
every value is keyed by (producer layer index, blob name); index -1 is a
network input. A value is dropped as soon as the last layer reading it has
run, unless the caller asked for it, which bounds memory by the live
activations plus the weights.

For sensitivity analysis, :meth:`Executor.prefix` runs the layers before a
given index once and returns exactly the values later layers need, and
:meth:`Executor.run` can resume from such a cache, so only the part of the
net downstream of a change is recomputed.

Fusion (:mod:`.fusion`): a Caffe convolution (or BatchNorm / Scale) followed by
per-channel layers that only it feeds (BatchNorm, Scale, Bias, ReLU, ReLU6,
Clip) runs as one layer whose output pass applies them, when the run needs
none of the intermediate values; the result is bit for bit the one the layers
give one by one, which is how they run when an intermediate value is asked for
or a prefix/resume boundary falls inside the chain.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..graph import Graph
from ..layers.registry import infer_shapes, spec_for
from . import heap, memory_plan
from .ops import RunContext, op_for

Version = tuple  # (producer index, blob name)


class Executor:
    """A graph prepared for repeated forward passes.

    Args:
        graph: the model (weights attached).
        darknet_bn: Darknet BatchNorm flavour, "pjreddie" (default, like the Debian
            darknet binary) or "alexeyab".
        check_weights: verify up front that every layer has the arrays its type needs.
    """

    def __init__(self, graph: Graph, *, darknet_bn: str = "pjreddie", check_weights: bool = True):
        if darknet_bn not in ("pjreddie", "alexeyab"):
            raise ModelError(f"darknet_bn must be 'pjreddie' or 'alexeyab', not {darknet_bn!r}")
        self.graph = graph
        self.ctx = RunContext(darknet_bn=darknet_bn, graph=graph)
        self.fns = [op_for(graph.framework, l, graph.source_text) for l in graph.layers]
        producers = graph.producers()
        self.reads: list[list[Version]] = [
            [(p if p is not None else -1, b) for p, b in zip(row, layer.bottoms)]
            for row, layer in zip(producers, graph.layers)]
        self.last_use: dict[Version, int] = {}
        for i, row in enumerate(self.reads):
            for v in row:
                self.last_use[v] = i
        self.final: dict[str, Version] = {name: (-1, name) for name in graph.inputs}
        for i, layer in enumerate(graph.layers):
            for t in layer.tops:
                self.final[t] = (i, t)
        self._checked: set = set()
        self._needed_cache: dict = {}
        if check_weights:
            try:
                shapes = infer_shapes(self.graph)
                if not shapes.guessed:  # else the fed data tells; checked on the first run
                    memory_plan.check_fits(graph, shapes)
                    self._check_weights(shapes)
                    self._checked.add(None)
            except ModelError as e:
                if "give" not in e.message and "not declared" not in e.message:
                    raise
                # The input size comes with the data; checked on the first run.
        self.check_weights = check_weights
        # Fused chains (see fusion.py): head index -> follower indices, the versions only the
        # chain itself sees, and each chain's epilogue, built now and checked on every run.
        from . import fusion  # the numerical modules, only once a net is to be run
        from .kernels import blas
        self._fusion, self._blas = fusion, blas
        self.chains = fusion.plan(graph, self.reads)
        self._inner = {i: [(k, graph.layers[k].tops[0]) for k in [i] + f[:-1]]
                       for i, f in self.chains.items()}
        self._epilogues: dict[int, tuple] = {}
        # Sibling groups (see siblings.py): first member -> the group, run as one layer.
        from . import siblings
        self._siblings = siblings
        self.groups = siblings.plan(graph, self.reads, self.chains)
        self._stacker = siblings.Stacker()
        for i, f in self.chains.items():
            w = graph.layers[i].weights.get("weight")
            if spec_for(graph.framework, graph.layers[i]).channel_role == "produce" \
                    and w is not None and getattr(w, "ndim", 0) == 4:
                self._chain_epilogue(i, int(w.shape[0]))

    def _check_fed(self, env):
        """Shape-check the whole net for the fed input sizes (once per distinct size)."""
        fed = {name[1]: tuple(a.shape) for name, a in env.items() if name[0] in (-1, "feed")}
        key = tuple(sorted(fed.items()))
        if key in self._checked:
            return
        shapes = infer_shapes(self.graph, fed)  # names the layer and shapes on mismatch
        memory_plan.check_fits(self.graph, shapes)
        if self.check_weights:
            self._check_weights(shapes)
        self._checked.add(key)

    def _check_weights(self, shapes):
        for layer in self.graph.layers:
            spec = spec_for(self.graph.framework, layer)
            layouts = spec.weight_layouts(layer, shapes.inputs[layer.name])
            if not any(list(l) == list(layer.weights) and
                       all(tuple(layer.weights[k].shape) == tuple(s) for k, s in l.items())
                       for l in layouts):
                want = layouts[0]
                have = {k: tuple(v.shape) for k, v in layer.weights.items()}
                if not layer.weights and want:
                    raise ModelError(f"missing weights: this {layer.type} needs "
                                     f"{', '.join(f'{k} {tuple(s)}' for k, s in want.items())}",
                                     file=self.graph.source_text, layer=layer.name)
                ins = [tuple(x) for x in shapes.inputs[layer.name]]
                raise ModelError(f"weights {have} do not fit this {layer.type} layer, which needs "
                                 f"{ {k: tuple(s) for k, s in want.items()} } for input shapes {ins}",
                                 file=self.graph.source_text, layer=layer.name)

    # ------------------------------------------------------------------
    def version_of(self, name: str) -> Version:
        if name not in self.final:
            raise ModelError(f"no blob named '{name}' in the net", file=self.graph.source_text)
        return self.final[name]

    def run(self, inputs: dict | None = None, outputs=None, *, start: int = 0,
            cache: dict | None = None, layer_outputs=(), only=None,
            donate_cache: bool = False) -> dict[str, np.ndarray]:
        """Run layers ``start`` .. end (those in ``only``, if given).

        Args:
            inputs: network input name -> array (N, C, H, W) (ignored for start > 0).
            outputs: blob names to return (their final values); default: the graph outputs.
            start: first layer to run; values it needs come from ``cache``.
            cache: versions -> arrays, as returned by :meth:`prefix`.
            layer_outputs: layer names whose top values (as that layer wrote them) to return too,
                keyed ``"<layer>:<top>"``.
            only: layer indices to run; the values the others would write come from
                ``cache`` (sensitivity analysis: a pruned model's unchanged layers).
            donate_cache: the ``cache`` arrays are the caller's to lose: layers may overwrite
                those that die (saves a buffer per in-place layer). By default neither
                ``inputs`` nor ``cache`` is ever written.

        Returns:
            name -> array.
        """
        outputs = list(self.graph.outputs if outputs is None else outputs)
        wanted = {self.version_of(n): n for n in outputs}
        for lname in layer_outputs:
            i = self.graph.index(lname)
            for t in self.graph.layers[i].tops:
                wanted[(i, t)] = f"{lname}:{t}"
        env = dict(cache or {})
        borrowed = () if donate_cache else tuple(env.values())
        if start == 0:
            fed = self._feed(inputs or {})
            env.update(fed)
            self._check_fed(env)
            borrowed += _borrowed(fed, inputs or {})
        result = {}
        with self._blas.single_threaded(), heap.keep_freed():
            self._run_range(env, start, len(self.graph.layers), wanted, result, only, borrowed)
        for v, name in wanted.items():
            if v in env and name not in result:
                result[name] = env[v]
        missing = [n for n in wanted.values() if n not in result]
        if missing:
            raise ModelError(f"requested blobs were not computed from layer {start} on: {missing}")
        return result

    def prefix(self, inputs: dict, stop: int, keep=()) -> dict:
        """Run layers 0 .. stop-1 and return the values that layers >= stop will read,
        plus the versions in ``keep`` computed on the way."""
        fed = self._feed(inputs)
        return self._advance(fed, 0, stop, keep, _borrowed(fed, inputs))

    def advance(self, values: dict, start: int, stop: int, keep=(), only=None) -> dict:
        """Like :meth:`prefix`, from ``values`` (what layers >= ``start`` read, e.g. an
        earlier prefix) instead of the inputs; the given arrays are not modified.
        With ``only``, runs just those layers and returns the versions in ``keep``."""
        env = {v: a.copy() for v, a in values.items()}
        if only is None:
            return self._advance(env, start, stop, keep)
        wanted = {v: v for v in keep}
        result: dict = {}
        with self._blas.single_threaded(), heap.keep_freed():
            self._run_range(env, start, stop, wanted, result, only)
        return {v: result.get(v, env.get(v)) for v in keep}

    def _advance(self, env: dict, start: int, stop: int, keep, borrowed=()) -> dict:
        wanted = {v: v for v in keep}
        with self._blas.single_threaded(), heap.keep_freed():
            self._run_range(env, start, stop, wanted, {}, borrowed=borrowed)
        needed = {v for row in self.reads[stop:] for v in row} | set(keep)
        return {v: a for v, a in env.items() if v in needed}

    def _feed(self, inputs: dict) -> dict:
        env = {}
        for name, shape in self.graph.inputs.items():
            if name not in inputs:
                raise ModelError(f"no value given for network input '{name}' (shape {shape})",
                                 file=self.graph.source_text)
            arr = np.ascontiguousarray(inputs[name], dtype=np.float32)
            if shape is not None and len(arr.shape) == len(shape) and tuple(arr.shape[1:]) != tuple(shape[1:]):
                raise ModelError(f"input '{name}' has shape {arr.shape}, the net expects "
                                 f"(N, {', '.join(map(str, shape[1:]))})", file=self.graph.source_text)
            env[(-1, name)] = arr
        extra = set(inputs) - set(self.graph.inputs)
        for name in extra:  # data layers fed directly by name
            env[("feed", name)] = np.ascontiguousarray(inputs[name], dtype=np.float32)
        return env

    def _chain_epilogue(self, i, channels):
        """The epilogue of chain ``i`` for a head output of ``channels`` channels, or None."""
        followers = [self.graph.layers[k] for k in self.chains[i]]
        hit = self._epilogues.get(i)
        if hit is not None and hit[0] == channels and self._fusion.same_signature(hit[1], followers):
            return hit[2]
        try:
            ep = self._fusion.epilogue_of(followers, self.ctx, channels)
        except (ModelError, KeyError, ValueError, TypeError, IndexError):
            ep = None  # run the layers one by one, which reports the problem where it is
        self._epilogues[i] = (channels, self._fusion.signature(followers), ep)
        return ep

    def _run_range(self, env, start, stop, wanted, result, only=None, borrowed=()):
        # borrowed: the caller's input arrays, never overwritten (evaluators feed the same
        # arrays to every variant), nor any view of them
        layers = self.graph.layers
        ctx = self.ctx
        needed = self._needed(start, stop, wanted)
        early = set()  # later members of a sibling group, computed with its first
        i = start
        while i < stop:
            if only is not None and i not in only:
                i += 1
                continue
            if i in early:  # its value is there: drop what dies here, as running it would
                self._drop_dying(env, i, wanted)
                i += 1
                continue
            group = self.groups.get(i)
            if group is not None and group[-1] < stop and \
                    (only is None or all(k in only for k in group)) and self._run_group(env, group, wanted, result):
                early.update(group[1:])
                i += 1
                continue
            layer = layers[i]
            if i not in needed:
                # nothing asked for or run later reads what it writes (a [yolo] head whose
                # input an evaluator decodes itself): not run; what dies here is dropped
                self._drop_dying(env, i, wanted)
                i += 1
                continue
            try:
                args = [env[v] for v in self.reads[i]]
            except KeyError as e:
                raise ModelError(f"value {e.args[0]} needed by this layer is not available "
                                 f"(start={start})", layer=layer.name) from None
            dying = [self.last_use.get(v) == i and v not in wanted for v in self.reads[i]]
            # An input may be overwritten only if nothing else still alive shares its memory
            # (Split returns one array for several tops; Reshape and Flatten return views).
            # Worked out only if the layer asks (most never overwrite their inputs).
            ctx.donate = (lambda dying=dying, args=args: [
                d and a.flags.writeable and not any(np.may_share_memory(a, b) for b in borrowed)
                and not any(o is not a and np.may_share_memory(o, a) for o in env.values())
                and sum(a is o for o in env.values()) == 1 and sum(a is b for b in args) == 1
                for d, a in zip(dying, args)]) if any(dying) else []
            if not layer.bottoms:
                ctx.feeds = {n[1]: a for n, a in env.items() if n[0] == "feed"}
            end = i  # the last layer this step computes (a fused chain's last follower)
            followers = self.chains.get(i)
            if followers is not None and followers[-1] < stop and \
                    not any(v in wanted for v in self._inner[i]) and \
                    (only is None or all(k in only for k in followers)):
                channels = self._fusion.head_channels(self.graph, layer, args)
                ctx.epilogue = None if channels is None else self._chain_epilogue(i, channels)
                if ctx.epilogue is not None:
                    end = followers[-1]
            try:
                outs = self.fns[i](layer, args, ctx)
            except ModelError as e:
                raise e.located(file=self.graph.source_text, layer=layer.name) from None
            except (ValueError, IndexError) as e:
                shapes = [tuple(a.shape) for a in args]
                raise ModelError(f"{layer.type} failed on inputs of shapes {shapes}: {e}",
                                 file=self.graph.source_text, layer=layer.name) from None
            finally:
                ctx.epilogue = None
            for v, d in zip(self.reads[i], dying):
                if d:
                    env.pop(v, None)
            tops = layers[end].tops
            for t, a in zip(tops, outs):
                env[(end, t)] = a
                if (end, t) in wanted:
                    result[wanted[(end, t)]] = a
            for t in tops:  # nobody reads it and nobody asked for it
                if (end, t) not in self.last_use and (end, t) not in wanted:
                    env.pop((end, t), None)
            i = end + 1

    def _drop_dying(self, env, i, wanted):
        """Drop the values layer ``i`` is the last to read (it is skipped, not run)."""
        for v in self.reads[i]:
            if self.last_use.get(v) == i and v not in wanted:
                env.pop(v, None)

    def _needed(self, start: int, stop: int, wanted) -> set:
        """The layers of start .. stop-1 whose values are asked for (``wanted``), read by
        layers from ``stop`` on, or read by such layers, transitively."""
        key = (start, stop, frozenset(wanted))
        hit = self._needed_cache.get(key)
        if hit is not None:
            return hit
        live = set(wanted)
        for row in self.reads[stop:]:
            live.update(row)
        needed = set()
        for i in range(stop - 1, start - 1, -1):
            if any((i, t) in live for t in self.graph.layers[i].tops):
                needed.add(i)
                live.update(self.reads[i])
        if len(self._needed_cache) >= 64:
            self._needed_cache.clear()
        self._needed_cache[key] = needed
        return needed

    def _run_group(self, env, group, wanted, result) -> bool:
        """Run a sibling group as one layer; False (nothing done) if it no longer stacks."""
        x = env.get(self.reads[group[0]][0])
        layers = self.graph.layers
        if x is None or x.ndim != 4 or not self._siblings.still_stacks(self.graph, group) or \
                x.shape[1] != layers[group[0]].weights["weight"].shape[1]:
            return False
        try:
            outs = self._stacker.run(self.graph, group, x, self.ctx, self.fns[group[0]])
        except ModelError as e:
            raise e.located(file=self.graph.source_text, layer=layers[group[0]].name) from None
        except (ValueError, IndexError) as e:
            raise ModelError(f"{layers[group[0]].type} failed on an input of shape {tuple(x.shape)}: {e}",
                             file=self.graph.source_text, layer=layers[group[0]].name) from None
        v = self.reads[group[0]][0]
        if self.last_use.get(v) == group[0] and v not in wanted:
            env.pop(v, None)
        for k, a in zip(group, outs):
            top = (k, layers[k].tops[0])
            if top in wanted:
                result[wanted[top]] = a
            if top in self.last_use or top in wanted:
                env[top] = a
        return True


def forward(graph: Graph, inputs: dict, outputs=None, **kw) -> dict[str, np.ndarray]:
    """One-shot convenience: ``Executor(graph, **kw).run(inputs, outputs)``."""
    return Executor(graph, **kw).run(inputs, outputs)


def _borrowed(fed: dict, inputs: dict) -> tuple:
    """The fed arrays that are the caller's memory (no float32 conversion copied them)."""
    given = [a for a in inputs.values() if isinstance(a, np.ndarray)]
    return tuple(a for a in fed.values() if any(np.may_share_memory(a, g) for g in given))
