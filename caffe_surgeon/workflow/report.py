"""What the workflow prints and writes: the ``prune`` summary and the ``ana`` results.

The prune summary reproduces the vendor's table byte for byte
(``zoo/caffe/xilinx_pruning/rpt/logfile_compress*.txt``)::

    summary of REGULAR compression with rate 0.7:
    +-------------------------------------------------------------------+
    | Item           | Baseline       | Compressed     | Delta          |
    +-------------------------------------------------------------------+
    | Accuracy       | 0.943749785    | 0.954749584    | 0.0109997988   |
    +-------------------------------------------------------------------+
    | Weights        | 3.7649951 M    | 425.46701 K    | -88.6994019%   |
    +-------------------------------------------------------------------+
    | Operations     | 2.1539185 G    | 636.272827 M   | -70.4597549%   |
    +-------------------------------------------------------------------+

Rules read off the real logs (both reproduced exactly by the tests): every
number is a float32 printed with 9 significant digits (``%.9g``); counts are
divided by 1e3 / 1e6 / 1e9 in float32 and get `` K`` / `` M`` / `` G``; the
delta of counts is ``(compressed / baseline - 1) * 100`` in float32 with a
``%`` sign, the accuracy delta ``compressed - baseline`` in float32; cells are
``| `` + text padded to 15 columns; rules are ``+`` and 67 dashes.

The vendor's ``ana`` prints only progress ("Analysis completed 42%"), no
table, so the sensitivity table here is our own plain aligned layout; the CSV
and PNG are ours too. All files are written atomically.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..fileio import atomic_write, make_folder

_F32 = np.float32
_CELL = 15
_RULE = "+" + "-" * (4 * (_CELL + 2) - 1) + "+"


# ====================================================================== prune summary
def _g9(x) -> str:
    text = "%.9g" % _F32(x)
    return "0" if text == "-0" else text


def format_rate(rate: float) -> str:
    """``rate`` as the vendor prints it (float32, ``%g``): 0.0 -> "0", 0.7 -> "0.7"."""
    return "%g" % (_F32(rate) + _F32(0))  # -0.0 + 0 -> 0.0: no "regular_rate_-0"


def format_count(n) -> str:
    """A weight/operation count as in the summary: "3.7649951 M", "2.1539185 G".

    Below 1000 the vendor's logs show no example; we print the bare number.
    """
    n = float(n)
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{_g9(_F32(n) / _F32(scale))} {unit}"
    return _g9(n)


def format_count_delta(baseline, compressed) -> str:
    """Relative change of a count in percent, as the vendor computes it (float32)."""
    b, c = _F32(baseline), _F32(compressed)
    if b == 0:
        return "0%" if c == 0 else "inf%"
    return _g9((c / b - _F32(1)) * _F32(100)) + "%"


@dataclass
class PruneSummary:
    """The numbers of one ``prune`` summary: metric, weights and operations, before and after."""

    acc_baseline: float
    acc_compressed: float
    weights_baseline: int
    weights_compressed: int
    ops_baseline: int
    ops_compressed: int
    rate: float | None = None
    method: str = "REGULAR"

    def heading(self) -> str:
        """``summary of REGULAR compression with rate 0.7:`` (needs ``rate``)."""
        if self.rate is None:
            raise ModelError("the summary heading needs the rate")
        return f"summary of {self.method} compression with rate {format_rate(self.rate)}:"

    def table(self) -> str:
        """The 9-line table, no trailing newline."""
        acc_delta = _F32(self.acc_compressed) - _F32(self.acc_baseline)
        rows = [
            ("Item", "Baseline", "Compressed", "Delta"),
            ("Accuracy", _g9(self.acc_baseline), _g9(self.acc_compressed), _g9(acc_delta)),
            ("Weights", format_count(self.weights_baseline),
             format_count(self.weights_compressed),
             format_count_delta(self.weights_baseline, self.weights_compressed)),
            ("Operations", format_count(self.ops_baseline), format_count(self.ops_compressed),
             format_count_delta(self.ops_baseline, self.ops_compressed)),
        ]
        lines = [_RULE]
        for row in rows:
            lines.append("".join(f"| {cell:<{_CELL}}" for cell in row) + "|")
            lines.append(_RULE)
        return "\n".join(lines)

    def format(self) -> str:
        """Heading (when ``rate`` is known) and table."""
        return (self.heading() + "\n" if self.rate is not None else "") + self.table()


def format_prune_summary(acc_baseline, acc_compressed, weights_baseline, weights_compressed,
                         ops_baseline, ops_compressed) -> str:
    """The vendor's summary table for these numbers (see :class:`PruneSummary`)."""
    return PruneSummary(acc_baseline, acc_compressed, weights_baseline, weights_compressed,
                        ops_baseline, ops_compressed).table()


# ====================================================================== ana sensitivity
@dataclass
class SensitivityRow:
    """One prunable group: its name, its layers, and the metric at each ratio (NaN = not run)."""

    group: str
    values: list[float]
    layers: tuple[str, ...] = ()
    channels: int | None = None


@dataclass
class SensitivityTable:
    """``ana`` results: ``metric`` (acc_name) measured with one group pruned at each ratio."""

    metric: str
    baseline: float
    ratios: list[float]
    rows: list[SensitivityRow] = field(default_factory=list)
    note: str = ""  # printed under the table (e.g. which groups early stop cut short)

    def __post_init__(self):
        for row in self.rows:
            if len(row.values) != len(self.ratios):
                raise ModelError(f"sensitivity of group '{row.group}' has {len(row.values)} "
                                 f"values for {len(self.ratios)} ratios")


