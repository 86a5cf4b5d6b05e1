"""The pipeline against the fake Dimmy API over real loopback HTTP, on this test's own SQLite
file (``tests/integration/test_worker_postgres.py`` runs the same tests on PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.models import FULL_PAYLOAD, UNKNOWN, IncomingEvent, InsertOutcome
from dimmy_webhooks.outputs import JsonlOutput, Output, parse_outputs
from dimmy_webhooks.pipeline.jobs import WorkerPolicy
from dimmy_webhooks.pipeline.worker import Worker
from dimmy_webhooks.store import ReplayMode, Store
from dimmy_webhooks.upstream.client import DimmyClient

from ..support import handlers
from ..support.builders import scanned_event
from ..support.constants import API_KEY
from ..support.databases import query

FAST = WorkerPolicy(
    concurrency=32,
    lease_seconds=5,
    retry_base_seconds=0.02,
    retry_max_seconds=0.1,
    poll_seconds=0.05,
)


class Pipeline:
    def __init__(self, db_url: str, store: Store, worker: Worker, jsonl: Path) -> None:
        self.db_url = db_url
        self.store = store
        self.worker = worker
        self.jsonl = jsonl

    async def run_until_idle(self, timeout: float = 30) -> None:
        """Run the worker until no job is pending or running (bounded by ``timeout``)."""
        stop = asyncio.Event()
        task = asyncio.create_task(self.worker.run(stop))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                jobs = (await self.store.stats(time.time())).jobs
                if not jobs.get("pending") and not jobs.get("running"):
                    return
            raise AssertionError(f"not idle after {timeout}s: {jobs}")
        finally:
            stop.set()
            await task

    def table(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row.values()) for row in query(self.db_url, sql)]

    def lines(self) -> list[dict[str, Any]]:
        return JsonlOutput.read(self.jsonl)


@pytest.fixture
def pipeline_db(sqlite_url: str) -> str:
    """The database the worker runs on: this test's SQLite file (on PostgreSQL in
    ``tests/integration/test_worker_postgres.py``)."""
    return sqlite_url


@pytest.fixture
def pipeline_store(sqlite_store: Store) -> Store:
    """The opened store on :func:`pipeline_db`."""
    return sqlite_store


@pytest.fixture
async def pipeline_factory(
    tmp_path: Path, pipeline_db: str, pipeline_store: Store, fake_url: str
) -> AsyncIterator[Callable[..., Any]]:
    """A worker on :func:`pipeline_store`, fetching from the fake Dimmy API over loopback HTTP,
    delivering to ``out.jsonl``."""
    opened: list[tuple[DimmyClient, list[Output]]] = []

    async def factory(
        *,
        policy: WorkerPolicy = FAST,
        max_attempts: int = 3,
        api_key: str = API_KEY,
        extra_outputs: str = "",
        timeout: float = 2.0,
        api_concurrency: int = 16,
        rate_limit: float = 10_000,
    ) -> Pipeline:
        store = pipeline_store
        store.max_attempts = max_attempts
        client = DimmyClient(
            fake_url, api_key, timeout=timeout, concurrency=api_concurrency, rate_limit=rate_limit
        )
        jsonl = tmp_path / "out.jsonl"
        spec = f"jsonl:{jsonl}" + (f",{extra_outputs}" if extra_outputs else "")
        outputs = parse_outputs(spec)
        opened.append((client, outputs))
        return Pipeline(pipeline_db, store, Worker(store, client, outputs, policy), jsonl)

    yield factory
    for client, outputs in opened:
        await client.aclose()
        for output in outputs:
            await output.aclose()


async def test_500_id_event_stores_every_item_once(pipeline_factory: Any, fake: FakeDimmy) -> None:
    ids = fake.generate_items(500)
    p = await pipeline_factory()
    assert (
        await p.store.insert_event(scanned_event("msg_big", ids, headers={}))
        is InsertOutcome.ACCEPTED
    )
    await p.run_until_idle()
    assert {row[0] for row in p.table("SELECT id FROM items")} == set(ids)
    assert fake.counts == Counter(dict.fromkeys(ids, 1))
    lines = p.lines()
    assert sorted(line["item_id"] for line in lines) == sorted(ids)
    assert len({line["idempotency_key"] for line in lines}) == 500
    assert p.table("SELECT status FROM events") == [("done",)]
    # the same message again (a sender retry) adds no work and no fetch
    assert (
        await p.store.insert_event(scanned_event("msg_big", ids, headers={}))
        is InsertOutcome.DUPLICATE
    )
    await p.run_until_idle()
    assert sum(fake.counts.values()) == 500
    assert len(p.lines()) == 500


async def test_a_flood_of_webhooks_slows_the_worker_but_never_stops_it(
    pipeline_factory: Any, fake: FakeDimmy
) -> None:
    """While webhooks arrive faster than the busy threshold, the worker's writes wait their
    turn (webhooks first), yet items are still stored during the flood, and all of them after."""
    ids = fake.generate_items(300)
    p = await pipeline_factory()
    await p.store.insert_event(scanned_event("msg_upload", ids, headers={}))
    stop = asyncio.Event()
    worker = asyncio.create_task(p.worker.run(stop))
    stored_in_flood: list[int] = []
    try:
        n = 0
        flood_ends = time.monotonic() + 2.0
        while time.monotonic() < flood_ends:  # about 10 inserts per 20 ms: far above 80/s
            await asyncio.gather(
                *(
                    p.store.insert_event(IncomingEvent(f"flood{n + k}", UNKNOWN, b"[]", {}, 0.0))
                    for k in range(10)
                )
            )
            n += 10
            await asyncio.sleep(0.02)
        stored_in_flood.append(p.table("SELECT COUNT(*) FROM items")[0][0])
        assert p.store.intake_first.waited > 0  # the worker did wait for the webhooks
    finally:
        stop.set()
        await worker
    assert stored_in_flood[0] > 0  # slowed, not stopped
    await p.run_until_idle()
    assert {row[0] for row in p.table("SELECT id FROM items")} == set(ids)


async def test_a_busy_worker_claims_in_batches_not_once_per_freed_slot(
    pipeline_factory: Any, fake: FakeDimmy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each claim is a write that webhook inserts wait behind: a worker whose slots are full
    claims again once a quarter of them are free, not for every job that ends (here the jobs
    wait for the API's rate budget, 100 a second after a first burst of 100, and end one by
    one)."""
    ids = fake.generate_items(300)
    p = await pipeline_factory(api_concurrency=16, rate_limit=100)
    claims: list[int] = []
    claim = p.store.claim

    async def counted(*args: Any, **kwargs: Any) -> Any:
        jobs = await claim(*args, **kwargs)
        claims.append(len(jobs))
        return jobs

    monkeypatch.setattr(p.store, "claim", counted)
    await p.store.insert_event(scanned_event("msg_upload", ids, headers={}))
    await p.run_until_idle()
    assert {row[0] for row in p.table("SELECT id FROM items")} == set(ids)
    jobs = sum(claims)  # the event and 300 fetches (each fetch delivers what it stored)
    assert jobs == 301
    assert len(claims) <= jobs / 4, (len(claims), claims)


