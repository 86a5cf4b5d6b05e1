"""PostgreSQL backend specifics: durability settings, SKIP LOCKED, reconnects, LISTEN/NOTIFY.

The behaviour shared with SQLite is in test_store_contract.py (run on both backends).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from dimmy_webhooks.errors import LeaseLost, SchemaBehind, StoreError, StoreUnavailable
from dimmy_webhooks.models import (
    UNKNOWN,
    IncomingEvent,
    InsertOutcome,
    Job,
    SaveResult,
)
from dimmy_webhooks.store import Lease, create_store, ops, queue, schema
from dimmy_webhooks.store.postgres import CHANNEL, PostgresStore
from dimmy_webhooks.store.postgres_sql import PostgresTx, to_pyformat, write_events

from ..support.builders import scanned_event, stored_item
from ..support.constants import T0

pytestmark = pytest.mark.postgres

LEASE = 30.0


async def _opened_store(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(pg_url, max_attempts=8, pool_size=4)
    await store.open()
    yield store
    await store.close()


pg = pytest.fixture(_opened_store, name="pg")
# a second store on the same database: another process, as far as the server knows
other = pytest.fixture(_opened_store, name="other")


@pytest.fixture
def admin(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection to the test's database."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


async def timed(awaitable: Any) -> float:
    start = time.monotonic()
    await awaitable
    return time.monotonic() - start


# settings -----------------------------------------------------------------------------------


async def test_every_connection_commits_synchronously(
    pg: PostgresStore, admin: psycopg.Connection[Any]
) -> None:
    """R4: a 2xx means the commit reached the disk, on every pooled connection."""
    seen = await asyncio.gather(*[pg.server_settings() for _ in range(12)])
    for settings in seen:
        assert settings["synchronous_commit"] == "on"
        assert settings["application_name"] == "dimmy-webhooks"
        assert settings["statement_timeout"] == "30000"
    names = admin.execute(
        "SELECT DISTINCT application_name FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    assert names == [("dimmy-webhooks",)]


def test_parameters_become_pyformat_outside_quotes_and_casts() -> None:
    sql = "SELECT :a::text, ':b', \"x:y\", 5 % 2, :c_2 FROM t WHERE s LIKE '%:d%'"
    assert to_pyformat(sql) == (
        "SELECT %(a)s::text, ':b', \"x:y\", 5 %% 2, %(c_2)s FROM t WHERE s LIKE '%%:d%%'"
    )


def test_create_store_picks_postgres_for_its_urls() -> None:
    for url in ("postgresql://u@127.0.0.1:5432/db", "postgres://u@127.0.0.1/db"):
        store = create_store(url, max_attempts=3)
        assert isinstance(store, PostgresStore)
        assert store.max_attempts == 3


# claims -------------------------------------------------------------------------------------


async def test_concurrent_claims_from_many_workers_are_disjoint(
    pg: PostgresStore, other: PostgresStore
) -> None:
    await asyncio.gather(
        *[pg.insert_event(scanned_event(f"m{n}", ["a"], at=T0)) for n in range(300)]
    )

    async def drain(store: PostgresStore, owner: str) -> list[Job]:
        mine: list[Job] = []
        while batch := await store.claim(owner, 7, 1000.0, T0):
            mine.extend(batch)
        return mine

    results = await asyncio.gather(*[drain(pg if n % 2 else other, f"w{n}") for n in range(16)])
    claimed = [job.id for jobs in results for job in jobs]
    assert len(claimed) == len(set(claimed)) == 300
    assert sum(1 for jobs in results if jobs) > 1  # the work really was shared
    stats = await pg.stats(T0)
    assert stats.jobs == {"running": 300}


async def test_claim_and_reap_skip_rows_another_transaction_holds(
    pg: PostgresStore, pg_url: str
) -> None:
    for n in range(10):
        await pg.insert_event(scanned_event(f"m{n}", ["a"], at=T0))
    with psycopg.connect(pg_url) as locker:  # a transaction left open on 3 due jobs
        held = [
            row[0] for row in locker.execute("SELECT id FROM jobs ORDER BY id LIMIT 3 FOR UPDATE")
        ]
        jobs = await asyncio.wait_for(pg.claim("w", 10, LEASE, T0), 5)
        assert sorted(j.id for j in jobs) == sorted(set(range(1, 11)) - set(held))
        locker.rollback()
        # the claimed jobs' leases expire; a worker holding one of them is mid-heartbeat
        locker.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (jobs[0].id,))
        later = T0 + LEASE + 1
        taken = await asyncio.wait_for(pg.claim("w2", 100, LEASE, later), 5)
        assert sorted(j.id for j in taken) == sorted({*held, *(j.id for j in jobs[1:])})
        locker.rollback()
    [last] = await pg.claim("w3", 100, LEASE, later)
    assert (last.id, last.attempts) == (jobs[0].id, 2)


async def test_concurrent_reapers_take_each_expired_job_once(
    pg: PostgresStore, other: PostgresStore
) -> None:
    await asyncio.gather(
        *[pg.insert_event(scanned_event(f"m{n}", ["a"], at=T0)) for n in range(100)]
    )
    assert len(await pg.claim("killed", 100, LEASE, T0)) == 100
    later = T0 + LEASE + 1
    batches = await asyncio.gather(
        *[(pg if n % 2 else other).claim(f"w{n}", 10, LEASE, later) for n in range(20)]
    )
    taken = [job for batch in batches for job in batch]
    # a reaper returns every expired job but claims only its limit; the rest are due now
    while batch := await pg.claim("sweeper", 100, LEASE, later):
        taken.extend(batch)
    assert len(taken) == len({job.id for job in taken}) == 100
    assert {job.attempts for job in taken} == {2}


def _finish_in(conn: psycopg.Connection[Any], job: Job, *, batched: bool) -> None:
    """``job`` finished in ``conn``'s open transaction: alone, or as a job batch does it (the
    event-row writes kept for the batch's end, then written for all its events at once)."""
    tx = PostgresTx(conn)
    if batched:
        tx.deferred = ops.Deferred()
    queue.finish(tx, job, T0, None)
    if tx.deferred is not None:
        write_events(tx, tx.deferred)


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
async def test_finishing_an_events_last_jobs_at_once_completes_it(
    pg: PostgresStore, pg_url: str, admin: psycopg.Connection[Any], batched: bool
) -> None:
    """Two workers finish the last two jobs of one event concurrently: the event ends done.

    Each transaction must see the other's finished job when it recomputes the event's status,
    whichever commits first (READ COMMITTED snapshots would otherwise leave it "processing").
    Both for one job's write and for a job batch's end, which refreshes all its events at once.
    """
    await pg.insert_event(scanned_event("m1", ["a", "b"], at=T0))
    [event_job] = await pg.claim("w", 10, LEASE, T0)
    await pg.expand_event(event_job, ["a", "b"], T0)
    job_a, job_b = await pg.claim("w", 10, LEASE, T0)
    with psycopg.connect(pg_url) as conn_a, psycopg.connect(pg_url) as conn_b:
        _finish_in(conn_a, job_a, batched=batched)
        pid_b = conn_b.info.backend_pid
        failure: list[BaseException] = []

        def finish_b() -> None:
            try:
                _finish_in(conn_b, job_b, batched=batched)
                conn_b.commit()
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=finish_b)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # until B waits for A's lock on the event
                row = admin.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid_b,)
                ).fetchone()
                if row is not None and row[0] == "Lock":
                    break
                time.sleep(0.01)
            else:
                pytest.fail("the second finisher never waited for the first")
        finally:
            conn_a.commit()
            thread.join(timeout=10)
        assert not failure
    [event] = await pg.list_events()
    assert event.status == "done"


