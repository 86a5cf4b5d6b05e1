"""Charts as inline SVG, drawn on the server: no script, no third-party code, no inline style.

The page's Content-Security-Policy has no ``'unsafe-inline'``, so nothing here writes a
``style`` attribute or element: colours and sizes are SVG presentation attributes (``fill``,
``stroke``, ``font-size``), which CSP does not govern, and classes of the served stylesheet.
Every text (titles, output names, labels) is escaped here; the result is
:class:`~markupsafe.Markup`, so a template prints it as markup without ``|safe``.

:func:`bar_chart` draws one value per time slot (items per hour), :func:`line_chart` one or
more lines over time (latency per output, the backlog); both draw a frame saying ``empty``
when there is nothing to show.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup, escape

from dimmy_webhooks.observe.series import Series

WIDTH = 720
HEIGHT = 200
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 12, 26, 24
PALETTE = ("#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#65a30d", "#db2777")
BAR = "#2563eb"
GRID = "#d4d4d8"
INK = "#3f3f46"


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a :func:`line_chart`: ``name`` in its legend, ``(time, value)`` points."""

    name: str
    points: Sequence[tuple[float, float]]


def hour_label(seconds: float) -> str:
    """``05 14:00``: day of the month and hour, UTC (the axis says UTC)."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%d %H:%M")


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least ``value`` (> 0)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def _number(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:,.0f}k"
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


class _Canvas:
    """The frame shared by both charts: a value axis from 0 to ``top`` and a time axis."""

    def __init__(self, title: str, top: float, x_range: tuple[float, float]) -> None:
        self.title = title
        self.top = top
        self.x0, self.x1 = x_range
        self.parts: list[str] = []
        self.inner_w = WIDTH - _LEFT - _RIGHT
        self.inner_h = HEIGHT - _TOP - _BOTTOM

    def x(self, at: float) -> float:
        span = self.x1 - self.x0 or 1.0
        return _LEFT + (at - self.x0) / span * self.inner_w

    def y(self, value: float) -> float:
        return _TOP + self.inner_h - min(max(value, 0.0), self.top) / self.top * self.inner_h

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def text(self, x: float, y: float, words: str, *, anchor: str = "start", cls: str = "") -> None:
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="11" fill="{INK}"'
            f' class="chart-label {cls}">{escape(words)}</text>'
        )

    def axes(self, unit: str, ticks: Sequence[float], label: Callable[[float], str]) -> None:
        for value in (0.0, self.top / 2, self.top):
            y = self.y(value)
            self.add(
                f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{WIDTH - _RIGHT}" y2="{y:.1f}"'
                f' stroke="{GRID}" stroke-width="1"/>'
            )
            self.text(_LEFT - 6, y + 4, _number(value), anchor="end")
        self.text(4, 14, unit)
        for at in ticks:
            self.text(self.x(at), HEIGHT - 6, label(at), anchor="middle")

    def svg(self, cls: str) -> Markup:
        title = escape(self.title)
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {escape(cls)}" role="img"'
            f' viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}"'
            f' preserveAspectRatio="xMinYMin meet" aria-label="{title}"><title>{title}</title>'
        )
        return Markup(head + "".join(self.parts) + "</svg>")  # noqa: S704 - every text escaped

    def empty(self, words: str) -> None:
        self.text(_LEFT + self.inner_w / 2, _TOP + self.inner_h / 2, words, anchor="middle")


def _ticks(x0: float, x1: float, every: float, count: int = 6) -> list[float]:
    """About ``count`` tick times on multiples of ``every`` seconds within ``[x0, x1]``."""
    if x1 <= x0:
        return [x0]
    step = every * max(1, math.ceil((x1 - x0) / every / count))
    first = math.ceil(x0 / step) * step
    return [first + n * step for n in range(int((x1 - first) // step) + 1)]


def bar_chart(
    points: Sequence[tuple[float, float]],
    *,
    title: str,
    unit: str,
    slot: float = 3600.0,
    label: Callable[[float], str] = hour_label,
    empty: str = "nothing yet",
    cls: str = "",
) -> Markup:
    """One bar per ``(slot start, value)`` point, each ``slot`` seconds wide, with a tooltip
    (``<title>``) giving its time and value; all zero or no points: the ``empty`` frame."""
    top = nice_ceiling(max((v for _, v in points), default=0.0))
    x0 = points[0][0] if points else 0.0
    x1 = points[-1][0] + slot if points else 1.0
    canvas = _Canvas(title, top, (x0, x1))
    canvas.axes(unit, _ticks(x0, x1, slot) if points else [], label)
    if not any(v for _, v in points):
        canvas.empty(empty)
        return canvas.svg(cls)
    width = max(canvas.x(x0 + slot) - canvas.x(x0) - 1.0, 1.0)
    for at, value in points:
        if value <= 0:
            continue
        y = canvas.y(value)
        tip = escape(f"{label(at)} UTC: {_number(value)} {unit}")
        canvas.add(
            f'<rect x="{canvas.x(at):.1f}" y="{y:.1f}" width="{width:.1f}"'
            f' height="{canvas.y(0) - y:.1f}" fill="{BAR}"><title>{tip}</title></rect>'
        )
    return canvas.svg(cls)


def line_chart(
    lines: Sequence[Line],
    *,
    title: str,
    unit: str,
    x_range: tuple[float, float] | None = None,
    tick_every: float = 3600.0,
    label: Callable[[float], str] = hour_label,
    empty: str = "nothing yet",
    cls: str = "",
) -> Markup:
    """Each line in a colour of :data:`PALETTE` with its name in a legend below the title, a
    dot on every point (a tooltip gives its value); no points at all: the ``empty`` frame.
    ``x_range`` defaults to the points' first and last times."""
    times = [at for line in lines for at, _ in line.points]
    values = [value for line in lines for _, value in line.points]
    if x_range is None:
        x_range = (min(times), max(times)) if times else (0.0, 1.0)
    canvas = _Canvas(title, nice_ceiling(max(values, default=0.0)), x_range)
    canvas.axes(unit, _ticks(*x_range, tick_every) if times else [], label)
    if not times:
        canvas.empty(empty)
        return canvas.svg(cls)
    legend_x = float(_LEFT + 60)
    for n, line in enumerate(lines):
        colour = PALETTE[n % len(PALETTE)]
        coords = [(canvas.x(at), canvas.y(value)) for at, value in line.points]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            canvas.add(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"'
                ' stroke-linejoin="round"/>'
            )
        for (x, y), (at, value) in zip(coords, line.points, strict=True):
            tip = escape(f"{line.name}, {label(at)} UTC: {_number(value)} {unit}")
            canvas.add(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"><title>{tip}'
                "</title></circle>"
            )
        canvas.add(f'<rect x="{legend_x:.1f}" y="6" width="10" height="10" fill="{colour}"/>')
        canvas.text(legend_x + 14, 15, line.name[:60])
        legend_x += 24 + 6.5 * min(len(line.name), 60)
    return canvas.svg(cls)


