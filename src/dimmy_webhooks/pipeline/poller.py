"""The poller: read ``GET /items`` from a stored watermark and feed it into the same pipeline.

Dimmy documents polling as the alternative to webhooks: ``GET /items`` with ``start_date`` /
``end_date`` (creation time) and ``skip`` / ``limit`` paging, a bare array, no cursor, bounds of
unknown inclusiveness. What is read here goes through the item store's rule (absent or strictly
newer ``updated_at``: :meth:`Store.save_polled`) and queues the same deliveries, so an item that
arrives by webhook and by polling is stored and delivered once.

Reading a range (:func:`read_range`): the range is cut into slices of creation time, each read
page by page with ``skip`` / ``limit`` and an ``end_date`` in the past. Paging over a set that
grows while it is read repeats rows (an item created inside the slice shifts the rest by one),
it does not skip them; repeats are dropped by id. The end of a slice is read twice: after a short
page, the page after it is asked for once more, and taken if the set grew meanwhile. Every page is
committed before the next is asked for. A slice is bounded: after ``slice_pages`` pages, or
:data:`REPEATED_PAGES` pages in a row with nothing new (a source that ignores ``skip``), it is
cut short with a WARNING and the range is read no further (:attr:`RangeResult.cut_at`).

Passes (:class:`Poller`): every ``interval`` seconds, the window from the watermark minus
``overlap`` to ``now - settle``; the watermark moves to the window's end only once the whole
window is committed, so a pass that dies is read again; a pass cut short at a slice moves it
only to that slice's start and counts as failed. Every ``sweep_interval`` a deeper pass
re-reads the last ``sweep_days``: ``start_date`` filters on creation time, so an item updated
after its window was read (photos uploaded later, a re-scan) is only seen again by a sweep or a
webhook (docs/operations.md says what reconciliation does and does not catch).

Bulk reads give way to live work: a page waits while a webhook's fetch is due (in this process or,
through the database, in another), at most ``yield_seconds`` per page, and shares the client's
rate limit and 429 pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dimmy_webhooks.errors import StoreError, TransientUpstream, UpstreamError
from dimmy_webhooks.items import format_timestamp
from dimmy_webhooks.models import Source, StoredItem
from dimmy_webhooks.pipeline.validation import Intake
from dimmy_webhooks.store import Store
from dimmy_webhooks.upstream.client import DimmyClient, backoff_delay

log = logging.getLogger("dimmy_webhooks.pipeline.poller")

MAX_PAGES_PER_SLICE = 10_000
REPEATED_PAGES = 3
"""Pages in a row that bring nothing new after which a slice is cut short: the source repeats
itself (it ignores ``skip``) and would never reach its end."""
WATERMARK = "poll.watermark"
SWEPT = "poll.swept"
RECONCILED = "reconcile.missed"


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


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """Items that exist upstream but reached us only through polling, per creation day."""

    missed: int
    days: list[dict[str, object]]
    pull_mode: bool


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
    ) -> None:
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
                items.append(
                    self.policy.intake.prepare(
                        doc,
                        json.dumps(doc, ensure_ascii=False, separators=(",", ":")),
                        fetched_at=now,
                    )
                )
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


@dataclass
class Poller:
    """The long-running part of ``serve --poll``: a pass every ``policy.interval`` seconds."""

    store: Store
    client: DimmyClient
    outputs: Sequence[str]
    policy: PollPolicy
    pull_mode: bool = False
    clock: Callable[[], float] = time.time
    on_stored: Callable[[], None] = lambda: None
    problem: str | None = None
    last_pass: dict[str, object] = field(default_factory=dict)
    _missed_alarm_until: float = 0.0

    def reader(self) -> RangeReader:
        return RangeReader(
            self.store,
            self.client,
            self.outputs,
            self.policy,
            clock=self.clock,
            on_stored=self.on_stored,
        )

    async def run(self, stop: asyncio.Event) -> None:
        log.info("poller started", extra={"fields": {"every": self.policy.interval}})
        while not stop.is_set():
            await self.pass_once(stop)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.policy.interval)
        log.info("poller stopped")

    async def pass_once(self, stop: asyncio.Event | None = None) -> RangeResult | None:
        """One pass (and a sweep when one is due), then reconciliation. Never raises for an
        upstream or store failure: it is logged, kept as :attr:`problem` (``/readyz``), and the
        next pass reads the same window again. Returns the pass's totals (``None``: failed)."""
        started = time.monotonic()
        now = self.clock()
        end = datetime.fromtimestamp(now - self.policy.settle, UTC)
        try:
            mark = await self.store.get_state(WATERMARK)
            start = (
                parse_time(mark) - timedelta(seconds=self.policy.overlap)
                if mark is not None
                else end - timedelta(seconds=self.policy.first_lookback)
            )
            reader = self.reader()
            result = await reader.read_range(start, end, Source.POLL, stop=stop)
            if stop is not None and stop.is_set():
                return result  # the watermark stays: the next pass reads this window again
            if result.cut_at is not None:
                await self._cut_short(mark, result.cut_at)
                return None
            await self.store.set_state(WATERMARK, iso(end), self.clock())
            await self._sweep_if_due(reader, end, stop)
            report = await self.reconcile()
        except (UpstreamError, StoreError) as exc:
            self.problem = f"poller: {exc}"
            log.warning("poll failed, will retry", extra={"fields": {"reason": str(exc)}})
            return None
        self.problem = None
        self.last_pass = {
            "at": iso(datetime.fromtimestamp(now, UTC)),
            "window": [iso(start), iso(end)],
            "pages": result.pages,
            "read": result.read,
            "stored": result.stored,
            "seconds": round(time.monotonic() - started, 3),
            "missed_by_webhooks": report.missed,
        }
        log.info("poll pass", extra={"fields": dict(self.last_pass)})
        return result

    async def _cut_short(self, mark: str | None, cut_at: datetime) -> None:
        """A pass stopped at a slice it could not read whole: the watermark moves to that
        slice's start at most (never back), the pass counts as failed (``problem``)."""
        if mark is None or cut_at > parse_time(mark):
            await self.store.set_state(WATERMARK, iso(cut_at), self.clock())
        kept = cut_at if mark is None else max(cut_at, parse_time(mark))
        self.problem = f"poller: a slice from {iso(cut_at)} could not be read whole"
        log.warning(
            "poll pass cut short: the watermark stays at what was read",
            extra={"fields": {"watermark": iso(kept), "slice_from": iso(cut_at)}},
        )

    async def _sweep_if_due(
        self, reader: RangeReader, end: datetime, stop: asyncio.Event | None
    ) -> None:
        if self.policy.sweep_days <= 0:
            return
        swept = await self.store.get_state(SWEPT)
        if (
            swept is not None
            and (end - parse_time(swept)).total_seconds() < self.policy.sweep_interval
        ):
            return
        start = end - timedelta(days=self.policy.sweep_days)
        result = await reader.read_range(
            start, end, Source.POLL, stop=stop, slice_seconds=self.policy.sweep_slice_seconds
        )
        if (stop is None or not stop.is_set()) and result.cut_at is None:
            await self.store.set_state(SWEPT, iso(end), self.clock())
            log.info(
                "poll sweep",
                extra={
                    "fields": {
                        "days": self.policy.sweep_days,
                        "read": result.read,
                        "stored": result.stored,
                    }
                },
            )

    async def reconcile(self) -> Reconciliation:
        """Count the items that reached us only through polling; log a WARNING (and report on
        ``/readyz`` for a day) when the count grew, since webhooks are then being lost."""
        report = await reconciliation(
            self.store, self.clock(), self.policy.reconcile_grace, self.pull_mode
        )
        if self.pull_mode:
            return report
        before = await self.store.get_state(RECONCILED)
        previous = int(before) if before is not None and before.isdigit() else 0
        if report.missed > previous:
            self._missed_alarm_until = self.clock() + 86_400
            log.warning(
                "reconciliation: items reached us only through polling: webhooks are being lost",
                extra={
                    "fields": {
                        "missed": report.missed,
                        "new": report.missed - previous,
                        "days": ",".join(f"{d['day']}:{d['count']}" for d in report.days[-7:]),
                    }
                },
            )
        if report.missed != previous:
            await self.store.set_state(RECONCILED, str(report.missed), self.clock())
        return report

    def problems(self) -> list[str]:
        problems = [self.problem] if self.problem else []
        if self.clock() < self._missed_alarm_until:
            problems.append(
                "reconciliation found items that never arrived by webhook: see "
                "GET /api/reconciliation (webhooks are being lost)"
            )
        return problems


