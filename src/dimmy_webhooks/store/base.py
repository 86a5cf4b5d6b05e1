"""The store: one narrow interface for the inbox, the work queue and the item store.

Every backend (SQLite, PostgreSQL) implements :class:`Store`; one contract test suite runs on each.
Callers never see driver exceptions: a failed commit is
:class:`~dimmy_webhooks.errors.StoreUnavailable`, a write about work whose lease was taken over is
:class:`~dimmy_webhooks.errors.LeaseLost`.

Times are Unix seconds (float). Work moves ``pending -> running -> done | dead``; a ``running`` job
whose lease expired is due again (its worker died) and counts the lost attempt.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..models import EventRecord, IncomingEvent, InsertOutcome, Job, StoredItem


class ReplayMode(enum.StrEnum):
    REFETCH = "refetch"  # fetch the items from Dimmy again (or re-expand the event)
    REDELIVER = "redeliver"  # hand the stored item to the outputs again


@dataclass(frozen=True, slots=True)
class Lease:
    """Who takes new work on the spot, and for how long (see :meth:`Store.save_item`)."""

    owner: str
    seconds: float


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What :meth:`Store.save_item` did: whether the item changed, and the delivery jobs it
    queued already leased to the caller (empty unless a lease was asked for)."""

    changed: bool
    deliveries: list[Job]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts for /readyz, /metrics and the dashboard."""

    events: dict[str, int]
    jobs: dict[str, int]
    oldest_pending_age: float | None


class Store(Protocol):
    """What the receiver, the worker and the JSON API need from a database."""

    async def open(self) -> None:
        """Connect; the schema must be current (see :mod:`dimmy_webhooks.schema`)."""

    async def close(self) -> None:
        """Finish pending writes and disconnect."""

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless a query round-trips."""

    async def wait_for_work(self, timeout: float) -> None:
        """Return when new work may be due (a hint from another process) or after ``timeout``.

        Never raises; a missed hint only costs the worker's next poll.
        """

    # inbox
    async def insert_event(self, event: IncomingEvent) -> InsertOutcome:
        """Commit the event (and its first job) durably before returning. Unique on message id."""

    async def get_event_body(self, event_id: int) -> bytes:
        """The raw body of an inbox event, exactly as received."""

    # queue
    async def claim(self, owner: str, limit: int, lease_seconds: float, now: float) -> list[Job]:
        """Lease up to ``limit`` due jobs to ``owner``; expired leases are due again."""

    async def heartbeat(self, owner: str, lease_seconds: float, now: float) -> int:
        """Extend every lease ``owner`` still holds; returns how many."""

    async def expand_event(self, job: Job, item_ids: Sequence[str], now: float) -> None:
        """Finish an ``event`` job by queueing one fetch per item id (idempotent)."""

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

    async def finish(self, job: Job, now: float, note: str | None = None) -> None:
        """Mark a job done (lease-checked)."""

    async def fail(self, job: Job, reason: str, retry_at: float | None, now: float) -> bool:
        """Reschedule at ``retry_at``, or mark dead when ``None`` or out of attempts.

        Returns ``True`` when the job is now dead.
        """

    async def postpone(self, job: Job, reason: str, retry_at: float, now: float) -> None:
        """Put a job back without counting the attempt (configuration error, shutdown)."""

    async def release(self, owner: str, now: float) -> int:
        """Give back every job ``owner`` holds, uncounted (graceful stop)."""

    # item store and reads
    async def get_item(self, item_id: str) -> StoredItem | None: ...

    async def list_items(
        self,
        *,
        since: float | None = None,
        barcode: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> list[StoredItem]:
        """Items by id order (``after`` is the last id of the previous page)."""

    async def list_events(
        self, *, status: str | None = None, limit: int = 50, before: int | None = None
    ) -> list[EventRecord]:
        """Events newest first (``before`` is the last id of the previous page)."""

    async def get_event(self, event_id: int) -> EventRecord | None: ...

    async def stats(self, now: float) -> QueueStats: ...

    # replay
    async def replay_event(
        self, event_id: int, mode: ReplayMode, outputs: Sequence[str], now: float
    ) -> int:
        """Put an event's work back in the queue; returns the number of jobs queued."""

    async def replay_item(
        self, item_id: str, mode: ReplayMode, outputs: Sequence[str], now: float
    ) -> int: ...

    async def replay_dead(self, since: float, now: float) -> int:
        """Put every job that died since ``since`` back in the queue."""
