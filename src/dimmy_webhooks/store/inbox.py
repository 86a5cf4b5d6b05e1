"""The inbox: every webhook as received (``events``), committed before it is acknowledged.

:class:`Inbox` is the seam the receiver and the event pages need: the insert each backend writes
its own way (a lane of group commits), the reads written once. The operations below it run
inside a transaction the backend opened (:mod:`.ops`).
"""

from __future__ import annotations

import abc
import json

from dimmy_webhooks.models import UNKNOWN, EventRecord, IncomingEvent, InsertOutcome, JobKind
from dimmy_webhooks.store import ops
from dimmy_webhooks.store.ops import Tx


class Inbox(ops.Transactions):
    """What the receiver and the event pages need from the inbox."""

    @abc.abstractmethod
    async def insert_event(self, event: IncomingEvent) -> InsertOutcome:
        """Commit the event (and its first job) durably before returning. Unique on message id."""

    async def get_event_body(self, event_id: int) -> bytes:
        """The raw body of an inbox event, exactly as received (``LookupError`` if absent)."""
        return await self._read(lambda tx: event_body(tx, event_id))

    async def list_events(
        self,
        *,
        status: str | None = None,
        limit: int = 50,
        before: int | None = None,
        account: str | None = None,
    ) -> list[EventRecord]:
        """Events newest first (``before`` is the last id of the previous page)."""
        params = {"status": status, "before": before, "limit": limit, "account": account}
        rows = await self._rows("events", params)
        return [ops.event_record(row) for row in rows]

    async def get_event(self, event_id: int) -> EventRecord | None:
        """One event with its jobs counted by ``kind:status``, or ``None``."""
        return await self._read(lambda tx: get_event(tx, event_id))


def insert_event(tx: Tx, event: IncomingEvent, max_attempts: int) -> InsertOutcome:
    """Store a webhook and queue its ``event`` job; a redelivery is counted (and if its event
    died, its dead work is queued again)."""
    now = event.received_at
    status = "unknown" if event.event_type == UNKNOWN else "pending"
    rows = tx.all(
        tx.sql("insert_event"),
        {
            "message_id": event.message_id,
            "event_type": event.event_type,
            "body": event.body,
            "headers": json.dumps(event.headers, sort_keys=True),
            "now": now,
            "status": status,
            "item_count": event.item_count,
            "account": event.account,
        },
    )
    if not rows:
        key = {"message_id": event.message_id, "account": event.account}
        existing = tx.all(tx.sql("event_by_message"), key)[0]
        event_id = int(existing["id"])
        tx.run(tx.sql("count_delivery"), {"id": event_id})
        if existing["status"] == "dead":
            tx.run(tx.sql("requeue_dead_of_event"), {"id": event_id, "now": now})
            ops.refresh(tx, [event_id], now)
            return InsertOutcome.REQUEUED
        return InsertOutcome.DUPLICATE
    if status != "unknown":
        event_id = int(rows[0]["id"])
        job = ops.job_row(
            JobKind.EVENT,
            max_attempts=max_attempts,
            now=now,
            event_id=event_id,
            dedupe_key=f"e:{event_id}",
            account=event.account,
        )
        ops.new_jobs(tx, [job])
    return InsertOutcome.ACCEPTED


def event_body(tx: Tx, event_id: int) -> bytes:
    rows = tx.all(tx.sql("event_body"), {"id": event_id})
    if not rows:
        raise LookupError(f"event {event_id} does not exist")
    return bytes(rows[0]["body"])


def get_event(tx: Tx, event_id: int) -> EventRecord | None:
    rows = tx.all(tx.sql("event"), {"id": event_id})
    if not rows:
        return None
    jobs = {r["key"]: int(r["n"]) for r in tx.all(tx.sql("event_jobs"), {"id": event_id})}
    return ops.event_record(rows[0], jobs)
