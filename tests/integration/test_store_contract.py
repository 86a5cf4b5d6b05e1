"""The store contract: every backend must pass these (see the ``store`` fixture in conftest)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import pytest

from dimmy_webhooks.errors import LeaseLost
from dimmy_webhooks.models import (
    UNKNOWN,
    DeliveryAttempt,
    IncomingEvent,
    InsertOutcome,
    JobKind,
    Source,
)
from dimmy_webhooks.store import Lease, ReplayMode, Store

from ..support.builders import scanned_event, stored_item
from ..support.constants import T0

LEASE = 30.0


async def expanded(store: Store, ids: list[str], msg: str = "m1") -> list:  # type: ignore[type-arg]
    """Insert an event, expand it, return the claimed fetch jobs."""
    await store.insert_event(scanned_event(msg, ids, at=T0))
    [job] = await store.claim("w", 10, LEASE, T0)
    await store.expand_event(job, ids, T0)
    return await store.claim("w", 100, LEASE, T0)


async def test_insert_is_unique_on_message_id(store: Store) -> None:
    assert await store.insert_event(scanned_event("m1", ["a"], at=T0)) is InsertOutcome.ACCEPTED
    outcomes = await asyncio.gather(
        *[store.insert_event(scanned_event("m1", ["a"], at=T0)) for _ in range(10)]
    )
    assert set(outcomes) == {InsertOutcome.DUPLICATE}
    [event] = await store.list_events()
    assert event.message_id == "m1"
    assert event.item_count == 1
    assert await store.get_event_body(event.id) == b'{"item_ids": ["a"]}'
    jobs = await store.claim("w", 10, LEASE, T0)
    assert [j.kind for j in jobs] == [JobKind.EVENT]


async def test_unknown_events_are_kept_without_work(store: Store) -> None:
    await store.insert_event(IncomingEvent("m_unknown", UNKNOWN, b"[]", {}, T0))
    [event] = await store.list_events(status="unknown")
    assert event.message_id == "m_unknown"
    assert await store.claim("w", 10, LEASE, T0) == []


async def test_claims_are_disjoint_and_respect_run_at(store: Store) -> None:
    for n in range(20):
        await store.insert_event(scanned_event(f"m{n}", ["a"], at=T0))
    long = 1000.0  # the other leases must outlive this test's clock
    batches = await asyncio.gather(*[store.claim(f"w{n}", 5, long, T0) for n in range(6)])
    claimed = [job.id for batch in batches for job in batch]
    assert len(claimed) == len(set(claimed)) == 20
    assert await store.claim("late", 5, LEASE, T0) == []
    # a job rescheduled into the future is not due yet
    job = batches[0][0]
    await store.fail(job, "try later", T0 + 100, T0)
    assert await store.claim("w", 5, LEASE, T0 + 99) == []
    [again] = await store.claim("w", 5, LEASE, T0 + 100)
    assert (again.id, again.attempts) == (job.id, 2)


async def test_expired_lease_is_taken_over_and_the_old_owner_cannot_write(store: Store) -> None:
    [job] = await expanded(store, ["a"])
    assert await store.claim("other", 10, LEASE, T0 + LEASE - 1) == []
    [taken] = await store.claim("other", 10, LEASE, T0 + LEASE + 1)
    assert taken.id == job.id
    assert taken.lease_token != job.lease_token
    assert taken.attempts == 2
    with pytest.raises(LeaseLost):
        await store.save_item(job, stored_item("a", "2026-01-01"), ["console"], T0 + LEASE + 2)
    assert await store.get_item("a") is None
    with pytest.raises(LeaseLost):
        await store.fail(job, "late", None, T0 + LEASE + 2)
    saved = await store.save_item(
        taken, stored_item("a", "2026-01-01"), ["console"], T0 + LEASE + 2
    )
    assert saved.changed


async def test_heartbeat_keeps_the_lease(store: Store) -> None:
    [job] = await expanded(store, ["a"])
    assert await store.heartbeat("w", LEASE, T0 + 20) == 1
    assert await store.claim("other", 10, LEASE, T0 + LEASE + 1) == []
    await store.finish(job, T0 + 40)
    assert await store.heartbeat("w", LEASE, T0 + 41) == 0


async def test_failures_retry_then_die_with_the_reason(store: Store) -> None:
    [job] = await expanded(store, ["a"])
    for attempt in range(1, 20):
        assert job.attempts == attempt
        dead = await store.fail(job, f"503 attempt {attempt}", T0, T0)
        if dead:
            break
        [job] = await store.claim("w", 10, LEASE, T0)
    assert (attempt, dead) == (8, True)  # max_attempts of the fixture
    [event] = await store.list_events(status="dead")
    assert event.last_error is not None
    assert event.last_error.startswith("503 attempt")
    assert await store.claim("w", 10, LEASE, T0 + 10_000) == []


async def test_permanent_failure_dies_at_once(store: Store) -> None:
    jobs = await expanded(store, ["a", "b"])
    assert await store.fail(jobs[0], "404 not found", None, T0) is True
    await store.save_item(jobs[1], stored_item("b", "2026-01-01"), [], T0)
    [event] = await store.list_events()
    assert event.status == "dead"
    full = await store.get_event(event.id)
    assert full is not None
    assert full.jobs == {"event:done": 1, "fetch:dead": 1, "fetch:done": 1}


async def test_postpone_and_release_do_not_count_attempts(store: Store) -> None:
    jobs = await expanded(store, ["a", "b"])
    await store.postpone(jobs[0], "API key refused", T0 + 60, T0)
    assert await store.release("w", T0) == 1
    [b] = await store.claim("w", 10, LEASE, T0)
    assert (b.item_id, b.attempts) == ("b", 1)
    await store.finish(b, T0)
    [a] = await store.claim("w", 10, LEASE, T0 + 60)
    assert (a.item_id, a.attempts) == ("a", 1)


async def test_newer_replaces_older_never_overwrites(store: Store) -> None:
    jobs = await expanded(store, ["a", "a", "b"])
    assert [j.item_id for j in jobs] == ["a", "b"]  # ids deduplicated within an event
    assert (
        await store.save_item(jobs[0], stored_item("a", "2026-01-02", "new"), ["out"], T0)
    ).changed
    older = await store.save_item(jobs[1], stored_item("a", "2026-01-01", "old"), ["out"], T0)
    assert not older.changed
    stored = await store.get_item("a")
    assert stored is not None
    assert json.loads(stored.raw)["c"] == "new"
    deliveries = await store.claim("w", 10, LEASE, T0)
    assert [(d.kind, d.item_id, d.version) for d in deliveries] == [
        (JobKind.DELIVER, "a", "2026-01-02#new")
    ]
    # same updated_at, different content: the later fetch wins and is delivered
    await store.replay_item("a", ReplayMode.REFETCH, [], T0)
    [refetch] = [j for j in await store.claim("w", 10, LEASE, T0) if j.kind is JobKind.FETCH]
    assert (
        await store.save_item(refetch, stored_item("a", "2026-01-02", "fixed"), ["out"], T0)
    ).changed
    # a dated version beats an undated one
    await store.replay_item("a", ReplayMode.REFETCH, [], T0)
    [undated] = [j for j in await store.claim("w", 10, LEASE, T0) if j.kind is JobKind.FETCH]
    assert not (
        await store.save_item(undated, stored_item("a", None, "undated"), ["out"], T0)
    ).changed


async def test_one_delivery_per_output_and_version(store: Store) -> None:
    [job] = await expanded(store, ["a"])
    await store.save_item(job, stored_item("a", "2026-01-01"), ["console", "jsonl:/x"], T0)
    deliveries = await store.claim("w", 10, LEASE, T0)
    assert sorted(d.output or "" for d in deliveries) == ["console", "jsonl:/x"]
    for d in deliveries:
        await store.finish(d, T0)
    [event] = await store.list_events()
    assert event.status == "done"
    # redelivery resets the same rows (same idempotency key downstream)
    assert await store.replay_event(event.id, ReplayMode.REDELIVER, ["console"], T0) == 1
    [again] = await store.claim("w", 10, LEASE, T0)
    assert (again.output, again.version) == ("console", "2026-01-01#x")


async def test_dead_work_comes_back_on_resend_and_replay(store: Store) -> None:
    [job] = await expanded(store, ["a"])
    await store.fail(job, "404", None, T0)
    assert await store.insert_event(scanned_event("m1", ["a"], at=T0)) is InsertOutcome.REQUEUED
    [job] = await store.claim("w", 10, LEASE, T0)
    assert job.attempts == 1
    await store.fail(job, "404", None, T0 + 5)
    assert await store.replay_dead(T0 + 10, T0 + 20) == 0
    assert await store.replay_dead(T0, T0 + 20) == 1
    [event] = await store.list_events()
    assert event.status == "processing"


async def test_replay_dead_of_one_account_leaves_the_others(store: Store) -> None:
    for msg, account in (("m_a", "acme"), ("m_b", "beta"), ("m_d", "default")):
        event = replace(scanned_event(msg, ["a"], at=T0), account=account)
        await store.insert_event(event)
    for job in await store.claim("w", 10, LEASE, T0):
        await store.fail(job, "gave up", None, T0)
    assert await store.replay_dead(T0, T0 + 20, "nobody") == 0
    assert await store.replay_dead(T0, T0 + 20, "beta") == 1
    [job] = await store.claim("w", 10, LEASE, T0 + 20)
    assert job.account == "beta"
    assert await store.replay_dead(T0, T0 + 30) == 2  # no account: every account's


async def test_replay_event_refetch(store: Store) -> None:
    [job] = await expanded(store, ["a"])
    await store.save_item(job, stored_item("a", "2026-01-01"), [], T0)
    [event] = await store.list_events()
    assert await store.replay_event(event.id, ReplayMode.REFETCH, [], T0) == 2
    kinds = sorted(j.kind for j in await store.claim("w", 10, LEASE, T0))
    assert kinds == [JobKind.EVENT, JobKind.FETCH]
    with pytest.raises(LookupError):
        await store.replay_event(9999, ReplayMode.REFETCH, [], T0)
    with pytest.raises(LookupError):
        await store.replay_item("nope", ReplayMode.REDELIVER, ["console"], T0)


async def test_reads_paginate_and_filter(store: Store) -> None:
    ids = [f"{n:024x}" for n in range(7)]
    jobs = await expanded(store, ids)
    for n, job in enumerate(jobs):
        assert job.item_id is not None
        await store.save_item(
            job, stored_item(job.item_id, "2026-01-01", barcode=f"87{n % 2}"), [], T0
        )
    page1 = await store.list_items(limit=4)
    page2 = await store.list_items(limit=4, after=page1[-1].id)
    assert [i.id for i in page1 + page2] == ids
    assert {i.id for i in await store.list_items(barcode="871")} == {ids[1], ids[3], ids[5]}
    assert await store.list_items(barcode="8%") == []
    assert await store.list_items(since=T0 + 1) == []
    for n in range(5):
        await store.insert_event(scanned_event(f"e{n}", [], at=T0))
    first = await store.list_events(limit=3)
    rest = await store.list_events(limit=10, before=first[-1].id)
    assert len(first) + len(rest) == 6
    assert [e.id for e in first + rest] == sorted((e.id for e in first + rest), reverse=True)
    stats = await store.stats(T0)
    assert sum(stats.events.values()) == 6
    await store.ping()


async def test_deliveries_can_be_leased_to_the_saver(store: Store) -> None:
    [job] = await expanded(store, ["a"])
    saved = await store.save_item(
        job, stored_item("a", "2026-01-01"), ["console", "jsonl:/x"], T0, Lease("w", LEASE)
    )
    assert saved.changed
    assert sorted((d.kind, d.output, d.attempts) for d in saved.deliveries) == [
        (JobKind.DELIVER, "console", 1),
        (JobKind.DELIVER, "jsonl:/x", 1),
    ]
    assert await store.claim("other", 10, LEASE, T0) == []  # they are held, not due
    await store.finish(saved.deliveries[0], T0)
    # the saver died before the second: its lease expires and another worker takes it over
    [taken] = await store.claim("other", 10, LEASE, T0 + LEASE + 1)
    assert (taken.id, taken.attempts) == (saved.deliveries[1].id, 2)
    with pytest.raises(LeaseLost):
        await store.finish(saved.deliveries[1], T0 + LEASE + 2)


async def test_a_delivery_finishes_with_its_ledger_row_only_under_its_lease(store: Store) -> None:
    """PostgreSQL writes both in one statement (``finish_recorded``), SQLite in two: either way
    a stale worker's finish writes neither, and a finish under the lease writes both."""
    [job] = await expanded(store, ["a"])
    saved = await store.save_item(
        job, stored_item("a", "2026-01-01"), ["console"], T0, Lease("w", LEASE)
    )
    [delivery] = saved.deliveries
    attempt = DeliveryAttempt(
        item_id="a",
        output="console",
        idempotency_key="dmy_a",
        attempt=1,
        started_at=T0 + 1,
        outcome="delivered",
        revision=saved.revision,
        version=delivery.version,
    )
    [taken] = await store.claim("other", 10, LEASE, T0 + LEASE + 1)
    assert taken.id == delivery.id
    with pytest.raises(LeaseLost):
        await store.finish(delivery, T0 + LEASE + 2, attempt=attempt)
    assert await store.attempts(item_id="a") == []
    assert (await store.stats(T0)).jobs == {"done": 2, "running": 1}

    late = replace(attempt, attempt=2, started_at=T0 + LEASE + 3, latency_ms=12.5)
    await store.finish(taken, T0 + LEASE + 4, attempt=late)
    [row] = await store.attempts(item_id="a")
    assert (row.output, row.idempotency_key, row.attempt, row.outcome) == (
        "console",
        "dmy_a",
        2,
        "delivered",
    )
    assert (row.started_at, row.latency_ms, row.status_code, row.error) == (
        T0 + LEASE + 3,
        12.5,
        None,
        None,
    )
    assert (row.revision, row.version) == (saved.revision, delivery.version)
    assert (await store.stats(T0)).jobs == {"done": 3}


