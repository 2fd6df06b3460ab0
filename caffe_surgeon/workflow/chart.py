"""Line charts as PNG, drawn with Pillow: ``ana``'s sensitivity curves and finetune's log.

A core dependency draws them, so every install writes its plots and no command pays a
plotting library's import (matplotlib's took 0.5-1 s of the Fashion fixture's 5-second
``ana``). The chart is drawn at :data:`SCALE` times its size and reduced with a Lanczos
filter, which smooths its lines and text. Text uses Pillow's scalable font where its
FreeType is present (Pillow 10.1 and later), else Pillow's bitmap font. The bytes depend
only on the data and Pillow's version.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace

#: drawn this many times larger, then reduced (anti-aliasing)
SCALE = 2
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
MARKERS = "os^vD"
GRID, AXES, TEXT = "#d9d9d9", "#333333", "#222222"


@dataclass
class Series:
    """One line: ``points`` (x, y) in order, joined; ``right``: on the right-hand axis."""
    label: str
    points: list
    color: str
    marker: str | None = None  # one of MARKERS
    dashed: bool = False
    right: bool = False


def nice_ticks(lo: float, hi: float, most: int = 8) -> list[float]:
    """Evenly spaced round values (steps of 1, 2, 2.5 or 5 x 10^k) covering [lo, hi]."""
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.05 or 0.05
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / (most - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def tick_label(value: float, step: float) -> str:
    """``value`` with as many decimals as the tick step needs."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:  # 2.5 x 10^k
        decimals += 1
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size * SCALE)
    except (TypeError, OSError, ImportError, AttributeError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


class _Canvas:
    def __init__(self, width, height):
        from PIL import Image, ImageDraw
        self.image = Image.new("RGB", (width * SCALE, height * SCALE), "white")
        self.draw = ImageDraw.Draw(self.image)

    @staticmethod
    def size(text, font):
        left, top, right, bottom = font.getbbox(text)
        return (right - left) / SCALE, (bottom - top) / SCALE

    @staticmethod
    def _origin(xy, text, font, anchor):
        # the ink box placed by hand (Pillow's own anchors need FreeType): horizontal l/m/r,
        # vertical t/m at the ink's top or middle
        left, top, right, bottom = font.getbbox(text)
        x = xy[0] - {"l": left, "m": (left + right) / 2, "r": right}[anchor[0]]
        y = xy[1] - {"t": top, "m": (top + bottom) / 2}[anchor[1]]
        return x, y

    def text(self, xy, text, font, anchor="lt"):
        origin = self._origin((xy[0] * SCALE, xy[1] * SCALE), text, font, anchor)
        self.draw.text(origin, text, fill=TEXT, font=font)

    def vertical_text(self, centre, text, font):
        from PIL import Image, ImageDraw
        w, h = (int(math.ceil(v * SCALE)) + 4 for v in self.size(text, font))
        strip = Image.new("L", (w, h), 0)
        ImageDraw.Draw(strip).text(self._origin((w / 2, h / 2), text, font, "mm"), text, fill=255,
                                   font=font)
        strip = strip.rotate(90, expand=True)
        x, y = int(centre[0] * SCALE - strip.width / 2), int(centre[1] * SCALE - strip.height / 2)
        self.image.paste(Image.new("RGB", strip.size, TEXT), (x, y), strip)

    def line(self, points, color, width=1.0, dashed=False):
        pts = [(x * SCALE, y * SCALE) for x, y in points]
        w = max(1, round(width * SCALE))
        if not dashed:
            self.draw.line(pts, fill=color, width=w, joint="curve")
            return
        on, off = 5 * SCALE, 3 * SCALE
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            length = math.hypot(x1 - x0, y1 - y0)
            s = 0.0
            while s < length:
                e = min(length, s + on)
                self.draw.line([(x0 + (x1 - x0) * s / length, y0 + (y1 - y0) * s / length),
                                (x0 + (x1 - x0) * e / length, y0 + (y1 - y0) * e / length)],
                               fill=color, width=w)
                s = e + off

    def marker(self, xy, kind, color, radius=2.6):
        x, y, r = xy[0] * SCALE, xy[1] * SCALE, radius * SCALE
        shapes = {"s": [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)],
                  "^": [(x, y - r * 1.2), (x + r * 1.1, y + r * 0.8), (x - r * 1.1, y + r * 0.8)],
                  "v": [(x, y + r * 1.2), (x + r * 1.1, y - r * 0.8), (x - r * 1.1, y - r * 0.8)],
                  "D": [(x, y - r * 1.3), (x + r, y), (x, y + r * 1.3), (x - r, y)]}
        if kind in shapes:
            self.draw.polygon(shapes[kind], fill=color)
        else:
            self.draw.ellipse([x - r, y - r, x + r, y + r], fill=color)

    def png(self, width, height) -> bytes:
        from PIL import Image
        lanczos = getattr(getattr(Image, "Resampling", Image), "LANCZOS")
        small = self.image.resize((width, height), lanczos)
        buf = io.BytesIO()
        small.save(buf, format="PNG")
        return buf.getvalue()


