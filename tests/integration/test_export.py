"""``dimmy-webhooks export-sqlite-to-postgres``: a site's SQLite file moved into PostgreSQL.

The SQLite file is built by the real store and the real worker against the fake Dimmy API
(items fetched, stored and delivered), plus work left pending and claimed, an unknown event and
a body that is not UTF-8; the export runs as a user runs it (the CLI, a subprocess).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.models import UNKNOWN, IncomingEvent
from dimmy_webhooks.outputs import parse_outputs
from dimmy_webhooks.pipeline.jobs import WorkerPolicy
from dimmy_webhooks.pipeline.worker import Worker
from dimmy_webhooks.store import SQLiteStore, schema
from dimmy_webhooks.upstream.client import DimmyClient

from ..support.builders import scanned_event
from ..support.constants import API_KEY, CLI
from ..support.processes import clean_env

pytestmark = pytest.mark.postgres

FAST = WorkerPolicy(concurrency=16, lease_seconds=5, retry_base_seconds=0.02, poll_seconds=0.05)
ODD_BODY = b"\x00\xff\xfe binary \x80 not utf-8 \r\n\x1b"


async def _build(path: Path, fake: FakeDimmy, fake_url: str, jsonl: Path) -> list[str]:
    """Events processed to the end, then one claimed (running) and one pending job."""
    schema.upgrade(f"sqlite:///{path}")
    store = SQLiteStore(path, max_attempts=5)
    await store.open()
    client = DimmyClient(fake_url, API_KEY, timeout=5, concurrency=8, rate_limit=10_000)
    outputs = parse_outputs(f"jsonl:{jsonl}")
    try:
        ids = fake.generate_items(12)
        for n, batch in enumerate([ids[0:5], ids[3:9], ids[8:12], ids[0:2]]):
            await store.insert_event(scanned_event(f"msg_done_{n}", batch))
        full = json.dumps({**fake.items[ids[5]], "note": "grüße ✓"}, ensure_ascii=False)
        await store.insert_event(
            IncomingEvent("msg_full", "item.scanned.full_payload", full.encode(), {}, time.time())
        )
        await store.insert_event(IncomingEvent("msg_odd", UNKNOWN, ODD_BODY, {}, time.time()))
        stop = asyncio.Event()
        task = asyncio.create_task(Worker(store, client, outputs, FAST).run(stop))
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                jobs = (await store.stats(time.time())).jobs
                if not jobs.get("pending") and not jobs.get("running"):
                    break
            else:
                raise AssertionError(f"the pipeline did not finish: {jobs}")
        finally:
            stop.set()
            await task
        # work in flight when the site stops: one job claimed by a worker, one waiting
        await store.insert_event(scanned_event("msg_claimed", ids[9:11]))
        claimed = await store.claim("worker-gone", 10, 600, time.time())
        assert len(claimed) == 1
        await store.insert_event(scanned_event("msg_pending", ids[10:12]))
        return ids
    finally:
        await store.close()
        await client.aclose()
        for output in outputs:
            await output.aclose()


@pytest.fixture
def site(tmp_path: Path, fake: FakeDimmy, fake_url: str) -> Path:
    path = tmp_path / "site.sqlite3"
    asyncio.run(_build(path, fake, fake_url, tmp_path / "out.jsonl"))
    return path


def export(sqlite: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "export-sqlite-to-postgres", str(sqlite), *args],
        env=clean_env(**env),
        cwd=sqlite.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def lite_rows(path: Path, table: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(f"SELECT * FROM {table} ORDER BY id")]
    finally:
        conn.close()


def pg_rows(url: str, table: str) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with psycopg.connect(url, row_factory=dict_row) as conn:
        rows = conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()  # fixed names
    return [{k: bytes(v) if isinstance(v, memoryview) else v for k, v in r.items()} for r in rows]


def released(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs as the export must write them: running ones pending, without a lease."""
    lease = {"lease_owner": None, "lease_token": None, "lease_expires_at": None}
    return [
        {**row, "status": "pending", **lease} if row["status"] == "running" else row for row in rows
    ]


