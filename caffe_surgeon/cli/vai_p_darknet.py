"""``vai_p_darknet pruner <command> cfg [weights]``: drop-in names of the vendor's Darknet tool."""
from __future__ import annotations

import argparse
import sys

from .. import api
from .common import Parser, check_outputs, guarded, transform_note



def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vai_p_darknet")
    tools = parser.add_subparsers(dest="tool", required=True)
    pruner = tools.add_parser("pruner", help="pruning commands")
    sub = pruner.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stat", help="per-layer BFLOPs and params of a cfg")
    p.add_argument("cfg")
    p.add_argument("weights", nargs="?")
    p = sub.add_parser("transform", help="sparse weights (zeroed filters) -> dense cfg and weights")
    p.add_argument("cfg", help="the [pruning] config file, or a model .cfg")
    p.add_argument("weights", help="sparse .weights")
    p.add_argument("-o", "--output", help="output prefix (default: <workspace>/model-transform)")
    from . import darknet_workflow
    darknet_workflow.add_parsers(sub)
    return parser


@guarded
def main(argv=None):
    args = build_parser().parse_args(argv)
    from . import darknet_workflow
    if args.command in darknet_workflow.COMMANDS:
        return darknet_workflow.run(args)
    if args.command == "transform":
        return _transform(args)
    from ..opcount import format_table
    # with weights: read them too, so that a file that does not fit the cfg is reported
    graph = api.load(args.cfg, args.weights) if args.weights else api.load(args.cfg)
    print(format_table(api.stat(graph)))
    return 0


def _transform(args):
    from pathlib import Path

    from ..darknet.writer import write_darknet
    from ..fileio import make_folder
    from ..pruning.transform import transform
    cfg_path, prefix, ignore = Path(args.cfg), None, ()
    if cfg_path.suffix.lower() != ".cfg" or _is_pruning_ini(cfg_path):
        from ..workflow.config import read_darknet_pruning
        conf = read_darknet_pruning(cfg_path)
        cfg_path, prefix = Path(conf.modelcfg), Path(conf.workspace) / "model-transform"
        graph0 = api.load(cfg_path)
        ignore = [graph0.layers[i].name for i in conf.ignore_layer if i < len(graph0.layers)]
    prefix = Path(args.output) if args.output else (prefix or cfg_path.with_name(cfg_path.stem + "-transform"))
    if prefix.suffix.lower() in (".cfg", ".weights"):  # -o out.cfg means the prefix out
        prefix = prefix.with_suffix("")
    out_cfg, out_weights = (prefix.with_name(prefix.name + ext) for ext in (".cfg", ".weights"))
    check_outputs([out_cfg, out_weights], [args.cfg, cfg_path, args.weights], option="-o")
    graph = api.load(cfg_path, args.weights)
    result = transform(graph, ignore=ignore)
    make_folder(out_cfg.parent)
    write_darknet(result.dense, out_cfg, out_weights)
    print(transform_note(result, [out_cfg, out_weights]))
    return 0


def _is_pruning_ini(path) -> bool:
    try:
        head = path.read_text(errors="replace")[:4096]
    except OSError:
        return False
    return "[pruning]" in head


if __name__ == "__main__":
    sys.exit(main())
