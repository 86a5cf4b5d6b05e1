"""Reading ranges of creation time from ``GET /items`` into the item store.

Dimmy documents polling as the alternative to webhooks: ``GET /items`` with ``start_date`` /
``end_date`` (creation time) and ``skip`` / ``limit`` paging, a bare array, no cursor, bounds of
unknown inclusiveness. What is read here goes through the item store's rule (absent or strictly
newer ``updated_at``: :meth:`Store.save_polled`) and queues the same deliveries, so an item that
arrives by webhook and by polling is stored and delivered once. The poller's passes
(:mod:`.poller`) and ``backfill`` (:mod:`.backfill`) both read through a :class:`RangeReader`.

Reading a range (:meth:`RangeReader.read_range`): the range is cut into slices of creation time,
each read page by page with ``skip`` / ``limit`` and an ``end_date`` in the past. Paging over a
set that grows while it is read repeats rows (an item created inside the slice shifts the rest by
one), it does not skip them; repeats are dropped by id. The end of a slice is read twice: after a
short page, the page after it is asked for once more, and taken if the set grew meanwhile. Every
page is committed before the next is asked for. A slice is bounded: after ``slice_pages`` pages,
or :data:`REPEATED_PAGES` pages in a row with nothing new (a source that ignores ``skip``), it is
cut short with a WARNING and the range is read no further (:attr:`RangeResult.cut_at`).

Bulk reads give way to live work: a page waits while a webhook's fetch is due (in this process or,
through the database, in another), at most ``yield_seconds`` per page, and shares the client's
rate limit and 429 pause.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dimmy_webhooks.config import Settings
from dimmy_webhooks.errors import StoreError, TransientUpstream
from dimmy_webhooks.items import format_timestamp
from dimmy_webhooks.models import Source, StoredItem
from dimmy_webhooks.pipeline.validation import Intake
from dimmy_webhooks.ratelimit import backoff_delay
from dimmy_webhooks.store import Store
from dimmy_webhooks.upstream.client import DimmyClient

log = logging.getLogger("dimmy_webhooks.pipeline.poller")

MAX_PAGES_PER_SLICE = 10_000
REPEATED_PAGES = 3
"""Pages in a row that bring nothing new after which a slice is cut short: the source repeats
itself (it ignores ``skip``) and would never reach its end."""


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """How the poller reads (from the settings; seconds unless named otherwise)."""

    interval: float = 60.0
    overlap: float = 600.0
    settle: float = 5.0
    first_lookback: float = 86_400.0
    sweep_days: float = 7.0
    sweep_interval: float = 86_400.0
    page_size: int = 100
    slice_seconds: float = 3_600.0
    sweep_slice_seconds: float = 21_600.0
    yield_seconds: float = 30.0
    page_attempts: int = 5
    slice_pages: int = MAX_PAGES_PER_SLICE  # pages read from one slice at most
    reconcile_grace: float = 900.0
    intake: Intake = field(default_factory=Intake)

    @classmethod
    def from_settings(cls, settings: Settings) -> PollPolicy:
        """The poller's pacing, from the ``DIMMY_POLL_*`` settings."""
        return cls(
            interval=settings.poll_interval_seconds,
            overlap=settings.poll_overlap_seconds,
            first_lookback=settings.poll_lookback_hours * 3600,
            sweep_days=settings.poll_sweep_days,
            sweep_interval=settings.poll_sweep_interval_hours * 3600,
            page_size=settings.poll_page_size,
            reconcile_grace=settings.reconcile_grace_seconds,
            intake=Intake.from_settings(settings),
        )


@dataclass
class RangeResult:
    """What reading a range did: pages asked for, items read (repeats dropped), items stored
    (new or newer: their deliveries are queued). ``cut_at``: the start of a slice that could
    not be read whole (its page bound hit): the range was read up to there only."""

    pages: int = 0
    read: int = 0
    stored: int = 0
    refused: int = 0
    cut_at: datetime | None = None

    def add(self, other: RangeResult) -> None:
        self.pages += other.pages
        self.read += other.read
        self.stored += other.stored
        self.refused += other.refused
        self.cut_at = self.cut_at or other.cut_at


Progress = Callable[[datetime, RangeResult], Awaitable[None]]
"""Awaited after each slice read whole and committed, with the slice's end and the totals."""


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso(moment: datetime) -> str:
    return format_timestamp(moment)