async def test_an_older_events_items_go_before_newer_events(store: Store) -> None:
    """With a backlog, expansion must not starve the fetches of the events already expanded."""
    await store.insert_event(scanned_event("old", ["a"], at=T0))
    for n in range(3):
        await store.insert_event(scanned_event(f"new{n}", ["b"], at=T0 + 10 + n))
    [old_event] = await store.claim("w", 1, LEASE, T0 + 20)
    await store.expand_event(old_event, ["a"], T0 + 20)
    [next_job] = await store.claim("w", 1, LEASE, T0 + 21)
    assert (next_job.kind, next_job.item_id) == (JobKind.FETCH, "a")


class _WriteBlocker:
    """Holds, from a connection of its own, a lock every write to job ``job_id`` needs (the job's
    row on PostgreSQL, the database's write lock on SQLite) until :meth:`release`."""

    def __init__(self, store: Store, job_id: int) -> None:
        from dimmy_webhooks.store import SQLiteStore

        if isinstance(store, SQLiteStore):
            import sqlite3

            self._sqlite = sqlite3.connect(store.path, isolation_level=None, timeout=10)
            self._sqlite.execute("BEGIN IMMEDIATE")
            self._release = self._sqlite.commit
            self._close = self._sqlite.close
        else:
            import psycopg

            from dimmy_webhooks.store.postgres import PostgresStore

            assert isinstance(store, PostgresStore)
            self._pg = psycopg.connect(store.database_url, connect_timeout=5)
            self._pg.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
            self._release = self._pg.commit
            self._close = self._pg.close
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release()
            self._close()


