"""The work queue: jobs leased to workers, their outcomes, and the replays that queue them again.

Work moves ``pending -> running -> done | dead``; a ``running`` job whose lease expired is due
again (its worker died) and counts the lost attempt. :class:`Queue` is the seam the worker, the
poller's yielding and the replay commands need; the operations below it run inside a
transaction the backend opened (:mod:`.ops`).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from dimmy_webhooks.errors import LeaseLost
from dimmy_webhooks.models import DeliveryAttempt, Job, JobKind, Lane, QueueStats, ReplayMode
from dimmy_webhooks.store import ops
from dimmy_webhooks.store.ledger import finish_recorded, record_attempt
from dimmy_webhooks.store.ops import Attempts, Tx

EXPAND_CHUNK = 100
"""Item ids queued per write when an event is expanded (:meth:`Queue.expand_event`)."""


class Queue(ops.Transactions):
    """What the worker and the replays need from the work queue."""

    @abc.abstractmethod
    async def wait_for_work(self, timeout: float) -> None:
        """Return when new work may be due (a hint from another process) or after ``timeout``.

        Never raises; a missed hint only costs the worker's next poll.
        """

    async def claim(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        now: float,
        accounts: Mapping[str, int] | None = None,
    ) -> list[Job]:
        """Lease up to ``limit`` due jobs to ``owner``; expired leases are due again. With
        ``accounts`` (name: most jobs to take of it), only those accounts' jobs, each account
        at most its number (a worker leaves out the accounts it does not serve, and gives each
        account a share of its slots)."""
        async with self.intake_first.turn():  # a claim is a worker's write too
            return await self._write(
                lambda tx: claim(tx, owner, limit, lease_seconds, now, accounts)
            )

    async def heartbeat(self, owner: str, lease_seconds: float, now: float) -> int:
        """Extend every lease ``owner`` still holds; returns how many."""
        return await self._write(
            lambda tx: tx.run(tx.sql("heartbeat"), {"owner": owner, "expires": now + lease_seconds})
        )

    async def expand_event(
        self, job: Job, item_ids: Sequence[str], now: float, note: str | None = None
    ) -> None:
        """Finish an ``event`` job by queueing one fetch per item id (idempotent); ``note``
        (ids that were refused) is kept on the job and as the event's ``last_error``.

        A large event is queued :data:`EXPAND_CHUNK` ids per write, each lease-checked, the
        job finished with the last: one write never holds the writer long enough to make
        the webhooks arriving meanwhile wait (a 500-id event is five short writes, not one
        long one). Fetches queued by the first writes may run before the last; a worker that
        dies half-way leaves them queued, and the expansion run again queues only the rest.
        """
        unique = list(dict.fromkeys(item_ids))
        last = EXPAND_CHUNK * max(0, (len(unique) - 1) // EXPAND_CHUNK)  # the last chunk's start
        for start in range(0, last, EXPAND_CHUNK):
            chunk = unique[start : start + EXPAND_CHUNK]
            await self._write_job(
                functools.partial(
                    queue_fetches,
                    job=job,
                    item_ids=chunk,
                    first_seq=start,
                    max_attempts=self.max_attempts,
                    now=now,
                ),
                lambda _: True,
            )
        await self._write_job(
            lambda tx: expand_event(tx, job, unique[last:], self.max_attempts, now, note, last),
            lambda _: bool(item_ids),
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
        await self._write_job(lambda tx: finish(tx, job, now, note, attempt), item=job.item_id)

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
            lambda tx: fail(tx, job, reason, retry_at, now, attempt),
            lambda dead: not dead and retry_at is not None and retry_at <= now,
            item=job.item_id,
        )

    async def postpone(self, job: Job, reason: str, retry_at: float, now: float) -> None:
        """Put a job back without counting the attempt (configuration error, shutdown)."""
        await self._write_job(
            lambda tx: postpone(tx, job, reason, retry_at, now),
            lambda _: retry_at <= now,
            item=job.item_id,
        )

    async def release(self, owner: str, now: float) -> int:
        """Give back every job ``owner`` holds, uncounted (graceful stop)."""
        return await self._write(
            lambda tx: tx.run(tx.sql("release"), {"owner": owner, "now": now}), lambda n: n > 0
        )

    async def stats(self, now: float, account: str | None = None) -> QueueStats:
        """Events and jobs by status, items stored, the oldest pending job's age (of one
        ``account``, or all)."""
        return await self._read(lambda tx: stats(tx, now, account))

    async def account_counts(self) -> dict[str, dict[str, int]]:
        """Events, items and open jobs (``events``, ``items``, ``jobs``) by account: what
        ``accounts list`` shows, and how an account removed from the file is found."""
        counts: dict[str, dict[str, int]] = {}
        for row in await self._rows("account_counts", {}):
            counts.setdefault(str(row["account"]), {})[str(row["what"])] = int(row["n"])
        return counts

    async def open_work_by_account(self) -> dict[str, int]:
        """Jobs pending or running, by account: read from the open jobs alone, not the whole
        tables as :meth:`account_counts` is, so ``/readyz`` may ask every few seconds."""
        return {r["key"]: int(r["n"]) for r in await self._rows("open_work_by_account", {})}

    async def due_work(self, now: float) -> int:
        """Jobs running or due now (not those waiting for a later retry)."""
        return int((await self._rows("due_work", {"now": now}))[0]["n"])

    async def live_fetch_due(self, now: float) -> bool:
        """Whether a fetch a webhook asked for is waiting to run (bulk reads give way to it)."""
        return bool(await self._rows("live_fetch_due", {"now": now}))

    # replay ------------------------------------------------------------------------------------

    async def replay_event(
        self, event_id: int, mode: ReplayMode, outputs: Sequence[str], now: float
    ) -> int:
        """Put an event's work back in the queue; returns the number of jobs queued.
        ``LookupError`` when the event does not exist."""
        return await self._write(
            lambda tx: replay_event(tx, event_id, mode, outputs, self.job_attempts, now),
            lambda n: n > 0,
        )

    async def replay_item(
        self,
        item_id: str,
        mode: ReplayMode,
        outputs: Sequence[str],
        now: float,
        account: str = "default",
    ) -> int:
        """Fetch one item again, or deliver its stored version again (``LookupError`` when
        redelivering an item that is not stored); returns the number of jobs queued. A fetch
        of an item not stored yet is ``account``'s; a stored item stays its own account's."""
        return await self._write(
            lambda tx: replay_item(tx, item_id, mode, outputs, self.job_attempts, now, account),
            lambda n: n > 0,
        )

    async def replay_dead(self, since: float, now: float, account: str | None = None) -> int:
        """Put every job that died since ``since`` back in the queue (of one ``account``, or
        every account's); returns how many."""
        return await self._write(lambda tx: replay_dead(tx, since, now, account), lambda n: n > 0)

    # a destination's backlog ------------------------------------------------------------------

    async def backlogs(self) -> dict[str, int]:
        """Deliveries not done yet (pending or running), counted by output name."""
        return {r["key"]: int(r["n"]) for r in await self._rows("backlog_counts", {})}

    async def move_backlog(self, source: str, target: str | None, now: float) -> int:
        """Give the pending deliveries of output ``source`` to output ``target``, due now (one
        it already has for the same revision is done instead); with ``target`` ``None``, drop
        them (done, with a note saying so). Returns how many were moved or dropped."""
        return await self._write(
            lambda tx: move_backlog(tx, source, target, now), lambda n: n > 0 and bool(target)
        )


def claim(
    tx: Tx,
    owner: str,
    limit: int,
    lease_seconds: float,
    now: float,
    accounts: Mapping[str, int] | None = None,
) -> list[Job]:
    reaped = tx.all(tx.sql("reap"), {"now": now})
    dead_events = {row["event_id"] for row in reaped if row["status"] == "dead"} - {None}
    for event_id in dead_events:
        reason = "out of attempts: its worker kept stopping or being killed while on it"
        tx.run(tx.sql("event_error"), {"id": event_id, "reason": reason})
    ops.refresh(tx, dead_events, now)
    params: dict[str, Any] = {
        "owner": owner,
        "token": uuid.uuid4().hex,
        "expires": now + lease_seconds,
        "now": now,
        "limit": limit,
    }
    block = tx.sql("claim")
    if accounts is not None:
        shares = {name: cap for name, cap in sorted(accounts.items()) if cap > 0}
        if not shares:
            return []
        names = {f"account_{n}": name for n, name in enumerate(shares)}
        params.update(names)
        if len(shares) == 1:  # one account: its share is the whole claim
            params["limit"] = min(limit, *shares.values())
        else:
            caps = {f"cap_{n}": cap for n, cap in enumerate(shares.values())}
            params.update(caps)
            block = tx.sql("claim_capped").replace("{CAPS}", _case(block, names, caps))
        block = block.replace("{ACCOUNTS}", _in(block, names))
    else:
        block = block.replace("{ACCOUNTS}", "")
    rows = tx.all(block, params)
    return sorted((ops.job(row) for row in rows), key=lambda job: job.id)


def queue_fetches(
    tx: Tx,
    *,
    job: Job,
    item_ids: Sequence[str],
    max_attempts: int,
    now: float,
    first_seq: int,
) -> None:
    """One chunk of an expansion but the last: the fetches of ``item_ids``, at positions from
    ``first_seq`` in the event, if ``job`` is still leased (else :class:`LeaseLost`)."""
    if not tx.all(tx.sql("held"), {"id": job.id, "token": job.lease_token}):
        raise LeaseLost(f"job {job.id}: lease taken over, expansion stopped")
    _queue_fetches(tx, job, item_ids, max_attempts, now, first_seq)


def expand_event(
    tx: Tx,
    job: Job,
    item_ids: Sequence[str],
    max_attempts: int,
    now: float,
    note: str | None = None,
    first_seq: int = 0,
) -> None:
    """Finish ``job`` (lease-checked) with the fetches of ``item_ids`` (the event's last ids,
    from position ``first_seq``)."""
    ops.guard_finish(tx, job, now, note)
    if note is not None:
        ops.event_error(tx, job.event_id, note[:1000])
    _queue_fetches(tx, job, item_ids, max_attempts, now, first_seq)
    ops.refresh(tx, [job.event_id], now)


def _queue_fetches(
    tx: Tx, job: Job, item_ids: Sequence[str], max_attempts: int, now: float, first_seq: int
) -> None:
    # The fetches are due as of the event's arrival, not the expansion: claims go by lane and
    # position in the event first (sql.FAIR), then by due time, so among the first ids of a
    # backlog of events the oldest events' go before the expansion of newer ones (else nothing
    # reaches the warehouse until every event of the backlog has been expanded).
    received = tx.all(tx.sql("event_received"), {"id": job.event_id})
    run_at = min(now, received[0]["received_at"]) if received else now
    rows = [
        ops.job_row(
            JobKind.FETCH,
            max_attempts=max_attempts,
            now=now,
            event_id=job.event_id,
            item_id=item_id,
            dedupe_key=f"f:{job.event_id}:{item_id}",
            run_at=run_at,
            lane=job.lane,
            seq=seq,
            account=job.account,
        )
        for seq, item_id in enumerate(dict.fromkeys(item_ids), start=first_seq)
    ]
    ops.new_jobs(tx, rows)


def finish(
    tx: Tx, job: Job, now: float, note: str | None, attempt: DeliveryAttempt | None = None
) -> None:
    if attempt is None:
        ops.guard_finish(tx, job, now, note)
    else:
        finish_recorded(tx, job, now, note, attempt)
    ops.refresh(tx, [job.event_id], now)


def fail(
    tx: Tx,
    job: Job,
    reason: str,
    retry_at: float | None,
    now: float,
    attempt: DeliveryAttempt | None,
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
        ops.event_error(tx, job.event_id, reason[:1000])
        ops.refresh(tx, [job.event_id], now)
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


def stats(tx: Tx, now: float, account: str | None = None) -> QueueStats:
    of = {"account": account}
    events = {r["key"]: int(r["n"]) for r in tx.all(tx.sql("event_counts"), of)}
    jobs = {r["key"]: int(r["n"]) for r in tx.all(tx.sql("job_counts"), of)}
    items = int(tx.all(tx.sql("item_count"), of)[0]["n"])
    oldest = tx.all(tx.sql("oldest_pending"), of)[0]["t"]
    return QueueStats(
        events=events,
        jobs=jobs,
        items=items,
        oldest_pending_age=None if oldest is None else now - oldest,
    )


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
        revisions = [(r["id"], r["version"], r["revision"], r["account"]) for r in rows]
        queued = ops.redeliver(tx, revisions, outputs, event_id, max_attempts, now, Lane.REPLAY)
    ops.refresh(tx, [event_id], now)
    return queued


def replay_item(
    tx: Tx,
    item_id: str,
    mode: ReplayMode,
    outputs: Sequence[str],
    max_attempts: Attempts,
    now: float,
    account: str,
) -> int:
    if mode is ReplayMode.REFETCH:
        stored = tx.all(tx.sql("item_account"), {"id": item_id})
        fetch = ops.job_row(
            JobKind.FETCH,
            max_attempts=max_attempts.default,
            now=now,
            item_id=item_id,
            lane=Lane.REPLAY,
            account=str(stored[0]["account"]) if stored else account,
        )
        ops.new_jobs(tx, [fetch])
        return 1
    rows = tx.all(tx.sql("item_version"), {"id": item_id})
    if not rows:
        raise LookupError(f"item {item_id} is not stored")
    revision = (item_id, rows[0]["version"], rows[0]["revision"], rows[0]["account"])
    return ops.redeliver(tx, [revision], outputs, None, max_attempts, now, Lane.REPLAY)


def replay_dead(tx: Tx, since: float, now: float, account: str | None) -> int:
    rows = tx.all(tx.sql("replay_dead"), {"since": since, "now": now, "account": account})
    ops.refresh(tx, (row["event_id"] for row in rows), now)
    return len(rows)


def move_backlog(tx: Tx, source: str, target: str | None, now: float) -> int:
    rows = tx.all(tx.sql("backlog_of"), {"output": source})
    for row in rows:
        params = {"id": row["id"], "now": now}
        if target is None:
            note = f"dropped by the operator: output {source} was removed"
            tx.run(tx.sql("retire_delivery"), {**params, "note": note[:1000]})
            continue
        key = ops.delivery_key(target, row["item_id"], row["revision"])
        if tx.all(tx.sql("queued_under"), {"dedupe_key": key}):
            note = f"moved to {target}, which has this revision already"
            tx.run(tx.sql("retire_delivery"), {**params, "note": note[:1000]})
        else:
            tx.run(tx.sql("move_delivery"), {**params, "output": target, "dedupe_key": key})
    ops.refresh(tx, (row["event_id"] for row in rows), now)
    return len(rows)


def _marker(block: str) -> str:
    """How a parameter is written in ``block``'s dialect (``:name`` or ``%(name)s``)."""
    return "%({})s" if "%(" in block else ":{}"


def _in(block: str, names: Mapping[str, str]) -> str:
    """``AND j.account IN (...)`` over the bound parameters ``names`` (their values are
    bound, never put in the text)."""
    marker = _marker(block)
    return " AND j.account IN (" + ", ".join(marker.format(name) for name in names) + ")"


def _case(block: str, names: Mapping[str, str], caps: Mapping[str, int]) -> str:
    """Each account's share: ``CASE account WHEN <name> THEN <cap> ... ELSE 0 END``."""
    marker = _marker(block)
    whens = " ".join(
        f"WHEN {marker.format(name)} THEN {marker.format(cap)}"
        for name, cap in zip(names, caps, strict=True)
    )
    return f"CASE account {whens} ELSE 0 END"