@dataclass(frozen=True, slots=True)
class Chart:
    """A chart as the overview shows it: an ``id``, its heading, the SVG and a caption."""

    id: str
    heading: str
    svg: Markup
    caption: str


def minute_label(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%H:%M")


def overview_charts(series: Series, name: Callable[[str], str] = str) -> list[Chart]:
    """The overview's three charts from ``series``; ``name`` shows an output's name (the
    dashboard hides URL passwords with it)."""
    scans = Chart(
        "chart-scans",
        f"Items stored per hour, last {series.scan_hours} h",
        bar_chart(series.scans, title="Items first stored per hour (UTC)", unit="items"),
        "Each item counts once, in the hour it was first stored; hours in UTC.",
    )
    by_output: dict[str, list[tuple[float, float]]] = {}
    for stats in series.latency_hourly:
        by_output.setdefault(stats.output, []).append(((stats.hour or 0.0) + 1800, stats.p95_ms))
    latency = Chart(
        "chart-latency",
        f"Delivery latency per destination, last {series.latency_hours} h",
        line_chart(
            [Line(name(output), points) for output, points in by_output.items()],
            title="95th percentile delivery latency per hour (ms, UTC)",
            unit="ms",
            x_range=(series.at - series.latency_hours * 3600.0, series.at),
            empty="no deliveries in this time",
        ),
        "The 95th percentile of each hour's attempts that got an answer (or a timeout).",
    )
    points = series.backlog
    start = points[0].at if points else series.at
    short = series.at - start < 3 * 3600
    backlog = Chart(
        "chart-backlog",
        "Backlog over time",
        line_chart(
            [
                Line(label, [(p.at, float(getattr(p, label))) for p in points])
                for label in ("due", "running", "dead")
            ],
            title="Jobs due, running and dead (UTC)",
            unit="jobs",
            x_range=(start, series.at) if points else None,
            tick_every=600.0 if short else 3600.0,
            label=minute_label if short else hour_label,
            empty="no sample yet",
        ),
        (
            "Counted every minute by this process since it started "
            f"({hour_label(series.sampled_since)} UTC); it starts empty after a restart."
            if series.sampled_since is not None
            else "This process does not sample the backlog."
        ),
    )
    return [scans, latency, backlog]
