"""Small SVG charts (lines and bars) with nothing but the standard library.

The simulation's curves go into docs/ as SVG files a browser and GitHub show
as images; matplotlib would be a heavy dependency for three charts.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 60, 20, 36, 46
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd")


@dataclass(frozen=True)
class Series:
    """One line (or set of bars): a legend label and its points."""

    label: str
    points: tuple[tuple[float, float], ...]


def _nice_top(value: float) -> float:
    """A round number at or above ``value`` for the top of an axis."""
    if value <= 0:
        return 1.0
    step = 10 ** (len(str(int(value))) - 1) if value >= 1 else 0.1
    for mult in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * mult >= value:
            return step * mult
    return value


def _fmt(value: float) -> str:
    return f"{value:g}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"


def chart(title: str, x_label: str, y_label: str, series: list[Series], *, bars: bool = False,
          y_range: tuple[float, float] | None = None, guide: tuple[float, str] | None = None) -> str:
    """An SVG document: ``series`` as lines (or bars), axes with ticks, a legend, an optional guide line.

    ``guide`` is ``(y, label)``: a dashed horizontal line, e.g. a target.
    """
    xs = [x for s in series for x, _ in s.points] or [0.0, 1.0]
    ys = [y for s in series for _, y in s.points] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    if bars:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if x1 == x0:
        x1 = x0 + 1
    if y_range is None:
        top = max(ys + ([guide[0]] if guide else []))
        y_range = (min(0.0, min(ys)), _nice_top(top * 1.05))
    y0, y1 = y_range
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - (y - y0) / ((y1 - y0) or 1) * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>']
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{_fmt(y)}</text>')
    ticks = sorted({x for s in series for x, _ in s.points}) if bars else [x0 + (x1 - x0) * i / 5 for i in range(6)]
    if len(ticks) > 12:
        ticks = ticks[:: len(ticks) // 12 + 1]
    for x in ticks:
        out.append(f'<text x="{px(x):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{_fmt(x)}</text>')
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" stroke="#333"/>')
    out.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#333"/>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 8}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text x="14" y="{TOP + plot_h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {TOP + plot_h / 2})">{escape(y_label)}</text>')
    if guide is not None:
        gy, glabel = guide
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(gy):.1f}" y2="{py(gy):.1f}" stroke="#888" '
                   f'stroke-dasharray="6 4"/>')
        out.append(f'<text x="{WIDTH - RIGHT - 4}" y="{py(gy) - 4:.1f}" text-anchor="end" fill="#555">'
                   f'{escape(glabel)}</text>')
    bar_w = plot_w / max(1.0, (x1 - x0)) / max(1, len(series)) * 0.8
    for n, s in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        if bars:
            for x, y in s.points:
                left = px(x) - bar_w * len(series) / 2 + n * bar_w
                out.append(f'<rect x="{left:.1f}" y="{py(y):.1f}" width="{bar_w:.1f}" '
                           f'height="{max(0.0, py(y0) - py(y)):.1f}" fill="{colour}"/>')
        else:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            out.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in s.points)
        ly = TOP + 4 + 14 * n
        out.append(f'<rect x="{LEFT + 10}" y="{ly}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{LEFT + 24}" y="{ly + 9}">{escape(s.label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
