"""Worker processes SIGKILLed mid-batch, repeatedly: every item stored once, nothing stuck.

The worker runs as a user starts it (``dimmy-webhooks worker``); the fake Dimmy API runs in this
process on 127.0.0.1. Each run prints its seed and kill schedule so a failure can be replayed.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dimmy_webhooks.outputs import JsonlOutput

from .conftest import API_KEY, query, wait_until

SEED = 20261128


def _db(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row.values()) for row in query(db_url, sql)]


def _insert_events(db_url: str, batches: list[list[str]]) -> None:
    import asyncio

    from dimmy_webhooks.models import ITEMS_SCANNED, IncomingEvent
    from dimmy_webhooks.store import create_store

    async def go() -> None:
        store = create_store(db_url)
        await store.open()
        for n, ids in enumerate(batches):
            body = json.dumps({"item_ids": ids}).encode()
            await store.insert_event(
                IncomingEvent(f"msg_{n}", ITEMS_SCANNED, body, {}, time.time(), len(ids))
            )
        await store.close()

    asyncio.run(go())


def test_sigkilled_workers_lose_and_duplicate_nothing(
    tmp_path: Path, db_url: str, fake: Any, fake_url: str, service_factory: Any
) -> None:
    rng = random.Random(SEED)
    db = db_url
    out = tmp_path / "items.jsonl"
    ids = fake.generate_items(300)
    batches = [ids[i : i + 60] for i in range(0, 300, 60)]
    _insert_events(db, batches)
    fake.config.latency_seconds = 0.02
    env = {
        "DIMMY_DATABASE_URL": db_url,
        "DIMMY_API_KEY": API_KEY,
        "DIMMY_API_URL": fake_url,
        "DIMMY_OUTPUTS": f"jsonl:{out}",
        "DIMMY_LEASE_SECONDS": "1",
        "DIMMY_RETRY_BASE_SECONDS": "0.05",
        "DIMMY_API_RATE_LIMIT": "10000",
        "DIMMY_API_CONCURRENCY": "8",
        "DIMMY_MAX_ATTEMPTS": "20",
    }
    schedule = [round(rng.uniform(0.05, 0.6), 3) for _ in range(6)]
    print(f"seed={SEED} kill delays after work is running: {schedule}")
    kills = 0
    for delay in schedule:
        worker = service_factory(["worker"], **env).start()
        running = wait_until(
            lambda: _db(db, "SELECT count(*) FROM jobs WHERE status = 'running'")[0][0] > 0,
            timeout=20,
            interval=0.02,
        )
        if not running:
            break  # everything finished before this kill
        time.sleep(delay)
        worker.kill(signal.SIGKILL)
        kills += 1
    # a last worker finishes the job
    final = service_factory(["worker"], **env).start()
    assert wait_until(
        lambda: (
            _db(db, "SELECT count(*) FROM jobs WHERE status IN ('pending', 'running')") == [(0,)]
        ),
        timeout=60,
        interval=0.02,
    ), final.log()
    assert final.stop() == 0  # SIGTERM: a clean exit

    assert kills >= 3, "the kills must land while work is running"
    stored = [row[0] for row in _db(db, "SELECT id FROM items")]
    assert sorted(stored) == sorted(ids)  # every item, once (primary key)
    assert _db(db, "SELECT status, count(*) FROM jobs GROUP BY status") == [("done", 5 + 300 + 300)]
    assert _db(db, "SELECT DISTINCT status FROM events") == [("done",)]
    if db_url.startswith("sqlite:///"):
        assert _db(db, "PRAGMA integrity_check") == [("ok",)]
    # at-least-once to the output: every item present, repeats only with the same key
    lines = JsonlOutput.read(out)
    keys = Counter(line["idempotency_key"] for line in lines)
    assert {line["item_id"] for line in lines} == set(ids)
    assert len(keys) == 300
    repeats = sum(keys.values()) - len(keys)
    extra_fetches = sum(fake.counts.values()) - len(ids)
    print(f"kills={kills} repeated deliveries={repeats} extra fetches={extra_fetches}")
    # each extra upstream call is explained by a kill (at most one batch in flight each)
    assert extra_fetches <= kills * 16
    assert repeats <= kills * 16
