"""The operator's read models: what the dashboard, the JSON API's lists and exports, ``/metrics``
and the alerts read, in one transaction each and never written.

:class:`Reports` is their seam; :class:`ItemFilter`, :class:`OperatorCounts` and the other
records here are what it answers with (exported from :mod:`dimmy_webhooks.store`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from dimmy_webhooks.models import DeliveryAttempt, EventRecord, StoredItem
from dimmy_webhooks.store import ops
from dimmy_webhooks.store.ops import Row, Tx


@dataclasses.dataclass(frozen=True, slots=True)
class ItemFilter:
    """What the items page and the item exports select: fetched in ``[since, until)``, by
    scanner account, with or without dimensions (``None``: either), and ``q`` an exact item id
    or barcode (main or any scanned one)."""

    since: float | None = None
    until: float | None = None
    scanner: str | None = None
    has_dimensions: bool | None = None
    q: str | None = None
    account: str | None = None

    def params(self) -> dict[str, Any]:
        pattern = None if self.q is None else ops.like_pattern(self.q)
        dims = None if self.has_dimensions is None else int(self.has_dimensions)
        return {
            "since": self.since,
            "until": self.until,
            "scanner": self.scanner,
            "has_dimensions": dims,
            "q": self.q,
            "q_pattern": pattern,
            "account": self.account,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class QueueDepth:
    """Jobs of one kind (and output, for deliveries) in one status; ``due_since`` is the
    ``run_at`` of the oldest one due now (pending only)."""

    kind: str
    output: str | None
    status: str
    count: int
    due_since: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class OperatorCounts:
    """The counts of the overview and the gauges of ``/metrics``, read in one transaction."""

    events_since: dict[str, int]  # received at or after ``since``, by status
    events_open: dict[str, int]  # pending, processing and dead, whenever received
    items_since: int
    items: int
    held: int
    queue: list[QueueDepth]
    unwebhooked: int  # the reconciliation gap


@dataclasses.dataclass(frozen=True, slots=True)
class JobRow:
    """One job as the event page lists it."""

    id: int
    kind: str
    item_id: str | None
    output: str | None
    status: str
    attempts: int
    max_attempts: int
    run_at: float
    last_error: str | None
    updated_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class EventWork:
    """An event's stored headers, how often the sender delivered it, its jobs and the ledger
    rows of its deliveries (newest first)."""

    headers: dict[str, str]
    deliveries: int
    jobs: list[JobRow]
    attempts: list[DeliveryAttempt]


@dataclasses.dataclass(frozen=True, slots=True)
class ItemRevision:
    """A revision of an item that was handed to the outputs (its deliveries queued)."""

    revision: int
    version: str
    first_queued: float
    deliveries: int


@dataclasses.dataclass(frozen=True, slots=True)
class HourCount:
    """Items first stored in the hour starting at ``hour`` (Unix seconds, a multiple of 3600)."""

    hour: float
    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class LatencyStats:
    """Delivery latency to one output, in milliseconds, over ``attempts`` ledger rows: of the
    hour starting at ``hour``, or of the whole window (``hour`` ``None``). Percentiles are
    nearest-rank: a latency some attempt really had."""

    output: str
    hour: float | None
    attempts: int
    p50_ms: float
    p95_ms: float
    max_ms: float


@dataclasses.dataclass(frozen=True, slots=True)
class BacklogCounts:
    """Jobs now: pending and due, pending waiting for a retry, running (leased), dead."""

    due: int
    waiting: int
    running: int
    dead: int


MAX_CHART_HOURS = 24 * 31
"""The longest window a chart reads (a month of hours)."""
LATENCY_ROWS = 100_000
"""At most this many of a window's newest ledger rows make its latency figures."""


