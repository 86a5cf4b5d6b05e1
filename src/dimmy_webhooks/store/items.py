"""The item store: the latest version of every item, its revisions, and the poller's state.

An item is stored when it is absent or newer than the stored version (the ``upsert_item``
rules in :mod:`.sql`); each revision stored queues one delivery per output. :class:`Items` is
the seam the worker's fetches, the poller, a backfill and the item reads need; the operations
below it run inside a transaction the backend opened (:mod:`.ops`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from dimmy_webhooks.models import Job, Lane, Lease, SaveResult, Source, StoredItem
from dimmy_webhooks.store import ops
from dimmy_webhooks.store.ops import Attempts, Tx


class Items(ops.Transactions):
    """What the worker, the poller and the item reads need from the item store."""

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
            lambda tx: save_item(tx, job, item, outputs, self.job_attempts, now, lease),
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
            lambda tx: save_polled(tx, items, source, outputs, self.job_attempts, now),
            lambda revisions: bool(outputs) and any(revisions),
        )

    async def get_item(self, item_id: str) -> StoredItem | None:
        """The stored version of one item, or ``None``."""
        rows = await self._rows("item", {"id": item_id})
        return ops.stored_item(rows[0]) if rows else None

    async def list_items(
        self,
        *,
        since: float | None = None,
        barcode: str | None = None,
        limit: int = 50,
        after: str | None = None,
        account: str | None = None,
    ) -> list[StoredItem]:
        """Items by id order (``after`` is the last id of the previous page), fetched at or
        after ``since``, carrying ``barcode`` (main or any scanned one)."""
        pattern = None if barcode is None else ops.like_pattern(barcode)
        params = {"since": since, "barcode": barcode, "barcode_pattern": pattern}
        params["account"] = account
        rows = await self._rows("items", {**params, "after": after, "limit": limit})
        return [ops.stored_item(row) for row in rows]

    # sync state and reconciliation ------------------------------------------------------------

    async def get_state(self, name: str) -> str | None:
        """A value the poller or a backfill stored under ``name`` (``None``: never stored)."""
        rows = await self._rows("state", {"name": name})
        return str(rows[0]["value"]) if rows else None

    async def set_state(self, name: str, value: str, now: float) -> None:
        params = {"name": name, "value": value, "now": now}
        await self._write(lambda tx: tx.run(tx.sql("set_state"), params))

    async def unwebhooked(
        self, seen_before: float, *, account: str | None = None
    ) -> list[tuple[str, str | None]]:
        """``(id, created_at)`` of every item that reached us only through polling (first read
        by the poller or a backfill before ``seen_before``, never named by a webhook), oldest
        first."""
        rows = await self._rows("unwebhooked", {"seen_before": seen_before, "account": account})
        return [(str(row["id"]), row["created_at"]) for row in rows]


def _item_params(
    item: StoredItem, source: Source, webhook_seen_at: float | None, now: float
) -> dict[str, Any]:
    fields = item.item
    params = {
        "source": source.value,
        "webhook_seen_at": webhook_seen_at,
        "hold_state": "held" if item.hold_reason is not None else None,
        "hold_reason": item.hold_reason,
        "held_at": now if item.hold_reason is not None else None,
        "dim_weight": fields.dim_weight,
        "billable_weight": fields.billable_weight,
        "id": fields.id,
        "raw": item.raw,
        "version": item.version,
        "updated_at": fields.updated_at,
        "created_at": fields.created_at,
        "started_at": fields.started_at,
        "ended_at": fields.ended_at,
        "owner_id": fields.owner_id,
        "scanner_account_id": fields.scanner_account_id,
        "flow_id": fields.flow_id,
        "width": fields.width,
        "height": fields.height,
        "depth": fields.depth,
        "dimension_unit": fields.dimension_unit,
        "volume": fields.volume,
        "volume_unit": fields.volume_unit,
        "weight": fields.weight,
        "weight_unit": fields.weight_unit,
        "barcode": fields.barcode,
        "barcodes": json.dumps(list(fields.barcodes)),
        "photo_urls": json.dumps(list(fields.photo_urls)),
        "fetched_at": item.fetched_at,
        "account": item.account,
    }
    return {k: ops.text(v) if isinstance(v, str) else v for k, v in params.items()}


def save_item(
    tx: Tx,
    job: Job,
    item: StoredItem,
    outputs: Sequence[str],
    max_attempts: Attempts,
    now: float,
    lease: Lease | None = None,
) -> SaveResult:
    ops.guard_finish(tx, job, now)
    # a job of an inbox event is a webhook's; one without is a replay an operator asked for
    from_webhook = job.event_id is not None
    source = Source.WEBHOOK if from_webhook else Source.REPLAY
    params = _item_params(item, source, now if from_webhook else None, now)
    stored = tx.all(tx.sql("upsert_item"), params)  # never over another account's item
    changed = bool(stored)
    leased: list[Job] = []
    revision = int(stored[0]["revision"]) if stored else 0
    if not changed:  # not newer, or another account's: only then is the owner read
        owner = tx.all(tx.sql("item_account"), {"id": item.id})
        if owner and owner[0]["account"] != item.account:
            refuse_foreign(tx, job, owner[0]["account"], now)
            return SaveResult(changed=False, deliveries=[])
        if from_webhook:
            tx.run(tx.sql("mark_webhook_seen"), {"id": item.id, "now": now})
    if changed and item.hold_reason is None:  # a held version reaches no output
        rows = ops.deliveries(
            item.id,
            item.version,
            revision,
            outputs,
            job.event_id,
            max_attempts,
            now,
            job.lane,
            job.seq,
            account=item.account,
        )
        if lease is None:
            ops.new_jobs(tx, rows)
        else:
            extra = {
                "owner": lease.owner,
                "token": uuid.uuid4().hex,
                "expires": now + lease.seconds,
            }
            for row in rows:
                taken = tx.all(tx.sql("new_leased_delivery"), {**row, **extra})
                if taken:
                    leased.append(ops.job(taken[0]))
                else:  # an earlier revision is on its way (or this one is queued): it waits
                    ops.new_jobs(tx, [row])
    ops.refresh(tx, [job.event_id], now)
    return SaveResult(changed=changed, deliveries=leased, revision=revision)


def save_polled(
    tx: Tx,
    items: Sequence[StoredItem],
    source: Source,
    outputs: Sequence[str],
    max_attempts: Attempts,
    now: float,
) -> list[int]:
    """Store what the poller (or a backfill) read: each item if absent or strictly newer (see
    ``upsert_polled_item``), one delivery per output for each one stored. Returns, per item, its
    new revision, or 0 when nothing changed."""
    revisions = []
    for item in items:
        stored = tx.all(tx.sql("upsert_polled_item"), _item_params(item, source, None, now))
        revision = int(stored[0]["revision"]) if stored else 0
        if revision and item.hold_reason is None:
            rows = ops.deliveries(
                item.id,
                item.version,
                revision,
                outputs,
                None,
                max_attempts,
                now,
                Lane.POLL,
                account=item.account,
            )
            ops.new_jobs(tx, rows)
        revisions.append(revision)
    return revisions


def refuse_foreign(tx: Tx, job: Job, account: str, now: float) -> None:
    """End ``job`` dead: the item it fetched is stored under another ``account``, whose
    item it stays (an item id names one document of one Dimmy account; a webhook of another
    account naming it is refused, never allowed to overwrite it). Called after
    :func:`ops.guard_finish` in the same transaction: the lease was checked there."""
    reason = f"item {job.item_id} belongs to account {account!r}: not stored for {job.account!r}"
    tx.run(tx.sql("bury"), {"id": job.id, "reason": reason, "now": now})
    ops.event_error(tx, job.event_id, reason)
    ops.refresh(tx, [job.event_id], now)