async def test_a_write_cancelled_in_flight_has_ended_when_the_cancellation_arrives(
    store: Store,
) -> None:
    """A stopping worker cancels its jobs, then releases its claims: a ``save_item`` cancelled
    while its transaction runs must not commit after that release (its deliveries, leased to the
    worker, would stay ``running`` until the lease expired)."""
    [job] = await expanded(store, ["a"])
    blocker = _WriteBlocker(store, job.id)
    try:
        saving = asyncio.create_task(
            store.save_item(job, stored_item("a", "2026-01-01"), ["console"], T0, Lease("w", LEASE))
        )
        await asyncio.sleep(0.3)  # the transaction has started and waits for the lock
        assert not saving.done()
        saving.cancel()
        asyncio.get_running_loop().call_later(0.3, blocker.release)
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(saving, 10)
        waited = time.monotonic() - started
        # the write ended before the cancellation arrived: committed, deliveries leased
        jobs = (await store.stats(T0)).jobs
        assert jobs == {"done": 2, "running": 1}, f"cancellation arrived after {waited:.2f}s"
    finally:
        blocker.release()
    assert await store.release("w", T0) == 1
    assert (await store.stats(T0)).jobs == {"done": 2, "pending": 1}


async def test_a_new_event_is_not_held_behind_an_earlier_upload(store: Store) -> None:
    """A device back after a shift uploads 300 ids; a scan one second later goes next, not
    after the 300 (its fetch is claimed before the upload's remaining ones)."""
    big = [f"big{n:03}" for n in range(300)]
    await store.insert_event(scanned_event("m_big", big, at=T0))
    [upload] = await store.claim("w", 1, LEASE, T0)
    await store.expand_event(upload, big, T0)
    first = await store.claim("w", 40, LEASE, T0 + 0.5)
    assert [j.item_id for j in first] == big[:40]  # an event's own ids in their order
    await store.insert_event(scanned_event("m_live", ["live"], at=T0 + 1))
    [live_event] = await store.claim("w", 1, LEASE, T0 + 1)
    assert (live_event.kind, live_event.event_id) == (JobKind.EVENT, 2)
    await store.expand_event(live_event, ["live"], T0 + 1)
    batch = {j.item_id: j for j in await store.claim("w", 5, LEASE, T0 + 1)}
    assert sorted(batch) == [*big[40:44], "live"]
    live_fetch = batch["live"]
    # its delivery is next too, while the upload still has 256 fetches waiting
    saved = await store.save_item(live_fetch, stored_item("live", "2026-01-01"), ["out"], T0 + 1.1)
    assert saved.changed
    [delivery] = await store.claim("w", 1, LEASE, T0 + 1.2)
    assert (delivery.kind, delivery.item_id) == (JobKind.DELIVER, "live")
    # two uploads drain side by side, neither waits for the other to end
    other = [f"two{n:03}" for n in range(100)]
    await store.insert_event(scanned_event("m_two", other, at=T0 + 2))
    [second] = await store.claim("w", 1, LEASE, T0 + 2)
    await store.expand_event(second, other, T0 + 2)
    batch = await store.claim("w", 44, LEASE, T0 + 2)  # its first ids catch up with the upload
    assert sorted(j.item_id for j in batch) == other[:44]
    batch = await store.claim("w", 20, LEASE, T0 + 2)  # then they take turns
    assert sorted(j.item_id for j in batch) == [*big[44:54], *other[44:54]]


