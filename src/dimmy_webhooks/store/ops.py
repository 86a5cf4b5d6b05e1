"""The store's operations, written once for every backend.

Each function runs inside one transaction the backend opened (SQLite: a savepoint inside a
group commit; PostgreSQL: its own transaction, or for a worker's job writes a savepoint inside
a batch, whose event-row writes wait for the batch's end: :class:`Deferred`) and talks to the
database only through :class:`Tx`. The SQL lives in :mod:`.sql`, in named blocks; a backend
may override a block for its dialect (the claim uses ``FOR UPDATE SKIP LOCKED`` on PostgreSQL).

Every write about a claimed job starts with the lease check, so a worker whose lease was taken
over changes nothing (:class:`LeaseLost`).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dimmy_webhooks.errors import LeaseLost
from dimmy_webhooks.models import (
    UNKNOWN,
    DeliveryAttempt,
    EventRecord,
    IncomingEvent,
    InsertOutcome,
    Job,
    JobKind,
    Lane,
    Lease,
    NormalisedItem,
    QueueStats,
    ReplayMode,
    SaveResult,
    Source,
    StoredItem,
)

Row = Mapping[str, Any]


class Tx(Protocol):
    """A transaction in progress, as the operations see it."""

    def sql(self, name: str) -> str:
        """The SQL block ``name`` in this backend's dialect."""

    def all(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]: ...

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """Execute; return the number of rows changed."""

    def many(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None: ...


def _job(row: Row) -> Job:
    return Job(
        id=int(row["id"]),
        kind=JobKind(row["kind"]),
        event_id=row["event_id"],
        item_id=row["item_id"],
        output=row["output"],
        version=row["version"],
        attempts=int(row["attempts"]),
        lease_token=str(row["lease_token"]),
        revision=row["revision"],
        lane=Lane(row["lane"]),
        seq=int(row["seq"]),
    )


@dataclass(slots=True)
class Deferred:
    """The event-row writes of the operations of one batch, kept for its end (PostgreSQL's
    worker lane): ``last_error`` to set and status to recompute, by event id.

    Each job's completion updates its event's row (status, ``last_error``). Written as each
    operation goes, concurrent batches lock event rows in whatever order their jobs come and
    deadlock; written together at the end of the batch, in event id order, every transaction
    takes event-row locks in one order, held only from there to its commit.
    """

    refresh: dict[int, float] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)

    def merge(self, other: Deferred) -> None:
        for event_id, now in other.refresh.items():
            self.refresh[event_id] = max(now, self.refresh.get(event_id, now))
        self.errors.update(other.errors)


def _deferred(tx: Tx) -> Deferred | None:
    """Where ``tx`` keeps event-row writes for the end of its batch (``None``: write them now)."""
    deferred: Deferred | None = getattr(tx, "deferred", None)
    return deferred


def _refresh(tx: Tx, event_ids: Iterable[int | None], now: float) -> None:
    ids = sorted({e for e in event_ids if e is not None})  # one lock order for everyone
    deferred = _deferred(tx)
    if deferred is not None:
        deferred.merge(Deferred(refresh=dict.fromkeys(ids, now)))
        return
    for event_id in ids:
        tx.run(tx.sql("refresh_event"), {"id": event_id, "now": now})


def _event_error(tx: Tx, event_id: int | None, reason: str) -> None:
    deferred = _deferred(tx)
    if deferred is not None and event_id is not None:
        deferred.errors[event_id] = reason
    else:
        tx.run(tx.sql("event_error"), {"id": event_id, "reason": reason})


def write_deferred(tx: Tx, deferred: Deferred) -> None:
    """The event-row writes a batch kept for its end, in event id order, each event's
    ``last_error`` before its status."""
    for event_id in sorted(deferred.refresh.keys() | deferred.errors.keys()):
        if event_id in deferred.errors:
            tx.run(tx.sql("event_error"), {"id": event_id, "reason": deferred.errors[event_id]})
        if event_id in deferred.refresh:
            tx.run(tx.sql("refresh_event"), {"id": event_id, "now": deferred.refresh[event_id]})


def _guard_finish(tx: Tx, job: Job, now: float, note: str | None = None) -> None:
    params = {"id": job.id, "token": job.lease_token, "now": now, "note": note}
    if tx.run(tx.sql("finish"), params) != 1:
        raise LeaseLost(f"job {job.id}: lease taken over, result discarded")