async def reconciliation(
    store: Store, now: float, grace: float, pull_mode: bool, ids_per_day: int = 100
) -> Reconciliation:
    """The reconciliation report: per creation day, how many items (and which, up to
    ``ids_per_day``) were first read by polling at least ``grace`` seconds ago and never named by
    a webhook."""
    rows = await store.unwebhooked(now - grace)
    days: dict[str, dict[str, object]] = {}
    for item_id, created_at in rows:
        day = (created_at or "unknown")[:10]
        entry = days.setdefault(day, {"day": day, "count": 0, "item_ids": []})
        entry["count"] = int(str(entry["count"])) + 1
        ids = entry["item_ids"]
        assert isinstance(ids, list)
        if len(ids) < ids_per_day:
            ids.append(item_id)
    return Reconciliation(missed=len(rows), days=list(days.values()), pull_mode=pull_mode)


@dataclass
class BackfillProgress:
    """Where a backfill of ``[since, until]`` stands, kept in ``sync_state`` after every slice,
    so an interrupted backfill started again resumes after its last committed slice."""

    since: str
    until: str
    done_until: str
    read: int = 0
    stored: int = 0
    finished: bool = False
    resumed: bool = False

    @staticmethod
    def key(since: datetime, until: datetime | None) -> str:
        return f"backfill:{iso(since)}:{iso(until) if until is not None else 'now'}"

    def dump(self) -> str:
        fields = ("since", "until", "done_until", "read", "stored", "finished")
        return json.dumps({name: getattr(self, name) for name in fields})