def _axis(series, right: bool):
    """(low, high, ticks, labels) of the axis for the left or right series: their values
    with 4% to spare each way, round ticks inside it; None if it has no series."""
    ys = [y for s in series if s.right == right for _, y in s.points]
    if not ys:
        return None
    lo, hi = min(ys), max(ys)
    spare = (hi - lo) * 0.04 or abs(hi) * 0.05 or 0.05
    lo, hi = lo - spare, hi + spare
    ticks = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0]
    ticks = [t for t in ticks if lo - 1e-9 * step <= t <= hi + 1e-9 * step]
    return lo, hi, ticks, [tick_label(t, step) for t in ticks]


def line_chart_png(series: list[Series], title: str, x_label: str, y_label: str,
                   y2_label: str | None = None, x_ticks: list | None = None,
                   plot_size: tuple[int, int] = (620, 380)) -> bytes:
    """PNG bytes of ``series`` on one plot area of ``plot_size`` pixels, with the legend on
    the right in as many columns as the entries need. ``x_ticks``: (value, label) pairs, else
    round values; a right-hand axis (``y2_label``) for the series marked ``right``."""
    series = [replace(s, points=[(x, y) for x, y in s.points if math.isfinite(x) and math.isfinite(y)])
              for s in series]  # a NaN or infinite metric has no place on the plot
    series = [s for s in series if s.points]
    xs = [x for s in series for x, _ in s.points] or [0.0, 1.0]
    if x_ticks is None:
        values = nice_ticks(min(xs), max(xs))
        x_ticks = [(v, tick_label(v, values[1] - values[0])) for v in values]
    x_lo, x_hi = min([min(xs)] + [v for v, _ in x_ticks]), max([max(xs)] + [v for v, _ in x_ticks])
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    margin = (x_hi - x_lo) * 0.03  # points and lines clear of the frame
    x_lo, x_hi = x_lo - margin, x_hi + margin
    left_axis = _axis(series, False) or (0.0, 1.0, [0.0, 1.0], ["0", "1"])
    right_axis = _axis(series, True)
    tick_font, label_font, title_font, legend_font = _font(11), _font(12), _font(13), _font(10)
    size = _Canvas.size
    line_h = size("0g", tick_font)[1]
    pw, ph = plot_size
    pad, gap = 10, 6
    left = pad + size(y_label, label_font)[1] + gap + max(size(t, tick_font)[0] for t in left_axis[3]) + gap
    right_w = 0.0
    if right_axis is not None:
        right_w = gap + max(size(t, tick_font)[0] for t in right_axis[3]) + gap + \
            size(y2_label or "", label_font)[1] + gap
    entry_h = size("0g", legend_font)[1] + 6
    per_column = max(1, int(ph // entry_h))
    columns = -(-len(series) // per_column) if series else 0
    column_w = max([size(s.label, legend_font)[0] for s in series] or [0]) + 34
    top = pad + size(title, title_font)[1] + 2 * gap
    width = int(math.ceil(left + pw + right_w + 2 * gap + columns * column_w + pad))
    height = int(math.ceil(top + ph + gap + line_h + gap + size(x_label, label_font)[1] + pad))
    c = _Canvas(width, height)
    x0, y0, x1, y1 = left, top, left + pw, top + ph

    def px(x):
        return x0 + (x - x_lo) / (x_hi - x_lo) * pw

    def py(y, axis):
        return y1 - (y - axis[0]) / (axis[1] - axis[0]) * ph

    for v, text in x_ticks:
        c.line([(px(v), y0), (px(v), y1)], GRID, 0.6)
        c.text((px(v), y1 + gap), text, tick_font, "mt")
    for v, text in zip(*left_axis[2:]):
        c.line([(x0, py(v, left_axis)), (x1, py(v, left_axis))], GRID, 0.6)
        c.text((x0 - gap, py(v, left_axis)), text, tick_font, "rm")
    if right_axis is not None:
        for v, text in zip(*right_axis[2:]):
            c.line([(x1, py(v, right_axis)), (x1 + 4, py(v, right_axis))], AXES, 0.8)
            c.text((x1 + gap, py(v, right_axis)), text, tick_font, "lm")
        c.vertical_text((x1 + right_w - gap - size(y2_label or "", label_font)[1] / 2, (y0 + y1) / 2),
                        y2_label or "", label_font)
    c.line([(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)], AXES, 0.8)
    c.text(((x0 + x1) / 2, pad), title, title_font, "mt")
    c.text(((x0 + x1) / 2, y1 + gap + line_h + gap), x_label, label_font, "mt")
    c.vertical_text((pad + size(y_label, label_font)[1] / 2, (y0 + y1) / 2), y_label, label_font)
    for s in series:
        axis = right_axis if s.right else left_axis
        pts = [(px(x), py(y, axis)) for x, y in s.points]
        c.line(pts, s.color, 1.3, s.dashed)
        if s.marker:
            for p in pts:
                c.marker(p, s.marker, s.color)
    lx = x1 + right_w + 2 * gap
    for i, s in enumerate(series):
        ex, ey = lx + (i // per_column) * column_w, y0 + (i % per_column) * entry_h + entry_h / 2
        c.line([(ex, ey), (ex + 22, ey)], s.color, 1.3, s.dashed)
        if s.marker:
            c.marker((ex + 11, ey), s.marker, s.color)
        c.text((ex + 28, ey), s.label, legend_font, "lm")
    return c.png(width, height)