def _new_jobs(tx: Tx, jobs: Sequence[Mapping[str, Any]], *, reset: bool = False) -> None:
    sql = tx.sql("new_job_or_reset" if reset else "new_job")
    if len(jobs) == 1:
        tx.run(sql, jobs[0])  # the common case; executemany costs more for one row
    elif jobs:
        tx.many(sql, jobs)


def _job_row(
    kind: JobKind,
    *,
    max_attempts: int,
    now: float,
    event_id: int | None = None,
    item_id: str | None = None,
    output: str | None = None,
    version: str | None = None,
    revision: int | None = None,
    dedupe_key: str | None = None,
    run_at: float | None = None,
    lane: Lane = Lane.LIVE,
    seq: int = 0,
) -> dict[str, Any]:
    return {
        "run_at": now if run_at is None else run_at,
        "lane": int(lane),
        "seq": seq,
        "kind": kind.value,
        "event_id": event_id,
        "item_id": item_id,
        "output": output,
        "version": version,
        "revision": revision,
        "dedupe_key": dedupe_key,
        "max_attempts": max_attempts,
        "now": now,
    }


@dataclass(frozen=True, slots=True)
class Attempts:
    """How many attempts a new job gets: ``default``, or for a delivery to one of the outputs
    in ``by_output`` (an ``http:`` destination's ``max_attempts``) that output's number."""

    default: int
    by_output: Mapping[str, int] = field(default_factory=dict)

    def for_output(self, output: str) -> int:
        return self.by_output.get(output, self.default)


def _deliveries(
    item_id: str,
    version: str,
    revision: int,
    outputs: Sequence[str],
    event_id: int | None,
    max_attempts: Attempts,
    now: float,
    lane: Lane,
    seq: int = 0,
) -> list[dict[str, Any]]:
    """One delivery per output of one revision of an item: its dedupe key names the revision,
    so content that comes back to an earlier version (A, B, A) is delivered again. ``lane``
    and ``seq`` are those of the work that stored the revision."""
    return [
        _job_row(
            JobKind.DELIVER,
            max_attempts=max_attempts.for_output(output),
            now=now,
            event_id=event_id,
            item_id=item_id,
            output=output,
            version=version,
            revision=revision,
            dedupe_key=f"d:{output}:{item_id}:r{revision}",
            lane=lane,
            seq=seq,
        )
        for output in outputs
    ]


# inbox ---------------------------------------------------------------------------------------


def insert_event(tx: Tx, event: IncomingEvent, max_attempts: int) -> InsertOutcome:
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
        },
    )
    if not rows:
        existing = tx.all(tx.sql("event_by_message"), {"message_id": event.message_id})[0]
        event_id = int(existing["id"])
        tx.run(tx.sql("count_delivery"), {"id": event_id})
        if existing["status"] == "dead":
            tx.run(tx.sql("requeue_dead_of_event"), {"id": event_id, "now": now})
            _refresh(tx, [event_id], now)
            return InsertOutcome.REQUEUED
        return InsertOutcome.DUPLICATE
    if status != "unknown":
        event_id = int(rows[0]["id"])
        job = _job_row(
            JobKind.EVENT,
            max_attempts=max_attempts,
            now=now,
            event_id=event_id,
            dedupe_key=f"e:{event_id}",
        )
        _new_jobs(tx, [job])
    return InsertOutcome.ACCEPTED


def event_body(tx: Tx, event_id: int) -> bytes:
    rows = tx.all(tx.sql("event_body"), {"id": event_id})
    if not rows:
        raise LookupError(f"event {event_id} does not exist")
    return bytes(rows[0]["body"])


# queue ---------------------------------------------------------------------------------------


def claim(tx: Tx, owner: str, limit: int, lease_seconds: float, now: float) -> list[Job]:
    reaped = tx.all(tx.sql("reap"), {"now": now})
    dead_events = {row["event_id"] for row in reaped if row["status"] == "dead"} - {None}
    for event_id in dead_events:
        reason = "out of attempts: its worker kept stopping or being killed while on it"
        tx.run(tx.sql("event_error"), {"id": event_id, "reason": reason})
    _refresh(tx, dead_events, now)
    rows = tx.all(
        tx.sql("claim"),
        {
            "owner": owner,
            "token": uuid.uuid4().hex,
            "expires": now + lease_seconds,
            "now": now,
            "limit": limit,
        },
    )
    return sorted((_job(row) for row in rows), key=lambda job: job.id)


