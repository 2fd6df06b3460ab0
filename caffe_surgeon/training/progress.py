"""What a training run shows and leaves behind: Caffe-like display lines, and the
loss/accuracy curve as ``finetune_log.csv`` and ``finetune_log.png`` in the output folder.

A display line (every ``display`` iterations, as Caffe prints them, plus speed)::

    Iteration 200, loss = 0.4121, lr = 0.001, 2410 images/s, ETA 0:01:05

The CSV is long format, one value per row (``iteration,phase,name,value``; phase
``train`` holds the smoothed ``loss`` and ``lr``, phase ``test`` the evaluator's
metrics), rewritten whole and atomically at every display and test, so a killed run
leaves a readable log; the plot is rewritten with it (:mod:`..workflow.chart`).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..fileio import atomic_write

LOG_NAMES = ("finetune_log.csv", "finetune_log.png")


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` (``?`` before any speed is known)."""
    if not seconds >= 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class TrainingLog:
    """Display lines, CSV and plot of one run (only rank 0 makes one).

    Args:
        folder: where the CSV and PNG go (None: display only).
        max_iter: the last iteration, for the ETA.
        images_per_iter: images one iteration consumes over all ranks
            (batch x ``iter_size`` x world size), for images/s.
        out: where display lines go (default stdout).
        rows: earlier rows (a resumed run continues its log), ``(iteration, phase, name, value)``.
    """

    def __init__(self, folder, max_iter: int, images_per_iter: int = 0, out=None,
                 rows: list | None = None):
        self.folder = None if folder is None else Path(folder)
        self.max_iter = max_iter
        self.images_per_iter = images_per_iter
        self.out = out or sys.stdout
        self.rows = list(rows or [])
        self._mark: tuple[float, int] | None = None

    def start(self, iteration: int) -> None:
        """Start the clock at ``iteration`` (speeds are measured from here)."""
        self._mark = (time.perf_counter(), iteration)

    def train(self, iteration: int, loss: float, lr: float, show: bool) -> None:
        """Record the smoothed loss and rate of ``iteration``; print a line if ``show``."""
        if not show:
            return
        self.rows += [(iteration, "train", "loss", float(loss)), (iteration, "train", "lr", float(lr))]
        rate = self._iters_per_s(iteration)
        speed = f", {rate * self.images_per_iter:.0f} images/s" if rate and self.images_per_iter else ""
        eta = format_eta((self.max_iter - iteration) / rate) if rate else "?"
        print(f"Iteration {iteration}, loss = {float(loss):.6g}, lr = {float(lr):.6g}{speed}, "
              f"ETA {eta}", file=self.out, flush=True)
        self.write()

    def test(self, iteration: int, metrics: dict) -> None:
        """Record and print the evaluator's metrics at ``iteration``."""
        for name, value in metrics.items():
            self.rows.append((iteration, "test", str(name), float(value)))
        shown = ", ".join(f"{k} = {float(v):.6g}" for k, v in metrics.items())
        print(f"Iteration {iteration}, Testing net: {shown}", file=self.out, flush=True)
        self.write()

    def _iters_per_s(self, iteration: int) -> float:
        if self._mark is None:
            self.start(iteration)
        t0, i0 = self._mark
        dt = time.perf_counter() - t0
        return (iteration - i0) / dt if iteration > i0 and dt > 0 else 0.0

    def csv(self) -> str:
        lines = ["iteration,phase,name,value"]
        lines += [f"{i},{p},{n},{v!r}" for i, p, n, v in self.rows]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        """Rewrite the CSV and the plot."""
        if self.folder is None:
            return
        csv_path, png_path = (self.folder / n for n in LOG_NAMES)
        atomic_write(csv_path, self.csv())
        atomic_write(png_path, self.png())

    def png(self) -> bytes:
        """The loss (left axis) and test metrics (right axis) against iterations."""
        from ..workflow.chart import PALETTE, Series, line_chart_png
        loss = [(i, v) for i, p, n, v in self.rows if p == "train" and n == "loss"]
        series = [Series("train loss (smoothed)", loss, PALETTE[0])]
        names = sorted({n for _, p, n, _ in self.rows if p == "test"})
        for k, name in enumerate(names):
            pts = [(i, v) for i, p, n, v in self.rows if p == "test" and n == name]
            series.append(Series(name, pts, PALETTE[1 + k % (len(PALETTE) - 1)], "o", right=True))
        return line_chart_png(series, "finetune", "iteration", "loss",
                              y2_label="test" if names else None)


def read_log_rows(folder, up_to: int) -> list:
    """The rows of an earlier run's CSV in ``folder`` up to iteration ``up_to`` (a resumed
    run continues the log of the run it resumes; rows past the snapshot are dropped)."""
    path = Path(folder) / LOG_NAMES[0]
    try:
        text = path.read_text("utf-8")
    except OSError:
        return []
    rows = []
    for line in text.splitlines()[1:]:
        parts = line.split(",")
        try:
            it, phase, name, value = int(parts[0]), parts[1], ",".join(parts[2:-1]), float(parts[-1])
        except (ValueError, IndexError):
            continue
        if it <= up_to:
            rows.append((it, phase, name, value))
    return rows