# faults -------------------------------------------------------------------------------------


async def test_reconnects_by_itself_after_the_server_drops_every_connection(
    pg: PostgresStore, admin: psycopg.Connection[Any]
) -> None:
    await pg.insert_event(scanned_event("before", ["a"], at=T0))
    killed = admin.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchone()
    assert killed is not None
    assert killed[0] >= 2  # pooled connections and the listener
    with contextlib.suppress(StoreUnavailable):  # allowed once: the caller retries (503)
        await pg.ping()
    for n in range(5):
        await pg.insert_event(scanned_event(f"after{n}", ["a"], at=T0))
        await pg.ping()
    assert len(await pg.claim("w", 10, LEASE, T0)) == 6
    # the listener is back too: a notification wakes a waiter again
    deadline = time.monotonic() + 15
    while True:
        await pg.wait_for_work(0.01)  # forget anything announced meanwhile
        waiter = asyncio.create_task(pg.wait_for_work(2.0))
        await asyncio.sleep(0.05)
        admin.execute(f"NOTIFY {CHANNEL}")
        if await timed(waiter) < 1.5:
            break
        assert time.monotonic() < deadline, "the listener did not come back"


async def test_open_on_an_unreachable_server_fails_fast_and_says_where() -> None:
    store = PostgresStore("postgresql://dimmy:s3cret-pw@127.0.0.1:1/nowhere", connect_timeout=3)
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert message.startswith("cannot connect to PostgreSQL at 127.0.0.1:1/nowhere: ")
    assert "s3cret-pw" not in message
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.ping()
    assert await timed(store.wait_for_work(0.1)) >= 0.1  # never raises, just sleeps
    await store.close()


