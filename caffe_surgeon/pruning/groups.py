"""Channel dependency groups: which channels must be removed together.

Pure analysis: reads the graph, never changes it. Every channel born at a
producer output (or a network input / data layer) is a *node*. Walking the
graph in order with each layer's :class:`ChannelFlow` gives, for every blob
version, the list of nodes its channels carry (a concat's output lists its
inputs' nodes one after the other). Joins (Eltwise, shortcut) tie nodes
channel by channel with a union-find, so the *classes* of tied nodes are the
units a plan keeps or removes, and a *group* is a set of producer outputs
whose classes are interlinked.

Worked example: ``a = conv(x)`` (4 ch), ``b = conv(x)`` (4 ch),
``s = a + b`` (Eltwise), ``c = concat(s, conv(s))``. ``a`` and ``b`` form one
group of 4 classes {a0,b0} .. {a3,b3}; removing class 2 removes filter 2 of
both convs and input channel 2 of the conv reading ``s``; the concat's
consumers lose input channel 2 as well.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError
from ..graph import Graph
from ..layers.channel_flow import ChannelFlow
from ..layers.registry import ShapeMap, infer_shapes, spec_for


@dataclass
class Entries:
    """The channels of one blob: node ids, and how many features each spans along axis 1."""

    nodes: list
    widths: list

    def __len__(self):
        return len(self.nodes)

    @staticmethod
    def fresh(first: int, count: int) -> "Entries":
        return Entries(list(range(first, first + count)), [1] * count)

    def sub(self, a: int, b: int) -> "Entries":
        return Entries(self.nodes[a:b], self.widths[a:b])


@dataclass
class Space:
    """Channels born at one place: a producer's output, a data layer or a network input."""

    index: int
    layer: int | None  # producer layer index; None for a network input
    blob: str
    size: int
    first_node: int
    reason: str  # why these channels can never be pruned ("" for a producer output)


