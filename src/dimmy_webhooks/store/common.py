"""The :class:`~dimmy_webhooks.store.base.Store` methods, once for every backend.

A backend says how a write and a read run (:meth:`OpsStore._write`, :meth:`OpsStore._read`);
each method here says which operation of :mod:`.ops` it is and whether a write queued work that is
due now (``due``), so a backend with a notification channel can wake idle workers elsewhere.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TypeVar

from ..models import EventRecord, IncomingEvent, InsertOutcome, Job, StoredItem
from . import ops
from .base import Lease, QueueStats, ReplayMode, SaveResult

T = TypeVar("T")
Due = Callable[[T], bool]


class OpsStore(abc.ABC):
    """Everything of the Store but opening, closing, the inbox insert and waiting for work."""

    max_attempts: int

    @abc.abstractmethod
    async def _write(self, op: Callable[[ops.Tx], T], due: Due[T] | None = None) -> T:
        """Run ``op`` in a write transaction; ``due(result)`` says whether it queued due work."""

    @abc.abstractmethod
    async def _read(self, op: Callable[[ops.Tx], T]) -> T:
        """Run ``op`` in a read-only transaction."""

    @abc.abstractmethod
    async def insert_event(self, event: IncomingEvent) -> InsertOutcome: ...

    async def ping(self) -> None:
        await self._read(lambda tx: tx.all("SELECT 1 AS ok"))

    async def get_event_body(self, event_id: int) -> bytes:
        return await self._read(lambda tx: ops.event_body(tx, event_id))

    async def claim(self, owner: str, limit: int, lease_seconds: float, now: float) -> list[Job]:
        return await self._write(lambda tx: ops.claim(tx, owner, limit, lease_seconds, now))

    async def heartbeat(self, owner: str, lease_seconds: float, now: float) -> int:
        return await self._write(lambda tx: ops.heartbeat(tx, owner, lease_seconds, now))

    async def expand_event(self, job: Job, item_ids: Sequence[str], now: float) -> None:
        await self._write(
            lambda tx: ops.expand_event(tx, job, item_ids, self.max_attempts, now),
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
        return await self._write(
            lambda tx: ops.save_item(tx, job, item, outputs, self.max_attempts, now, lease),
            # deliveries leased to the caller need nobody woken
            lambda saved: saved.changed and bool(outputs) and lease is None,
        )

    async def finish(self, job: Job, now: float, note: str | None = None) -> None:
        await self._write(lambda tx: ops.finish(tx, job, now, note))

    async def fail(self, job: Job, reason: str, retry_at: float | None, now: float) -> bool:
        return await self._write(
            lambda tx: ops.fail(tx, job, reason, retry_at, now),
            lambda dead: not dead and retry_at is not None and retry_at <= now,
        )

    async def postpone(self, job: Job, reason: str, retry_at: float, now: float) -> None:
        await self._write(
            lambda tx: ops.postpone(tx, job, reason, retry_at, now), lambda _: retry_at <= now
        )

    async def release(self, owner: str, now: float) -> int:
        return await self._write(lambda tx: ops.release(tx, owner, now), lambda n: n > 0)

    async def get_item(self, item_id: str) -> StoredItem | None:
        return await self._read(lambda tx: ops.get_item(tx, item_id))

    async def list_items(
        self,
        *,
        since: float | None = None,
        barcode: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> list[StoredItem]:
        return await self._read(lambda tx: ops.list_items(tx, since, barcode, limit, after))

    async def list_events(
        self, *, status: str | None = None, limit: int = 50, before: int | None = None
    ) -> list[EventRecord]:
        return await self._read(lambda tx: ops.list_events(tx, status, limit, before))

    async def get_event(self, event_id: int) -> EventRecord | None:
        return await self._read(lambda tx: ops.get_event(tx, event_id))

    async def stats(self, now: float) -> QueueStats:
        return await self._read(lambda tx: ops.stats(tx, now))

    async def replay_event(
        self, event_id: int, mode: ReplayMode, outputs: Sequence[str], now: float
    ) -> int:
        return await self._write(
            lambda tx: ops.replay_event(tx, event_id, mode, outputs, self.max_attempts, now),
            lambda n: n > 0,
        )

    async def replay_item(
        self, item_id: str, mode: ReplayMode, outputs: Sequence[str], now: float
    ) -> int:
        return await self._write(
            lambda tx: ops.replay_item(tx, item_id, mode, outputs, self.max_attempts, now),
            lambda n: n > 0,
        )

    async def replay_dead(self, since: float, now: float) -> int:
        return await self._write(lambda tx: ops.replay_dead(tx, since, now), lambda n: n > 0)