class RangeReader:
    """Reads ranges of creation time from the API into the store (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        client: DimmyClient,
        outputs: Sequence[str],
        policy: PollPolicy,
        *,
        clock: Callable[[], float] = time.time,
        on_stored: Callable[[], None] = lambda: None,
        account: str = "default",
    ) -> None:
        self.account = account
        self.store = store
        self.client = client
        self.outputs = list(outputs)
        self.policy = policy
        self.clock = clock
        self.on_stored = on_stored

    async def read_range(
        self,
        start: datetime,
        end: datetime,
        source: Source,
        *,
        progress: Progress | None = None,
        stop: asyncio.Event | None = None,
        slice_seconds: float | None = None,
    ) -> RangeResult:
        """Read every item created in ``[start, end]``, slice by slice; returns the totals.

        Raises :class:`UpstreamError` or :class:`StoreError` when a page cannot be read or
        stored (what was committed before stays). Stops early, between pages, when ``stop`` is
        set (the totals say how far it got), or after a slice that was cut short (``cut_at``).
        """
        total = RangeResult()
        step = timedelta(seconds=slice_seconds or self.policy.slice_seconds)
        low = start
        while low < end and not _stopped(stop):
            high = min(low + step, end)
            total.add(await self._read_slice(low, high, source, stop))
            if _stopped(stop) or total.cut_at is not None:
                break  # the slice was cut short: not reported as read
            if progress is not None:
                await progress(high, total)
            low = high
        return total

    async def _read_slice(
        self, low: datetime, high: datetime, source: Source, stop: asyncio.Event | None
    ) -> RangeResult:
        result = RangeResult()
        seen: set[str] = set()
        skip = repeated = 0
        while not _stopped(stop):
            await self._give_way()
            page = await self._page(low, high, skip)
            result.pages += 1
            skip += len(page)
            fresh = [doc for doc in page if isinstance(doc.get("_id"), str)]
            if len(fresh) < len(page):
                result.refused += len(page) - len(fresh)
                log.warning(
                    "polled items refused: no string _id",
                    extra={"fields": {"count": len(page) - len(fresh)}},
                )
            fresh = [doc for doc in fresh if doc["_id"] not in seen]
            seen.update(doc["_id"] for doc in fresh)
            if fresh:
                await self._store(fresh, source, result)
            if not page:
                break  # an empty page is the end: a short one is asked after once more, since
                # the set may have grown while it was read (the boundary is read twice)
            repeated = 0 if fresh else repeated + 1
            if result.pages >= self.policy.slice_pages or repeated >= REPEATED_PAGES:
                repeats = repeated >= REPEATED_PAGES
                why = "pages repeat (skip ignored?)" if repeats else "pages never end"
                log.warning(
                    "poll slice cut short: %s; read up to its start only",
                    why,
                    extra={"fields": {"from": iso(low), "to": iso(high), "pages": result.pages}},
                )
                result.cut_at = low
                break
        return result

    async def _page(self, low: datetime, high: datetime, skip: int) -> list[dict[str, Any]]:
        """One page, retried on a transient failure (a 429 holds the client until its
        ``Retry-After``; others wait a jittered backoff) up to ``page_attempts`` times."""
        for attempt in range(1, self.policy.page_attempts + 1):
            try:
                return await self.client.list_items(
                    start_date=low, end_date=high, skip=skip, limit=self.policy.page_size
                )
            except TransientUpstream as exc:
                if attempt == self.policy.page_attempts:
                    raise
                delay = backoff_delay(attempt, base=1.0, cap=30.0, retry_after=exc.retry_after)
                log.info(
                    "poll page will retry",
                    extra={"fields": {"reason": exc.reason, "retry_in": round(delay, 1)}},
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _store(
        self, docs: list[dict[str, object]], source: Source, result: RangeResult
    ) -> None:
        now = self.clock()
        items: list[StoredItem] = []
        for doc in docs:
            try:
                item = self.policy.intake.prepare(
                    doc,
                    json.dumps(doc, ensure_ascii=False, separators=(",", ":")),
                    fetched_at=now,
                    account=self.account,
                )
                items.append(item)
            except ValueError as exc:
                result.refused += 1
                log.warning(
                    "polled item refused",
                    extra={"fields": {"id": str(doc.get("_id"))[:80], "reason": str(exc)}},
                )
        result.read += len(docs)
        if not items:
            return
        revisions = await self.store.save_polled(items, source, self.outputs, now)
        stored = sum(1 for revision in revisions if revision)
        result.stored += stored
        if stored:
            self.on_stored()

    async def _give_way(self) -> None:
        """Wait (bounded) while a webhook's fetch is due: live scans go first."""
        deadline = time.monotonic() + self.policy.yield_seconds
        while time.monotonic() < deadline:
            try:
                if not await self.store.live_fetch_due(self.clock()):
                    return
            except StoreError:
                return  # the page's own write will say what is wrong
            await asyncio.sleep(0.2)


def _stopped(stop: asyncio.Event | None) -> bool:
    return stop is not None and stop.is_set()
