"""The store: one narrow interface for the inbox, the work queue and the item store.

:class:`Store` is the interface, declared once: every method the receiver, the worker, the JSON
API and the commands call, each with its contract. The methods are written once too, for every
backend: each says which operation of :mod:`.ops` it runs and whether a write queued work that
is due now (``due``), so a backend with a notification channel can wake idle workers elsewhere.
A backend (SQLite, PostgreSQL) says only how it opens and closes, how a write and a read run
(:meth:`Store._write`, :meth:`Store._read`), how a webhook is inserted and how it waits for
work. One contract test suite runs on each backend.

Callers never see driver exceptions: a failed commit is
:class:`~dimmy_webhooks.errors.StoreUnavailable`, a write about work whose lease was taken over is
:class:`~dimmy_webhooks.errors.LeaseLost`.

Times are Unix seconds (float). Work moves ``pending -> running -> done | dead``; a ``running`` job
whose lease expired is due again (its worker died) and counts the lost attempt.

A write whose caller is cancelled has, by the time the cancellation reaches the caller, either
not happened (and never will) or finished (committed or failed): see :func:`settled`.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from dimmy_webhooks.models import (
    DeliveryAttempt,
    EventRecord,
    IncomingEvent,
    InsertOutcome,
    Job,
    Lease,
    QueueStats,
    ReplayMode,
    SaveResult,
    Source,
    StoredItem,
)
from dimmy_webhooks.store import ops

T = TypeVar("T")
Due = Callable[[T], bool]


async def settled(future: concurrent.futures.Future[T]) -> T:
    """Await a write running in another thread, so that cancelling the caller never leaves the
    write in flight.

    If the caller is cancelled meanwhile, a write that has not started is cancelled (it never
    runs) and one that has started is waited for, however often the caller is cancelled again,
    before the :class:`asyncio.CancelledError` propagates. A thread cannot be interrupted: a
    transaction cancelled only on the caller's side would commit later, after whatever the
    canceller did next (a stopping worker cancels its jobs, then releases its claims; a
    ``save_item`` committing after that release would leave deliveries leased to a worker that
    is gone). The wait is bounded by the database's own limits (``busy_timeout``,
    ``statement_timeout``, the pool timeout).
    """
    wrapped = asyncio.wrap_future(future)
    try:
        return await asyncio.shield(wrapped)
    except asyncio.CancelledError:
        if future.cancel():
            raise  # had not started: it never will
        while not wrapped.done():
            try:
                await asyncio.wait([wrapped])
            except asyncio.CancelledError:
                continue  # the caller is already being cancelled: it hears once, below
        raise


class Store(abc.ABC):
    """What the receiver, the worker, the JSON API and the commands need from a database."""

    max_attempts: int
    output_attempts: Mapping[str, int] = {}
    """Attempts of the deliveries to some outputs, by name (``http:`` destinations' own)."""

    @property
    def job_attempts(self) -> ops.Attempts:
        """What new jobs get: :attr:`max_attempts`, or an output's number for its deliveries."""
        return ops.Attempts(self.max_attempts, self.output_attempts)

    # what a backend provides -------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect; the schema must be current (see :mod:`dimmy_webhooks.store.schema`)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and disconnect."""

    @abc.abstractmethod
    async def wait_for_work(self, timeout: float) -> None:
        """Return when new work may be due (a hint from another process) or after ``timeout``.

        Never raises; a missed hint only costs the worker's next poll.
        """

    @abc.abstractmethod
    async def insert_event(self, event: IncomingEvent) -> InsertOutcome:
        """Commit the event (and its first job) durably before returning. Unique on message id."""

    @abc.abstractmethod
    async def _write(self, op: Callable[[ops.Tx], T], due: Due[T] | None = None) -> T:
        """Run ``op`` in a write transaction; ``due(result)`` says whether it queued due work.

        Cancelled, it has either not run or finished before the cancellation propagates
        (:func:`settled`).
        """

    @abc.abstractmethod
    async def _read(self, op: Callable[[ops.Tx], T]) -> T:
        """Run ``op`` in a read-only transaction."""

    async def _write_job(
        self, op: Callable[[ops.Tx], T], due: Due[T] | None = None, *, item: str | None = None
    ) -> T:
        """A worker's write about one claimed job (its outcome, the item it stored), as
        :meth:`_write`; a backend may commit many of them together (PostgreSQL does, in the
        order of the ``item`` each one locks, so that batches never wait for each other in a
        circle)."""
        return await self._write(op, due)

    # health ------------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless a query round-trips."""
        await self._read(lambda tx: tx.all("SELECT 1 AS ok"))

    def failures(self) -> list[str]:
        """Background parts of the backend that stopped (a writer thread), for ``/readyz``."""
        return []

    # inbox -------------------------------------------------------------------------------------

    async def get_event_body(self, event_id: int) -> bytes:
        """The raw body of an inbox event, exactly as received (``LookupError`` if absent)."""
        return await self._read(lambda tx: ops.event_body(tx, event_id))

    # queue -------------------------------------------------------------------------------------

    async def claim(self, owner: str, limit: int, lease_seconds: float, now: float) -> list[Job]:
        """Lease up to ``limit`` due jobs to ``owner``; expired leases are due again."""
        return await self._write(lambda tx: ops.claim(tx, owner, limit, lease_seconds, now))

    async def heartbeat(self, owner: str, lease_seconds: float, now: float) -> int:
        """Extend every lease ``owner`` still holds; returns how many."""
        return await self._write(lambda tx: ops.heartbeat(tx, owner, lease_seconds, now))

    async def expand_event(
        self, job: Job, item_ids: Sequence[str], now: float, note: str | None = None
    ) -> None:
        """Finish an ``event`` job by queueing one fetch per item id (idempotent); ``note``
        (ids that were refused) is kept on the job and as the event's ``last_error``."""
        await self._write_job(
            lambda tx: ops.expand_event(tx, job, item_ids, self.max_attempts, now, note),
            lambda _: bool(item_ids),
        )

    async def save_item(
        self,
        job: Job,
        item: StoredItem,
        outputs: Sequence[str],
        now: float,
        lease: Lease | None = None,
    ) -> SaveResult:
        """Finish a job by storing ``item`` (if newer) and queueing one delivery per output.

        With ``lease``, the new deliveries are leased to its owner at once (the worker that
        holds the item in memory delivers it without a claim or a read; if it dies, the lease
        expires like any other). Raises :class:`LeaseLost` (nothing written) when the job's
        lease was taken over.
        """
        return await self._write_job(
            lambda tx: ops.save_item(tx, job, item, outputs, self.job_attempts, now, lease),
            # deliveries leased to the caller need nobody woken
            lambda saved: saved.changed and bool(outputs) and lease is None,
            item=item.id,
        )

    async def save_polled(
        self, items: Sequence[StoredItem], source: Source, outputs: Sequence[str], now: float
    ) -> list[int]:
        """Store items read from ``GET /items`` (poller, backfill) in one transaction: each
        one absent or strictly newer (by ``updated_at``) is stored with its deliveries queued.
        Returns each item's new revision, 0 where nothing changed."""
        return await self._write(
            lambda tx: ops.save_polled(tx, items, source, outputs, self.job_attempts, now),
            lambda revisions: bool(outputs) and any(revisions),
        )

    async def finish(
        self,
        job: Job,
        now: float,
        note: str | None = None,
        attempt: DeliveryAttempt | None = None,
    ) -> None:
        """Mark a job done (lease-checked); a delivery's ``attempt`` goes into the ledger in the
        same transaction."""
        await self._write_job(lambda tx: ops.finish(tx, job, now, note, attempt), item=job.item_id)

    async def fail(
        self,
        job: Job,
        reason: str,
        retry_at: float | None,
        now: float,
        attempt: DeliveryAttempt | None = None,
    ) -> bool:
        """Reschedule at ``retry_at``, or mark dead when ``None`` or out of attempts; a
        delivery's ``attempt`` goes into the ledger (``failed`` or ``dead``) in the same
        transaction. Returns ``True`` when the job is now dead.
        """
        return await self._write_job(
            lambda tx: ops.fail(tx, job, reason, retry_at, now, attempt),
            lambda dead: not dead and retry_at is not None and retry_at <= now,
            item=job.item_id,
        )

    async def postpone(self, job: Job, reason: str, retry_at: float, now: float) -> None:
        """Put a job back without counting the attempt (configuration error, shutdown)."""
        await self._write_job(
            lambda tx: ops.postpone(tx, job, reason, retry_at, now),
            lambda _: retry_at <= now,
            item=job.item_id,
        )

    async def release(self, owner: str, now: float) -> int:
        """Give back every job ``owner`` holds, uncounted (graceful stop)."""
        return await self._write(lambda tx: ops.release(tx, owner, now), lambda n: n > 0)

    # item store and reads ----------------------------------------------------------------------

    async def get_item(self, item_id: str) -> StoredItem | None:
        """The stored version of one item, or ``None``."""
        return await self._read(lambda tx: ops.get_item(tx, item_id))

    async def list_items(
        self,
        *,
        since: float | None = None,
        barcode: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> list[StoredItem]:
        """Items by id order (``after`` is the last id of the previous page), fetched at or
        after ``since``, carrying ``barcode`` (main or any scanned one)."""
        return await self._read(lambda tx: ops.list_items(tx, since, barcode, limit, after))

    async def list_events(
        self, *, status: str | None = None, limit: int = 50, before: int | None = None
    ) -> list[EventRecord]:
        """Events newest first (``before`` is the last id of the previous page)."""
        return await self._read(lambda tx: ops.list_events(tx, status, limit, before))

    async def get_event(self, event_id: int) -> EventRecord | None:
        """One event with its jobs counted by ``kind:status``, or ``None``."""
        return await self._read(lambda tx: ops.get_event(tx, event_id))

    async def stats(self, now: float) -> QueueStats:
        """Events and jobs by status, items stored, the oldest pending job's age."""
        return await self._read(lambda tx: ops.stats(tx, now))

    # quarantine and the delivery ledger -------------------------------------------------------

    async def held_items(self, *, limit: int = 50, before: float | None = None) -> list[StoredItem]:
        """Items held in quarantine, most recently held first (``before``: a ``held_at``)."""
        return await self._read(lambda tx: ops.held_items(tx, limit, before))

    async def decide_hold(
        self, item_id: str, *, release: bool, note: str, outputs: Sequence[str], now: float
    ) -> int:
        """Release a held item (its deliveries are queued: returns how many) or reject it,
        with the operator's ``note``. ``LookupError`` when the item is not held."""
        return await self._write(
            lambda tx: ops.decide_hold(tx, item_id, release, note, outputs, self.job_attempts, now),
            lambda queued: queued > 0,
        )

    async def attempts(
        self,
        *,
        item_id: str | None = None,
        barcode: str | None = None,
        output: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[DeliveryAttempt]:
        """Ledger rows, newest first (``before``: the last id of the previous page)."""
        return await self._read(
            lambda tx: ops.attempts(
                tx,
                item_id=item_id,
                barcode=barcode,
                output=output,
                outcome=outcome,
                since=since,
                until=until,
                before=before,
                limit=limit,
            )
        )

    # sync state and reconciliation ------------------------------------------------------------

    async def get_state(self, name: str) -> str | None:
        """A value the poller or a backfill stored under ``name`` (``None``: never stored)."""
        return await self._read(lambda tx: ops.get_state(tx, name))

    async def set_state(self, name: str, value: str, now: float) -> None:
        await self._write(lambda tx: ops.set_state(tx, name, value, now))

    async def due_work(self, now: float) -> int:
        """Jobs running or due now (not those waiting for a later retry)."""
        return await self._read(lambda tx: ops.due_work(tx, now))

    async def live_fetch_due(self, now: float) -> bool:
        """Whether a fetch a webhook asked for is waiting to run (bulk reads give way to it)."""
        return await self._read(lambda tx: ops.live_fetch_due(tx, now))

    async def unwebhooked(self, seen_before: float) -> list[tuple[str, str | None]]:
        """``(id, created_at)`` of every item that reached us only through polling (first read
        by the poller or a backfill before ``seen_before``, never named by a webhook), oldest
        first."""
        rows = await self._read(lambda tx: ops.unwebhooked(tx, seen_before))
        return [(str(row["id"]), row["created_at"]) for row in rows]

    # replay ------------------------------------------------------------------------------------

    async def replay_event(
        self, event_id: int, mode: ReplayMode, outputs: Sequence[str], now: float
    ) -> int:
        """Put an event's work back in the queue; returns the number of jobs queued.
        ``LookupError`` when the event does not exist."""
        return await self._write(
            lambda tx: ops.replay_event(tx, event_id, mode, outputs, self.job_attempts, now),
            lambda n: n > 0,
        )

    async def replay_item(
        self, item_id: str, mode: ReplayMode, outputs: Sequence[str], now: float
    ) -> int:
        """Fetch one item again, or deliver its stored version again (``LookupError`` when
        redelivering an item that is not stored); returns the number of jobs queued."""
        return await self._write(
            lambda tx: ops.replay_item(tx, item_id, mode, outputs, self.job_attempts, now),
            lambda n: n > 0,
        )

    async def replay_dead(self, since: float, now: float) -> int:
        """Put every job that died since ``since`` back in the queue."""
        return await self._write(lambda tx: ops.replay_dead(tx, since, now), lambda n: n > 0)

    # the operator's view (dashboard, /metrics, alerts): reads only -----------------------------

    async def browse_items(
        self, where: ops.ItemFilter, *, limit: int = 50, before: tuple[float, str] | None = None
    ) -> list[StoredItem]:
        """Items matching ``where``, most recently stored first; ``before`` is the
        ``(fetched_at, id)`` of the last item of the previous page."""
        return await self._read(lambda tx: ops.browse_items(tx, where, limit, before))

    async def export_items(
        self, where: ops.ItemFilter, *, limit: int = 500, after: str | None = None
    ) -> list[StoredItem]:
        """Items matching ``where`` in id order (``after``: the last id of the previous page)."""
        return await self._read(lambda tx: ops.export_items(tx, where, limit, after))

    async def browse_events(
        self,
        *,
        status: str | None = None,
        event_type: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[EventRecord]:
        """Events newest first, by status, type and time received (``[since, until)``)."""
        return await self._read(
            lambda tx: ops.browse_events(tx, status, event_type, since, until, before, limit)
        )

    async def event_work(self, event_id: int, *, limit: int = 500) -> ops.EventWork:
        """An event's headers, jobs (each with its last error) and delivery attempts
        (``LookupError`` when the event does not exist)."""
        return await self._read(lambda tx: ops.event_work(tx, event_id, limit))

    async def item_history(
        self, item_id: str, *, limit: int = 100
    ) -> tuple[list[ops.ItemRevision], list[int]]:
        """The revisions of an item that were handed to the outputs (newest first) and the
        inbox events that named it (newest first)."""
        return await self._read(lambda tx: ops.item_history(tx, item_id, limit))

    async def operator_counts(
        self, *, since: float, now: float, seen_before: float
    ) -> ops.OperatorCounts:
        """Events and items since ``since``, open events, held items, the queue by kind,
        output and status, and the items only polling found (first seen before
        ``seen_before``)."""
        return await self._read(lambda tx: ops.operator_counts(tx, since, now, seen_before))

    async def recent_attempts(
        self, output: str, *, limit: int = 50
    ) -> list[tuple[str, float, str | None]]:
        """``(outcome, started_at, error)`` of ``output``'s latest ledger rows, newest first."""
        rows = await self._read(lambda tx: ops.recent_attempts(tx, output, limit))
        return [(str(r["outcome"]), float(r["started_at"]), r["error"]) for r in rows]

    async def attempt_counts(self, *, after: int, upto: int | None = None) -> list[ops.Row]:
        """Ledger rows with ids in ``(after, upto]`` counted by ``output`` and ``outcome``
        (``n``), each group with its highest id (``top``)."""
        return await self._read(lambda tx: ops.attempt_counts(tx, after, upto))