async def test_404_and_422_ids_die_once_while_siblings_succeed(
    pipeline_factory: Any, fake: FakeDimmy
) -> None:
    good = fake.generate_items(3)
    missing, malformed = "0" * 24, "not-an-object-id"
    p = await pipeline_factory(max_attempts=5)
    await p.store.insert_event(
        scanned_event("msg_mixed", [good[0], missing, good[1], malformed, good[2]], headers={})
    )
    await p.run_until_idle()
    assert {row[0] for row in p.table("SELECT id FROM items")} == set(good)
    dead = {
        r[0]: r[1:]
        for r in p.table("SELECT item_id, attempts, last_error FROM jobs WHERE status = 'dead'")
    }
    assert set(dead) == {missing, malformed}
    assert dead[missing][0] == 1
    assert "404" in dead[missing][1]
    assert dead[malformed][0] == 1
    assert "422" in dead[malformed][1]
    [(status, error)] = p.table("SELECT status, last_error FROM events")
    assert status == "dead"
    assert error


async def test_5xx_and_hangs_retry_within_policy_then_die(
    pipeline_factory: Any, fake: FakeDimmy
) -> None:
    ids = fake.generate_items(4)
    fake.fail_ids.add(ids[0])  # always 500
    p = await pipeline_factory(max_attempts=3, timeout=0.3)
    fake.config.hang_seconds = 5
    await p.store.insert_event(scanned_event("msg_fail", ids, headers={}))
    await p.run_until_idle()
    dead = p.table("SELECT item_id, attempts FROM jobs WHERE status = 'dead'")
    assert dead == [(ids[0], 3)]
    assert fake.attempts[ids[0]] == 3
    assert {row[0] for row in p.table("SELECT id FROM items")} == set(ids[1:])

    # every call hangs past the client timeout: transient, retried, then dead
    hung = fake.generate_items(1)[0]
    fake.config.hang_rate = 1.0
    await p.store.insert_event(scanned_event("msg_hang", [hung], headers={}))
    started = time.monotonic()
    await p.run_until_idle()
    fake.config.hang_rate = 0.0
    assert p.table(f"SELECT attempts, status FROM jobs WHERE item_id = '{hung}'") == [(3, "dead")]
    assert time.monotonic() - started < 10


