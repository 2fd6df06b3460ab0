"""Check every Caffe definition of the shared zoo against OpenCV 4.x.

For each NetParameter prototxt under ``../shared/zoo/caffe`` (solvers,
configs and label maps are recognised by content and skipped):

1. read it with our reader (TEST phase), infer every layer's shape, give it
   synthetic weights (seed 0) and write model files to a temporary folder;
2. read -> write -> re-read must give an equal graph (verbatim writer, and
   rendered from the IR alone);
3. OpenCV's output shape of every layer it builds must equal ours;
4. OpenCV's outputs for the original definition + init caffemodel must equal
   its outputs for our rewritten files (bit-exact or <= 1e-6 relative).

Each model runs in its own process with a timeout, so a big net (VGG-16's
528 MB of weights, FCN-8s) cannot exhaust memory across models, an OpenCV
crash is reported as a crash, and the temporary files go with the model.

Usage::

    python tools/oracle_sweep.py --markdown docs/zoo_support.md [--json out.json]
        [--only SUBSTRING ...] [--timeout 1200] [--no-forward]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import oracle_caffe as oc  # noqa: E402  (a library beside the tests)

from zoo_unsupported import NOT_RUNNABLE, UNSUPPORTED  # noqa: E402  (beside the tests)

#: What the sweep cannot say by itself: why an unsupported model is unsupported, with the
#: evidence. Keyed by path relative to the zoo's caffe folder; the list lives in
#: tests/zoo_unsupported.py, which the slow tests read too (an unlisted failure fails them).
ANALYSIS = {k.removeprefix("caffe/"): v for k, v in UNSUPPORTED.items() if k.startswith("caffe/")}


# ------------------------------------------------------------------ one model (child process)
def run_child(model: Path, root: Path, workdir: Path, result: Path, forward: bool) -> int:
    rep = oc.ModelReport(model.relative_to(root).as_posix())

    def save(r):
        tmp = result.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(r)))
        os.replace(tmp, result)

    oc.check_zoo_model(model, workdir, root=root, forward=forward, report=rep, progress=save)
    save(rep)
    return 0


# ------------------------------------------------------------------ the sweep (parent)
def run_model(model: Path, root: Path, timeout: float, forward: bool) -> dict:
    """Run one model in a child process; always returns a report dict."""
    workdir = Path(tempfile.mkdtemp(prefix="oracle-sweep-"))
    result = workdir / "report.json"
    cmd = [sys.executable, __file__, "--child", str(model), "--zoo", str(root),
           "--workdir", str(workdir), "--result", str(result)] + ([] if forward else ["--no-forward"])
    env = dict(os.environ, OPENCV_LOG_LEVEL="SILENT")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    failure = ""
    try:
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            sig = -proc.returncode if proc.returncode < 0 else None
            tail = [l for l in err.strip().splitlines() if l.strip()][-1:] or [""]
            failure = (f"crashed ({signal.Signals(sig).name})" if sig
                       else f"exited with {proc.returncode}: {tail[0][:200]}")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        failure = f"timed out after {timeout:.0f} s"
    try:
        rep = json.loads(result.read_text())
    except (OSError, ValueError):
        rep = asdict(oc.ModelReport(model.relative_to(root).as_posix()))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if failure:
        where = rep.get("stage") or "start"
        who = "OpenCV " if where in ("opencv", "forward") else ""
        msg = f"{who}{failure} during stage '{where}'"
        if where in ("opencv", "forward"):
            rep["opencv_error"] = msg
        else:
            rep["supported"], rep["reason"] = False, msg
    rep["seconds"] = round(time.monotonic() - start, 1)
    return rep


# ------------------------------------------------------------------ presentation
def cells(rep: dict) -> dict:
    """Short texts for one table row."""
    if not rep["supported"]:
        return {"supported": f"**no**: {rep['reason']}", "shapes": "-", "roundtrip": "-", "outputs": "-"}
    view = " (deploy view)" if rep.get("view") else ""
    if rep["shapes_compared"] is None:
        shapes = f"n/a: {rep['opencv_error']}"
    elif rep["shape_mismatches"]:
        shapes = (f"**no**: {len(rep['shape_mismatches'])} of {rep['shapes_compared']} layers differ: "
                  + "; ".join(rep["shape_mismatches"][:3]))
    else:
        shapes = f"yes, {rep['shapes_compared']} of {rep['layers']} layers{view}"
    if rep["roundtrip_ok"]:
        roundtrip = "yes" + (", caffemodel byte-identical" if "byte-identical" in rep["roundtrip_detail"] else "")
    else:
        roundtrip = f"**no**: {rep['roundtrip_detail']}"
    if rep["opencv_equal"] is None:
        outputs = f"n/a: {rep['opencv_error']}" if rep["shapes_compared"] is not None else "n/a"
    elif rep["opencv_equal"]:
        outputs = f"yes ({rep['opencv_detail']}){view}"
    else:
        outputs = f"**no**: {rep['opencv_detail']}"
    return {"supported": "yes", "shapes": shapes, "roundtrip": roundtrip, "outputs": outputs}


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary(reps: list[dict]) -> list[str]:
    n = len(reps)
    sup = [r for r in reps if r["supported"]]
    shaped = [r for r in sup if r["shapes_compared"] is not None]
    agree = [r for r in shaped if not r["shape_mismatches"]]
    rt = [r for r in sup if r["roundtrip_ok"]]
    eq = [r for r in sup if r["opencv_equal"]]
    return [
        f"- Definitions checked: {n}; **supported by caffe-surgeon: {len(sup)}**, not supported: {n - len(sup)}.",
        f"- Shapes compared with OpenCV on {len(shaped)} models "
        f"({sum(r['shapes_compared'] for r in shaped)} layers); they agree on {len(agree)} models "
        f"({sum(r['shapes_compared'] for r in agree)} layers).",
        f"- Read -> write -> re-read gives an equal graph for {len(rt)} of {len(sup)} supported models.",
        f"- OpenCV outputs of the rewritten files equal those of the originals for {len(eq)} models; "
        f"{len(sup) - len([r for r in sup if r['opencv_equal'] is not None])} could not be run in OpenCV "
        "(see the table).",
    ]


def unsupported_list() -> list[str]:
    """Every listed case, with its reason: a slow sweep's ModelError elsewhere is a failure."""
    out = [f"- `{k}` (not supported): {_md(v)}" for k, v in sorted(UNSUPPORTED.items())]
    return out + [f"- `{k}` (loads; the forward engine cannot run it): {_md(v)}"
                  for k, v in sorted(NOT_RUNNABLE.items())]


