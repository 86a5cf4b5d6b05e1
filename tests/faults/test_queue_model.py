"""R16: the queue against a model, on both backends (a hypothesis state machine).

Each step drives a real store with an explicit clock: enqueue (new and repeated message ids),
claim (which reaps expired leases), heartbeat, expand / save_item (optionally leasing the new
deliveries to the caller) / finish / fail (retry or permanent) / postpone with a job's token,
release, ``replay --item`` (refetch or redeliver), time passing and worker crashes (a crashed worker
forgets its jobs and comes back under a new owner name, so only lease expiry returns its work;
its old handles may still write, like a paused process). A plain in-memory model predicts every
answer and, after each step, the whole ``jobs`` table (status, attempts, owner, token, expiry,
run_at), the items' versions and the events' statuses, read straight from the database.

Writes with a stale token must raise :class:`LeaseLost` and leave every row of every table as it
was (compared column by column).

Job and event ids are not predicted (PostgreSQL consumes sequence values on ``ON CONFLICT DO
NOTHING``, SQLite does not): the model keys jobs by their dedupe key and learns ids from the
database. Replay with ``--hypothesis-seed=N``; a failure prints its ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from dimmy_webhooks.errors import LeaseLost
from dimmy_webhooks.models import (
    DeliveryAttempt,
    InsertOutcome,
    Job,
    JobKind,
    Lane,
)
from dimmy_webhooks.store import Lease, ReplayMode, SQLiteStore, Store, schema

from ..support.builders import scanned_event, stored_item
from ..support.constants import FULL, T0

pytestmark = pytest.mark.faults

T = TypeVar("T")

MAX_ATTEMPTS = 2  # small, so that death by attempts is reachable in a short run
MESSAGES = [f"msg_{n}" for n in range(5)]
ITEM_IDS = ["a", "b", "c"]
UPDATED = [None, "2026-01-01", "2026-01-02"]
CONTENTS = ["x", "y"]
OUTPUTS = ["console", "jsonl:/tmp/out"]
LEASES = [10.0, 30.0]
DELAYS = [0.0, 5.0, 40.0]  # retry or postpone delays
ACTIONS = {  # action: weight
    "claim": 4,
    "succeed": 4,
    "fail": 2,
    "postpone": 1,
    "stale_write": 2,
    "worker": 2,
    "enqueue": 1,
    "replay_item": 1,
}
WAITS = [0.0, 1.0, 9.0, 11.0, 29.0, 31.0, 61.0]  # around the leases: expiry hit both ways

EXAMPLES = 500 if FULL else 50
STEP_COUNT = 30
MACHINE_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEP_COUNT,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)


# the model ------------------------------------------------------------------------------------


@dataclass
class MJob:
    """One row of ``jobs`` as the model expects it."""

    key: str  # dedupe key: the model's identity of the job
    kind: str
    event_id: int | None
    item_id: str | None = None
    output: str | None = None
    version: str | None = None
    status: str = "pending"
    attempts: int = 0
    run_at: float = 0.0
    owner: str | None = None
    token: str | None = None
    expires: float | None = None
    permanent: bool = False  # dead by a permanent failure (fail with retry_at None)
    id: int | None = None  # learned from the database once inserted
    lane: int = 0  # Lane: live work first, then polled, then replayed
    seq: int = 0  # a fetch's position in its event, which its deliveries take over


@dataclass
class MEvent:
    message_id: str
    id: int
    received_at: float
    status: str = "pending"


@dataclass
class Model:
    now: float = T0
    events: dict[str, MEvent] = field(default_factory=dict)  # by message id
    jobs: dict[str, MJob] = field(default_factory=dict)  # by dedupe key
    # id -> (updated_at, version, revision: the number of stored changes)
    items: dict[str, tuple[str | None, str, int]] = field(default_factory=dict)

    def by_id(self, job_id: int) -> MJob:
        [job] = [j for j in self.jobs.values() if j.id == job_id]
        return job

    def new_job(self, job: MJob, run_at: float | None = None) -> None:
        """``INSERT ... ON CONFLICT (dedupe_key) DO NOTHING``, due at ``run_at`` (now)."""
        if job.key not in self.jobs:
            job.run_at = self.now if run_at is None else run_at
            self.jobs[job.key] = job

    def event(self, event_id: int | None) -> MEvent:
        [event] = [e for e in self.events.values() if e.id == event_id]
        return event

    def release_lease(self, job: MJob) -> None:
        job.owner = job.token = job.expires = None

    def refresh(self, event_id: int | None) -> None:
        """The ``refresh_event`` block: an event's status from its jobs."""
        if event_id is None:
            return
        statuses = {j.status for j in self.jobs.values() if j.event_id == event_id}
        if statuses & {"pending", "running"}:
            status = "processing"
        elif "dead" in statuses:
            status = "dead"
        else:
            status = "done"
        for event in self.events.values():
            if event.id == event_id:
                event.status = status

    def delivery_busy(self, job: MJob) -> bool:
        """Whether ``job`` is a delivery that must wait: another delivery of its item to its
        output is running (one in flight per item and output keeps revisions in order)."""
        return job.kind == "deliver" and any(
            other.kind == "deliver"
            and other.status == "running"
            and (other.item_id, other.output) == (job.item_id, job.output)
            for other in self.jobs.values()
        )

    def live(self, handle: Job) -> bool:
        """Whether a write with ``handle`` must succeed (its token is the job's current one)."""
        job = self.by_id(handle.id)
        return job.status == "running" and job.token == handle.lease_token

    def guard_finish(self, handle: Job) -> MJob:
        job = self.by_id(handle.id)
        job.status = "done"
        self.release_lease(job)
        return job

    def replaces(self, item_id: str, updated_at: str | None, version: str) -> bool:
        """The item store's rule, written independently of ``items.replaces``."""
        if item_id not in self.items:
            return True
        old_at, old_version, _ = self.items[item_id]
        if updated_at is not None and old_at is not None:
            if updated_at != old_at:
                return updated_at > old_at
            return version != old_version
        if updated_at is None and old_at is None:
            return version != old_version
        return updated_at is not None  # a dated version beats an undated one


