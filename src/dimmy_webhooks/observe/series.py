"""The series the dashboard's charts draw and ``GET /api/charts`` returns: items first stored
per hour, delivery latency per destination, and the backlog over time.

:func:`take_series` reads the first two from the store (each a bounded, indexed query) and the
third from the process's :class:`~.backlog.BacklogSampler`; :class:`Series` is the picture,
with its JSON form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dimmy_webhooks.observe.backlog import EVERY_SECONDS, BacklogPoint
from dimmy_webhooks.observe.logs import redact_urls
from dimmy_webhooks.store import HourCount, LatencyStats, Reports

HOUR = 3600.0
SCAN_HOURS = 72
LATENCY_HOURS = 24


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Series:
    """What the charts show at ``at``: ``scans`` one ``(hour start, items)`` per hour of the
    last :attr:`scan_hours` (hours without items included, as 0), ``latency`` per output over
    the last :attr:`latency_hours` (``latency_hours`` the same per hour), and the backlog
    points this process sampled since ``sampled_since`` (``None``: it does not sample)."""

    at: float
    scan_hours: int
    scans: list[tuple[float, int]]
    latency_hours: int
    latency: list[LatencyStats]
    latency_hourly: list[LatencyStats]
    backlog: list[BacklogPoint]
    sampled_since: float | None
    sample_every: float = EVERY_SECONDS

    def as_json(self) -> dict[str, Any]:
        hourly: dict[str, list[dict[str, Any]]] = {}
        for stats in self.latency_hourly:
            hourly.setdefault(stats.output, []).append(
                {"hour": iso(stats.hour or 0.0), **_figures(stats)}
            )
        return {
            "at": iso(self.at),
            "scans_per_hour": {
                "hours": self.scan_hours,
                "points": [{"hour": iso(h), "items": n} for h, n in self.scans],
            },
            "delivery_latency": {
                "hours": self.latency_hours,
                "outputs": [
                    {
                        "output": redact_urls(stats.output),  # an http: URL's password hidden
                        **_figures(stats),
                        "per_hour": hourly.get(stats.output, []),
                    }
                    for stats in self.latency
                ],
            },
            "backlog": {
                "sampled_since": None if self.sampled_since is None else iso(self.sampled_since),
                "every_seconds": self.sample_every,
                "points": [
                    {"at": iso(p.at), "due": p.due, "running": p.running, "dead": p.dead}
                    for p in self.backlog
                ],
            },
        }


def _figures(stats: LatencyStats) -> dict[str, Any]:
    return {
        "attempts": stats.attempts,
        "p50_ms": stats.p50_ms,
        "p95_ms": stats.p95_ms,
        "max_ms": stats.max_ms,
    }


def hourly(counts: Sequence[HourCount], first: float, hours: int) -> list[tuple[float, int]]:
    """``counts`` as one point per hour from the hour ``first`` on, 0 where none."""
    found = {c.hour: c.count for c in counts}
    return [(first + n * HOUR, found.get(first + n * HOUR, 0)) for n in range(hours)]


async def take_series(
    store: Reports,
    now: float,
    backlog: Sequence[BacklogPoint] = (),
    sampled_since: float | None = None,
    *,
    scan_hours: int = SCAN_HOURS,
    latency_hours: int = LATENCY_HOURS,
    account: str | None = None,
) -> Series:
    """The charts' series at ``now``: the last ``scan_hours`` whole hours and the current one,
    the last ``latency_hours`` of deliveries, and ``backlog`` (sampled since
    ``sampled_since``)."""
    first = (math.floor(now / HOUR) - scan_hours + 1) * HOUR
    counts = await store.scans_per_hour(since=first, until=now + 1, account=account)
    since = now - latency_hours * HOUR
    latency = await store.delivery_latency(since=since, until=now + 1, account=account)
    per_hour = await store.delivery_latency(
        since=since, until=now + 1, per_hour=True, account=account
    )
    return Series(
        at=now,
        scan_hours=scan_hours,
        scans=hourly(counts, first, scan_hours),
        latency_hours=latency_hours,
        latency=latency,
        latency_hourly=per_hour,
        backlog=list(backlog),
        sampled_since=sampled_since,
    )
