#!/usr/bin/env python3
"""Walk a folder of models and write one CSV row per model: ops, MACs, params, layers, or the error.

A model is a definition (.prototxt / .cfg) plus, when one sits beside it with
the same stem, its weights (.caffemodel / .weights). Files that are not net
definitions (solvers, label maps, vendor configs) are reported as errors like
any other unreadable model, so nothing is silently skipped.

Usage: python tools/batch_stat.py FOLDER [-o models.csv] [--input-shape NAME=N,C,H,W]
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import caffe_surgeon as cs

FIELDS = ["path", "framework", "layers", "ops", "macs", "params", "ops_all", "params_all", "error"]


def stat_row(definition: Path, root: Path) -> dict:
    row = {"path": str(definition.relative_to(root))}
    weights = definition.with_suffix(".caffemodel" if definition.suffix == ".prototxt" else ".weights")
    files = [definition] + ([weights] if weights.exists() else [])
    try:
        graph = cs.load(*files)
        report = cs.stat(graph)
    except cs.ModelError as e:
        row["error"] = str(e)
        return row
    row.update(framework=graph.framework, layers=len(graph.layers), ops=report.total.ops,
               macs=report.total.macs, params=report.total.params,
               ops_all=report.total_all.ops, params_all=report.total_all.params, error="")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("-o", "--output", type=Path, help="CSV file (default: stdout)")
    args = ap.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder}: not a folder", file=sys.stderr)
        return 2
    rows = [stat_row(p, args.folder) for p in sorted(args.folder.rglob("*"))
            if p.suffix in (".prototxt", ".cfg") and p.is_file()]
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        writer = csv.DictWriter(out, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    finally:
        if args.output:
            out.close()
    failed = sum(1 for r in rows if r.get("error"))
    print(f"{len(rows)} models, {len(rows) - failed} read, {failed} errors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
