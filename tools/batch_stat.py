#!/usr/bin/env python3
"""Walk a folder of models and write one CSV row per model: ops, MACs, params, layers, or the error.

A model is a definition (.prototxt / .cfg) plus, when one sits beside it with
the same stem, its weights (.caffemodel / .weights). A file that is not a
net definition but one of the files that sit beside nets (a solver or an SSD
label map: it parses as that protobuf message, not NetParameter; a vai_p_caffe
config or a vai_p_darknet [pruning] file: their readers accept it) gets a row
with ``skipped`` saying what it is, not an error: it was never a model. Anything else that does not load is an error.

``--input-shape`` is ``caffe-surgeon stat``'s: a bare ``N,C,H,W`` shapes each
net's only input, ``NAME=N,C,H,W`` the input of that name (a net without it gets
an error row, as ``stat`` refuses it).

Usage: python tools/batch_stat.py FOLDER [-o models.csv] [--input-shape [NAME=]N,C,H,W ...]
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import caffe_surgeon as cs
from caffe_surgeon.caffe import caffe_pb2
from caffe_surgeon.caffe.text import parse_message
from caffe_surgeon.cli.common import parse_input_shapes, resolve_input_shapes
from caffe_surgeon.workflow.caffe_config import read_caffe_config
from caffe_surgeon.workflow.config_values import read_text
from caffe_surgeon.workflow.darknet_config import read_darknet_pruning

FIELDS = ["path", "framework", "layers", "ops", "macs", "params", "ops_all", "params_all",
          "error", "skipped"]


def _message(message_type):
    return lambda path: parse_message(read_text(path, "prototxt"), message_type(), path)


#: Files found beside nets that are not nets: (suffix, what it is, the reader that accepts it).
NOT_NETS = ((".prototxt", "a solver (parses as caffe.SolverParameter)",
             _message(caffe_pb2.SolverParameter)),
            (".prototxt", "an SSD label map (parses as caffe.LabelMap)", _message(caffe_pb2.LabelMap)),
            (".prototxt", "a vai_p_caffe config", lambda path: read_caffe_config(path, path.parent)),
            (".cfg", "a vai_p_darknet [pruning] config",
             lambda path: read_darknet_pruning(path, path.parent)))


def _accepts(read, path: Path) -> bool:
    try:
        read(path)
    except cs.ModelError:
        return False
    return True


def not_a_net(definition: Path) -> str | None:
    """Why a file that did not load is no net definition, or None when it may be one (a
    .prototxt that parses as caffe.NetParameter, or a file none of :data:`NOT_NETS` accepts)."""
    if definition.suffix == ".prototxt" and _accepts(_message(caffe_pb2.NetParameter), definition):
        return None
    for suffix, what, read in NOT_NETS:
        if definition.suffix == suffix and _accepts(read, definition):
            return f"{what}, not a net definition"
    return None


def stat_row(definition: Path, root: Path, input_shapes: dict | None = None) -> dict:
    """One CSV row: the model's counts, or its ``error``, or why it was ``skipped``.

    Args:
        definition: a .prototxt or .cfg under ``root``.
        root: the folder walked (paths in the row are relative to it).
        input_shapes: ``parse_input_shapes`` of the ``--input-shape`` values.
    """
    row = {"path": str(definition.relative_to(root)), "error": "", "skipped": ""}
    weights = definition.with_suffix(".caffemodel" if definition.suffix == ".prototxt" else ".weights")
    files = [definition] + ([weights] if weights.exists() else [])
    try:
        graph = cs.load(*files)
    except cs.ModelError as e:
        why = not_a_net(definition)
        row["skipped" if why else "error"] = why or str(e)
        return row
    try:
        report = cs.stat(graph, resolve_input_shapes(graph, dict(input_shapes or {})))
    except cs.ModelError as e:
        row["error"] = str(e)
        return row
    row.update(framework=graph.framework, layers=len(graph.layers), ops=report.total.ops,
               macs=report.total.macs, params=report.total.params,
               ops_all=report.total_all.ops, params_all=report.total_all.params)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("-o", "--output", type=Path, help="CSV file (default: stdout)")
    ap.add_argument("--input-shape", action="append", metavar="[NAME=]N,C,H,W",
                    help="shape of an input or data layer whose size a definition does not "
                         "give (as caffe-surgeon stat takes it)")
    args = ap.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder}: not a folder", file=sys.stderr)
        return 2
    try:
        shapes = parse_input_shapes(args.input_shape)
    except cs.ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = [stat_row(p, args.folder, shapes) for p in sorted(args.folder.rglob("*"))
            if p.suffix in (".prototxt", ".cfg") and p.is_file()]
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        writer = csv.DictWriter(out, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    finally:
        if args.output:
            out.close()
    failed = sum(1 for r in rows if r["error"])
    skipped = sum(1 for r in rows if r["skipped"])
    print(f"{len(rows) - skipped} models, {len(rows) - skipped - failed} read, {failed} errors; "
          f"{skipped} files skipped as not nets (solvers, label maps, vai_p configs)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
