"""``caffe-surgeon edit``: a chain of model edits, each with its own options, in one command.

Grammar::

    caffe-surgeon edit MODEL... [--phase P] [--input-shape [NAME=]N,C,H,W]
                       EDIT [EDIT-OPTIONS] [EDIT [EDIT-OPTIONS]]... [-o OUT [OUT_WEIGHTS]]

Every word that names an edit starts the next edit, so options belong to the
edit before them; a blob or layer spelt like an edit name is given in the
``--option=NAME`` form. The edits run in order on the model in memory; each
change is printed as ``EDIT: what changed``; the files are written only when
every edit succeeded (without ``-o`` nothing is written: a preview).
"""
from __future__ import annotations

import argparse

from .. import api
from ..errors import ModelError
from .common import Parser, check_outputs, parse_input_shapes, resolve_input_shapes


def _words(text: str) -> list[str]:
    return [w for w in text.split(",") if w]


def _pairs(items) -> dict:
    out = {}
    for item in items or []:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise ModelError(f"rename: '{item}' is not OLD=NEW")
        out[old] = new
    return out


def _edit_parsers() -> dict[str, argparse.ArgumentParser]:
    p = {}
    e = p["fold-bn"] = Parser(prog="edit fold-bn", description="fold batch norm (+ Scale/Bias, "
                              "Darknet batch_normalize) into the convolution or InnerProduct before it")
    e.add_argument("--keep-unfoldable", action="store_true",
                   help="keep a batch norm that cannot be folded (reported) instead of failing")
    e.add_argument("--darknet-bn", choices=("pjreddie", "alexeyab"), default="pjreddie",
                   help="the darknet fork whose BN epsilon the folded model reproduces")
    e = p["strip"] = Parser(prog="edit strip", description="remove losses, metrics, Silence, "
                            "Dropout; data layers become inputs")
    e.add_argument("--keep-phase", choices=("TEST", "TRAIN"),
                   help="write only this phase's layers (a deploy file from a train_val)")
    e = p["cut"] = Parser(prog="edit cut", description="keep the subgraph between blobs")
    e.add_argument("--outputs", nargs="+", required=True, metavar="BLOB")
    e.add_argument("--inputs", nargs="+", default=[], metavar="BLOB")
    e = p["set-input"] = Parser(prog="edit set-input", description="change the input size")
    e.add_argument("--shape", required=True, metavar="N,C,H,W")
    e.add_argument("--name", help="the input blob (when the net has several)")
    e = p["rename"] = Parser(prog="edit rename", description="rename Caffe layers and blobs")
    e.add_argument("--layer", action="append", metavar="OLD=NEW")
    e.add_argument("--blob", action="append", metavar="OLD=NEW")
    e = p["replace-activation"] = Parser(prog="edit replace-activation",
                                         description="swap one activation for another")
    e.add_argument("old", metavar="FROM", help="Caffe type (ReLU6) or darknet activation (mish)")
    e.add_argument("new", metavar="TO")
    e.add_argument("--slope", type=float, help="Caffe: the new activation's negative slope")
    p["merge"] = Parser(prog="edit merge", description="merge Scale/Bias/Power runs, remove "
                        "identity layers")
    return p


EDITS = tuple(_edit_parsers())


def add_parser(sub) -> None:
    p = sub.add_parser("edit", help="model edits (fold-bn, strip, cut, set-input, rename, "
                       "replace-activation, merge), chained: edit MODEL... EDIT [opts]... -o OUT",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("words", nargs=argparse.REMAINDER,
                   help="MODEL... [--phase P] [--input-shape S] EDIT [options]... [-o OUT...]")


def split(words: list[str]):
    """(head words, [(edit, its words)], output files) from the command's words."""
    words = list(words)
    outputs: list[str] = []
    for flag in ("-o", "--output"):
        while flag in words:
            k = words.index(flag)
            end = k + 1
            while end < len(words) and not words[end].startswith("-") and words[end] not in EDITS:
                end += 1
            if end == k + 1:
                raise ModelError(f"{flag} needs the output definition (and weights) file")
            outputs += words[k + 1:end]
            del words[k:end]
    starts = [i for i, w in enumerate(words) if w in EDITS]
    if not starts:
        raise ModelError(f"edit: name at least one edit ({', '.join(EDITS)}) after the model files")
    head = words[:starts[0]]
    chain = [(words[s], words[s + 1:e]) for s, e in zip(starts, starts[1:] + [len(words)])]
    return head, chain, outputs


def run(args) -> int:
    head, chain, outputs = split(args.words)
    hp = Parser(prog="caffe-surgeon edit")
    hp.add_argument("model", nargs="+")
    hp.add_argument("--phase", choices=("TEST", "TRAIN"))
    hp.add_argument("--input-shape", action="append")
    h = hp.parse_args(head)
    parsers = _edit_parsers()
    steps = [(name, parsers[name].parse_args(rest)) for name, rest in chain]
    phases = {o.keep_phase for n, o in steps if n == "strip" and o.keep_phase} | (
        {h.phase} if h.phase else set())
    if len(phases) > 1:
        raise ModelError(f"edit: --phase and strip --keep-phase disagree ({', '.join(sorted(phases))})")
    if outputs:
        if len(outputs) > 2:
            raise ModelError(f"-o takes a definition and optionally a weights file, got {len(outputs)}")
        check_outputs(outputs, h.model, option="-o")
        api.classify(outputs)  # a wrong extension fails before any work
    graph = api.load(*h.model, phase=next(iter(phases), "TEST"))
    shapes = resolve_input_shapes(graph, parse_input_shapes(h.input_shape)) or None
    for name, opts in steps:
        graph = apply_edit(graph, name, opts, shapes, lambda line, n=name: print(f"{n}: {line}"))
    if outputs:
        api.save(graph, *outputs)
        print(f"wrote {' and '.join(outputs)} ({len(graph.layers)} layers)")
    else:
        print("nothing written (give -o OUT to write the edited model)")
    return 0


def apply_edit(graph, name: str, opts, shapes, report):
    """Run one parsed edit on ``graph`` and return the new graph."""
    from .. import edit
    if name == "fold-bn":
        return edit.fold_bn(graph, flavour=opts.darknet_bn, keep_unfoldable=opts.keep_unfoldable,
                            report=report)
    if name == "strip":
        return edit.strip(graph, keep_phase=opts.keep_phase, input_shapes=shapes, report=report)
    if name == "cut":
        return edit.cut(graph, [w for o in opts.outputs for w in _words(o)],
                        [w for i in opts.inputs for w in _words(i)], input_shapes=shapes,
                        report=report)
    if name == "set-input":
        try:
            shape = tuple(int(d) for d in opts.shape.split(","))
        except ValueError:
            raise ModelError(f"set-input --shape '{opts.shape}': expected N,C,H,W integers") from None
        return edit.set_input(graph, shape, name=opts.name, report=report)
    if name == "rename":
        return edit.rename(graph, layers=_pairs(opts.layer), blobs=_pairs(opts.blob), report=report)
    if name == "replace-activation":
        return edit.replace_activation(graph, opts.old, opts.new, slope=opts.slope, report=report)
    return edit.merge(graph, input_shapes=shapes, report=report)