async def test_429_retry_after_is_respected(pipeline_factory: Any, fake: FakeDimmy) -> None:
    ids = fake.generate_items(3)
    fake.config.rate_limit_every = 2  # R9: every other call is a 429 with Retry-After: 2
    fake.config.retry_after_seconds = 2
    # one request at a time, so every request after a 429 was sent after the client saw it
    p = await pipeline_factory(max_attempts=8, api_concurrency=1)
    await p.store.insert_event(scanned_event("msg_429", ids, headers={}))
    await p.run_until_idle()
    fake.config.rate_limit_every = None
    assert {row[0] for row in p.table("SELECT id FROM items")} == set(ids)
    limited = [r.at for r in fake.requests if r.status == 429]
    assert limited
    for at in limited:
        sooner = [r for r in fake.requests if at < r.at < at + 1.95]
        assert sooner == [], "a request was sent before Retry-After passed"


async def test_full_payload_is_stored_without_a_fetch(
    pipeline_factory: Any, fake: FakeDimmy
) -> None:
    [item_id] = fake.generate_items(1)
    body = json.dumps(fake.items[item_id]).encode()
    p = await pipeline_factory()
    await p.store.insert_event(IncomingEvent("msg_full", FULL_PAYLOAD, body, {}, time.time()))
    await p.run_until_idle()
    stored = await p.store.get_item(item_id)
    assert stored is not None
    assert json.loads(stored.raw) == fake.items[item_id]
    assert fake.counts == Counter()
    assert [line["item_id"] for line in p.lines()] == [item_id]


async def test_newer_version_replaces_and_is_delivered_once_more(
    pipeline_factory: Any, fake: FakeDimmy
) -> None:
    [item_id] = fake.generate_items(1)
    p = await pipeline_factory()
    await p.store.insert_event(scanned_event("msg_v1", [item_id], headers={}))
    await p.run_until_idle()
    first = await p.store.get_item(item_id)
    assert first is not None
    fake.update_item(item_id, flow_id="changed-flow")
    await p.store.replay_item(item_id, ReplayMode.REFETCH, [], time.time())
    await p.run_until_idle()
    second = await p.store.get_item(item_id)
    assert second is not None
    assert second.version != first.version
    assert json.loads(second.raw)["flow_id"] == "changed-flow"
    # fetching the unchanged item again delivers nothing new
    await p.store.replay_item(item_id, ReplayMode.REFETCH, [], time.time())
    await p.run_until_idle()
    assert [line["version"] for line in p.lines()] == [first.version, second.version]


async def test_a_poison_output_dies_alone(pipeline_factory: Any, fake: FakeDimmy) -> None:
    ids = fake.generate_items(5)
    handlers.calls.clear()
    handlers.poison.clear()
    p = await pipeline_factory(
        extra_outputs="python:tests.support.handlers:explode_on_first", max_attempts=2
    )
    await p.store.insert_event(scanned_event("msg_poison", ids, headers={}))
    await p.run_until_idle()
    assert sorted(line["item_id"] for line in p.lines()) == sorted(ids)
    dead = p.table("SELECT output, attempts FROM jobs WHERE status = 'dead'")
    assert dead == [("python:tests.support.handlers:explode_on_first", 2)]
    assert len(handlers.calls) == 4  # the other items reached the handler


