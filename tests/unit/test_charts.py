"""The dashboard's SVG charts: well-formed, every text escaped, no inline style, an empty
series drawn as a frame that says so; and the backlog sampler that feeds one of them."""

from __future__ import annotations

import asyncio
from xml.etree import ElementTree

import pytest

from dimmy_webhooks.errors import StoreUnavailable
from dimmy_webhooks.observe.backlog import BacklogPoint, BacklogSampler
from dimmy_webhooks.observe.series import Series, hourly
from dimmy_webhooks.store import BacklogCounts, HourCount, LatencyStats
from dimmy_webhooks.web.dashboard.charts import (
    Line,
    bar_chart,
    line_chart,
    nice_ceiling,
    overview_charts,
)

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_800_000_000.0  # an hour boundary
HOSTILE = "<script>alert(\"x\")</script> & 'q'"


def parse(markup: str) -> ElementTree.Element:
    return ElementTree.fromstring(markup)  # noqa: S314 - our own output


def texts(root: ElementTree.Element) -> list[str]:
    return [el.text or "" for el in root.iter() if el.tag in (f"{SVG}text", f"{SVG}title")]


def no_style(root: ElementTree.Element) -> None:
    for el in root.iter():
        assert "style" not in el.attrib, el.tag
        assert el.tag != f"{SVG}style"
        assert el.tag != f"{SVG}script"
        assert not any(name.startswith("on") for name in el.attrib), el.attrib


def test_a_bar_chart_draws_one_bar_per_non_zero_slot() -> None:
    points = [(T0 + n * 3600, float(n % 3)) for n in range(6)]
    root = parse(bar_chart(points, title="Items", unit="items"))
    assert root.tag == f"{SVG}svg"
    bars = list(root.iter(f"{SVG}rect"))
    assert len(bars) == 4  # the zeros draw nothing
    heights = [float(bar.attrib["height"]) for bar in bars]
    assert heights[1] == pytest.approx(2 * heights[0])  # 2 is twice 1
    assert any("items" in text for text in texts(root))
    no_style(root)


def test_every_text_is_escaped() -> None:
    markup = line_chart([Line(HOSTILE, [(T0, 1.0), (T0 + 60, 2.0)])], title=HOSTILE, unit=HOSTILE)
    assert "<script>" not in markup
    root = parse(markup)
    assert HOSTILE in texts(root)  # shown as text, exactly
    assert root.attrib["aria-label"] == HOSTILE
    no_style(root)
    bars = parse(bar_chart([(T0, 5.0)], title=HOSTILE, unit=HOSTILE))
    assert HOSTILE in texts(bars)


@pytest.mark.parametrize(
    "markup",
    [
        bar_chart([], title="t", unit="u", empty="nothing yet"),
        bar_chart([(T0, 0.0), (T0 + 3600, 0.0)], title="t", unit="u", empty="nothing yet"),
        line_chart([], title="t", unit="u", empty="nothing yet"),
        line_chart([Line("a", [])], title="t", unit="u", empty="nothing yet"),
    ],
)
def test_an_empty_series_is_a_frame_that_says_so(markup: str) -> None:
    root = parse(markup)
    assert "nothing yet" in texts(root)
    assert not list(root.iter(f"{SVG}polyline"))
    assert not list(root.iter(f"{SVG}circle"))


def test_a_line_chart_has_a_line_and_a_legend_per_series() -> None:
    lines = [Line("http:a", [(T0, 10.0), (T0 + 3600, 30.0)]), Line("http:b", [(T0, 5.0)])]
    root = parse(line_chart(lines, title="Latency", unit="ms"))
    assert len(list(root.iter(f"{SVG}polyline"))) == 1  # one point draws a dot, no line
    assert len(list(root.iter(f"{SVG}circle"))) == 3
    assert {"http:a", "http:b"} <= set(texts(root))
    no_style(root)


def test_nice_ceiling() -> None:
    assert [nice_ceiling(v) for v in (0, 0.7, 1, 3, 7, 11, 240, 2600)] == [
        1.0,
        1.0,
        1.0,
        5.0,
        10.0,
        20.0,
        250.0,
        5000.0,
    ]


def test_the_overview_charts_come_from_a_series() -> None:
    latency = [LatencyStats("http:wms", T0, 4, 10.0, 20.0, 30.0)]
    series = Series(
        at=T0 + 7200,
        scan_hours=3,
        scans=hourly([HourCount(T0, 4)], T0, 3),
        latency_hours=24,
        latency=[LatencyStats("http:wms", None, 4, 10.0, 20.0, 30.0)],
        latency_hourly=latency,
        backlog=[BacklogPoint(T0 + 60 * n, n, 1, 0) for n in range(5)],
        sampled_since=T0,
    )
    assert series.scans == [(T0, 4), (T0 + 3600, 0), (T0 + 7200, 0)]
    charts = overview_charts(series, name=str.upper)
    assert [c.id for c in charts] == ["chart-scans", "chart-latency", "chart-backlog"]
    for chart in charts:
        no_style(parse(chart.svg))
    assert "HTTP:WMS" in texts(parse(charts[1].svg))
    assert "starts empty after a restart" in charts[2].caption
    data = series.as_json()
    assert data["scans_per_hour"]["points"][0] == {"hour": "2027-01-15T08:00:00Z", "items": 4}
    [output] = data["delivery_latency"]["outputs"]
    assert output["per_hour"] == [
        {
            "hour": "2027-01-15T08:00:00Z",
            "attempts": 4,
            "p50_ms": 10.0,
            "p95_ms": 20.0,
            "max_ms": 30.0,
        }
    ]
    assert len(data["backlog"]["points"]) == 5
    unsampled = overview_charts(Series(T0, 1, [], 24, [], [], [], None))
    assert "does not sample" in unsampled[2].caption


class _Reports:
    def __init__(self) -> None:
        self.calls = 0

    async def backlog_now(self, now: float, *, account: str | None = None) -> BacklogCounts:
        self.calls += 1
        if self.calls == 2:
            raise StoreUnavailable("down")
        return BacklogCounts(self.calls, 0, 1, 2)


async def test_the_sampler_keeps_a_bounded_ring_and_skips_a_failed_count() -> None:
    reports = _Reports()
    sampler = BacklogSampler(reports, keep=3, every=0.001, clock=lambda: T0)  # type: ignore[arg-type]
    assert sampler.started_at is None
    stop = asyncio.Event()
    task = asyncio.create_task(sampler.run(stop))
    while reports.calls < 6:
        await asyncio.sleep(0.001)
    stop.set()
    await task
    assert sampler.started_at == T0
    points = sampler.points()
    assert len(points) == 3  # the newest 3 kept
    assert [p.due for p in points] == sorted(p.due for p in points)
    assert 2 not in [p.due for p in points]  # the failed count left no point
    assert points[-1].at == T0
