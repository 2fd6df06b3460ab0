"""``caffe-surgeon``: the general command line."""
from __future__ import annotations

import argparse
import json
import sys

from .. import api
from ..errors import ModelError
from .common import Parser, check_outputs, guarded, parse_input_shapes, resolve_input_shapes, seed_arg


def _add_model_args(p, weights=True):
    p.add_argument("model", nargs="+", metavar="MODEL_FILE",
                   help="definition (.prototxt/.cfg)" + (" and optional weights (.caffemodel/.weights)" if weights else ""))
    p.add_argument("--phase", choices=("TEST", "TRAIN"), default="TEST",
                   help="Caffe phase whose layers to keep (default TEST)")
    p.add_argument("--input-shape", action="append", metavar="[NAME=]N,C,H,W",
                   help="shape of an input or data layer whose size the definition does not give")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="caffe-surgeon", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stat", help="per-layer ops, MACs and params, with totals")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--all-layers", action="store_true", help="list layers with zero counts too")

    p = sub.add_parser("shapes", help="every layer's output shapes")
    _add_model_args(p)

    p = sub.add_parser("init", help="write deterministic synthetic weights for a definition")
    _add_model_args(p, weights=False)
    p.add_argument("-o", "--output", required=True, help="weights file to write (.caffemodel or .weights)")
    p.add_argument("--seed", type=seed_arg, default=0, help="an integer >= 0 (default 0)")

    from . import convert, detect, edit, finetune, forward, prune
    convert.add_parser(sub)
    edit.add_parser(sub)
    finetune.add_parser(sub)
    forward.add_parser(sub)
    detect.add_parser(sub)
    prune.add_parsers(sub, _add_model_args)

    p = sub.add_parser("rewrite", help="read a model and write it back (lossless round trip)")
    _add_model_args(p)
    p.add_argument("-o", "--output", nargs="+", required=True, metavar="OUT_FILE",
                   help="output definition and optional weights file")
    return parser


def _load(args):
    graph = api.load(*args.model, phase=args.phase)
    shapes = resolve_input_shapes(graph, parse_input_shapes(args.input_shape))
    return graph, shapes


@guarded
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "stat":
        from ..opcount import format_table
        graph, shapes = _load(args)
        report = api.stat(graph, shapes)
        if args.json:
            print(json.dumps(report.to_json(), indent=1))
        else:
            print(format_table(report, args.all_layers))
    elif args.command == "shapes":
        from ..layers.registry import infer_shapes
        graph, shapes = _load(args)
        result = infer_shapes(graph, shapes)
        for name, shape in graph.inputs.items():
            print(f"{'(input)':<32} {name:<24} {shape}")
        for layer in graph.layers:
            outs = ", ".join(str(s) for s in result.outputs[layer.name])
            print(f"{layer.name[:32]:<32} {layer.type[:24]:<24} {outs}")
    elif args.command == "init":
        _init(args)
    elif args.command == "edit":
        from . import edit
        return edit.run(args)
    elif args.command == "detect":
        from . import detect
        detect.run(args)
    elif args.command == "convert":
        from . import convert
        convert.run(args)
    elif args.command == "finetune":
        from . import finetune
        return finetune.run_plain(args)
    elif args.command == "forward":
        from . import forward
        forward.run(args)
    elif args.command in ("groups", "prune"):
        from . import prune
        graph, shapes = _load(args)
        (prune.run_groups if args.command == "groups" else prune.run_prune)(args, graph, shapes)
    elif args.command == "rewrite":
        check_outputs(args.output, args.model, option="-o")
        graph, _ = _load(args)
        api.save(graph, *args.output)
        print(f"wrote {' and '.join(args.output)} ({len(graph.layers)} layers)")
    return 0


def _init(args):
    if len(args.model) != 1:
        raise ModelError("init takes one definition file")
    framework, _, _ = api.classify(args.model)
    out_ext = ".caffemodel" if framework == "caffe" else ".weights"
    if not args.output.lower().endswith(out_ext):
        raise ModelError(f"the output of init for a {framework} definition must end in {out_ext}",
                         file=args.output)
    graph, shapes = _load(args)
    api.init(graph, args.seed, shapes)
    if framework == "caffe":
        from ..caffe.writer import render_caffemodel
        from ..fileio import atomic_write
        atomic_write(args.output, render_caffemodel(graph))
    else:
        from ..darknet.writer import write_darknet
        write_darknet(graph, None, args.output)
    print(f"wrote {args.output} (seed {args.seed}, "
          f"{sum(a.size for l in graph.layers for a in l.weights.values()):,} weights)")


if __name__ == "__main__":
    sys.exit(main())