# direct database access (bypassing the store) ------------------------------------------------


class Backend:
    """How the machine gets an empty store and reads tables behind the store's back."""

    url: str

    def reset(self) -> None:
        raise NotImplementedError

    def make_store(self) -> Store:
        raise NotImplementedError

    def rows(self, sql: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SQLiteBackend(Backend):
    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        self.path = path
        schema.upgrade(self.url)
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=10)
        self.conn.row_factory = sqlite3.Row

    def reset(self) -> None:
        for table in ("events", "jobs", "items"):
            self.conn.execute(f"DELETE FROM {table}")

    def make_store(self) -> Store:
        return SQLiteStore(self.path, max_attempts=MAX_ATTEMPTS)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        return [dict(row) for row in self.conn.execute(sql).fetchall()]

    def close(self) -> None:
        self.conn.close()


class PostgresBackend(Backend):
    def __init__(self, url: str) -> None:
        import psycopg
        from psycopg.rows import dict_row

        self.url = url
        self.conn = psycopg.connect(url, autocommit=True, row_factory=dict_row)

    def reset(self) -> None:
        self.conn.execute("TRUNCATE events, jobs, items RESTART IDENTITY")

    def make_store(self) -> Store:
        from dimmy_webhooks.store.postgres import PostgresStore

        return PostgresStore(self.url, max_attempts=MAX_ATTEMPTS, pool_size=2)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        return [
            {k: bytes(v) if isinstance(v, memoryview) else v for k, v in row.items()}
            for row in self.conn.execute(sql).fetchall()
        ]

    def close(self) -> None:
        self.conn.close()


def row_key(row: dict[str, Any]) -> str:
    """A job's identity: its dedupe key, or ``r:<id>`` for a replay's fetch (which has none)."""
    key = row["dedupe_key"]
    return f"r:{row['id']}" if key is None else str(key)


def snapshot(backend: Backend) -> dict[str, list[dict[str, Any]]]:
    """Every column of every row of the three tables, and of the delivery ledger."""
    return {
        table: backend.rows(f"SELECT * FROM {table} ORDER BY id")
        for table in ("events", "jobs", "items", "delivery_attempts")
    }