@dataclass
class Group:
    """Channels that must be pruned together.

    Attributes:
        id: position in topological order.
        producers: layers whose output channels belong to the group.
        members: every layer whose arrays or parameters change when the group is
            pruned (producers, per-channel layers, consumers, joins, slices).
        classes: per prunable unit, its ``(space, channel)`` nodes.
        prunable: False when any channel reaches a blocker; ``reasons`` says which.
    """

    id: int
    producers: list
    members: list
    classes: list
    prunable: bool
    reasons: list

    @property
    def channels(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        return {"id": self.id, "producers": list(self.producers), "members": list(self.members),
                "channels": self.channels, "prunable": self.prunable, "reasons": list(self.reasons)}


@dataclass
class ChannelAnalysis:
    """Result of :func:`analyse`; consumed by criteria, plans and surgery."""

    graph: Graph
    shapes: ShapeMap
    flows: list
    spaces: list
    groups: list
    #: per layer: Entries of the bottom whose channels it reads (None if untraced)
    layer_in: list
    #: per layer: Entries of each top (None if untraced)
    layer_out: list
    node_space: np.ndarray
    node_group: np.ndarray  # group id per node (-1: not prunable space)
    node_class: np.ndarray  # class index within its group
    blocked: dict = field(default_factory=dict)

    def group(self, ref) -> Group:
        """A group by id or by the name of one of its producers."""
        for g in self.groups:
            if g.id == ref or ref in g.producers:
                return g
        raise ModelError(f"no channel group with id or producer {ref!r}",
                         file=self.graph.source_text)

    def prunable_groups(self) -> list:
        return [g for g in self.groups if g.prunable]


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = []

    def add(self, n: int) -> int:
        first = len(self.parent)
        self.parent.extend(range(first, first + n))
        return first

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # smallest id wins: deterministic roots


def analyse(graph: Graph, ignore=(), input_shapes=None) -> ChannelAnalysis:
    """Compute the channel groups of ``graph``.

    Args:
        graph: the model (weights are not needed).
        ignore: layer names whose output channels the user wants left alone.
        input_shapes: overrides for undeclared input sizes.
    """
    shapes = infer_shapes(graph, input_shapes)
    ignore = set(ignore)
    unknown = sorted(ignore - {l.name for l in graph.layers})
    if unknown:
        raise ModelError(f"ignore_layer names layers the model does not have: {', '.join(unknown)}",
                         file=graph.source_text)
    uf = _UnionFind()
    spaces: list[Space] = []
    blocked: dict[int, str] = {}
    versions: dict[tuple, Entries | None] = {}
    layer_in: list = [None] * len(graph.layers)
    layer_out: list = [None] * len(graph.layers)
    flows: list[ChannelFlow] = []

    def new_space(layer, blob, shape, reason) -> Entries | None:
        if len(shape) < 2:
            return None  # labels, scalars: no channel axis
        first = uf.add(int(shape[1]))
        spaces.append(Space(len(spaces), layer, blob, int(shape[1]), first, reason))
        return Entries.fresh(first, int(shape[1]))

    def block(entries, reason):
        if entries is not None:
            for n in entries.nodes:
                blocked.setdefault(n, reason)

    for name, shape in graph.inputs.items():
        versions[(-1, name)] = new_space(None, name, shapes.blobs.get(name, shape or ()),
                                         f"network input '{name}'")
    producers = graph.producers()
    for i, layer in enumerate(graph.layers):
        spec = spec_for(graph.framework, layer, graph.source_text)
        ins, outs = shapes.inputs[layer.name], shapes.outputs[layer.name]
        try:
            flow = spec.channel_flow(layer, ins, outs)
        except ModelError as e:
            raise e.located(file=graph.source_text, layer=layer.name) from None
        flows.append(flow)
        bottoms = [versions.get((p if p is not None else -1, b))
                   for p, b in zip(producers[i], layer.bottoms)]
        chan = flow.channel_inputs(len(bottoms))
        tops: list[Entries | None] = [None] * len(layer.tops)
        kind = flow.kind
        if kind == "source":
            tops = [new_space(i, t, s, flow.reason) for t, s in zip(layer.tops, outs)]
        elif kind == "produce":
            src = bottoms[0] if bottoms else None
            layer_in[i] = src
            if flow.in_block:
                block(src, f"{layer.name}: {flow.in_block}")
            if src is not None and len(ins[0]) > 2 and any(w != 1 for w in src.widths):
                block(src, f"{layer.name}: reads flattened features as an image")
            reason = flow.out_block or ("ignored by request (ignore_layer)" if layer.name in ignore else "")
            tops[0] = new_space(i, layer.tops[0], outs[0], reason)
        elif kind == "pass":
            src = bottoms[chan[0]] if chan else None
            layer_in[i] = src
            for k, s in enumerate(outs):
                if src is not None and (len(s) < 2 or int(s[1]) != len(src)):
                    block(src, f"{layer.name}: output {tuple(s)} does not keep the channel count")
                    continue
                tops[k] = src
        elif kind == "join":
            lists = [bottoms[j] for j in chan]
            if any(e is None for e in lists) or len({len(e) for e in lists}) != 1 or \
                    len({tuple(e.widths) for e in lists}) != 1:
                for e in lists:
                    block(e, f"{layer.name}: joins channels that cannot be matched one to one")
            else:
                for e in lists[1:]:
                    for a, b in zip(lists[0].nodes, e.nodes):
                        uf.union(a, b)
                layer_in[i] = lists[0]
                tops = [lists[0]] * len(layer.tops)
        elif kind == "concat":
            lists = [bottoms[j] for j in chan]
            if any(e is None for e in lists):
                for e in lists:
                    block(e, f"{layer.name}: concatenated with channels that cannot be traced")
            else:
                tops[0] = Entries([n for e in lists for n in e.nodes],
                                  [w for e in lists for w in e.widths])
        elif kind == "slice":
            src = bottoms[0]
            layer_in[i] = src
            if src is not None:
                a = 0
                for k, s in enumerate(outs):
                    tops[k] = src.sub(a, a + int(s[1]))
                    a += int(s[1])
        elif kind == "flatten":
            src = bottoms[0]
            if src is not None:
                spatial = int(np.prod(ins[0][2:], dtype=np.int64))
                tops[0] = Entries(list(src.nodes), [w * spatial for w in src.widths])
        elif kind == "block":
            for j in chan:
                block(bottoms[j], flow.reason)
        if flow.shares_weights_of is not None:  # the arrays' owner must keep every channel
            j = flow.shares_weights_of
            j = j if j >= 0 else i + j
            if 0 <= j < i:
                why = f"{graph.layers[j].name}: its weights are shared by '{layer.name}'"
                block(layer_in[j], why)
                for e in layer_out[j] or []:
                    block(e, why)
        # shape_only: nothing flows
        layer_out[i] = tops
        for t, e in zip(layer.tops, tops):
            versions[(i, t)] = e
    final: dict[str, tuple] = {name: (-1, name) for name in graph.inputs}
    for i, layer in enumerate(graph.layers):
        for t in layer.tops:
            final[t] = (i, t)
    for out in graph.outputs:
        block(versions.get(final.get(out, (None, None))), f"network output '{out}'")
    return _group(graph, shapes, flows, spaces, uf, blocked, layer_in, layer_out)


def _group(graph, shapes, flows, spaces, uf, blocked, layer_in, layer_out) -> ChannelAnalysis:
    n_nodes = len(uf.parent)
    node_space = np.empty(n_nodes, np.int64)
    for s in spaces:
        node_space[s.first_node:s.first_node + s.size] = s.index
    roots = np.array([uf.find(n) for n in range(n_nodes)], np.int64)
    # Spaces linked by any tied node form one group (second union-find over spaces).
    suf = _UnionFind()
    suf.add(len(spaces))
    for n in range(n_nodes):
        suf.union(int(node_space[n]), int(node_space[roots[n]]))
    space_root = [suf.find(s.index) for s in spaces]
    by_root: dict[int, list[int]] = {}
    for s in spaces:
        by_root.setdefault(space_root[s.index], []).append(s.index)
    node_group = np.full(n_nodes, -1, np.int64)
    node_class = np.full(n_nodes, -1, np.int64)
    groups: list[Group] = []
    member_sets: list[set] = []
    for root in sorted(by_root):
        sids = by_root[root]
        prods = [graph.layers[spaces[s].layer].name for s in sids
                 if spaces[s].layer is not None and flows[spaces[s].layer].kind == "produce"]
        if not prods:
            continue  # only inputs / data layers: nothing a user could prune
        gid = len(groups)
        classes: dict[int, list] = {}
        for s in sids:
            sp = spaces[s]
            for c in range(sp.size):
                node = sp.first_node + c
                classes.setdefault(int(roots[node]), []).append((s, c))
        ordered = [classes[r] for r in sorted(classes)]
        for k, members in enumerate(ordered):
            for s, c in members:
                node_group[spaces[s].first_node + c] = gid
                node_class[spaces[s].first_node + c] = k
        reasons = []
        for s in sids:
            if spaces[s].reason and spaces[s].reason not in reasons:
                reasons.append(spaces[s].reason)
            for c in range(spaces[s].size):
                r = blocked.get(spaces[s].first_node + c)
                if r and r not in reasons:
                    reasons.append(r)
        groups.append(Group(gid, prods, [], [[(s, c) for s, c in m] for m in ordered],
                            prunable=not reasons, reasons=reasons))
        member_sets.append(set())
    for i, layer in enumerate(graph.layers):
        touched = set()
        for e in [layer_in[i]] + list(layer_out[i] or []):
            if e is not None:
                touched.update(int(node_group[n]) for n in e.nodes)
        for gid in touched - {-1}:
            member_sets[gid].add(i)
    for g, ms in zip(groups, member_sets):
        g.members = [graph.layers[i].name for i in sorted(ms)]
    return ChannelAnalysis(graph, shapes, flows, spaces, groups, layer_in, layer_out,
                           node_space, node_group, node_class, blocked)
