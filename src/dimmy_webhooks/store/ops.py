"""What every part of the store shares: the transaction (:class:`Tx`), how a backend runs one
(:class:`Transactions`), and the rows the seams write and read.

An operation is a function of one transaction the backend opened (SQLite: a savepoint inside a
group commit; PostgreSQL: its own transaction, or for a worker's job writes a savepoint inside
a batch, whose event-row writes wait for the batch's end: :class:`Deferred`) and talks to the
database only through :class:`Tx`, the four verbs both backends implement. The SQL lives in
:mod:`.sql`, in named blocks; a backend may override a block for its dialect (the claim uses
``FOR UPDATE SKIP LOCKED`` on PostgreSQL). The operations themselves live with the seam they
serve: :mod:`.inbox`, :mod:`.queue`, :mod:`.items`, :mod:`.ledger`, :mod:`.reports`.

Every write about a claimed job starts with the lease check (:func:`guard_finish`), so a worker
whose lease was taken over changes nothing (:class:`LeaseLost`).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dimmy_webhooks.errors import LeaseLost
from dimmy_webhooks.models import (
    DeliveryAttempt,
    EventRecord,
    Job,
    JobKind,
    Lane,
    NormalisedItem,
    StoredItem,
)
from dimmy_webhooks.store.priority import IntakeFirst

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
R = TypeVar("R", bound="DataclassInstance")
Row = Mapping[str, Any]
Due = Callable[[T], bool]
"""Whether the result of a write says it queued work that is due now (someone may be woken)."""


class Tx(Protocol):
    """A transaction in progress, as the operations see it."""

    def sql(self, name: str) -> str:
        """The SQL block ``name`` in this backend's dialect."""

    def all(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]: ...

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """Execute; return the number of rows changed."""

    def many(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None: ...


@dataclass(frozen=True, slots=True)
class Attempts:
    """How many attempts a new job gets: ``default``, or for a delivery to one of the outputs
    in ``by_output`` (an ``http:`` destination's ``max_attempts``) that output's number."""

    default: int
    by_output: Mapping[str, int] = field(default_factory=dict)

    def for_output(self, output: str) -> int:
        return self.by_output.get(output, self.default)


class Transactions(abc.ABC):
    """How a backend runs an operation: what every seam of the store is written on.

    A backend (SQLite, PostgreSQL) says how a write and a read run (:meth:`_write`,
    :meth:`_read`); each seam's methods say which operation they run and whether a write queued
    work that is due now (``due``), so a backend with a notification channel can wake idle
    workers elsewhere.
    """

    max_attempts: int
    output_attempts: Mapping[str, int] = {}
    """Attempts of the deliveries to some outputs, by name (``http:`` destinations' own)."""

    @property
    def job_attempts(self) -> Attempts:
        """What new jobs get: :attr:`max_attempts`, or an output's number for its deliveries."""
        return Attempts(self.max_attempts, self.output_attempts)

    @abc.abstractmethod
    async def _write(self, op: Callable[[Tx], T], due: Due[T] | None = None) -> T:
        """Run ``op`` in a write transaction; ``due(result)`` says whether it queued due work.

        Cancelled, it has either not run or finished before the cancellation propagates
        (:func:`~dimmy_webhooks.store.base.settled`).
        """

    @abc.abstractmethod
    async def _read(self, op: Callable[[Tx], T]) -> T:
        """Run ``op`` in a read-only transaction."""

    _intake_first: IntakeFirst | None = None

    @property
    def intake_first(self) -> IntakeFirst:
        """Webhook inserts noted here pace this process's worker writes (:mod:`.priority`)."""
        if self._intake_first is None:
            self._intake_first = IntakeFirst()
        return self._intake_first

    async def _write_job(
        self, op: Callable[[Tx], T], due: Due[T] | None = None, *, item: str | None = None
    ) -> T:
        """A worker's write about one claimed job (its outcome, the item it stored), or its
        claim: after the webhooks arriving meanwhile (:class:`.IntakeFirst`), then as
        :meth:`_commit_job`."""
        async with self.intake_first.turn():
            return await self._commit_job(op, due, item=item)

    async def _commit_job(
        self, op: Callable[[Tx], T], due: Due[T] | None = None, *, item: str | None = None
    ) -> T:
        """How a backend commits a worker's write: as :meth:`_write`; a backend may commit many
        of them together (PostgreSQL does, in the order of the ``item`` each one locks, so that
        batches never wait for each other in a circle)."""
        return await self._write(op, due)

    async def _rows(self, name: str, params: Mapping[str, Any]) -> list[Row]:
        """The rows of the SQL block ``name``, read in a transaction of their own."""
        return await self._read(lambda tx: tx.all(tx.sql(name), params))


# event rows: written now, or at the end of a batch --------------------------------------------


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


def refresh(tx: Tx, event_ids: Iterable[int | None], now: float) -> None:
    """Recompute the status of the events named (in event id order: one lock order)."""
    ids = sorted({e for e in event_ids if e is not None})
    deferred = _deferred(tx)
    if deferred is not None:
        deferred.merge(Deferred(refresh=dict.fromkeys(ids, now)))
        return
    for event_id in ids:
        tx.run(tx.sql("refresh_event"), {"id": event_id, "now": now})


def event_error(tx: Tx, event_id: int | None, reason: str) -> None:
    """Set an event's ``last_error``."""
    deferred = _deferred(tx)
    if deferred is not None and event_id is not None:
        deferred.errors[event_id] = reason
    else:
        tx.run(tx.sql("event_error"), {"id": event_id, "reason": reason})


# new jobs -------------------------------------------------------------------------------------


def guard_finish(
    tx: Tx,
    job: Job,
    now: float,
    note: str | None = None,
    *,
    block: str = "finish",
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Mark a claimed job done, or raise :class:`LeaseLost` (nothing written) if its lease was
    taken over: the first statement of every write about a claimed job. ``block`` may be a
    dialect's statement that also writes something (with ``extra``'s parameters) only when the
    check passes: ``finish_recorded``."""
    params = {"id": job.id, "token": job.lease_token, "now": now, "note": note, **(extra or {})}
    if tx.run(tx.sql(block), params) != 1:
        raise LeaseLost(f"job {job.id}: lease taken over, result discarded")


def new_jobs(tx: Tx, jobs: Sequence[Mapping[str, Any]], *, reset: bool = False) -> None:
    """Queue ``jobs`` (rows of :func:`job_row`); one already queued under the same dedupe key
    is left alone, or with ``reset`` queued again."""
    sql = tx.sql("new_job_or_reset" if reset else "new_job")
    if len(jobs) == 1:
        tx.run(sql, jobs[0])  # the common case; executemany costs more for one row
    elif jobs:
        tx.many(sql, jobs)


def job_row(
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
    account: str,
) -> dict[str, Any]:
    """The parameters of a new job (the ``new_job`` blocks) of ``account``."""
    return {
        "account": account,
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


def delivery_key(output: str, item_id: str, revision: int) -> str:
    """The dedupe key of one revision of an item to one output."""
    return f"d:{output}:{item_id}:r{revision}"


def deliveries(
    item_id: str,
    version: str,
    revision: int,
    outputs: Sequence[str],
    event_id: int | None,
    max_attempts: Attempts,
    now: float,
    lane: Lane,
    seq: int = 0,
    *,
    account: str,
) -> list[dict[str, Any]]:
    """One delivery per output of one revision of an item of ``account``: its dedupe key
    names the revision,
    so content that comes back to an earlier version (A, B, A) is delivered again. ``lane``
    and ``seq`` are those of the work that stored the revision."""
    return [
        job_row(
            JobKind.DELIVER,
            max_attempts=max_attempts.for_output(output),
            now=now,
            event_id=event_id,
            item_id=item_id,
            output=output,
            version=version,
            revision=revision,
            dedupe_key=delivery_key(output, item_id, revision),
            lane=lane,
            seq=seq,
            account=account,
        )
        for output in outputs
    ]


# values in and rows out -----------------------------------------------------------------------


def redeliver(
    tx: Tx,
    revisions: Iterable[tuple[str, str, int, str]],
    outputs: Sequence[str],
    event_id: int | None,
    max_attempts: Attempts,
    now: float,
    lane: Lane,
) -> int:
    """Queue the :func:`deliveries` of stored ``(item_id, version, revision, account)``
    revisions, again if they ran before (a replay, a release from quarantine); returns how
    many."""
    jobs = [
        job
        for item, version, revision, account in revisions
        for job in deliveries(
            item, version, revision, outputs, event_id, max_attempts, now, lane, account=account
        )
    ]
    new_jobs(tx, jobs, reset=True)
    return len(jobs)


def text(value: str | None) -> str | None:
    """``value`` as PostgreSQL text can hold it: a NUL (decoded from JSON's \\u0000 in a
    normalised field) is dropped; the raw JSON keeps it, escaped."""
    return value.replace("\x00", "") if value is not None and "\x00" in value else value


def like_pattern(barcode: str) -> str:
    """The ``LIKE ... ESCAPE '!'`` pattern finding ``barcode`` in a JSON list of barcodes."""
    escaped = barcode.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return "%" + json.dumps(escaped) + "%"


def record(cls: type[R], row: Row, **given: Any) -> R:
    """The record ``cls`` (a dataclass) from the columns of ``row`` named like its fields;
    ``given`` are the fields converted or computed by the caller."""
    columns = {name: row[name] for name in _field_names(cls) if name not in given}
    return cls(**columns, **given)


@functools.cache
def _field_names(cls: type[DataclassInstance]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def job(row: Row) -> Job:
    return record(
        Job,
        row,
        id=int(row["id"]),
        kind=JobKind(row["kind"]),
        attempts=int(row["attempts"]),
        lease_token=str(row["lease_token"]),
        lane=Lane(row["lane"]),
        seq=int(row["seq"]),
    )


def stored_item(row: Row) -> StoredItem:
    fields = record(
        NormalisedItem,
        row,
        barcodes=tuple(json.loads(row["barcodes"])),
        photo_urls=tuple(json.loads(row["photo_urls"])),
    )
    return record(StoredItem, row, item=fields, revision=int(row["revision"]))


def event_record(row: Row, jobs: dict[str, int] | None = None) -> EventRecord:
    return record(EventRecord, row, id=int(row["id"]), jobs=jobs or {})


def attempt(row: Row) -> DeliveryAttempt:
    ints = ("id", "job_id", "attempt")
    return record(DeliveryAttempt, row, **{name: int(row[name]) for name in ints})