async def backfill(
    reader: RangeReader,
    since: datetime,
    until: datetime | None,
    *,
    restart: bool = False,
    progress: Callable[[BackfillProgress], None] | None = None,
    stop: asyncio.Event | None = None,
) -> BackfillProgress:
    """Import every item created in ``[since, until]`` once, resumably: the progress is saved
    after every slice, and the same command started again goes on from there. Without
    ``until``, up to now: a finished one started again reads on from where it ended to the new
    now. ``restart`` reads a finished range again from the start."""
    store = reader.store
    key = BackfillProgress.key(since, until)
    saved = None if restart else await store.get_state(key)
    now = iso(datetime.fromtimestamp(reader.clock(), UTC))
    if saved is not None:
        state = BackfillProgress(**json.loads(saved), resumed=True)
        if state.finished and until is None:
            state.until, state.finished = now, False
    else:
        end = iso(until) if until is not None else now
        state = BackfillProgress(since=iso(since), until=end, done_until=iso(since))
    if state.finished:
        return state
    base_read, base_stored = state.read, state.stored

    async def committed(slice_end: datetime, totals: RangeResult) -> None:
        state.done_until = iso(slice_end)
        state.read, state.stored = base_read + totals.read, base_stored + totals.stored
        await store.set_state(key, state.dump(), reader.clock())
        if progress is not None:
            progress(state)

    await store.set_state(key, state.dump(), reader.clock())  # the range is fixed from now on
    await reader.read_range(
        parse_time(state.done_until),
        parse_time(state.until),
        Source.BACKFILL,
        progress=committed,
        stop=stop,
    )
    state.finished = state.done_until == state.until
    await store.set_state(key, state.dump(), reader.clock())
    return state


def _stopped(stop: asyncio.Event | None) -> bool:
    return stop is not None and stop.is_set()
