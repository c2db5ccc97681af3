"""Bar charts as SVG, rendered on the server (no script, nothing from a CDN).

:func:`bars` draws stacked bars, one stack per label and one colour per series,
with the largest total on the y axis, a few x labels and a legend; every bar
has a ``<title>`` (the browser shows it on hover) and the chart an
``aria-label`` summarising it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

PALETTE = ["#2563eb", "#f97316", "#16a34a", "#db2777", "#7c3aed", "#0891b2", "#ca8a04", "#dc2626", "#4b5563"]


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _fmt(n: float) -> str:
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    if n >= 1000:
        return f"{n / 1000:.1f}k"
    return f"{n:.0f}" if n == int(n) or n >= 10 else f"{n:.1f}"


def bars(labels: Sequence[str], series: Mapping[str, Sequence[float]], *, width: int = 720, height: int = 180,
         what: str = "events", ticks: int = 4, legend: bool = True) -> Markup:
    """Stacked bars: ``series[name][i]`` is the part of ``name`` in bar ``i`` (labelled ``labels[i]``)."""
    n = len(labels)
    left, right, top, bottom = 44, 8, 8, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for values in series.values()) for i in range(n)]
    peak = max(totals, default=0) or 1
    if all(float(v).is_integer() for values in series.values() for v in values) and peak < 10:
        peak = peak + (peak % 2)  # whole numbers on the axis: 0, peak/2, peak
    slot = plot_w / max(n, 1)
    gap = 1 if slot > 4 else 0
    bar_w = min(max(slot - gap, 0.5), 48.0)  # a few wide slots still look like bars
    names = list(series)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height + (18 if legend and names else 0)}" '
             f'width="100%" role="img" aria-label="{escape(_summary(labels, totals, what))}" '
             'xmlns="http://www.w3.org/2000/svg">']
    for frac in (0.0, 0.5, 1.0):  # grid and y labels
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">{_fmt(peak * frac)}</text>')
    for i in range(n):
        x = left + i * slot
        base = float(top + plot_h)
        for k, name in enumerate(names):
            value = series[name][i]
            if value <= 0:
                continue
            h = plot_h * value / peak
            base -= h
            parts.append(f'<rect x="{x + (slot - bar_w) / 2:.1f}" y="{base:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                         f'fill="{colour(k)}"><title>{escape(labels[i])}: {escape(name)} {_fmt(value)} {what}</title></rect>')
    step = max(1, n // ticks) if n else 1
    for i in range(0, n, step):
        x = left + i * slot + slot / 2
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" class="axis" text-anchor="middle">{escape(labels[i])}</text>')
    if legend and names:
        x = left
        for k, name in enumerate(names):
            parts.append(f'<rect x="{x}" y="{height + 4}" width="10" height="10" fill="{colour(k)}"/>'
                         f'<text x="{x + 14}" y="{height + 13}" class="legend">{escape(name)}</text>')
            x += 24 + 7 * len(name)
    parts.append("</svg>")
    return Markup("".join(parts))


def _summary(labels: Sequence[str], totals: Sequence[float], what: str) -> str:
    if not labels:
        return f"no {what}"
    return f"{_fmt(sum(totals))} {what} from {labels[0]} to {labels[-1]}, at most {_fmt(max(totals))} in one bar"
