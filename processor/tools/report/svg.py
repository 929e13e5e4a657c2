"""Charts as static SVG drawn from Python: lines, stacked bars, limit lines, shaded
spans and run markers on one time axis. No script, no network; every text escaped.

Static SVG keeps the report one small file that opens anywhere (a mail attachment, a
browser without JavaScript) and shows the same thing printed; hover titles give values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

__all__ = ["Chart", "Series", "axis_time", "render", "si"]

WIDTH, HEIGHT = 920, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 40, 30


@dataclass(slots=True)
class Series:
    """One thing drawn: ``line`` (None values break it), ``bars`` (stacked in the order
    given), or ``limit`` (a dashed line)."""

    name: str
    color: str
    values: list[float | None]
    kind: str = "line"


@dataclass(slots=True)
class Chart:
    """A chart over the buckets ``0 .. len(values)`` of ``width`` seconds each."""

    key: str
    title: str
    unit: str
    width: float
    series: list[Series]
    spans: Sequence[tuple[float, float, str]] = ()
    runs: Sequence[tuple[float, str]] = ()
    fmt: Callable[[float], str] = field(default=lambda v: si(v))


def si(value: float) -> str:
    """``950``, ``1.2k``, ``3.4M``: a short number for an axis."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else f"{int(value)}"


def axis_time(seconds: float) -> str:
    """``45s``, ``12m``, ``3h20m``: a tick label of the time axis."""
    s = int(round(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m" + (f"{s % 60:02d}s" if s % 60 else "")
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _nice(top: float) -> float:
    """A round axis maximum at or above ``top``."""
    if not top > 0 or not math.isfinite(top):
        return 1.0
    exp = float(10 ** math.floor(math.log10(top)))
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * exp >= top:
            return step * exp
    return 10 * exp


def _ticks(end: float) -> list[float]:
    steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600,
             43200, 86400]
    step = next((s for s in steps if end / s <= 8), steps[-1] * math.ceil(end / 8 / 86400))
    return [i * step for i in range(int(end // step) + 1)]


def render(chart: Chart) -> str:
    """The chart as an ``<svg>`` element."""
    n = max(len(s.values) for s in chart.series) if chart.series else 0
    end = max(n * chart.width, 1e-9)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + x / end * plot_w

    stacks = [0.0] * n
    top = 0.0
    for s in chart.series:
        if s.kind == "bars":
            for i, v in enumerate(s.values):
                stacks[i] += v or 0.0
        else:
            top = max([top] + [v for v in s.values if v is not None])
    top = _nice(max([top] + stacks))

    def py(y: float) -> float:
        return TOP + plot_h - min(y, top) / top * plot_h

    out = [f'<svg class="chart" data-chart="{escape(chart.key)}" viewBox="0 0 {WIDTH} '
           f'{HEIGHT}" width="100%" role="img" aria-label="{escape(chart.title)}" '
           'xmlns="http://www.w3.org/2000/svg">',
           f'<text class="title" x="{LEFT}" y="16">{escape(chart.title)}</text>']
    for a, b, reason in chart.spans:
        x0, x1 = px(min(a, end)), px(min(b, end))
        out.append(f'<rect class="span" x="{x0:.1f}" y="{TOP}" width="{max(x1 - x0, 1):.1f}" '
                   f'height="{plot_h}"><title>{escape(reason)}: {axis_time(a)} to '
                   f'{axis_time(b)}</title></rect>')
    for i in range(5):
        y = top * i / 4
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(y):.1f}" '
                   f'y2="{py(y):.1f}"/><text class="tick" x="{LEFT - 6}" y="{py(y) + 4:.1f}" '
                   f'text-anchor="end">{escape(chart.fmt(y))}</text>')
    for t in _ticks(end):
        out.append(f'<text class="tick" x="{px(t):.1f}" y="{HEIGHT - 10}" '
                   f'text-anchor="middle">{escape(axis_time(t))}</text>')
    out.append(f'<text class="tick unit" x="4" y="{TOP - 10}">{escape(chart.unit)}</text>')
    base = [0.0] * n
    bar_w = max(plot_w / max(n, 1) - 1, 1)
    for s in chart.series:
        if s.kind == "bars":
            rects = []
            for i, v in enumerate(s.values):
                if v:
                    y0, y1 = py(base[i]), py(base[i] + v)
                    rects.append(f'<rect x="{px(i * chart.width):.1f}" y="{y1:.1f}" '
                                 f'width="{bar_w:.1f}" height="{max(y0 - y1, 0.5):.1f}">'
                                 f'<title>{escape(s.name)}: {escape(chart.fmt(v))} at '
                                 f'{axis_time(i * chart.width)}</title></rect>')
                    base[i] += v
            out.append(f'<g class="series bars" data-series="{escape(s.name)}" '
                       f'fill="{s.color}">{"".join(rects)}</g>')
            continue
        points = []
        pen = "M"
        for i, v in enumerate(s.values):
            if v is None:
                pen = "M"
                continue
            x = px((i + 0.5) * chart.width)
            points.append(f"{pen}{x:.1f},{py(v):.1f}")
            pen = "L"
        dash = ' stroke-dasharray="6 4"' if s.kind == "limit" else ""
        if points:
            out.append(f'<path class="series {s.kind}" data-series="{escape(s.name)}" '
                       f'd="{" ".join(points)}" fill="none" stroke="{s.color}" '
                       f'stroke-width="{1.5 if s.kind == "limit" else 2}"{dash}>'
                       f'<title>{escape(s.name)}</title></path>')
    for x, label in chart.runs:
        if 0 < x < end:
            out.append(f'<line class="run" x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{TOP}" '
                       f'y2="{TOP + plot_h}"/><text class="tick" x="{px(x) + 3:.1f}" '
                       f'y="{TOP + 10}">{escape(label)}</text>')
    legend_x = WIDTH - RIGHT
    for s in reversed(chart.series):
        label = escape(s.name)
        legend_x -= 14 + 7 * len(s.name)
        out.append(f'<rect x="{legend_x:.0f}" y="8" width="10" height="10" fill="{s.color}"/>'
                   f'<text class="legend" x="{legend_x + 13:.0f}" y="17">{label}</text>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" '
               f'y2="{TOP + plot_h}"/></svg>')
    return "".join(out)