async def test_live_work_goes_before_polled_and_replayed_work(store: Store) -> None:
    """Deliveries of a backfill and a replay wait while a webhook's work is due, however
    much older they are."""
    polled = [stored_item(f"p{n}", "2026-01-01") for n in range(5)]
    assert await store.save_polled(polled, Source.BACKFILL, ["out"], T0) == [1] * 5
    await store.replay_item("r1", ReplayMode.REFETCH, [], T0)
    await store.insert_event(scanned_event("m_live", ["live"], at=T0 + 60))
    order = []
    while jobs := await store.claim("w", 1, LEASE, T0 + 60):
        [job] = jobs
        order.append((job.kind.value, job.item_id))
        if job.kind is JobKind.EVENT:
            await store.expand_event(job, ["live"], T0 + 60)
    assert order == [
        ("event", None),
        ("fetch", "live"),
        *[("deliver", f"p{n}") for n in range(5)],
        ("fetch", "r1"),
    ]


async def test_a_large_event_is_expanded_in_chunks_each_position_once(store: Store) -> None:
    """250 ids are queued in three writes (:data:`EXPAND_CHUNK`): every id once, at its
    position in the event, and the event job done only with the last write."""
    ids = [f"{n:024x}" for n in range(250)] + [f"{3:024x}"]  # a repeated id is queued once
    await store.insert_event(scanned_event("big", ids, at=T0))
    [job] = await store.claim("w", 10, LEASE, T0)
    await store.expand_event(job, ids, T0)
    fetches = await store.claim("w", 1000, LEASE, T0)
    assert sorted((j.seq, j.item_id) for j in fetches) == [(n, f"{n:024x}") for n in range(250)]
    [event] = await store.list_events()
    assert event.item_count == 251
    with pytest.raises(LeaseLost):  # done: a second expansion under the same lease is refused
        await store.expand_event(job, ids, T0)


