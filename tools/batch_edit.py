#!/usr/bin/env python3
"""Fold BN and strip every model in a folder; one CSV row per model saying what changed.

A model is a definition (.prototxt / .cfg) plus, when one sits beside it with
the same stem, its weights (.caffemodel / .weights); without weights only strip
has work to do (a batch norm without statistics is kept and counted). Each model
goes through ``cs.edit.fold_bn(keep_unfoldable=True)`` then ``cs.edit.strip``
(Caffe: ``keep_phase="TEST"``, a deploy file) and is written under OUT with its
relative path. Files beside nets that are not nets (solvers, label maps, vai_p
configs; ``tools/batch_stat.py`` tells them apart) get a ``skipped`` row; a model
an edit refuses gets its one-line error. Models are independent, so
``--workers N`` edits N at a time in separate processes; the CSV is in path order
whatever the workers did, and every written file is the same for any N.

Usage: python tools/batch_edit.py FOLDER -o OUT [--workers N]
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

FIELDS = ["path", "framework", "layers_before", "layers_after", "folded", "kept", "stripped",
          "params_before", "params_after", "written", "skipped", "error"]
WEIGHTS = {".prototxt": ".caffemodel", ".cfg": ".weights"}


def _params(graph) -> int | str:
    import caffe_surgeon as cs
    try:
        return cs.stat(graph).total_all.params
    except cs.ModelError:
        return ""  # shapes need a database: the counts stay blank, the edit still runs


def edit_one(definition: str, root: str, out: str) -> dict:
    """Fold and strip one model; a ModelError becomes the row's ``error``."""
    import caffe_surgeon as cs
    from tools.batch_stat import not_a_net
    definition, root, out = Path(definition), Path(root), Path(out)
    rel = definition.relative_to(root)
    row = dict.fromkeys(FIELDS, "")
    row["path"] = rel.as_posix()
    weights = definition.with_suffix(WEIGHTS[definition.suffix])
    files = [definition] + ([weights] if weights.is_file() else [])
    try:
        graph = cs.load(*files)
    except cs.ModelError as e:
        why = not_a_net(definition)
        row["skipped" if why else "error"] = why or str(e).replace(str(root) + "/", "")
        return row
    row.update(framework=graph.framework, layers_before=len(graph.layers),
               params_before=_params(graph))
    folds: list[str] = []
    strips: list[str] = []
    try:
        edited = cs.edit.fold_bn(graph, keep_unfoldable=True, report=folds.append)
        edited = cs.edit.strip(edited, keep_phase="TEST" if graph.framework == "caffe" else None,
                               report=strips.append)
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        outputs = [target] + ([target.with_suffix(weights.suffix)] if len(files) == 2 else [])
        cs.save(edited, *outputs)
    except cs.ModelError as e:
        row["error"] = str(e).replace(str(root) + "/", "")
        return row
    row.update(layers_after=len(edited.layers), params_after=_params(edited),
               folded=sum(l.startswith("folded") for l in folds),
               kept=sum(l.startswith("kept") for l in folds), stripped=len(strips),
               written=" ".join(p.relative_to(out).as_posix() for p in outputs))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True,
                    help="folder for the edited models and edits.csv")
    ap.add_argument("--workers", type=int, default=1, help="models edited at a time (default 1)")
    args = ap.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("error: --workers must be >= 1", file=sys.stderr)
        return 2
    folder, out = args.folder.resolve(), args.output.resolve()
    if out == folder or folder in out.parents:
        print("error: -o must be outside FOLDER (its models would be edited again)", file=sys.stderr)
        return 2
    found = sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHTS),
                   key=lambda p: p.relative_to(folder).as_posix())
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(p), str(folder), str(out)) for p in found]
    if args.workers == 1:
        rows = [edit_one(*j) for j in jobs]
    else:
        with ProcessPoolExecutor(args.workers) as pool:
            rows = list(pool.map(edit_one, *zip(*jobs))) if jobs else []
    from caffe_surgeon.fileio import atomic_write
    buf = io.StringIO()
    writer = csv.DictWriter(buf, FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "edits.csv", buf.getvalue())
    done = sum(1 for r in rows if r["written"])
    print(f"{done} of {len(rows)} models edited; {out / 'edits.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