async def test_refused_api_key_pauses_without_burning_attempts(
    pipeline_factory: Any, fake: FakeDimmy
) -> None:
    ids = fake.generate_items(2)
    p = await pipeline_factory(api_key="wrong-key")
    await p.store.insert_event(scanned_event("msg_auth", ids, headers={}))
    stop = asyncio.Event()
    task = asyncio.create_task(p.worker.run(stop))
    await asyncio.sleep(1.0)
    stop.set()
    await task
    assert p.worker.config_error is not None
    assert "wrong-key" not in p.worker.config_error
    jobs = p.table("SELECT status, attempts FROM jobs WHERE kind = 'fetch'")
    assert jobs == [("pending", 0), ("pending", 0)]
    assert fake.attempts == Counter()  # 401 happens before the id is looked at


async def test_dead_event_resent_by_the_sender_is_requeued(
    pipeline_factory: Any, fake: FakeDimmy
) -> None:
    [item_id] = fake.generate_items(1)
    fake.fail_ids.add(item_id)
    p = await pipeline_factory(max_attempts=2)
    await p.store.insert_event(scanned_event("msg_resend", [item_id], headers={}))
    await p.run_until_idle()
    assert p.table("SELECT status FROM events") == [("dead",)]
    fake.fail_ids.clear()
    assert (
        await p.store.insert_event(scanned_event("msg_resend", [item_id], headers={}))
        is InsertOutcome.REQUEUED
    )
    await p.run_until_idle()
    assert p.table("SELECT status FROM events") == [("done",)]
    assert [line["item_id"] for line in p.lines()] == [item_id]


async def test_replay_redeliver_reuses_the_idempotency_key(
    pipeline_factory: Any, fake: FakeDimmy
) -> None:
    ids = fake.generate_items(2)
    p = await pipeline_factory()
    await p.store.insert_event(scanned_event("msg_redeliver", ids, headers={}))
    await p.run_until_idle()
    [(event_id,)] = p.table("SELECT id FROM events")
    queued = await p.store.replay_event(
        event_id, ReplayMode.REDELIVER, list(p.worker.outputs), time.time()
    )
    assert queued == 2
    await p.run_until_idle()
    keys = Counter(line["idempotency_key"] for line in p.lines())
    assert len(keys) == 2
    assert set(keys.values()) == {2}
    assert sum(fake.counts.values()) == 2  # redelivery fetched nothing


async def test_graceful_stop_releases_claims(pipeline_factory: Any, fake: FakeDimmy) -> None:
    ids = fake.generate_items(40)
    fake.config.latency_seconds = 0.5
    p = await pipeline_factory(policy=replace(FAST, grace_seconds=0.1))
    await p.store.insert_event(scanned_event("msg_stop", ids, headers={}))
    stop = asyncio.Event()
    task = asyncio.create_task(p.worker.run(stop))
    await asyncio.sleep(0.8)
    stop.set()
    await asyncio.wait_for(task, 5)
    fake.config.latency_seconds = 0
    # nothing left claimed: not even deliveries a cancelled save_item leased to the worker
    running = p.table("SELECT id, kind, lease_owner FROM jobs WHERE status = 'running'")
    assert running == [], running
    await p.run_until_idle()
    assert {row[0] for row in p.table("SELECT id FROM items")} == set(ids)


BLOCKING = "python:tests.support.handlers:block_forever"


@pytest.fixture
def blocking_handlers() -> Any:
    """The test handlers, with :func:`block_forever` blocking until the test is over."""
    handlers.calls.clear()
    handlers.release.clear()
    yield handlers
    handlers.release.set()
    handlers.calls.clear()


async def test_a_blocking_output_times_out_is_retried_and_holds_up_nothing(
    pipeline_factory: Any, fake: FakeDimmy, blocking_handlers: Any
) -> None:
    ids = fake.generate_items(3)
    policy = replace(FAST, output_timeout_seconds=0.3)
    p = await pipeline_factory(extra_outputs=BLOCKING, max_attempts=2, policy=policy)
    await p.store.insert_event(scanned_event("msg_block", ids, headers={}))
    await p.run_until_idle(timeout=20)
    # the other output got everything
    assert sorted(line["item_id"] for line in p.lines()) == sorted(ids)
    dead = p.table(
        "SELECT item_id, attempts, last_error FROM jobs WHERE status = 'dead' ORDER BY item_id"
    )
    assert [(item_id, attempts) for item_id, attempts, _ in dead] == [(i, 2) for i in sorted(ids)]
    assert all(f"{BLOCKING}: no answer within 0.3s" in error for _, _, error in dead), dead
    assert len(blocking_handlers.calls) == 6  # each delivery tried twice
    assert p.table("SELECT status FROM events") == [("dead",)]