async def test_driver_errors_never_reach_the_caller(pg_url: str) -> None:
    store = PostgresStore(pg_url, pool_size=1, statement_timeout=0.2, pool_timeout=0.5)
    await store.open()
    try:
        with pytest.raises(StoreError) as info:
            await store._write(lambda tx: tx.all("SELECT 1/0 AS x"))
        assert not isinstance(info.value, StoreUnavailable)
        assert isinstance(info.value.__cause__, psycopg.Error)
        with pytest.raises(StoreUnavailable, match="statement timeout"):
            await store._write(lambda tx: tx.all("SELECT pg_sleep(2)"))
        busy = asyncio.create_task(store._write(lambda tx: tx.all("SELECT pg_sleep(0.15)")))
        await asyncio.sleep(0.02)
        hold = threading.Event()
        blocker = asyncio.create_task(store._write(lambda tx: hold.wait(2)))
        await busy
        await asyncio.sleep(0.05)
        # the general lane's only connection is taken, yet webhooks still get in: the inbox
        # has a lane (threads and connections) of its own
        started = time.monotonic()
        outcome = await store.insert_event(IncomingEvent("m_lane", UNKNOWN, b"{}", {}, time.time()))
        assert outcome is InsertOutcome.ACCEPTED
        assert time.monotonic() - started < 1.0
        assert not blocker.done()
        hold.set()
        await blocker
        await store.ping()
    finally:
        await store.close()


# schema -------------------------------------------------------------------------------------


def test_a_fresh_database_is_behind_until_migrated(pg_empty_url: str) -> None:
    state = schema.status(pg_empty_url)
    assert state.current is None
    assert not state.up_to_date
    with pytest.raises(SchemaBehind, match="dimmy-webhooks migrate"):
        schema.require_current(pg_empty_url)
    assert schema.upgrade(pg_empty_url).up_to_date
    schema.require_current(pg_empty_url)
    assert schema.upgrade(pg_empty_url).up_to_date  # idempotent


# LISTEN/NOTIFY ------------------------------------------------------------------------------


async def test_wait_for_work_times_out_without_a_notification(pg: PostgresStore) -> None:
    elapsed = await timed(pg.wait_for_work(0.3))
    assert 0.3 <= elapsed < 1.5
    assert await timed(pg.wait_for_work(0)) < 0.1


async def test_wait_for_work_returns_early_when_work_is_announced(
    pg: PostgresStore, other: PostgresStore, admin: psycopg.Connection[Any]
) -> None:
    # another process accepts a webhook
    waiter = asyncio.create_task(pg.wait_for_work(10))
    await asyncio.sleep(0.1)
    await other.insert_event(scanned_event("m1", ["a"], at=T0))
    assert await timed(asyncio.wait_for(waiter, 5)) < 5
    # a plain NOTIFY (any client) wakes every waiter
    waiters = [asyncio.create_task(pg.wait_for_work(10)) for _ in range(3)]
    await asyncio.sleep(0.1)
    admin.execute(f"NOTIFY {CHANNEL}")
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    # nothing new to do: duplicates and unknown events announce nothing
    waiter = asyncio.create_task(pg.wait_for_work(0.5))
    await asyncio.sleep(0.05)
    await other.insert_event(scanned_event("m1", ["a"], at=T0))
    await other.insert_event(scanned_event("m2", [], at=T0, event_type=UNKNOWN))
    assert await timed(waiter) >= 0.4
    # an announcement nobody was waiting for is kept for the next wait
    admin.execute(f"NOTIFY {CHANNEL}")
    await asyncio.sleep(0.3)
    assert await timed(pg.wait_for_work(10)) < 1
    assert await timed(pg.wait_for_work(0.2)) >= 0.2  # and used up


# the workers' writes, committed in batches -------------------------------------------------


def _deadlocks_retried(caplog: pytest.LogCaptureFixture) -> int:
    return sum("DeadlockDetected" in record.getMessage() for record in caplog.records)