def heartbeat(tx: Tx, owner: str, lease_seconds: float, now: float) -> int:
    return tx.run(tx.sql("heartbeat"), {"owner": owner, "expires": now + lease_seconds})


def expand_event(
    tx: Tx,
    job: Job,
    item_ids: Sequence[str],
    max_attempts: int,
    now: float,
    note: str | None = None,
) -> None:
    _guard_finish(tx, job, now, note)
    if note is not None:
        _event_error(tx, job.event_id, note[:1000])
    # The fetches are due as of the event's arrival, not the expansion: claims go by lane and
    # position in the event first (sql.FAIR), then by due time, so among the first ids of a
    # backlog of events the oldest events' go before the expansion of newer ones (else nothing
    # reaches the warehouse until every event of the backlog has been expanded).
    received = tx.all(tx.sql("event_received"), {"id": job.event_id})
    run_at = min(now, received[0]["received_at"]) if received else now
    rows = [
        _job_row(
            JobKind.FETCH,
            max_attempts=max_attempts,
            now=now,
            event_id=job.event_id,
            item_id=item_id,
            dedupe_key=f"f:{job.event_id}:{item_id}",
            run_at=run_at,
            lane=job.lane,
            seq=seq,
        )
        for seq, item_id in enumerate(dict.fromkeys(item_ids))
    ]
    _new_jobs(tx, rows)
    _refresh(tx, [job.event_id], now)


def _text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a NUL decoded from JSON's \u0000 in a normalised field
    # is dropped (the raw JSON keeps it, escaped)
    return value.replace("\x00", "") if value is not None and "\x00" in value else value


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
    }
    return {k: _text(v) if isinstance(v, str) else v for k, v in params.items()}


def save_item(
    tx: Tx,
    job: Job,
    item: StoredItem,
    outputs: Sequence[str],
    max_attempts: Attempts,
    now: float,
    lease: Lease | None = None,
) -> SaveResult:
    _guard_finish(tx, job, now)
    # a job of an inbox event is a webhook's; one without is a replay an operator asked for
    from_webhook = job.event_id is not None
    source = Source.WEBHOOK if from_webhook else Source.REPLAY
    params = _item_params(item, source, now if from_webhook else None, now)
    stored = tx.all(tx.sql("upsert_item"), params)
    changed = bool(stored)
    leased: list[Job] = []
    revision = int(stored[0]["revision"]) if stored else 0
    if not changed and from_webhook:
        tx.run(tx.sql("mark_webhook_seen"), {"id": item.id, "now": now})
    if changed and item.hold_reason is None:  # a held version reaches no output
        rows = _deliveries(
            item.id,
            item.version,
            revision,
            outputs,
            job.event_id,
            max_attempts,
            now,
            job.lane,
            job.seq,
        )
        if lease is None:
            _new_jobs(tx, rows)
        else:
            extra = {
                "owner": lease.owner,
                "token": uuid.uuid4().hex,
                "expires": now + lease.seconds,
            }
            for row in rows:
                busy = {"item_id": row["item_id"], "output": row["output"]}
                if tx.all(tx.sql("delivery_busy"), busy):
                    _new_jobs(tx, [row])  # an earlier revision is on its way: this one waits
                    continue
                leased += [_job(r) for r in tx.all(tx.sql("new_leased_job"), {**row, **extra})]
    _refresh(tx, [job.event_id], now)
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
            rows = _deliveries(
                item.id, item.version, revision, outputs, None, max_attempts, now, Lane.POLL
            )
            _new_jobs(tx, rows)
        revisions.append(revision)
    return revisions


def finish(
    tx: Tx, job: Job, now: float, note: str | None, attempt: DeliveryAttempt | None = None
) -> None:
    _guard_finish(tx, job, now, note)
    if attempt is not None:
        record_attempt(tx, job, attempt)
    _refresh(tx, [job.event_id], now)


