"""``vai_p_caffe``: drop-in command names of the vendor's Caffe pruning tool.

Options use the vendor's single-dash spelling (``-model``, ``-config``);
double dashes are accepted too.
"""
from __future__ import annotations

import argparse
import sys

from .. import api
from ..errors import ModelError
from .common import guarded, parse_input_shapes, resolve_input_shapes

LATER = {"ana", "prune", "finetune", "transform"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vai_p_caffe")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stat", help="ops and params of a prototxt (vendor log format)")
    p.add_argument("-model", "--model", required=True)
    p.add_argument("-weights", "--weights")
    p.add_argument("-input_shape", "--input-shape", action="append")
    for name in sorted(LATER):
        p = sub.add_parser(name, help=f"{name} (not available in this release)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


@guarded
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command in LATER:
        raise ModelError(f"'vai_p_caffe {args.command}' is not available in this release of "
                         "caffe-surgeon yet; 'stat' is")
    from ..opcount import format_vendor
    files = [args.model] + ([args.weights] if args.weights else [])
    graph = api.load(*files)
    shapes = resolve_input_shapes(graph, parse_input_shapes(args.input_shape))
    print(format_vendor(api.stat(graph, shapes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