def _attempt(job: Job, now: float) -> DeliveryAttempt:
    """A delivery attempt for ``job`` (a stale finish must not write it)."""
    return DeliveryAttempt(
        item_id=job.item_id or "a",
        output=job.output or "console",
        idempotency_key="dmy_late",
        attempt=job.attempts,
        started_at=now,
        outcome="delivered",
    )


# the machine ----------------------------------------------------------------------------------


class QueueMachine(RuleBasedStateMachine):
    backend: Backend  # set by the test before running

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.backend.reset()
        self.store = self.backend.make_store()
        try:
            self.run(self.store.open())
        except BaseException:
            self.loop.close()
            raise
        self.model = Model()
        self.handles: list[Job] = []  # every job handed out by a claim, live or stale
        self.generation = [0, 0, 0]  # a crashed worker comes back under a new name

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.loop.close()

    def owner(self, slot: int) -> str:
        return f"w{slot}.{self.generation[slot]}"

    def live_handles(self) -> list[Job]:
        return [h for h in self.handles if self.model.live(h)]

    def stale_handles(self) -> list[Job]:
        return [h for h in self.handles if not self.model.live(h)]

    def learn_ids(self) -> None:
        if all(j.id is not None for j in self.model.jobs.values()):
            return
        for row in self.backend.rows("SELECT id, dedupe_key FROM jobs"):
            job = self.model.jobs.get(row["dedupe_key"])
            if job is not None and job.id is None:
                job.id = int(row["id"])

    # rules ------------------------------------------------------------------------------------

    @initialize(
        msgs=st.lists(st.sampled_from(MESSAGES), min_size=1, max_size=3, unique=True),
        expanded=st.lists(st.lists(st.sampled_from(ITEM_IDS), min_size=1, max_size=3)),
    )
    def start(self, msgs: list[str], expanded: list[list[str]]) -> None:
        """An empty database, then a few events, some of them expanded already, so that a
        short run reaches fetches, item versions and deliveries."""
        assert snapshot(self.backend) == {
            "events": [],
            "jobs": [],
            "items": [],
            "delivery_attempts": [],
        }
        for msg in msgs:
            self.enqueue(msg, [])
        self.learn_ids()
        self.claim(0.0, 0, len(expanded), LEASES[-1])
        for handle, ids in zip(self.live_handles(), expanded, strict=False):
            self.expand(handle, ids)

    def may_enqueue(self) -> bool:
        """Enqueue while a message id is unused or an event is dead (a resend revives it);
        otherwise it would only add duplicates and crowd out the other rules."""
        events = self.model.events
        return len(events) < len(MESSAGES) or any(e.status == "dead" for e in events.values())

    def enqueue(self, msg: str, ids: list[str]) -> None:
        model = self.model
        outcome = self.run(self.store.insert_event(scanned_event(msg, ids, at=model.now)))
        existing = model.events.get(msg)
        if existing is None:
            assert outcome is InsertOutcome.ACCEPTED
            [row] = self.backend.rows(
                f"SELECT id FROM events WHERE message_id = '{msg}'"  # constant pool of names
            )
            event = MEvent(msg, int(row["id"]), received_at=model.now)
            model.events[msg] = event
            model.new_job(MJob(key=f"e:{event.id}", kind="event", event_id=event.id))
        elif existing.status == "dead":
            assert outcome is InsertOutcome.REQUEUED
            for job in model.jobs.values():
                if job.event_id == existing.id and job.status == "dead":
                    job.status, job.attempts, job.run_at = "pending", 0, model.now
                    job.lane = Lane.REPLAY  # a sender's resend of dead work is a replay
                    job.permanent = False
                    model.release_lease(job)
            model.refresh(existing.id)
        else:
            assert outcome is InsertOutcome.DUPLICATE

    def claim(self, wait: float, slot: int, limit: int, lease: float) -> None:
        """After ``wait`` seconds, a worker claims (reaping expired leases first)."""
        self.model.now += wait
        model, now, owner = self.model, self.model.now, self.owner(slot)
        # the reap: expired leases are due again, counting the lost attempt
        died: set[int | None] = set()
        for job in model.jobs.values():
            if job.status == "running" and job.expires is not None and job.expires < now:
                job.status = "dead" if job.attempts >= MAX_ATTEMPTS else "pending"
                job.run_at = now
                model.release_lease(job)
                if job.status == "dead":
                    died.add(job.event_id)
        for event_id in died:
            model.refresh(event_id)
        due = [
            j
            for j in model.jobs.values()
            if j.status == "pending" and j.run_at <= now and not model.delivery_busy(j)
        ]
        # the best due expansions and fetches (live before replayed, an event's first ids
        # before another's later ones), and the oldest due deliveries; the best of both
        work = sorted(
            (j for j in due if j.kind != "deliver"),
            key=lambda j: (j.lane, j.seq, j.run_at, j.id or 0),
        )[:limit]
        deliveries = sorted(
            (j for j in due if j.kind == "deliver"), key=lambda j: (j.run_at, j.id or 0)
        )[:limit]
        due = sorted(work + deliveries, key=lambda j: (j.lane, j.seq, j.run_at, j.id or 0))[:limit]
        claimed = self.run(self.store.claim(owner, limit, lease, now))
        assert [j.id for j in claimed] == sorted(j.id or 0 for j in due)
        for handle in claimed:
            job = model.by_id(handle.id)
            job.status, job.owner, job.expires = "running", owner, now + lease
            job.attempts += 1
            job.token = handle.lease_token
            assert handle.attempts == job.attempts
            assert (handle.kind.value, handle.event_id, handle.item_id) == (
                job.kind,
                job.event_id,
                job.item_id,
            )
            assert (handle.output, handle.version) == (job.output, job.version)
            assert (handle.lane, handle.seq) == (job.lane, job.seq)
        self.handles.extend(claimed)

    def expand(self, handle: Job, ids: list[str]) -> None:
        model = self.model
        self.run(self.store.expand_event(handle, ids, model.now))
        job = model.guard_finish(handle)
        # fetches are due as of the event's arrival, so a backlog's oldest items go first
        run_at = min(model.now, model.event(job.event_id).received_at)
        for seq, item_id in enumerate(dict.fromkeys(ids)):
            model.new_job(
                MJob(
                    key=f"f:{job.event_id}:{item_id}",
                    kind="fetch",
                    event_id=job.event_id,
                    item_id=item_id,
                    lane=job.lane,
                    seq=seq,
                ),
                run_at,
            )
        model.refresh(job.event_id)

    def has_live(self) -> bool:
        return any(self.model.live(h) for h in self.handles)

    def draw_live(self, data: st.DataObject) -> Job:
        return data.draw(st.sampled_from(self.live_handles()), label="handle")

    def succeed(self, data: st.DataObject) -> None:
        """The holder of a live lease writes its result: expand, save_item or finish."""
        model, now = self.model, self.model.now
        handle = self.draw_live(data)
        if handle.kind is JobKind.EVENT:
            ids = data.draw(
                st.lists(st.sampled_from(ITEM_IDS), min_size=1, max_size=4), label="item_ids"
            )
            self.expand(handle, ids)
        elif handle.kind is JobKind.FETCH:
            assert handle.item_id is not None
            updated = data.draw(st.sampled_from(UPDATED), label="updated_at")
            content = data.draw(st.sampled_from(CONTENTS), label="content")
            outputs = data.draw(
                st.lists(st.sampled_from(OUTPUTS), unique=True, min_size=1), label="outputs"
            )
            # the worker that stored a new version may take its deliveries on the spot
            lease_for = data.draw(st.sampled_from([None, *LEASES]), label="lease deliveries")
            item = stored_item(handle.item_id, updated, content)
            expected = model.replaces(handle.item_id, updated, item.version)
            job = model.by_id(handle.id)
            owner = job.owner
            assert owner is not None
            lease = None if lease_for is None else Lease(owner, lease_for)
            result = self.run(self.store.save_item(handle, item, outputs, now, lease))
            assert result.changed is expected, f"save_item {result}, model says {expected}"
            model.guard_finish(handle)
            new_keys = []
            if result.changed:
                revision = model.items.get(handle.item_id, (None, "", 0))[2] + 1
                model.items[handle.item_id] = (updated, item.version, revision)
                for output in outputs:
                    key = f"d:{output}:{handle.item_id}:r{revision}"
                    if key in model.jobs:
                        continue  # one delivery per output and revision, ever
                    new_keys.append(key)
                    model.new_job(
                        MJob(
                            key=key,
                            kind="deliver",
                            event_id=job.event_id,
                            item_id=handle.item_id,
                            output=output,
                            version=item.version,
                            lane=job.lane,
                            seq=job.seq,
                        )
                    )
            if lease is None:
                assert result.deliveries == []
            else:
                assert len({d.lease_token for d in result.deliveries}) <= 1
                # a delivery whose item is on its way to that output already stays pending
                leased_keys = [k for k in new_keys if not model.delivery_busy(model.jobs[k])]
                for key, delivery in zip(leased_keys, result.deliveries, strict=True):
                    leased = model.jobs[key]
                    leased.id = delivery.id
                    leased.status, leased.attempts = "running", 1
                    leased.owner, leased.token = owner, delivery.lease_token
                    leased.expires = now + lease.seconds
                    assert (delivery.kind, delivery.item_id, delivery.output) == (
                        JobKind.DELIVER,
                        handle.item_id,
                        leased.output,
                    )
                    assert (delivery.version, delivery.attempts) == (item.version, 1)
                    assert delivery.event_id == job.event_id
                self.handles.extend(result.deliveries)
            model.refresh(job.event_id)
        else:
            self.run(self.store.finish(handle, now, "delivered"))
            model.refresh(model.guard_finish(handle).event_id)

    def fail(self, data: st.DataObject) -> None:
        """A failure: retried at ``now + delay``, or permanent (dead at once)."""
        permanent = data.draw(st.booleans(), label="permanent")
        delay = data.draw(st.sampled_from(DELAYS), label="delay")
        model, now = self.model, self.model.now
        handle = self.draw_live(data)
        retry_at = None if permanent else now + delay
        dead = self.run(self.store.fail(handle, f"failed, delay {delay}", retry_at, now))
        job = model.by_id(handle.id)
        assert dead is (permanent or job.attempts >= MAX_ATTEMPTS)
        job.status = "dead" if dead else "pending"
        job.permanent = permanent
        job.run_at = now if retry_at is None else retry_at
        model.release_lease(job)
        if dead:
            model.refresh(job.event_id)

    def postpone(self, data: st.DataObject) -> None:
        """Put back without counting the attempt (configuration error, shutdown)."""
        delay = data.draw(st.sampled_from(DELAYS), label="delay")
        model, now = self.model, self.model.now
        handle = self.draw_live(data)
        self.run(self.store.postpone(handle, "postponed", now + delay, now))
        job = model.by_id(handle.id)
        job.status, job.attempts, job.run_at = "pending", job.attempts - 1, now + delay
        model.release_lease(job)

    def replay_item(self, item_id: str, redeliver: bool, outputs: list[str]) -> None:
        """``replay --item``: fetch again (a fetch without an event or dedupe key), or hand
        the stored version to the outputs again (done or dead deliveries are reset)."""
        model, now = self.model, self.model.now
        if not redeliver:
            assert self.run(self.store.replay_item(item_id, ReplayMode.REFETCH, [], now)) == 1
            [row] = self.backend.rows(
                "SELECT id FROM jobs WHERE dedupe_key IS NULL ORDER BY id DESC LIMIT 1"
            )
            job_id = int(row["id"])
            job = MJob(
                key=f"r:{job_id}",
                kind="fetch",
                event_id=None,
                item_id=item_id,
                id=job_id,
                lane=Lane.REPLAY,
            )
            model.new_job(job)
            return
        if item_id not in model.items:
            with pytest.raises(LookupError):
                self.run(self.store.replay_item(item_id, ReplayMode.REDELIVER, outputs, now))
            return
        queued = self.run(self.store.replay_item(item_id, ReplayMode.REDELIVER, outputs, now))
        assert queued == len(outputs)
        _, version, revision = model.items[item_id]
        for output in outputs:
            key = f"d:{output}:{item_id}:r{revision}"
            existing = model.jobs.get(key)
            if existing is None:
                model.new_job(
                    MJob(
                        key=key,
                        kind="deliver",
                        event_id=None,
                        item_id=item_id,
                        output=output,
                        version=version,
                        lane=Lane.REPLAY,
                    )
                )
            elif existing.status in ("done", "dead"):
                existing.status, existing.attempts, existing.run_at = "pending", 0, now
                existing.lane = Lane.REPLAY
                existing.permanent = False
                model.release_lease(existing)

    def stale_write(self, data: st.DataObject) -> None:
        """A worker whose lease was taken over (or ended) writes: refused, nothing changes."""
        now = self.model.now
        handle = data.draw(st.sampled_from(self.stale_handles()), label="stale handle")
        writes: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
            "finish": lambda: self.store.finish(handle, now),
            "finish with a ledger row": lambda: self.store.finish(
                handle, now, attempt=_attempt(handle, now)
            ),
            "expand": lambda: self.store.expand_event(handle, ["a", "b"], now),
            "save": lambda: self.store.save_item(
                handle, stored_item(handle.item_id or "a", "2030-01-01", "late"), OUTPUTS, now
            ),
            "retry": lambda: self.store.fail(handle, "late", now, now),
            "dead": lambda: self.store.fail(handle, "late", None, now),
            "postpone": lambda: self.store.postpone(handle, "late", now, now),
        }
        name = data.draw(st.sampled_from(sorted(writes)), label="write")
        before = snapshot(self.backend)
        with pytest.raises(LeaseLost):
            self.run(writes[name]())
        assert snapshot(self.backend) == before, f"a refused {name} changed the database"

    def worker(self, wait: float, slot: int, action: str, lease: float) -> None:
        """After ``wait`` seconds, a worker's own life: heartbeat, graceful stop (release) or
        crash.

        A crashed worker forgets its jobs and comes back under a new name: its leases stay in
        the database until they expire (its stale handles may still write, as a paused process
        would).
        """
        self.model.now += wait
        model, owner = self.model, self.owner(slot)
        held = [j for j in model.jobs.values() if j.status == "running" and j.owner == owner]
        if action == "heartbeat":
            assert self.run(self.store.heartbeat(owner, lease, model.now)) == len(held)
            for job in held:
                job.expires = model.now + lease
        elif action == "release":
            assert self.run(self.store.release(owner, model.now)) == len(held)
            for job in held:
                job.status, job.attempts, job.run_at = "pending", job.attempts - 1, model.now
                model.release_lease(job)
        else:
            self.generation[slot] += 1

    # the step: one action, chosen with weights among those possible now ---------------------

    def can(self, action: str) -> bool:
        if action in ("succeed", "fail", "postpone"):
            return self.has_live()
        if action == "stale_write":
            return any(not self.model.live(h) for h in self.handles)
        if action == "enqueue":
            return self.may_enqueue()
        return True

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """One action. A single rule with explicit weights (rather than one rule per action)
        keeps a 30-step run deep enough to reach fetches, versions and deliveries: hypothesis
        picks among rules unevenly and disables some of them per run."""
        choices = [
            name for name, weight in ACTIONS.items() if self.can(name) for _ in range(weight)
        ]
        action = data.draw(st.sampled_from(choices), label="action")
        if action == "enqueue":
            msg = data.draw(st.sampled_from(MESSAGES), label="message id")
            ids = data.draw(st.lists(st.sampled_from(ITEM_IDS), max_size=3), label="item ids")
            self.enqueue(msg, ids)
        elif action == "claim":
            self.claim(
                data.draw(st.sampled_from(WAITS), label="wait"),
                data.draw(st.integers(0, 2), label="worker"),
                data.draw(st.sampled_from([1, 3, 10]), label="limit"),
                data.draw(st.sampled_from(LEASES), label="lease"),
            )
        elif action == "worker":
            self.worker(
                data.draw(st.sampled_from(WAITS), label="wait"),
                data.draw(st.integers(0, 2), label="worker"),
                data.draw(st.sampled_from(["heartbeat", "release", "crash"]), label="does"),
                data.draw(st.sampled_from(LEASES), label="lease"),
            )
        elif action == "replay_item":
            self.replay_item(
                data.draw(st.sampled_from(ITEM_IDS), label="item id"),
                data.draw(st.booleans(), label="redeliver"),
                data.draw(st.lists(st.sampled_from(OUTPUTS), unique=True), label="outputs"),
            )
        else:
            getattr(self, action)(data)

    # invariants -------------------------------------------------------------------------------

    @invariant()
    def database_matches_model(self) -> None:
        self.learn_ids()
        model = self.model
        rows = {row_key(row): row for row in self.backend.rows("SELECT * FROM jobs")}
        assert set(rows) == set(model.jobs), "jobs differ from the model"
        for key, job in model.jobs.items():
            row = rows[key]
            got = (
                row["kind"],
                row["event_id"],
                row["item_id"],
                row["output"],
                row["version"],
                row["status"],
                row["attempts"],
                row["run_at"],
                row["lease_owner"],
                row["lease_token"],
                row["lease_expires_at"],
            )
            want = (
                job.kind,
                job.event_id,
                job.item_id,
                job.output,
                job.version,
                job.status,
                job.attempts,
                job.run_at,
                job.owner,
                job.token,
                job.expires,
            )
            assert got == want, f"job {key}: database {got} != model {want}"
            assert row["max_attempts"] == MAX_ATTEMPTS
        items = {r["id"]: r["version"] for r in self.backend.rows("SELECT id, version FROM items")}
        assert items == {k: v for k, (_, v, _) in model.items.items()}, "items hold another version"
        events = {
            r["message_id"]: (r["id"], r["status"])
            for r in self.backend.rows("SELECT id, message_id, status FROM events")
        }
        assert events == {m: (e.id, e.status) for m, e in model.events.items()}

    @invariant()
    def leases_are_exclusive_and_attempts_bounded(self) -> None:
        model = self.model
        holders: dict[int, str] = {}
        for handle in self.live_handles():
            job = model.by_id(handle.id)
            assert handle.id not in holders, f"job {handle.id} held twice"
            holders[handle.id] = job.owner or ""
        running = {j.id: j.owner for j in model.jobs.values() if j.status == "running"}
        assert holders == running
        for job in model.jobs.values():
            if job.status in ("pending", "running"):
                assert job.attempts <= MAX_ATTEMPTS, f"{job.key}: {job.attempts} attempts"
                assert job.attempts >= 0
            if job.status == "dead":
                assert job.permanent or job.attempts >= MAX_ATTEMPTS, f"{job.key} died early"