async def test_concurrent_batched_completions_never_deadlock_and_events_end_right(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Three workers (three stores: three processes, as far as the server knows) finish the
    jobs of the same events at once, in whatever order their claims and writes come, many
    writes per transaction. No transaction ever deadlocks (each would cost the server's
    one-second detection and a retry of the whole batch), and every event ends with the right
    status as soon as its last write returned: ``done``, or ``dead`` if one of its jobs died."""
    caplog.set_level(logging.DEBUG, logger="dimmy_webhooks.store.postgres")
    stores = [PostgresStore(pg_url, max_attempts=8, pool_size=4) for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        n_events, per_event = 12, 10
        first = stores[0]
        for e in range(n_events):
            ids = [f"e{e:02d}i{i:02d}" for i in range(per_event)]
            await first.insert_event(scanned_event(f"m{e}", ids, at=T0))
        for job in await first.claim("w0", 100, LEASE, T0):
            body = json.loads(await first.get_event_body(job.event_id or 0))
            await first.expand_event(job, body["item_ids"], T0)
        doomed = {f"e{e:02d}i03" for e in range(0, n_events, 3)}  # one job dies in these
        rng = random.Random(14)

        async def complete(store: PostgresStore, owner: str, job: Job) -> None:
            await asyncio.sleep(rng.random() * 0.02)
            assert job.item_id is not None
            if job.item_id in doomed:
                assert await store.fail(job, "404 from the API", None, T0) is True
                return
            saved = await store.save_item(
                job,
                stored_item(job.item_id, "2026-01-01T00:00:00Z"),
                ["out"],
                T0,
                Lease(owner, LEASE),
            )
            await asyncio.gather(*(store.finish(d, T0) for d in saved.deliveries))

        async def work(store: PostgresStore, owner: str) -> int:
            done = 0
            while jobs := await store.claim(owner, 7, LEASE, T0):
                await asyncio.gather(*(complete(store, owner, job) for job in jobs))
                done += len(jobs)
            return done

        counts = await asyncio.gather(*(work(s, f"w{n}") for n, s in enumerate(stores)))
        assert sum(counts) == n_events * per_event
        for e, event in enumerate(sorted(await first.list_events(limit=100), key=lambda x: x.id)):
            expected = "dead" if e % 3 == 0 else "done"
            assert event.status == expected, (event, await first.get_event(event.id))
            if expected == "dead":
                assert event.last_error == "404 from the API"
        stats = await first.stats(T0)
        assert stats.jobs == {
            "done": n_events * (1 + 2 * per_event) - 2 * len(doomed),
            "dead": len(doomed),
        }
    finally:
        for store in stores:
            await store.close()
    assert _deadlocks_retried(caplog) == 0


async def test_batches_storing_the_same_items_never_deadlock(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One item named by several events drained at once (a device uploading again what it sent
    before, in another order): the batches of three workers store the same items, each item
    once, and never wait for each other in a circle."""
    caplog.set_level(logging.DEBUG, logger="dimmy_webhooks.store.postgres")
    stores = [PostgresStore(pg_url, max_attempts=8, pool_size=4) for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        items = [f"shared{i:02d}" for i in range(16)]
        rng = random.Random(3)
        first = stores[0]
        for e in range(9):
            await first.insert_event(scanned_event(f"m{e}", rng.sample(items, len(items)), at=T0))
        for job in await first.claim("w0", 100, LEASE, T0):
            body = json.loads(await first.get_event_body(job.event_id or 0))
            await first.expand_event(job, body["item_ids"], T0)

        async def work(store: PostgresStore, owner: str) -> int:
            changed = 0
            while jobs := await store.claim(owner, 16, LEASE, T0):
                rng.shuffle(jobs)
                saved = await asyncio.gather(
                    *(
                        store.save_item(
                            j, stored_item(j.item_id or "", "2026-01-01T00:00:00Z"), [], T0
                        )
                        for j in jobs
                    )
                )
                changed += sum(s.changed for s in saved)
            return changed

        changed = await asyncio.gather(*(work(s, f"w{n}") for n, s in enumerate(stores)))
        assert sum(changed) == len(items)  # each item stored once, whichever event came first
        assert {e.status for e in await first.list_events(limit=100)} == {"done"}
    finally:
        for store in stores:
            await store.close()
    assert _deadlocks_retried(caplog) == 0


async def test_a_lost_lease_in_a_batch_fails_only_that_write(pg: PostgresStore) -> None:
    """Writes waiting together share one transaction, a savepoint each: the write whose lease
    was taken over is refused and changes nothing, the others in the same batch commit."""
    ids = [f"i{n}" for n in range(6)]
    await pg.insert_event(scanned_event("m1", ids, at=T0))
    [event_job] = await pg.claim("w", 1, LEASE, T0)
    await pg.expand_event(event_job, ids, T0)
    jobs = await pg.claim("w", 10, LEASE, T0)
    assert len(jobs) == 6
    lane = pg._jobs
    assert lane is not None
    sizes: list[int] = []
    commit = lane._commit

    def counted(batch: Any) -> Any:
        sizes.append(len(batch))
        return commit(batch)

    lane._commit = counted

    def hold(tx: ops.Tx) -> None:
        time.sleep(0.3)

    # both threads of the lane busy, so the writes below queue and go as one batch
    blockers = [asyncio.wrap_future(lane.submit((hold, None, ""))) for _ in range(pg.job_threads)]
    await asyncio.sleep(0.05)
    stale = dataclasses.replace(jobs[1], lease_token="taken-over")
    outcomes = await asyncio.gather(
        pg.save_item(
            jobs[0], stored_item("i0", "2026-01-01T00:00:00Z"), ["out"], T0, Lease("w", LEASE)
        ),
        pg.finish(stale, T0),
        pg.finish(jobs[2], T0),
        pg.fail(jobs[3], "gone", None, T0),
        pg.fail(dataclasses.replace(jobs[4], lease_token="taken-over"), "x", T0 + 5, T0),
        pg.save_item(jobs[5], stored_item("i5", "2026-01-01T00:00:00Z"), ["out"], T0),
        return_exceptions=True,
    )
    await asyncio.gather(*blockers)
    assert max(sizes) == 6, sizes
    saved, lost, finished, dead, lost_too, saved_too = outcomes
    assert isinstance(lost, LeaseLost)
    assert isinstance(lost_too, LeaseLost)
    assert finished is None
    assert dead is True
    assert isinstance(saved, SaveResult)
    assert len(saved.deliveries) == 1
    assert isinstance(saved_too, SaveResult)
    assert saved_too.changed
    assert await pg.get_item("i0") is not None
    assert await pg.get_item("i5") is not None
    # the refused writes changed nothing: their jobs are still running under the real lease
    event = await pg.get_event(event_job.event_id or 0)
    assert event is not None
    assert event.jobs == {
        "event:done": 1,
        "fetch:done": 3,
        "fetch:dead": 1,
        "fetch:running": 2,
        "deliver:running": 1,
        "deliver:pending": 1,
    }
    assert event.status == "processing"
    assert event.last_error == "gone"
    await pg.finish(jobs[1], T0)
    await pg.finish(jobs[4], T0)
    await pg.finish(saved.deliveries[0], T0)
    await pg.release("w", T0)
    [pending] = await pg.claim("w2", 5, LEASE, T0)
    await pg.finish(pending, T0)
    event = await pg.get_event(event_job.event_id or 0)
    assert event is not None
    assert event.status == "dead"


async def test_a_write_refused_half_way_in_a_batch_is_undone_alone(pg: PostgresStore) -> None:
    """A batch runs without a savepoint per write first; a write that fails after it wrote
    something (the database refused a later statement) must leave nothing behind, and the
    other writes of its batch still commit."""
    await pg.insert_event(scanned_event("m1", ["a", "b"], at=T0))
    [event_job] = await pg.claim("w", 1, LEASE, T0)
    await pg.expand_event(event_job, ["a", "b"], T0)
    jobs = await pg.claim("w", 10, LEASE, T0)
    lane = pg._jobs
    assert lane is not None

    def half_then_refused(tx: ops.Tx) -> None:
        tx.run("INSERT INTO sync_state (name, value, updated_at) VALUES ('half', 'x', 0)")
        tx.all("SELECT 1 / 0 AS boom")

    def hold(tx: ops.Tx) -> None:
        time.sleep(0.3)

    blockers = [asyncio.wrap_future(lane.submit((hold, None, ""))) for _ in range(pg.job_threads)]
    await asyncio.sleep(0.05)
    refused = asyncio.wrap_future(lane.submit((half_then_refused, None, "")))
    outcomes = await asyncio.gather(
        pg.finish(jobs[0], T0),
        refused,
        pg.save_item(jobs[1], stored_item("b", "2026-01-01T00:00:00Z"), [], T0),
        return_exceptions=True,
    )
    await asyncio.gather(*blockers)
    assert outcomes[0] is None
    assert isinstance(outcomes[1], StoreError)
    assert "division by zero" in str(outcomes[1])
    assert isinstance(outcomes[2], SaveResult)
    assert await pg.get_state("half") is None
    event = await pg.get_event(event_job.event_id or 0)
    assert event is not None
    assert event.status == "done"