def fail(
    tx: Tx,
    job: Job,
    reason: str,
    retry_at: float | None,
    now: float,
    attempt: DeliveryAttempt | None = None,
) -> bool:
    rows = tx.all(
        tx.sql("fail"),
        {
            "id": job.id,
            "token": job.lease_token,
            "dead": retry_at is None,
            "retry_at": now if retry_at is None else retry_at,
            "reason": reason[:1000],
            "now": now,
        },
    )
    if not rows:
        raise LeaseLost(f"job {job.id}: lease taken over, failure not recorded")
    dead = bool(rows[0]["status"] == "dead")
    if attempt is not None:
        record_attempt(tx, job, dataclasses.replace(attempt, outcome="dead" if dead else "failed"))
    if dead and job.event_id is not None:
        _event_error(tx, job.event_id, reason[:1000])
        _refresh(tx, [job.event_id], now)
    return dead


def postpone(tx: Tx, job: Job, reason: str, retry_at: float, now: float) -> None:
    params = {
        "id": job.id,
        "token": job.lease_token,
        "retry_at": retry_at,
        "reason": reason[:1000],
        "now": now,
    }
    if tx.run(tx.sql("postpone"), params) != 1:
        raise LeaseLost(f"job {job.id}: lease taken over")


def release(tx: Tx, owner: str, now: float) -> int:
    return tx.run(tx.sql("release"), {"owner": owner, "now": now})


# items and reads -----------------------------------------------------------------------------


