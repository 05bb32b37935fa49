"""Charts as SVG strings, drawn on the server: no JavaScript, no chart library, nothing from a CDN.

Two shapes cover the dashboard: `bars_over_time` (one stacked bar per time bucket, e.g. requests
and errors) and `grouped_bars` (one row per category, one horizontal bar per series, e.g. p50, p95
and p99 per model). Each has a title, axes with ticks and labels, a legend, and a `<title>` on
every bar (the browser shows it as a tooltip; screen readers read it).

Every text that reaches the SVG, from labels to tooltips, is escaped here: the templates include
what these functions return with `|safe`, and model names or key names are the operator's input.
The SVG scales to its container's width (viewBox), so a chart never makes the page scroll sideways.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH = 960
FONT = 'font-family="system-ui, sans-serif" font-size="12"'
# Text and axes in the page's own colour, so the charts read in the admin's dark mode too.
INK = 'fill="currentColor"'
GRID = 'stroke="currentColor" stroke-opacity="0.15"'
AXIS = 'stroke="currentColor" stroke-opacity="0.5"'


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]  # None: no value (no bar)
    color: str  # a CSS colour of our own, e.g. "#417690"


def bars_over_time(
    *,
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    unit: str,
    tooltips: Sequence[str] | None = None,
    height: int = 260,
) -> str:
    """Stacked vertical bars, one per label (a time bucket), the series stacked in order. `unit`
    names the y axis (the values are counts: whole-number ticks); `tooltips`, one per bar, replace
    the default "label: name value, ..." text."""
    left, right, top, bottom = 56, 12, 40, 36
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    n = max(len(labels), 1)
    totals = [sum(s.values[i] or 0 for s in series) for i in range(len(labels))]
    top_value, step = _scale(max(totals, default=0), whole=True)
    ident = _ident(title)
    parts = [_open(ident, title, WIDTH, height), _legend(series, WIDTH - right, 16)]
    parts += _y_axis(left, top, plot_w, plot_h, top_value, step, unit)

    slot = plot_w / n
    bar_w = max(slot * 0.8, 1.0)
    every = math.ceil(n / 12)  # at most about a dozen labels on the x axis
    for i, label in enumerate(labels):
        x = left + i * slot + (slot - bar_w) / 2
        y: float = top + plot_h
        tip = (
            tooltips[i]
            if tooltips
            else f"{label}: " + ", ".join(f"{s.name} {_number(s.values[i] or 0)}" for s in series)
        )
        rects = []
        for s in series:
            value = s.values[i] or 0
            h = plot_h * value / top_value
            if h <= 0:
                continue
            y -= h
            rects.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{escape(s.color)}"/>'
            )
        # A transparent rect over the whole slot: the tooltip shows even over an empty bucket.
        hover = (
            f'<rect x="{left + i * slot:.1f}" y="{top}" width="{slot:.1f}" height="{plot_h}" '
            'fill="transparent"/>'
        )
        parts.append(f"<g><title>{escape(tip)}</title>{hover}{''.join(rects)}</g>")
        if i % every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" {INK}>'
                f"{escape(label)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def grouped_bars(
    *,
    title: str,
    categories: Sequence[str],
    series: Sequence[Series],
    unit: str,
    label_chars: int = 34,
) -> str:
    """Horizontal bars: a row per category, in it a bar per series (None: no bar). Long category
    labels are cut to `label_chars` (the whole label is in the row's tooltip)."""
    left, right, top, bottom = 230, 48, 40, 36
    bar_h, gap = 10, 10
    row_h = bar_h * max(len(series), 1) + gap
    plot_w = WIDTH - left - right
    plot_h = max(row_h * len(categories), row_h)
    height = top + plot_h + bottom
    values = [v for s in series for v in s.values if v is not None]
    top_value, step = _scale(max(values, default=0))
    ident = _ident(title)
    parts = [_open(ident, title, WIDTH, height), _legend(series, WIDTH - right, 16)]
    parts += _x_axis(left, top, plot_w, plot_h, top_value, step, unit)

    for i, category in enumerate(categories):
        y0 = top + i * row_h + gap / 2
        short = category if len(category) <= label_chars else category[: label_chars - 1] + "…"
        bars = []
        for j, s in enumerate(series):
            value = s.values[i]
            if value is None:
                continue
            w = plot_w * value / top_value
            y = y0 + j * bar_h
            bars.append(
                f'<rect x="{left}" y="{y:.1f}" width="{max(w, 1):.1f}" height="{bar_h - 1}" '
                f'fill="{escape(s.color)}"><title>{escape(f"{category}: {s.name} {_number(value)} {unit}")}'
                "</title></rect>"
            )
        parts.append(
            f"<g><title>{escape(category)}</title>"
            f'<text x="{left - 8}" y="{y0 + (row_h - gap) / 2 + 4:.1f}" text-anchor="end" {INK}>'
            f"{escape(short)}</text>{''.join(bars)}</g>"
        )
    if not categories:
        parts.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2 + 4}" text-anchor="middle" {INK}>'
            "no data</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


