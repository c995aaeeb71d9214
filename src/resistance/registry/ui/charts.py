"""Charts drawn on the server as SVG, so a page needs no script and no CDN.

Each chart is a small, self-contained ``<svg>`` with a ``<title>`` and
``<desc>`` (read by screen readers) and ``role="img"``; the page shows the
same numbers in a table beside it.  Text is escaped here, so a chart can be
marked safe in a template.  Colours meet WCAG AA contrast on white.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

#: Series colours (dark enough for 3:1 against white as graphics need).
PALETTE = ("#1f5fa8", "#b3441e", "#2e7d32", "#6a3d9a", "#7a5b00")
WIDTH = 640
HEIGHT = 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 48


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: Sequence[float | None]
    #: The series' colour; by default the palette's next one.
    colour: str | None = None


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    if value <= 4:  # small counts: whole-number ticks 0-4
        return 4.0
    step = 10 ** len(str(int(value))) / 10 if value >= 1 else 0.1
    top = step
    while top < value:
        top += step
    return top


def _frame(title: str, desc: str, body: list[str]) -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" class="chart">'
        f"<title>{escape(title)}</title><desc>{escape(desc)}</desc>"
    )
    return Markup(head + "".join(body) + "</svg>")


def _axes(labels: Sequence[str], top: float, unit: str) -> list[str]:
    out = []
    plot_h = HEIGHT - TOP - BOTTOM
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        out.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_fmt(value))}{escape(unit)}</text>"
        )
    n = len(labels)
    if n:
        every = max(1, n // 8)
        slot = (WIDTH - LEFT - RIGHT) / n
        for i, label in enumerate(labels):
            if i % every:
                continue
            x = LEFT + slot * (i + 0.5)
            out.append(
                f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    return out


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _legend(series: Sequence[Series]) -> list[str]:
    out = []
    x = LEFT
    for i, s in enumerate(series):
        colour = s.colour or PALETTE[i % len(PALETTE)]
        out.append(
            f'<rect x="{x}" y="{HEIGHT - 18}" width="12" height="12" fill="{colour}"/>'
            f'<text x="{x + 16}" y="{HEIGHT - 8}">{escape(s.name)}</text>'
        )
        x += 24 + 8 * len(s.name)
    return out


def _plot(
    labels: Sequence[str], series: Sequence[Series], unit: str
) -> tuple[float, float, float, list[str]]:
    """The value axis' top, the plot's height, one label's width, and the axes drawn."""
    values = [v for s in series for v in s.values if v is not None]
    top = _nice_max(max(values, default=0.0))
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(labels))
    return top, HEIGHT - TOP - BOTTOM, slot, _axes(labels, top, unit)


def bar_chart(
    title: str, labels: Sequence[str], series: Sequence[Series], *, unit: str = ""
) -> Markup:
    """Grouped bars: one group per label, one bar per series."""
    top, plot_h, slot, body = _plot(labels, series, unit)
    bar = slot * 0.8 / max(1, len(series))
    for j, s in enumerate(series):
        colour = s.colour or PALETTE[j % len(PALETTE)]
        for i, v in enumerate(s.values):
            if not v:
                continue
            h = plot_h * v / top
            x = LEFT + slot * i + slot * 0.1 + bar * j
            body.append(
                f'<rect x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{escape(s.name)} '
                f"{escape(labels[i])}: {escape(_fmt(v))}{escape(unit)}</title></rect>"
            )
    body += _legend(series)
    desc = f"Bar chart of {', '.join(s.name for s in series)} by {len(labels)} groups."
    return _frame(title, desc, body)


def line_chart(
    title: str, labels: Sequence[str], series: Sequence[Series], *, unit: str = ""
) -> Markup:
    """Lines over ``labels`` (e.g. days); a ``None`` value breaks the line."""
    top, plot_h, slot, body = _plot(labels, series, unit)
    for j, s in enumerate(series):
        colour = s.colour or PALETTE[j % len(PALETTE)]
        runs: list[list[str]] = [[]]
        for i, v in enumerate(s.values):
            if v is None:
                runs.append([])
                continue
            x = LEFT + slot * (i + 0.5)
            y = TOP + plot_h - plot_h * v / top
            runs[-1].append(f"{x:.1f},{y:.1f}")
            body.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"><title>'
                f"{escape(s.name)} {escape(labels[i])}: {escape(_fmt(v))}{escape(unit)}"
                "</title></circle>"
            )
        for run in runs:
            if len(run) > 1:
                body.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                    f'points="{" ".join(run)}"/>'
                )
    body += _legend(series)
    desc = f"Line chart of {', '.join(s.name for s in series)} over {len(labels)} points."
    return _frame(title, desc, body)
