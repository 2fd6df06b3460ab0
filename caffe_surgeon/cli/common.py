"""What every command shares: one-line errors instead of tracebacks, shape arguments."""
from __future__ import annotations

import argparse
import os
import sys
from functools import wraps

from ..errors import ModelError

EXIT_USAGE = 2
EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE
NO_EARLY_STOP = "none"


INPUT_SHAPE_HELP = ("input size where the definition does not give it (a Data layer without "
                    "crop_size, HDF5Data): NAME=N,C,H,W, or N,C,H,W for a net with one input; "
                    "repeat for several inputs")
NO_PROGRESS_HELP = "no progress bar on stderr (for logs and scripts)"


class Parser(argparse.ArgumentParser):
    """argparse, except that a mistyped option is named even when the error argparse found
    first is another one ("--ration 0.5" used to get only "--ratio is required")."""

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)  # subparsers get their share
        return super().parse_known_args(args, namespace)

    def error(self, message):
        known = [s for a in self._actions for s in a.option_strings]
        unknown = [t.split("=", 1)[0] for t in getattr(self, "_argv", ()) if _looks_like_option(t)
                   and not any(k == t.split("=", 1)[0] or (t.startswith("--") and
                                                            k.startswith(t.split("=", 1)[0]))
                               for k in known)]
        if unknown and "unrecognized arguments" not in message:
            import difflib
            close = difflib.get_close_matches(unknown[0], known, 1)
            message = (f"unrecognized option {unknown[0]}"
                       + (f" (did you mean {close[0]}?)" if close else "") + f"; {message}")
        super().error(message)


def _looks_like_option(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)
        return False  # a negative number is a value
    except ValueError:
        return True


def transform_note(result, written) -> str:
    """``transform``'s line: what it removed, or that there was nothing to remove."""
    files = " and ".join(map(str, written))
    if not result.plan.removed:
        return (f"transform: no channel is zero in every layer that holds it, so nothing was "
                f"removed (this model is not a sparse pruned one); wrote {files} unchanged")
    total = sum(g.channels for g in result.plan.groups)
    return (f"transform: removed {result.plan.removed} all-zero channels in "
            f"{len(result.plan.groups)} groups (of {total}); wrote {files}")


def early_stop_arg(text: str):
    """``-early_stop``: a relative metric drop, or ``none`` (every ratio, whatever the config says)."""
    if text.strip().lower() in ("none", "off"):
        return NO_EARLY_STOP
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a relative drop like 0.1, or none; "
                                         f"got {text!r}") from None


def mean_arg(text: str) -> list[float]:
    """``--mean 104,117,123``: per-channel numbers."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, like "
                                         f"104,117,123; got {text!r}") from None


def seed_arg(text: str) -> int:
    """``--seed``: an integer >= 0 (NumPy's generators take no negative seeds)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def refine_arg(text: str) -> int:
    """``-refine N``: how many allocations to measure; an integer >= 0, as a seed is."""
    return seed_arg(text)


REFINE_HELP = ("measure up to N allocations near the allocator's (one group a ratio step up, "
               "another down, same operations) with the real evaluator and keep the best "
               "measured; reports both figures. Not in the vendor tool; 0 (default) is off")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def check_outputs(outputs, inputs, option: str = "-output") -> None:
    """Refuse outputs that would overwrite an input, each other, or a folder."""
    seen: dict[str, object] = {}
    ins = {os.path.realpath(i): i for i in inputs if i is not None}
    for o in outputs:
        key = os.path.realpath(o)
        if key in seen:
            raise ModelError(f"two outputs would be written to one file ({seen[key]} and {o}); "
                             f"choose another {option}", file=o)
        seen[key] = o
        if key in ins:
            raise ModelError(f"this output would overwrite the input {ins[key]}; choose another "
                             f"{option}", file=o)
        if os.path.isdir(o):
            raise ModelError(f"this output is a folder; give {option} a file name", file=o)


def guarded(main):
    """Run ``main``; a ModelError (or a broken pipe) becomes one line on stderr and exit 2."""
    @wraps(main)
    def run(argv=None):
        try:
            return main(argv) or 0
        except ModelError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except BrokenPipeError:
            return 0
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # a bug of ours: one line, the details on request
            if os.environ.get("CAFFE_SURGEON_TRACEBACK"):
                raise
            print(f"error: internal error ({type(e).__name__}: {e}); please report it with the "
                  "command line (CAFFE_SURGEON_TRACEBACK=1 shows where)", file=sys.stderr)
            return EXIT_INTERNAL
    return run


def parse_input_shapes(items) -> dict:
    """``["data=1,3,224,224", ...]`` (or one bare ``1,3,224,224``) -> {name: shape}."""
    shapes = {}
    for item in items or []:
        name, _, dims = item.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise ModelError(f"--input-shape '{item}': dims must be integers like data=1,3,224,224") from None
        if any(d <= 0 for d in shape):
            raise ModelError(f"--input-shape '{item}': dims must be positive")
        shapes[name or ""] = shape
    return shapes


def resolve_input_shapes(graph, shapes: dict) -> dict:
    """Give an unnamed shape to the graph's only input (or only source layer); a named
    shape must name one of them."""
    names = list(graph.inputs) or [t for l in graph.layers if not l.bottoms for t in l.tops[:1]]
    sources = set(graph.inputs) | {t for l in graph.layers if not l.bottoms for t in l.tops}
    unknown = [n for n in shapes if n and n not in sources]
    if unknown:
        raise ModelError(f"--input-shape names {', '.join(unknown)}, which the net does not "
                         f"take as input; its inputs: {', '.join(names) or '(none)'}")
    if "" not in shapes:
        return shapes
    shape = shapes.pop("")
    if len(names) != 1:
        raise ModelError(f"the net has {len(names)} inputs ({', '.join(names)}); name the one "
                         "to shape, as NAME=1,3,224,224")
    shapes[names[0]] = shape
    return shapes


def refit_note(refitted: list, calib) -> str:
    """What ``prune -reconstruct N`` did, for the line after the summary."""
    if not refitted:
        return (f"reconstruction: no layer refitted on {calib.describe()} (none lost input "
                "channels, or each had too few samples: they keep their folded weights)")
    return (f"reconstruction: refitted {len(refitted)} layer(s) by least squares on "
            f"{calib.describe()}: {', '.join(refitted)}")


def print_prune_summary(out, calib, metric_name: str) -> None:
    """What both prune commands print after writing: the vendor's summary, then our notes
    (allocation off target, the refit, predicted vs measured drop, the refinement)."""
    print(out.summary.format())
    if out.allocation.off_target_note():
        print(out.allocation.off_target_note())
    if calib is not None:
        print(refit_note(out.refitted, calib))
    print(out.prediction_note())
    if out.refinement is not None:
        print(out.refinement.note(metric_name))
