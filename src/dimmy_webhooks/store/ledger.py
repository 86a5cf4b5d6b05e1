"""The delivery ledger and quarantine: one row per delivery attempt, and the operator's
decisions about held items.

:class:`Ledger` is the seam the deliveries API and the quarantine commands need. A delivery's
attempt is written by the queue, in the transaction that finishes or fails its job
(:func:`record_attempt`, :func:`finish_recorded`); the operations run inside a transaction the
backend opened (:mod:`.ops`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dimmy_webhooks.models import DeliveryAttempt, Job, Lane, StoredItem
from dimmy_webhooks.store import ops
from dimmy_webhooks.store.ops import Attempts, Tx


class Ledger(ops.Transactions):
    """What the API and the commands need from the ledger and the quarantine."""

    async def held_items(
        self, *, limit: int = 50, before: float | None = None, account: str | None = None
    ) -> list[StoredItem]:
        """Items held in quarantine, most recently held first (``before``: a ``held_at``),
        of one ``account`` or all."""
        params = {"limit": limit, "before": before, "account": account}
        rows = await self._rows("held_items", params)
        return [ops.stored_item(row) for row in rows]

    async def decide_hold(
        self, item_id: str, *, release: bool, note: str, outputs: Sequence[str], now: float
    ) -> int:
        """Release a held item (its deliveries are queued: returns how many) or reject it,
        with the operator's ``note``. ``LookupError`` when the item is not held."""
        return await self._write(
            lambda tx: decide_hold(tx, item_id, release, note, outputs, self.job_attempts, now),
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
        account: str | None = None,
    ) -> list[DeliveryAttempt]:
        """Ledger rows, newest first (``before``: the last id of the previous page)."""
        where = {"item_id": item_id, "barcode": barcode, "output": output, "outcome": outcome}
        where["account"] = account
        span = {"since": since, "until": until, "before": before, "limit": limit}
        return [ops.attempt(row) for row in await self._rows("attempts", {**where, **span})]


def decide_hold(
    tx: Tx,
    item_id: str,
    release: bool,
    note: str,
    outputs: Sequence[str],
    max_attempts: Attempts,
    now: float,
) -> int:
    """Release (queue its deliveries) or reject a held item; ``LookupError`` when it is not
    held. Returns the deliveries queued."""
    rows = tx.all(
        tx.sql("decide_hold"),
        {"id": item_id, "state": "released" if release else "rejected", "note": note[:1000]},
    )
    if not rows:
        raise LookupError(f"item {item_id} is not held in quarantine")
    if not release:
        return 0
    revision = (item_id, rows[0]["version"], rows[0]["revision"], rows[0]["account"])
    # a person just decided: its deliveries go with live work, not behind a replay
    return ops.redeliver(tx, [revision], outputs, None, max_attempts, now, Lane.LIVE)


def record_attempt(tx: Tx, job: Job, attempt: DeliveryAttempt) -> None:
    """One delivery attempt into the ledger (texts cut and cleaned for any backend)."""
    tx.run(tx.sql("record_attempt"), attempt_params(job, attempt))


def finish_recorded(
    tx: Tx, job: Job, now: float, note: str | None, attempt: DeliveryAttempt
) -> None:
    """:func:`ops.guard_finish`, then ``attempt`` into the ledger: in one statement where the
    dialect has one (``finish_recorded``), else in two. Either way nothing is written, and
    :class:`LeaseLost` raised, when the job's lease was taken over."""
    if tx.sql("finish_recorded"):
        extra = attempt_params(job, attempt)
        ops.guard_finish(tx, job, now, note, block="finish_recorded", extra=extra)
    else:
        ops.guard_finish(tx, job, now, note)
        record_attempt(tx, job, attempt)


def attempt_params(job: Job, attempt: DeliveryAttempt) -> dict[str, Any]:
    """The parameters of a ledger row (:data:`.sql.ATTEMPT_VALUES`)."""
    return {
        "job_id": job.id,
        "item_id": attempt.item_id,
        "revision": attempt.revision,
        "version": attempt.version,
        "output": attempt.output,
        "key": attempt.idempotency_key,
        "attempt": attempt.attempt,
        "started_at": attempt.started_at,
        "latency_ms": attempt.latency_ms,
        "outcome": attempt.outcome,
        "status_code": attempt.status_code,
        "error": ops.text(attempt.error[:1000]) if attempt.error else None,
        "excerpt": ops.text(attempt.response_excerpt),
        "record_id": ops.text(attempt.record_id),
        "account": job.account,
    }