# --- the parts --------------------------------------------------------------------------------------------


def _open(ident: str, title: str, width: int, height: int) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'preserveAspectRatio="xMinYMin meet" role="img" aria-labelledby="{ident}" class="chart" {FONT}>'
        f'<title id="{ident}">{escape(title)}</title>'
        f'<text x="0" y="16" font-size="14" font-weight="bold" {INK}>{escape(title)}</text>'
    )


def _legend(series: Sequence[Series], right: float, y: float) -> str:
    """The series' names, right-aligned on one line."""
    items = []
    x = right
    for s in reversed(series):
        x -= 7 * len(s.name) + 8
        items.append(
            f'<rect x="{x - 14:.1f}" y="{y - 9}" width="10" height="10" fill="{escape(s.color)}"/>'
            f'<text x="{x:.1f}" y="{y}" {INK}>{escape(s.name)}</text>'
        )
        x -= 24
    return "<g>" + "".join(items) + "</g>"


def _y_axis(
    left: float, top: float, w: float, h: float, top_value: float, step: float, unit: str
) -> list[str]:
    parts = []
    ticks = round(top_value / step)
    for k in range(ticks + 1):
        y = top + h - h * k / ticks
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" {GRID}/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" {INK}>{_number(k * step)}</text>'
        )
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + h}" {AXIS}/>')
    parts.append(f'<line x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}" {AXIS}/>')
    parts.append(
        f'<text x="{left - 44}" y="{top + h / 2:.1f}" transform="rotate(-90 {left - 44} {top + h / 2:.1f})" '
        f'text-anchor="middle" {INK}>{escape(unit)}</text>'
    )
    return parts


def _x_axis(
    left: float, top: float, w: float, h: float, top_value: float, step: float, unit: str
) -> list[str]:
    parts = []
    ticks = round(top_value / step)
    for k in range(ticks + 1):
        x = left + w * k / ticks
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + h}" {GRID}/>')
        parts.append(
            f'<text x="{x:.1f}" y="{top + h + 16}" text-anchor="middle" {INK}>{_number(k * step)}</text>'
        )
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + h}" {AXIS}/>')
    parts.append(f'<line x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}" {AXIS}/>')
    parts.append(f'<text x="{left + w}" y="{top + h + 32}" text-anchor="end" {INK}>{escape(unit)}</text>')
    return parts


def _scale(largest: float, *, whole: bool = False) -> tuple[float, float]:
    """An axis' end and tick step: 1, 2 or 5 times a power of ten, about four ticks up to `largest`
    (`whole`: a step of at least 1, for counts)."""
    if largest <= 0 or not math.isfinite(largest):
        return 1.0, 1.0
    rough = largest / 4
    power = 10 ** math.floor(math.log10(rough))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= rough)
    if whole:
        step = max(step, 1)
    return math.ceil(largest / step) * step, step


def _number(value: float) -> str:
    """A tick or tooltip figure: whole numbers with thousands separators, small ones to 3 digits."""
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _ident(title: str) -> str:
    return "chart-" + (re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "untitled")
