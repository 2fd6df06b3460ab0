"""fold-bn: batch norm (and the Scale/Bias after it) folded into the linear layer before it.

At test time a batch norm is a per-channel affine map ``a * x + c``; so is a
Scale or Bias. When such a chain reads a convolution or InnerProduct directly,
and nothing else reads that layer's output, the map can live in the layer's
filters and bias instead: ``W' = a * W`` per output channel, ``b' = a * b + c``.
Darknet's ``batch_normalize=1`` is the same fold inside one section, ending
with ``batch_normalize=0``. Which layers are normalizers, which are affine and
how each takes the map into its arrays is the layer registry's knowledge
(``channel_affine`` / ``absorb_affine`` / ``fold_own_norm``); this module only
walks the graph.

Where a batch norm is not foldable (a ReLU before it, its input read by other
layers too, batch statistics), the edit refuses with the reason, or with
``keep_unfoldable`` keeps it and says so.
"""
from __future__ import annotations

from ..errors import ModelError
from ..graph import Graph
from .rewire import Report, absorbed, bypass, copy_graph, readers_of, removable, say, spec


def fold_bn(graph: Graph, *, flavour: str = "pjreddie", keep_unfoldable: bool = False,
            report: Report = None) -> Graph:
    """Return a copy of ``graph`` with every foldable batch norm folded away.

    Args:
        graph: a Caffe or Darknet graph with weights.
        flavour: Darknet's BN epsilon, ``"pjreddie"`` (the Debian binary and the engine's
            default) or ``"alexeyab"``; the folded model matches the unfolded one as that
            fork runs it.
        keep_unfoldable: keep (and report) a batch norm that cannot be folded instead of
            raising.
        report: called with one line per change.

    Raises:
        ModelError naming the batch norm and why it cannot be folded (unless kept).
    """
    out = copy_graph(graph)
    for layer in out.layers:
        if spec(out, layer).fold_own_norm(layer, flavour):
            say(report, f"folded the batch norm of {layer.type} '{layer.name}' into its "
                        "weights and biases (batch_normalize=0)")
    i = 0
    while i < len(out.layers):
        layer = out.layers[i]
        if "normalizer" not in spec(out, layer).roles:
            i += 1
            continue
        why = _fold_one(out, i, flavour, report)
        if not why:
            continue  # the layers at i.. moved up; look at the same index again
        if not keep_unfoldable:
            raise ModelError(f"cannot fold this {layer.type}: {why}", file=out.source_text,
                             layer=layer.name)
        say(report, f"kept {layer.type} '{layer.name}': {why}")
        i += 1
    return out


def _fold_one(graph: Graph, i: int, flavour: str, report: Report) -> str:
    """Fold the normalizer at ``i`` and its affine followers into its producer; "" when
    done (the layers are gone), else why not (nothing changed)."""
    layer = graph.layers[i]
    affine = spec(graph, layer).channel_affine(layer, flavour)
    if affine is None:
        if not layer.weights:
            return "it has no weights yet (give the weights file, or init them)"
        return ("its test-time output is not a fixed per-channel map (it normalises by each "
                "batch's own statistics: use_global_stats: false)")
    prod = graph.producers()
    p = prod[i][0] if prod[i] else None
    if p is None:
        return f"it reads the network input '{layer.bottoms[0]}', not a layer's output"
    head = graph.layers[p]
    if spec(graph, head).channel_role != "produce":
        return (f"it follows {head.type} '{head.name}', not a convolution or InnerProduct "
                "directly; folding across it would change the output")
    others = [graph.layers[j].name for j in readers_of(graph, p, prod) if j != i]
    if others:
        return (f"its input '{layer.bottoms[0]}' (from '{head.name}') is also read by "
                f"{', '.join(repr(n) for n in others)}, which need the unnormalised values")
    why = removable(graph, i)
    if why:
        return why
    a, c = affine
    chain = [i]
    while True:  # affine layers reading only the last one's value (BatchNorm -> Scale)
        nxt = readers_of(graph, chain[-1], prod)
        if len(nxt) != 1 or "affine" not in spec(graph, graph.layers[nxt[0]]).roles:
            break
        follower = graph.layers[nxt[0]]
        more = spec(graph, follower).channel_affine(follower, flavour)
        if more is None or removable(graph, nxt[0]):
            break
        a, c = more[0] * a, more[0] * c + more[1]  # a2 * (a1 x + c1) + c2
        chain.append(nxt[0])
    edited = absorbed(graph, p, a, c)
    if isinstance(edited, str):
        return edited
    had_bias = set(head.weights)
    graph.layers[p] = edited
    names = [f"{graph.layers[j].type} '{graph.layers[j].name}'" for j in chain]
    note = " (bias switched on)" if set(edited.weights) - had_bias else ""
    for j in reversed(chain):
        bypass(graph, j)
    say(report, f"folded {' + '.join(names)} into {head.type} '{head.name}'{note}")
    return ""