async def test_an_expansion_whose_lease_was_taken_over_stops_and_the_new_owner_finishes(
    store: Store,
) -> None:
    """A worker that lost its lease half-way queues nothing more; the new owner's expansion
    queues every id exactly once, the ones queued before included."""
    from dimmy_webhooks.store.queue import EXPAND_CHUNK, queue_fetches

    ids = [f"{n:024x}" for n in range(EXPAND_CHUNK * 2 + 5)]
    await store.insert_event(scanned_event("big", ids, at=T0))
    [old] = await store.claim("old", 10, 1.0, T0)
    # the old owner got its first chunk in, then its lease expired and was taken over
    await store._write_job(  # one chunk, as expand_event writes it
        lambda tx: queue_fetches(
            tx, job=old, item_ids=ids[:EXPAND_CHUNK], max_attempts=3, now=T0, first_seq=0
        )
    )
    taken = await store.claim("new", 1000, LEASE, T0 + 5)
    [new] = [job for job in taken if job.kind is JobKind.EVENT]
    assert new.id == old.id
    with pytest.raises(LeaseLost):
        await store.expand_event(old, ids, T0 + 5)
    await store.expand_event(new, ids, T0 + 5)
    fetches = [job for job in taken if job.kind is JobKind.FETCH]
    fetches += await store.claim("w", 1000, LEASE, T0 + 5)
    assert sorted((j.seq, j.item_id) for j in fetches) == list(enumerate(ids))
