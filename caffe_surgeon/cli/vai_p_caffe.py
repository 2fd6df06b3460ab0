"""``vai_p_caffe``: drop-in command names of the vendor's Caffe pruning tool.

Options use the vendor's single-dash spelling (``-model``, ``-config``);
double dashes are accepted too.
"""
from __future__ import annotations

import argparse
import sys

from .. import api
from ..errors import ModelError
from .common import INPUT_SHAPE_HELP, Parser, transform_note, check_outputs, guarded, parse_input_shapes, resolve_input_shapes



def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vai_p_caffe")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stat", help="ops and params of a prototxt (vendor log format)")
    p.add_argument("-model", "--model", required=True, help="the prototxt to count")
    p.add_argument("-weights", "--weights",
                   help="its caffemodel (optional: read to check that it fits the prototxt)")
    p.add_argument("-input_shape", "--input-shape", action="append", metavar="[NAME=]N,C,H,W",
                   help=INPUT_SHAPE_HELP)
    p = sub.add_parser("transform", help="sparse.caffemodel (zeroed channels) -> dense weights")
    p.add_argument("-model", "--model", required=True, help="the prototxt the sparse weights belong to")
    p.add_argument("-weights", "--weights", required=True, help="sparse caffemodel")
    p.add_argument("-output", "--output", default="transformed.caffemodel",
                   help="dense caffemodel to write (default transformed.caffemodel); the matching "
                        "prototxt is written beside it as <output>.prototxt")
    p.add_argument("-input_shape", "--input-shape", action="append", metavar="[NAME=]N,C,H,W",
                   help=INPUT_SHAPE_HELP)
    from . import caffe_workflow
    caffe_workflow.add_parsers(sub)
    return parser


@guarded
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command in ("ana", "prune", "finetune"):
        from . import caffe_workflow
        return caffe_workflow.run(args)
    if args.command == "transform":
        return _transform(args)
    from ..opcount import format_vendor
    files = [args.model] + ([args.weights] if args.weights else [])
    graph = api.load(*files)
    shapes = resolve_input_shapes(graph, parse_input_shapes(args.input_shape))
    print(format_vendor(api.stat(graph, shapes)))
    return 0


def _transform(args):
    from pathlib import Path

    from ..caffe.writer import render_caffemodel, render_prototxt
    from ..fileio import atomic_write
    from ..pruning.transform import transform
    framework, _, _ = api.classify([args.model, args.weights])
    if framework != "caffe":
        raise ModelError(f"vai_p_caffe transform takes a Caffe prototxt and caffemodel, not "
                         f"{framework} files; use 'vai_p_darknet pruner transform CFG WEIGHTS'",
                         file=args.model)
    out = Path(args.output)
    proto = out.with_suffix(".prototxt")
    check_outputs([out, proto], [args.model, args.weights])  # before the long part
    graph = api.load(args.model, args.weights)
    shapes = resolve_input_shapes(graph, parse_input_shapes(args.input_shape))
    result = transform(graph, input_shapes=shapes)
    model_bytes, text = render_caffemodel(result.dense), render_prototxt(result.dense)
    atomic_write(out, model_bytes)
    atomic_write(proto, text)
    print(transform_note(result, [out, proto]))
    for gid, n in sorted(result.mixed.items()):
        print(f"  note: group {gid} has {n} channels zero in only some of its coupled layers; kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