def test_export_copies_everything_keeps_ids_and_moves_the_sequences(
    site: Path, pg_url: str
) -> None:
    events, jobs, items = (lite_rows(site, t) for t in ("events", "jobs", "items"))
    assert {"done", "unknown", "pending"} <= {e["status"] for e in events}
    assert "running" in {j["status"] for j in jobs}
    assert len(items) == 12

    # the default target is DIMMY_DATABASE_URL
    result = export(site, DIMMY_DATABASE_URL=pg_url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"exported {len(events)} events, {len(jobs)} jobs, 12 items" in out, out
    assert "1 running in the SQLite file are pending now" in out, out
    assert f"next ids: events {events[-1]['id'] + 1}, jobs {jobs[-1]['id'] + 1}" in out, out

    assert pg_rows(pg_url, "events") == events  # bodies byte for byte, ids, times, statuses
    assert pg_rows(pg_url, "items") == items
    assert pg_rows(pg_url, "jobs") == released(jobs)
    odd = next(e for e in pg_rows(pg_url, "events") if e["message_id"] == "msg_odd")
    assert odd["body"] == ODD_BODY

    asyncio.run(_use_the_copy(pg_url, events, jobs, items))

    # a second export would mix two histories: refused, nothing changed
    again = export(site, "--to", pg_url)
    assert again.returncode == 2
    assert again.stderr.startswith("error: the target already holds"), again.stderr
    assert "Traceback" not in again.stderr
    assert len(pg_rows(pg_url, "items")) == 12


async def _use_the_copy(
    url: str,
    events: list[dict[str, Any]],
    jobs: list[dict[str, Any]],
    items: list[dict[str, Any]],
) -> None:
    from dimmy_webhooks.models import InsertOutcome
    from dimmy_webhooks.store.postgres import PostgresStore

    store = PostgresStore(url, max_attempts=5, pool_size=2)
    await store.open()
    try:
        for event in events:
            assert await store.get_event_body(event["id"]) == bytes(event["body"])
            record = await store.get_event(event["id"])
            assert record is not None
            assert record.message_id == event["message_id"]
        for item in items:
            stored = await store.get_item(item["id"])
            assert stored is not None
            assert stored.raw == item["raw"]
            assert stored.version == item["version"]
        # a message already in the inbox is still a duplicate
        assert await store.insert_event(scanned_event("msg_done_0", [])) is InsertOutcome.DUPLICATE
        # new rows take ids after the copied ones (an event and its job)
        assert await store.insert_event(scanned_event("msg_new", [items[0]["id"]])) is (
            InsertOutcome.ACCEPTED
        )
        new = pg_rows(url, "events")[-1]
        assert new["message_id"] == "msg_new"
        # (> not ==: the duplicate above took a number from the sequence, as ON CONFLICT does)
        assert new["id"] > events[-1]["id"]
        assert pg_rows(url, "jobs")[-1]["id"] > jobs[-1]["id"]
        # the job whose worker is gone is claimable at once, with the other due work
        claimed = await store.claim("worker-new", 100, 30, time.time())
        was_running = [j["id"] for j in jobs if j["status"] == "running"]
        assert set(was_running) <= {job.id for job in claimed}
    finally:
        await store.close()


def test_an_empty_target_is_migrated_first(site: Path, pg_empty_url: str) -> None:
    result = export(site, "--to", pg_empty_url, "--batch", "2")
    assert result.returncode == 0, result.stderr
    assert "migrated" in result.stdout
    assert "jobs: 20 rows so far" in result.stdout  # progress every 10 batches
    assert schema.status(pg_empty_url).up_to_date
    assert pg_rows(pg_empty_url, "events") == lite_rows(site, "events")
    assert pg_rows(pg_empty_url, "items") == lite_rows(site, "items")


def test_unusable_sources_and_targets_are_one_line_errors(
    tmp_path: Path, site: Path, pg_url: str
) -> None:
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("hello")
    result = export(not_sqlite, "--to", pg_url)
    assert (result.returncode, result.stderr) == (
        2,
        f"error: {not_sqlite}: not a SQLite database\n",
    )

    foreign = tmp_path / "other.sqlite3"
    with contextlib.closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE t (x)")
    result = export(foreign, "--to", pg_url)
    assert result.returncode == 2
    assert "not a dimmy-webhooks database" in result.stderr

    result = export(site, "--to", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    assert result.returncode == 2
    assert "must be a postgresql:// URL" in result.stderr

    unreachable = "postgresql://dimmy:s3cret-pw@127.0.0.1:1/nowhere"
    result = export(site, "--to", unreachable)
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot connect to PostgreSQL at 127.0.0.1:1/nowhere")
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