def _ratio_label(r: float) -> str:
    return "%g" % r


def _absent(v) -> bool:
    return v is None or math.isnan(v)


def format_sensitivity(table: SensitivityTable, digits: int = 4, relative: bool = False) -> str:
    """An aligned text table: one row per group, one column per ratio.

    With ``relative`` the cells are the change against the baseline in percent
    ((v - base) / |base| x 100) instead of the metric itself. Groups with more
    than one layer list them in the ``layers`` column; ``-`` marks a ratio that
    was not evaluated.
    """
    def show(v):
        if _absent(v) or (relative and table.baseline == 0):
            return "-"
        if relative:
            return f"{(v - table.baseline) / abs(table.baseline) * 100:+.{max(digits - 2, 1)}f}"
        return f"{v:.{digits}f}"

    head = ["group"]
    with_layers = any(len(r.layers) > 1 or (r.layers and r.layers[0] != r.group)
                      for r in table.rows)
    with_channels = any(r.channels is not None for r in table.rows)
    if with_layers:
        head.append("layers")
    if with_channels:
        head.append("channels")
    ratio_cols = [_ratio_label(r) for r in table.ratios]
    body = []
    for r in table.rows:
        row = [r.group]
        if with_layers:
            row.append(",".join(r.layers))
        if with_channels:
            row.append("" if r.channels is None else str(r.channels))
        row += [show(v) for v in r.values]
        body.append(row)
    cols = head + ratio_cols
    left = {i for i, c in enumerate(head) if c in ("group", "layers")}
    widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(cols)]

    def line(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    what = f"change of {table.metric} in %" if relative else table.metric
    title = (f"sensitivity: {what} with one group pruned by each ratio "
             f"(baseline {table.metric} = {table.baseline:.6g})")
    out = [title, line(cols), "  ".join("-" * w for w in widths)]
    out += [line(b) for b in body]
    if table.note:
        out.append(table.note)
    return "\n".join(out)


def write_sensitivity_table(table: SensitivityTable, path, digits: int = 4,
                            relative: bool = False) -> None:
    """:func:`format_sensitivity` to a text file, atomically."""
    atomic_write(path, format_sensitivity(table, digits, relative) + "\n")


def _num(v) -> str:
    if _absent(v):
        return ""
    return repr(float(v))


def sensitivity_csv(table: SensitivityTable) -> str:
    """CSV text: ``group,layers,channels,baseline,<ratio>...``; one row per group.

    ``layers`` is ``;``-separated; numbers are written in full (shortest
    round-trip form); a ratio that was not evaluated is an empty cell. The
    metric name is in the ``baseline`` header: ``baseline_<metric>``.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["group", "layers", "channels", f"baseline_{table.metric}"]
               + [_ratio_label(r) for r in table.ratios])
    for r in table.rows:
        w.writerow([r.group, ";".join(r.layers), "" if r.channels is None else r.channels,
                    _num(table.baseline)] + [_num(v) for v in r.values])
    return buf.getvalue()


def write_sensitivity_csv(table: SensitivityTable, path) -> None:
    """:func:`sensitivity_csv` to ``path``, atomically."""
    atomic_write(path, sensitivity_csv(table))


def sensitivity_png(table: SensitivityTable, title: str | None = None) -> bytes:
    """PNG bytes of the sensitivity curves (metric vs ratio, one line per group, the
    baseline dashed), drawn by :mod:`.chart`."""
    from .chart import MARKERS, PALETTE, Series, line_chart_png
    series = []
    for i, r in enumerate(table.rows):
        points = [(x, float(v)) for x, v in zip(table.ratios, r.values) if not _absent(v)]
        series.append(Series(r.group, points, PALETTE[i % len(PALETTE)],
                             MARKERS[(i // len(PALETTE)) % len(MARKERS)]))
    ratios = list(table.ratios)
    if ratios:
        series.append(Series(f"baseline {table.baseline:.4g}",
                             [(min(ratios), table.baseline), (max(ratios), table.baseline)],
                             "#000000", dashed=True))
    return line_chart_png(series, title or f"ana sensitivity: {table.metric} with one group pruned",
                          "fraction of the group's channels pruned", table.metric,
                          x_ticks=[(r, _ratio_label(r)) for r in ratios])


def write_sensitivity_plot(table: SensitivityTable, path, title: str | None = None) -> None:
    """:func:`sensitivity_png` to ``path``, atomically."""
    atomic_write(Path(path), sensitivity_png(table, title))


SENSITIVITY_REPORT_NAMES = ("ana_sensitivity.txt", "ana_sensitivity.csv", "ana_sensitivity.png")


def write_sensitivity_reports(table: SensitivityTable, folder) -> list[Path]:
    """Write ``ana_sensitivity.txt`` (table), ``.csv`` and ``.png`` into ``folder``
    (created), atomically; return the paths written."""
    folder = Path(folder)
    make_folder(folder)
    txt, csv_, png = (folder / n for n in SENSITIVITY_REPORT_NAMES)
    write_sensitivity_table(table, txt)
    write_sensitivity_csv(table, csv_)
    write_sensitivity_plot(table, png)
    return [txt, csv_, png]
