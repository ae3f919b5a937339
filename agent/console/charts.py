"""Small server-side SVG charts: bars, lines, paired bars and a call timeline.

Drawn as plain SVG strings so a page costs no extra request, no JavaScript and no plotting library at request
time. Colours come from CSS classes (`s1`…`s3`, `bar`, …) defined in the console's stylesheet; every text is
escaped here, and the result is marked safe for the (autoescaping) templates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

Fmt = Callable[[float], str]

WIDTH = 600
HEIGHT = 230
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 12, 12, 34
_MAX_X_LABELS = 12


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    css: str = "s1"


@dataclass(frozen=True)
class Span:
    """One bar on a timeline lane, in seconds from the call's start."""

    lane: str
    start: float
    end: float
    css: str
    tip: str


@dataclass(frozen=True)
class Marker:
    at: float
    css: str
    tip: str


def plain(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def bar_chart(
    labels: Sequence[str], values: Sequence[float | None], *, title: str, fmt: Fmt = plain, css: str = "s1"
) -> Markup:
    """One bar per label (e.g. per hour); None draws nothing."""
    return _frame(title, labels, [Series(title, values, css)], fmt, kind="bar")


def line_chart(labels: Sequence[str], series: Sequence[Series], *, title: str, fmt: Fmt = plain) -> Markup:
    """Lines over shared labels; a None value breaks the line (an hour without data)."""
    return _frame(title, labels, series, fmt, kind="line")


def paired_bars(groups: Sequence[str], series: Sequence[Series], *, title: str, fmt: Fmt = plain) -> Markup:
    """Grouped bars: one group per metric, one bar per series (two eval runs side by side)."""
    return _frame(title, groups, series, fmt, kind="grouped")


def _frame(title: str, labels: Sequence[str], series: Sequence[Series], fmt: Fmt, *, kind: str) -> Markup:
    width, height = WIDTH, HEIGHT
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    values = [v for s in series for v in s.values if v is not None and math.isfinite(v)]
    tick = _nice(max(values, default=0.0) / 4)
    ticks = max(1, math.ceil(max(values, default=0.0) / tick - 1e-9))
    top = tick * ticks
    n = max(len(labels), 1)
    step = plot_w / n

    def y(value: float) -> float:
        return _TOP + plot_h - (max(value, 0.0) / top) * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(ticks + 1):
        level = tick * i
        gy = y(level)
        parts.append(f'<line class="grid" x1="{_LEFT}" x2="{width - _RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}"/>')
        parts.append(
            f'<text class="axis" x="{_LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end">{escape(fmt(level))}</text>'
        )
    every = max(1, math.ceil(len(labels) / _MAX_X_LABELS))
    for i, label in enumerate(labels):
        if i % every == 0:
            x = _LEFT + step * (i + 0.5)
            parts.append(
                f'<text class="axis" x="{x:.1f}" y="{height - _BOTTOM + 16}" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    if kind == "line":
        for s in series:
            parts.extend(_line(s, labels, step, y, fmt))
    else:
        inner = step * 0.8 / max(len(series), 1)
        for k, s in enumerate(series):
            for i, value in enumerate(s.values):
                if value is None or not math.isfinite(value):
                    continue
                x = _LEFT + step * i + step * 0.1 + inner * k
                by = y(value)
                tip = f"{labels[i] if i < len(labels) else ''} {s.name}: {fmt(value)}".strip()
                parts.append(
                    f'<rect class="bar {escape(s.css)}" x="{x:.1f}" y="{by:.1f}" width="{max(inner - 1, 1):.1f}" '
                    f'height="{_TOP + plot_h - by:.1f}"><title>{escape(tip)}</title></rect>'
                )
    parts.append(
        f'<line class="axis-line" x1="{_LEFT}" x2="{width - _RIGHT}" y1="{_TOP + plot_h}" y2="{_TOP + plot_h}"/>'
    )
    if len(series) > 1:
        parts.extend(_legend(series, width))
    parts.append("</svg>")
    return Markup("".join(parts))


def _line(s: Series, labels: Sequence[str], step: float, y: Callable[[float], float], fmt: Fmt) -> list[str]:
    parts: list[str] = []
    runs: list[list[tuple[float, float]]] = [[]]
    for i, value in enumerate(s.values):
        if value is None or not math.isfinite(value):
            runs.append([])
            continue
        x = _LEFT + step * (i + 0.5)
        runs[-1].append((x, y(value)))
        tip = f"{labels[i] if i < len(labels) else ''} {s.name}: {fmt(value)}".strip()
        parts.append(f'<circle class="dot {escape(s.css)}" cx="{x:.1f}" cy="{y(value):.1f}" r="2.5">')
        parts.append(f"<title>{escape(tip)}</title></circle>")
    for run in runs:
        if len(run) > 1:
            points = " ".join(f"{x:.1f},{py:.1f}" for x, py in run)
            parts.insert(0, f'<polyline class="line {escape(s.css)}" points="{points}"/>')
    return parts


def _legend(series: Sequence[Series], width: int) -> list[str]:
    parts = []
    x = width - _RIGHT - 90 * len(series)
    for s in series:
        parts.append(f'<rect class="bar {escape(s.css)}" x="{x}" y="{_TOP}" width="10" height="10"/>')
        parts.append(f'<text class="legend" x="{x + 14}" y="{_TOP + 9}">{escape(s.name)}</text>')
        x += 90
    return parts


def timeline(
    lanes: Sequence[str], spans: Sequence[Span], markers: Sequence[Marker], duration_s: float, *, title: str
) -> Markup:
    """Who spoke when: one lane per speaker (and tools), a bar per turn, a red line per barge-in."""
    lane_h, gap, label_w = 22, 8, 80
    width = WIDTH
    axis_y = _TOP + len(lanes) * (lane_h + gap)
    height = axis_y + 28
    end = max(duration_s, max((s.end for s in spans), default=0.0), max((m.at for m in markers), default=0.0), 1.0)
    scale = (width - label_w - _RIGHT) / end

    def x(t: float) -> float:
        return label_w + max(t, 0.0) * scale

    parts = [
        f'<svg class="chart timeline" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    rows = {lane: _TOP + i * (lane_h + gap) for i, lane in enumerate(lanes)}
    for lane, top in rows.items():
        parts.append(
            f'<rect class="lane" x="{label_w}" y="{top}" width="{width - label_w - _RIGHT}" height="{lane_h}"/>'
        )
        parts.append(f'<text class="axis" x="{label_w - 6}" y="{top + 15}" text-anchor="end">{escape(lane)}</text>')
    tick = _nice(end / 8)
    t = 0.0
    while t <= end + 1e-9:
        parts.append(f'<line class="grid" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{_TOP}" y2="{axis_y}"/>')
        parts.append(
            f'<text class="axis" x="{x(t):.1f}" y="{axis_y + 16}" text-anchor="middle">{escape(plain(t))} s</text>'
        )
        t += tick
    for span in spans:
        lane_top = rows.get(span.lane)
        if lane_top is None:
            continue
        w = max((span.end - span.start) * scale, 2.0)
        parts.append(
            f'<rect class="span {escape(span.css)}" x="{x(span.start):.1f}" y="{lane_top + 3}" width="{w:.1f}" '
            f'height="{lane_h - 6}"><title>{escape(span.tip)}</title></rect>'
        )
    for marker in markers:
        mx = x(marker.at)
        parts.append(
            f'<line class="marker {escape(marker.css)}" x1="{mx:.1f}" x2="{mx:.1f}" y1="{_TOP - 4}" y2="{axis_y}">'
            f"<title>{escape(marker.tip)}</title></line>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _nice(value: float) -> float:
    """The next 'round' number at or above `value` (1, 2, 2.5, 5 × 10^n), for axis tops and tick steps."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exp = 10.0 ** math.floor(math.log10(value))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * exp >= value * (1 - 1e-9):
            return m * exp
    return 10 * exp