# the tests ------------------------------------------------------------------------------------


def run_machine(backend: Backend) -> None:
    started = time.monotonic()
    machine = type("QueueMachineRun", (QueueMachine,), {"backend": backend})
    try:
        run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)
    finally:
        backend.close()
        print(f"\n{EXAMPLES} examples x {STEP_COUNT} steps in {time.monotonic() - started:.1f} s")


@pytest.mark.timeout(1800 if FULL else 300)
def test_queue_model_sqlite(tmp_path: Path) -> None:
    run_machine(SQLiteBackend(tmp_path / "model.sqlite3"))


@pytest.mark.postgres
@pytest.mark.timeout(1800 if FULL else 300)
def test_queue_model_postgres(pg_url: str) -> None:
    run_machine(PostgresBackend(pg_url))


# findings pinned as tests ---------------------------------------------------------------------


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "postgres":
        made: Backend = PostgresBackend(request.getfixturevalue("pg_url"))
    else:
        made = SQLiteBackend(tmp_path / "finding.sqlite3")
    yield made
    made.close()


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_content_flipping_back_is_delivered_again(backend: Backend) -> None:
    store = backend.make_store()
    await store.open()
    try:
        await store.insert_event(scanned_event("m1", ["a"], at=T0))
        [event_job] = await store.claim("w", 10, 30, T0)
        await store.expand_event(event_job, ["a"], T0)
        for n, content in enumerate(["x", "y", "x"]):
            now = T0 + n
            if n:
                await store.replay_item("a", ReplayMode.REFETCH, [], now)
            [fetch] = [j for j in await store.claim("w", 10, 30, now) if j.kind is JobKind.FETCH]
            item = stored_item("a", "2026-01-01", content)
            assert (await store.save_item(fetch, item, ["o"], now)).changed
            for delivery in await store.claim("w", 10, 30, now):
                await store.finish(delivery, now)
        stored = await store.get_item("a")
        assert stored is not None
        delivered = backend.rows(
            "SELECT version FROM jobs WHERE kind = 'deliver' ORDER BY updated_at DESC, id DESC"
        )
        # the output last received the version the store holds
        assert delivered[0]["version"] == stored.version
    finally:
        await store.close()