def _stored_item(row: Row) -> StoredItem:
    fields = NormalisedItem(
        id=row["id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        owner_id=row["owner_id"],
        scanner_account_id=row["scanner_account_id"],
        flow_id=row["flow_id"],
        width=row["width"],
        height=row["height"],
        depth=row["depth"],
        dimension_unit=row["dimension_unit"],
        volume=row["volume"],
        volume_unit=row["volume_unit"],
        weight=row["weight"],
        weight_unit=row["weight_unit"],
        dim_weight=row["dim_weight"],
        billable_weight=row["billable_weight"],
        barcode=row["barcode"],
        barcodes=tuple(json.loads(row["barcodes"])),
        photo_urls=tuple(json.loads(row["photo_urls"])),
    )
    return StoredItem(
        item=fields,
        raw=row["raw"],
        version=row["version"],
        fetched_at=row["fetched_at"],
        revision=int(row["revision"]),
        hold_state=row["hold_state"],
        hold_reason=row["hold_reason"],
        hold_note=row["hold_note"],
    )


def get_item(tx: Tx, item_id: str) -> StoredItem | None:
    rows = tx.all(tx.sql("item"), {"id": item_id})
    return _stored_item(rows[0]) if rows else None


def list_items(
    tx: Tx, since: float | None, barcode: str | None, limit: int, after: str | None
) -> list[StoredItem]:
    pattern = None
    if barcode is not None:
        escaped = barcode.replace("!", "!!").replace("%", "!%").replace("_", "!_")
        pattern = "%" + json.dumps(escaped) + "%"
    rows = tx.all(
        tx.sql("items"),
        {
            "since": since,
            "barcode": barcode,
            "barcode_pattern": pattern,
            "after": after,
            "limit": limit,
        },
    )
    return [_stored_item(row) for row in rows]


def _event_record(row: Row, jobs: dict[str, int] | None = None) -> EventRecord:
    return EventRecord(
        id=int(row["id"]),
        message_id=row["message_id"],
        event_type=row["event_type"],
        status=row["status"],
        received_at=row["received_at"],
        item_count=row["item_count"],
        last_error=row["last_error"],
        jobs=jobs or {},
    )


def list_events(tx: Tx, status: str | None, limit: int, before: int | None) -> list[EventRecord]:
    rows = tx.all(tx.sql("events"), {"status": status, "before": before, "limit": limit})
    return [_event_record(row) for row in rows]


def get_event(tx: Tx, event_id: int) -> EventRecord | None:
    rows = tx.all(tx.sql("event"), {"id": event_id})
    if not rows:
        return None
    jobs = {r["key"]: int(r["n"]) for r in tx.all(tx.sql("event_jobs"), {"id": event_id})}
    return _event_record(rows[0], jobs)


def stats(tx: Tx, now: float) -> QueueStats:
    events = {r["key"]: int(r["n"]) for r in tx.all(tx.sql("event_counts"))}
    jobs = {r["key"]: int(r["n"]) for r in tx.all(tx.sql("job_counts"))}
    items = int(tx.all(tx.sql("item_count"))[0]["n"])
    oldest = tx.all(tx.sql("oldest_pending"))[0]["t"]
    return QueueStats(
        events=events,
        jobs=jobs,
        items=items,
        oldest_pending_age=None if oldest is None else now - oldest,
    )


# replay --------------------------------------------------------------------------------------


def replay_event(
    tx: Tx,
    event_id: int,
    mode: ReplayMode,
    outputs: Sequence[str],
    max_attempts: Attempts,
    now: float,
) -> int:
    if not tx.all(tx.sql("event_type"), {"id": event_id}):
        raise LookupError(f"event {event_id} does not exist")
    if mode is ReplayMode.REFETCH:
        queued = tx.run(tx.sql("reset_event_jobs"), {"id": event_id, "now": now})
    else:
        rows = tx.all(tx.sql("event_items"), {"id": event_id})
        jobs = [
            job
            for row in rows
            for job in _deliveries(
                row["id"],
                row["version"],
                row["revision"],
                outputs,
                event_id,
                max_attempts,
                now,
                Lane.REPLAY,
            )
        ]
        _new_jobs(tx, jobs, reset=True)
        queued = len(jobs)
    _refresh(tx, [event_id], now)
    return queued


def replay_item(
    tx: Tx,
    item_id: str,
    mode: ReplayMode,
    outputs: Sequence[str],
    max_attempts: Attempts,
    now: float,
) -> int:
    if mode is ReplayMode.REFETCH:
        _new_jobs(
            tx,
            [
                _job_row(
                    JobKind.FETCH,
                    max_attempts=max_attempts.default,
                    now=now,
                    item_id=item_id,
                    lane=Lane.REPLAY,
                )
            ],
        )
        return 1
    rows = tx.all(tx.sql("item_version"), {"id": item_id})
    if not rows:
        raise LookupError(f"item {item_id} is not stored")
    version, revision = rows[0]["version"], rows[0]["revision"]
    jobs = _deliveries(item_id, version, revision, outputs, None, max_attempts, now, Lane.REPLAY)
    _new_jobs(tx, jobs, reset=True)
    return len(jobs)


def replay_dead(tx: Tx, since: float, now: float) -> int:
    rows = tx.all(tx.sql("replay_dead"), {"since": since, "now": now})
    _refresh(tx, (row["event_id"] for row in rows), now)
    return len(rows)


# sync state and reconciliation ---------------------------------------------------------------


def get_state(tx: Tx, name: str) -> str | None:
    rows = tx.all(tx.sql("state"), {"name": name})
    return str(rows[0]["value"]) if rows else None


def set_state(tx: Tx, name: str, value: str, now: float) -> None:
    tx.run(tx.sql("set_state"), {"name": name, "value": value, "now": now})


def due_work(tx: Tx, now: float) -> int:
    return int(tx.all(tx.sql("due_work"), {"now": now})[0]["n"])


def live_fetch_due(tx: Tx, now: float) -> bool:
    return bool(tx.all(tx.sql("live_fetch_due"), {"now": now}))


def unwebhooked(tx: Tx, seen_before: float) -> list[Row]:
    return tx.all(tx.sql("unwebhooked"), {"seen_before": seen_before})


# quarantine and the delivery ledger ----------------------------------------------------------


def held_items(tx: Tx, limit: int, before: float | None) -> list[StoredItem]:
    rows = tx.all(tx.sql("held_items"), {"limit": limit, "before": before})
    return [_stored_item(row) for row in rows]


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
    version, revision = rows[0]["version"], rows[0]["revision"]
    # a person just decided: its deliveries go with live work, not behind a replay
    jobs = _deliveries(item_id, version, revision, outputs, None, max_attempts, now, Lane.LIVE)
    _new_jobs(tx, jobs, reset=True)
    return len(jobs)


def record_attempt(tx: Tx, job: Job, attempt: DeliveryAttempt) -> None:
    tx.run(
        tx.sql("record_attempt"),
        {
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
            "error": _text(attempt.error[:1000]) if attempt.error else None,
            "excerpt": _text(attempt.response_excerpt),
            "record_id": _text(attempt.record_id),
        },
    )


def _attempt(row: Row) -> DeliveryAttempt:
    return DeliveryAttempt(
        id=int(row["id"]),
        job_id=int(row["job_id"]),
        item_id=row["item_id"],
        output=row["output"],
        idempotency_key=row["idempotency_key"],
        attempt=int(row["attempt"]),
        started_at=row["started_at"],
        outcome=row["outcome"],
        revision=row["revision"],
        version=row["version"],
        latency_ms=row["latency_ms"],
        status_code=row["status_code"],
        error=row["error"],
        response_excerpt=row["response_excerpt"],
        record_id=row["record_id"],
    )


def attempts(
    tx: Tx,
    *,
    item_id: str | None,
    barcode: str | None,
    output: str | None,
    outcome: str | None,
    since: float | None,
    until: float | None,
    before: int | None,
    limit: int,
) -> list[DeliveryAttempt]:
    rows = tx.all(
        tx.sql("attempts"),
        {
            "item_id": item_id,
            "barcode": barcode,
            "output": output,
            "outcome": outcome,
            "since": since,
            "until": until,
            "before": before,
            "limit": limit,
        },
    )
    return [_attempt(row) for row in rows]


# the operator's view (dashboard, /metrics, alerts) -------------------------------------------


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

    def params(self) -> dict[str, Any]:
        pattern = None
        if self.q is not None:
            escaped = self.q.replace("!", "!!").replace("%", "!%").replace("_", "!_")
            pattern = "%" + json.dumps(escaped) + "%"
        dims = None if self.has_dimensions is None else int(self.has_dimensions)
        return {
            "since": self.since,
            "until": self.until,
            "scanner": self.scanner,
            "has_dimensions": dims,
            "q": self.q,
            "q_pattern": pattern,
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


def browse_items(
    tx: Tx, where: ItemFilter, limit: int, before: tuple[float, str] | None
) -> list[StoredItem]:
    before_at, before_id = before if before is not None else (None, None)
    params = {**where.params(), "before_at": before_at, "before_id": before_id, "limit": limit}
    return [_stored_item(row) for row in tx.all(tx.sql("browse_items"), params)]


def export_items(tx: Tx, where: ItemFilter, limit: int, after: str | None) -> list[StoredItem]:
    params = {**where.params(), "after": after, "limit": limit}
    return [_stored_item(row) for row in tx.all(tx.sql("export_items"), params)]


def browse_events(
    tx: Tx,
    status: str | None,
    event_type: str | None,
    since: float | None,
    until: float | None,
    before: int | None,
    limit: int,
) -> list[EventRecord]:
    params = {
        "status": status,
        "event_type": event_type,
        "since": since,
        "until": until,
        "before": before,
        "limit": limit,
    }
    return [_event_record(row) for row in tx.all(tx.sql("browse_events"), params)]


def event_work(tx: Tx, event_id: int, limit: int) -> EventWork:
    rows = tx.all(tx.sql("event_headers"), {"id": event_id})
    if not rows:
        raise LookupError(f"event {event_id} does not exist")
    headers = json.loads(rows[0]["headers"])
    jobs = [
        JobRow(
            id=int(r["id"]),
            kind=r["kind"],
            item_id=r["item_id"],
            output=r["output"],
            status=r["status"],
            attempts=int(r["attempts"]),
            max_attempts=int(r["max_attempts"]),
            run_at=r["run_at"],
            last_error=r["last_error"],
            updated_at=r["updated_at"],
        )
        for r in tx.all(tx.sql("event_work"), {"id": event_id, "limit": limit})
    ]
    attempts = [
        _attempt(r) for r in tx.all(tx.sql("event_attempts"), {"id": event_id, "limit": limit})
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


def operator_counts(tx: Tx, since: float, now: float, seen_before: float) -> OperatorCounts:
    def by_key(name: str, params: Mapping[str, Any] | None = None) -> dict[str, int]:
        return {r["key"]: int(r["n"]) for r in tx.all(tx.sql(name), params)}

    def count(name: str, params: Mapping[str, Any] | None = None) -> int:
        return int(tx.all(tx.sql(name), params)[0]["n"])

    queue = [
        QueueDepth(r["kind"], r["output"], r["status"], int(r["n"]), r["due_since"])
        for r in tx.all(tx.sql("queue_depth"), {"now": now})
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


def recent_attempts(tx: Tx, output: str, limit: int) -> list[Row]:
    return tx.all(tx.sql("recent_attempts"), {"output": output, "limit": limit})


def attempt_counts(tx: Tx, after: int, upto: int | None) -> list[Row]:
    return tx.all(tx.sql("attempt_counts"), {"after": after, "upto": upto})
