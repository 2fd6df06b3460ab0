"""``vai_p_darknet pruner <command> cfg [weights]``: drop-in names of the vendor's Darknet tool."""
from __future__ import annotations

import argparse
import sys

from .. import api
from ..errors import ModelError
from .common import guarded

LATER = {"ana", "prune", "finetune", "transform", "valid", "map"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vai_p_darknet")
    tools = parser.add_subparsers(dest="tool", required=True)
    pruner = tools.add_parser("pruner", help="pruning commands")
    sub = pruner.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stat", help="per-layer BFLOPs and params of a cfg")
    p.add_argument("cfg")
    p.add_argument("weights", nargs="?")
    for name in sorted(LATER):
        p = sub.add_parser(name, help=f"{name} (not available in this release)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


@guarded
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command in LATER:
        raise ModelError(f"'vai_p_darknet pruner {args.command}' is not available in this release "
                         "of caffe-surgeon yet; 'stat' is")
    from ..opcount import format_table
    graph = api.load(args.cfg)
    print(format_table(api.stat(graph)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