def markdown(reps: list[dict], command: str) -> str:
    import cv2
    import numpy as np

    lines = [
        "# Zoo support: caffe-surgeon against OpenCV",
        "",
        f"Generated by `{command}` (OpenCV {cv2.__version__}, NumPy {np.__version__}, "
        f"Python {platform.python_version()}). Every NetParameter prototxt under "
        "`shared/zoo/caffe` is read in the TEST phase, given synthetic weights (seed 0), written, "
        "and checked: our per-layer output shapes against OpenCV's (`getLayersShapes`, matched by "
        "layer name), read -> write -> re-read (verbatim and rendered from the IR alone), and "
        "OpenCV's outputs for the original definition + init weights against our rewritten files "
        "on a deterministic random input at batch 1.",
        "",
        "OpenCV imports every layer whatever its phase rules and has no Data or loss layers, and "
        "its schema lacks some fork fields; for such files it is given a *deploy view* (data "
        "layers as inputs; training-only layers, fillers and lr specs dropped; layer types OpenCV "
        "lacks left out, an in-place one bypassed, any other with everything it feeds) - the notes "
        "say which and why.",
        "",
        "## Summary",
        "",
        *summary(reps),
        "",
        "## Per model",
        "",
        "| Model | Supported | Shapes agree with OpenCV | Round trip | OpenCV outputs: rewritten = original | Notes | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in reps:
        c = cells(r)
        notes = list(r.get("notes") or [])
        if r["model"] in ANALYSIS:
            notes.append(f"Why: {ANALYSIS[r['model']]}")
        lines.append("| " + " | ".join(_md(x) for x in (
            f"`{r['model']}`", c["supported"], c["shapes"], c["roundtrip"], c["outputs"],
            "; ".join(notes), r["seconds"])) + " |")
    unsupported = [r for r in reps if not r["supported"]]
    if unsupported:
        lines += ["", "## Not supported, and why", ""]
        for r in unsupported:
            why = ANALYSIS.get(r["model"], "")
            lines.append(f"- `{r['model']}`: {_md(r['reason'])}" + (f"  \n  {_md(why)}." if why else ""))
    lines += ["", "## Unsupported zoo cases the slow tests accept (tests/zoo_unsupported.py)", "",
              *unsupported_list()]
    no_oracle = [r for r in reps if r["supported"] and r["opencv_equal"] is None]
    if no_oracle:
        lines += ["", "## Supported, but OpenCV cannot run them as a full oracle", ""]
        for r in no_oracle:
            what = ("shapes compared, forward not run" if r["shapes_compared"] is not None
                    else "nothing compared")
            lines.append(f"- `{r['model']}` ({what}): {_md(r['opencv_error'])}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    ap.add_argument("--json", type=Path, help="also write the raw reports as JSON here")
    ap.add_argument("--only", nargs="*", default=[], help="only models whose path contains one of these")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per model (default 1200)")
    ap.add_argument("--no-forward", action="store_true", help="skip the OpenCV forward comparison")
    ap.add_argument("--zoo", type=Path, default=oc.ZOO_CAFFE, help="the zoo's caffe folder")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return run_child(args.child, args.zoo, args.workdir, args.result, not args.no_forward)

    models = oc.zoo_caffe_definitions(args.zoo)
    if not models:
        print(f"no Caffe definitions under {args.zoo}", file=sys.stderr)
        return 2
    if args.only:
        models = [m for m in models if any(s in m.relative_to(args.zoo).as_posix() for s in args.only)]
    reps = []
    for model in models:
        rep = run_model(model, args.zoo, args.timeout, not args.no_forward)
        reps.append(rep)
        c = cells(rep)
        print(f"{rep['model']:<58} {rep['seconds']:>7.1f}s  supported={c['supported'][:90]}\n"
              f"{'':<10}shapes={c['shapes'][:110]}\n{'':<10}roundtrip={c['roundtrip'][:60]}  "
              f"outputs={c['outputs'][:90]}", flush=True)
    print()
    print("\n".join(summary(reps)))
    command = "python tools/oracle_sweep.py" + (f" --markdown {args.markdown}" if args.markdown else "")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        text = markdown(reps, command)
        if args.markdown.exists():  # keep the section tools/onnx_sweep.py writes
            from tools.onnx_sweep import BEGIN, END, splice
            old = args.markdown.read_text()
            if BEGIN in old and END in old:
                text = splice(text, BEGIN + old.split(BEGIN, 1)[1].split(END, 1)[0] + END + "\n")
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(reps, indent=1))
    bad = [r for r in reps if r["supported"] and (r["shape_mismatches"] or not r["roundtrip_ok"]
                                                   or r["opencv_equal"] is False)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
