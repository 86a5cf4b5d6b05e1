"""Worker processes SIGKILLed mid-batch, repeatedly: every item stored once, nothing stuck.

The worker runs as a user starts it (``dimmy-webhooks worker``); the fake Dimmy API runs in this
process on 127.0.0.1. Each run prints its seed and kill schedule so a failure can be replayed.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dimmy_webhooks.devtools.sender import items_scanned_body
from dimmy_webhooks.outputs import JsonlOutput

from ..support.constants import API_KEY
from ..support.databases import insert_events, rows, running_jobs, unfinished_jobs
from ..support.processes import wait_until

SEED = 20261128


def test_sigkilled_workers_lose_and_duplicate_nothing(
    tmp_path: Path, db_url: str, fake: Any, fake_url: str, service_factory: Any
) -> None:
    rng = random.Random(SEED)
    db = db_url
    out = tmp_path / "items.jsonl"
    ids = fake.generate_items(300)
    batches = [ids[i : i + 60] for i in range(0, 300, 60)]
    insert_events(db, [(f"msg_{n}", items_scanned_body(batch)) for n, batch in enumerate(batches)])
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
        running = wait_until(lambda: running_jobs(db) > 0, timeout=20, interval=0.02)
        if not running:
            break  # everything finished before this kill
        time.sleep(delay)
        worker.kill(signal.SIGKILL)
        kills += 1
    # a last worker finishes the job
    final = service_factory(["worker"], **env).start()
    assert wait_until(lambda: unfinished_jobs(db) == 0, timeout=60, interval=0.02), final.log()
    assert final.stop() == 0  # SIGTERM: a clean exit

    assert kills >= 3, "the kills must land while work is running"
    stored = [row[0] for row in rows(db, "SELECT id FROM items")]
    assert sorted(stored) == sorted(ids)  # every item, once (primary key)
    assert rows(db, "SELECT status, count(*) FROM jobs GROUP BY status") == [
        ("done", 5 + 300 + 300)
    ]
    assert rows(db, "SELECT DISTINCT status FROM events") == [("done",)]
    if db_url.startswith("sqlite:///"):
        assert rows(db, "PRAGMA integrity_check") == [("ok",)]
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
