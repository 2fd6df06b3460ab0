"""Convert every model in a folder to ONNX or Caffe, one CSV row per model.

Models are found by name under FOLDER (recursively): a Caffe NetParameter ``X.prototxt``
(solvers, vai_p configs and label maps are recognised by content and skipped) with
``X.caffemodel`` beside it, a Darknet ``X.cfg`` (a ``[net]`` section first) with
``X.weights``. A definition without weights gets ``init`` weights (seed 0), and the CSV
says so. Each converted model is checked against our engine on the same deterministic
input: onnxruntime runs the ONNX file as written; for Caffe, our engine reads the converted
files back (and OpenCV runs them too, when installed).

CSV columns: model, weights, status (ok / refused / error), reason, max_rel_error,
opencv_max_rel_error, seconds (load + convert + write). Rows are in path order whatever
the number of worker processes; status is "error" for anything unexpected and for an
agreement worse than 1e-4.

Usage::

    python tools/batch_convert.py FOLDER --to onnx|caffe -o OUT_DIR [--workers N] [--csv FILE]
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOL = 1e-4
SEED = 0
COLUMNS = ["model", "weights", "status", "reason", "max_rel_error", "opencv_max_rel_error", "seconds"]
DARKNET_HEAD = re.compile(r"\A(?:\s*(?:#[^\n]*)?\n)*\s*\[(net|network)\]", re.I)


def is_caffe_net(path: Path) -> bool:
    from caffe_surgeon.caffe.text import top_level_fields
    try:
        text = path.read_text(encoding="utf-8")
        return any(f.name in ("layer", "layers") for f in top_level_fields(text))
    except Exception:  # unreadable or not a text proto: not a net definition
        return False


def is_darknet_net(path: Path) -> bool:
    try:
        return bool(DARKNET_HEAD.match(path.read_text(encoding="utf-8", errors="replace")))
    except OSError:
        return False


def find_models(folder: Path) -> list[tuple[Path, Path | None]]:
    """(definition, weights or None) for every model under ``folder``, in path order."""
    found = []
    for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        if not path.is_file():
            continue
        if path.suffix == ".prototxt" and is_caffe_net(path):
            weights = path.with_suffix(".caffemodel")
        elif path.suffix == ".cfg" and is_darknet_net(path):
            weights = path.with_suffix(".weights")
        else:
            continue
        found.append((path, weights if weights.is_file() else None))
    return found


def convert_one(job) -> dict:
    """One CSV row (a worker's job): ``(folder, definition, weights, target, out_dir)``."""
    import time

    folder, definition, weights, target, out_dir = job
    rel = definition.relative_to(folder)
    row = {"model": rel.as_posix(), "weights": weights.name if weights else f"init seed {SEED}",
           "status": "ok", "reason": "", "max_rel_error": "", "opencv_max_rel_error": "", "seconds": ""}
    start = time.perf_counter()
    try:
        out = Path(out_dir) / rel.with_suffix(".onnx" if target == "onnx" else ".prototxt")
        out.parent.mkdir(parents=True, exist_ok=True)
        if target == "onnx":
            from tools.convert_check import check_onnx_export
            result = check_onnx_export(definition, weights, out=out, seed=SEED)
            if result["status"] == "refused":
                row.update(status="refused", reason=result["reason"])
            else:
                row["max_rel_error"] = f"{result['error']:.3g}"
            row["seconds"] = f"{result['seconds']:.2f}"
        else:
            from tools.convert_check import check_caffe_conversion
            result = check_caffe_conversion(definition, weights, out, seed=SEED)
            row.update({k: v for k, v in result.items() if k in row})
    except Exception as e:  # a bug or an unreadable file: reported in the row, the batch goes on
        row.update(status="error", reason=f"{type(e).__name__}: {e}".replace("\n", " "))
        row["seconds"] = f"{time.perf_counter() - start:.2f}"
    if row["status"] == "ok" and row["max_rel_error"] and float(row["max_rel_error"]) > TOL:
        row.update(status="error", reason=f"outputs differ from our engine by {row['max_rel_error']} "
                                          f"relative (more than {TOL:g})")
    return row


def _init_worker():
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--to", required=True, choices=("onnx", "caffe"))
    ap.add_argument("-o", "--output", required=True, type=Path, help="folder for the converted models")
    ap.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--csv", type=Path, help="the CSV file (default OUT_DIR/convert.csv)")
    args = ap.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    models = find_models(args.folder)
    if not models:
        print(f"error: no model definition under {args.folder}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    jobs = [(args.folder, d, w, args.to, args.output) for d, w in models]
    if args.workers == 1:
        rows = [convert_one(j) for j in jobs]
    else:
        with ProcessPoolExecutor(args.workers, initializer=_init_worker) as pool:
            rows = list(pool.map(convert_one, jobs))
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    from caffe_surgeon.fileio import atomic_write
    target = args.csv or args.output / "convert.csv"
    atomic_write(target, text.getvalue())
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "refused", "error")}
    print(f"{len(rows)} models: {counts['ok']} ok, {counts['refused']} refused, "
          f"{counts['error']} error; wrote {target}")
    return 1 if counts["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