@pytest.mark.parametrize("handler", ["block_forever", "async_block_forever"])
async def test_stopping_with_a_blocked_output_takes_the_grace_period_only(
    handler: str, pipeline_factory: Any, fake: FakeDimmy, blocking_handlers: Any
) -> None:
    """The worker's own cancellation of a blocked delivery is not the delivery's failure: the
    claim goes back with its attempt."""
    ids = fake.generate_items(2)
    output = f"python:tests.support.handlers:{handler}"
    policy = replace(FAST, output_timeout_seconds=60, grace_seconds=0.3)
    p = await pipeline_factory(extra_outputs=output, policy=policy)
    await p.store.insert_event(scanned_event("msg_stop_blocked", ids, headers={}))
    stop = asyncio.Event()
    task = asyncio.create_task(p.worker.run(stop))
    deadline = time.monotonic() + 10
    while len(blocking_handlers.calls) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert len(blocking_handlers.calls) == 2
    stopped = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - stopped < 2
    # the blocked deliveries went back to the queue at once, their attempt given back
    assert p.table(
        "SELECT status, attempts, last_error, count(*) FROM jobs WHERE output = "
        f"'{output}' GROUP BY status, attempts, last_error"
    ) == [("pending", 0, None, 2)]


@pytest.fixture
def raising_handlers() -> Any:
    handlers.calls.clear()
    handlers.raised.clear()
    yield handlers
    handlers.calls.clear()
    handlers.raised.clear()


@pytest.mark.parametrize("handler", ["raise_base_exception", "async_raise_base_exception"])
async def test_an_output_raising_system_exit_and_the_like_fails_counted_attempts(
    handler: str, pipeline_factory: Any, fake: FakeDimmy, raising_handlers: Any
) -> None:
    """SystemExit, KeyboardInterrupt, GeneratorExit, a stray CancelledError, any BaseException
    from an output: a failed delivery that counts its attempt; the worker keeps working."""
    ids = fake.generate_items(2)
    output = f"python:tests.support.handlers:{handler}"
    attempts = len(raising_handlers.RAISED)
    p = await pipeline_factory(extra_outputs=output, max_attempts=attempts)
    await p.store.insert_event(scanned_event("msg_raise", ids, headers={}))
    await p.run_until_idle()
    assert sorted(line["item_id"] for line in p.lines()) == sorted(ids)  # the other output
    dead = p.table(f"SELECT attempts FROM jobs WHERE output = '{output}' AND status = 'dead'")
    assert dead == [(attempts,), (attempts,)]
    assert sorted(raising_handlers.raised) == sorted(
        kind.__name__ for kind in raising_handlers.RAISED * 2
    )
    # still working afterwards
    later = fake.generate_items(1)
    await p.store.insert_event(scanned_event("msg_after", later, headers={}))
    await p.run_until_idle()
    assert later[0] in {line["item_id"] for line in p.lines()}


@pytest.mark.parametrize("kind", [SystemExit, handlers.Fatal])
async def test_any_job_raising_a_base_exception_is_a_logged_counted_failure(
    kind: type[BaseException],
    pipeline_factory: Any,
    fake: FakeDimmy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad, good = fake.generate_items(2)
    p = await pipeline_factory(max_attempts=2)
    assert p.worker.client is not None
    real_get = p.worker.client.get_item_document

    async def get_item_document(item_id: str) -> tuple[bytes, dict[str, Any]]:
        if item_id == bad:
            raise kind("raised inside the fetch")
        return await real_get(item_id)

    p.worker.client.get_item_document = get_item_document  # type: ignore[method-assign]
    await p.store.insert_event(scanned_event("msg_fetch_raise", [bad, good], headers={}))
    await p.run_until_idle()
    assert p.table(f"SELECT status, attempts, last_error FROM jobs WHERE item_id = '{bad}'") == [
        ("dead", 2, f"{kind.__name__}: raised inside the fetch")
    ]
    assert [line["item_id"] for line in p.lines()] == [good]
    failed = [r for r in caplog.records if r.getMessage() == "job failed"]
    assert len(failed) == 2
    assert all(r.exc_info and r.exc_info[0] is kind for r in failed)