class Reports(ops.Transactions):
    """What the operator's views (dashboard, exports, ``/metrics``, alerts) read."""

    async def browse_items(
        self, where: ItemFilter, *, limit: int = 50, before: tuple[float, str] | None = None
    ) -> list[StoredItem]:
        """Items matching ``where``, most recently stored first; ``before`` is the
        ``(fetched_at, id)`` of the last item of the previous page."""
        before_at, before_id = before if before is not None else (None, None)
        params = {**where.params(), "before_at": before_at, "before_id": before_id, "limit": limit}
        return [ops.stored_item(row) for row in await self._rows("browse_items", params)]

    async def export_items(
        self, where: ItemFilter, *, limit: int = 500, after: str | None = None
    ) -> list[StoredItem]:
        """Items matching ``where`` in id order (``after``: the last id of the previous page)."""
        params = {**where.params(), "after": after, "limit": limit}
        return [ops.stored_item(row) for row in await self._rows("export_items", params)]

    async def browse_events(
        self,
        *,
        status: str | None = None,
        event_type: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: int | None = None,
        limit: int = 50,
        account: str | None = None,
    ) -> list[EventRecord]:
        """Events newest first, by status, type and time received (``[since, until)``)."""
        where = {"status": status, "event_type": event_type, "since": since, "until": until}
        where["account"] = account
        rows = await self._rows("browse_events", {**where, "before": before, "limit": limit})
        return [ops.event_record(row) for row in rows]

    async def event_work(self, event_id: int, *, limit: int = 500) -> EventWork:
        """An event's headers, jobs (each with its last error) and delivery attempts
        (``LookupError`` when the event does not exist)."""
        return await self._read(lambda tx: event_work(tx, event_id, limit))

    async def item_history(
        self, item_id: str, *, limit: int = 100
    ) -> tuple[list[ItemRevision], list[int]]:
        """The revisions of an item that were handed to the outputs (newest first) and the
        inbox events that named it (newest first)."""
        return await self._read(lambda tx: item_history(tx, item_id, limit))

    async def operator_counts(
        self, *, since: float, now: float, seen_before: float, account: str | None = None
    ) -> OperatorCounts:
        """Events and items since ``since``, open events, held items, the queue by kind,
        output and status, and the items only polling found (first seen before
        ``seen_before``)."""
        return await self._read(lambda tx: operator_counts(tx, since, now, seen_before, account))

    async def recent_attempts(
        self, output: str, *, limit: int = 50, account: str | None = None
    ) -> list[tuple[str, float, str | None]]:
        """``(outcome, started_at, error)`` of ``output``'s latest ledger rows, newest first."""
        params = {"output": output, "limit": limit, "account": account}
        rows = await self._rows("recent_attempts", params)
        return [(str(r["outcome"]), float(r["started_at"]), r["error"]) for r in rows]

    # the charts, of one account or all ------------------------------------------------------

    async def scans_per_hour(
        self, *, since: float, until: float, account: str | None = None
    ) -> list[HourCount]:
        """Items first stored in ``[since, until)`` counted per hour, oldest first; hours
        without any are left out. The window is cut to :data:`MAX_CHART_HOURS` before
        ``until``."""
        since = max(since, until - MAX_CHART_HOURS * 3600)
        params = {
            "since": since,
            "until": until,
            "limit": MAX_CHART_HOURS + 1,
            "account": account,
        }
        rows = await self._rows("scans_per_hour", params)
        return [HourCount(float(r["hour"]) * 3600, int(r["n"])) for r in rows]

    async def delivery_latency(
        self,
        *,
        since: float,
        until: float,
        per_hour: bool = False,
        limit: int = LATENCY_ROWS,
        account: str | None = None,
    ) -> list[LatencyStats]:
        """Latency of the deliveries attempted in ``[since, until)`` by output (and by hour,
        oldest first, when ``per_hour``), from the newest ``limit`` ledger rows of the window
        that have a latency. The window is cut to :data:`MAX_CHART_HOURS` before ``until``."""
        since = max(since, until - MAX_CHART_HOURS * 3600)
        params = {"since": since, "until": until, "limit": limit, "account": account}
        rows = await self._rows("latency_per_hour" if per_hour else "latency_per_output", params)
        return [
            LatencyStats(
                output=str(r["output"]),
                hour=float(r["bucket"]) * 3600 if per_hour else None,
                attempts=int(r["n"]),
                p50_ms=float(r["p50"]),
                p95_ms=float(r["p95"]),
                max_ms=float(r["max_ms"]),
            )
            for r in rows
        ]

    async def backlog_now(self, now: float, *, account: str | None = None) -> BacklogCounts:
        """The jobs due, waiting for a retry, running and dead at ``now`` (one count)."""
        [row] = await self._rows("backlog_now", {"now": now, "account": account})
        return BacklogCounts(
            *(int(row[name] or 0) for name in ("due", "waiting", "running", "dead"))
        )

    async def attempt_counts(self, *, after: int, upto: int | None = None) -> list[Row]:
        """Ledger rows with ids in ``(after, upto]`` counted by ``account``, ``output`` and
        ``outcome`` (``n``), each group with its highest id (``top``)."""
        return await self._rows("attempt_counts", {"after": after, "upto": upto})


def event_work(tx: Tx, event_id: int, limit: int) -> EventWork:
    rows = tx.all(tx.sql("event_headers"), {"id": event_id})
    if not rows:
        raise LookupError(f"event {event_id} does not exist")
    headers = json.loads(rows[0]["headers"])
    ints = ("id", "attempts", "max_attempts")
    jobs = [
        ops.record(JobRow, r, **{name: int(r[name]) for name in ints})
        for r in tx.all(tx.sql("event_work"), {"id": event_id, "limit": limit})
    ]
    attempts = [
        ops.attempt(r) for r in tx.all(tx.sql("event_attempts"), {"id": event_id, "limit": limit})
    ]
    return EventWork(headers, int(rows[0]["deliveries"]), jobs, attempts)


def item_history(tx: Tx, item_id: str, limit: int) -> tuple[list[ItemRevision], list[int]]:
    revisions = [
        ItemRevision(
            revision=int(r["revision"]),
            version=r["version"],
            first_queued=r["first_queued"],
            deliveries=int(r["deliveries"]),
        )
        for r in tx.all(tx.sql("item_revisions"), {"id": item_id, "limit": limit})
    ]
    events = [
        int(r["event_id"]) for r in tx.all(tx.sql("item_events"), {"id": item_id, "limit": limit})
    ]
    return revisions, events


def operator_counts(
    tx: Tx, since: float, now: float, seen_before: float, account: str | None = None
) -> OperatorCounts:
    def by_key(name: str, params: Mapping[str, Any] | None = None) -> dict[str, int]:
        return {r["key"]: int(r["n"]) for r in tx.all(tx.sql(name), {**(params or {}), **of})}

    def count(name: str, params: Mapping[str, Any] | None = None) -> int:
        return int(tx.all(tx.sql(name), {**(params or {}), **of})[0]["n"])

    of = {"account": account}

    queue = [
        QueueDepth(r["kind"], r["output"], r["status"], int(r["n"]), r["due_since"])
        for r in tx.all(tx.sql("queue_depth"), {"now": now, **of})
    ]
    return OperatorCounts(
        events_since=by_key("events_since", {"since": since}),
        events_open=by_key("events_open"),
        items_since=count("items_since", {"since": since}),
        items=count("item_count"),
        held=count("held_count"),
        queue=queue,
        unwebhooked=count("unwebhooked_count", {"seen_before": seen_before}),
    )
