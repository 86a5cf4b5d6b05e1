"""``dimmy-webhooks demo`` as a user runs it: a real subprocess, then its SQLite file."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from dimmy_webhooks.devtools.runner import free_port

from ..support.constants import CLI
from ..support.processes import run


def run_demo(tmp_path: Path, *args: str, timeout: float = 60, **env: str) -> tuple[int, str, str]:
    proc = run([CLI, "demo", *args], tmp_path, timeout=timeout, **env)
    return proc.returncode, proc.stdout, proc.stderr


def counts(db: Path, table: str) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(f"SELECT status, count(*) FROM {table} GROUP BY status").fetchall()
    return {str(status): int(n) for status, n in rows}


@pytest.mark.slow
def test_demo_runs_offline_and_leaves_everything_processed(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "demo.sqlite3"
    started = time.monotonic()
    code, out, err = run_demo(
        tmp_path,
        *("--duration", "12", "--port", str(port), "--database", str(db)),
        *("--speed", "600", "--big-batch", "120"),
    )
    took = time.monotonic() - started

    assert code == 0, out + err
    assert "Traceback" not in err
    url = f"http://127.0.0.1:{port}"
    assert out.splitlines()[0] == f"dashboard: {url}/"  # the dashboard's URL first
    for shown in (
        f"dashboard    {url}/",
        f"service      {url}\n",
        f"{url}/webhook",
        f"{url}/api/events",
        f"{url}/api/items/",
        f"{url}/openapi.json",
        f"{url}/readyz",
        "fake Dimmy   http://127.0.0.1:",
        "X-API-KEY: demo-",
        "an offline device is back: 120 items",
        "3 scans' webhooks were lost",
        "its event goes dead (404)",
        "is now readable: replay its dead event",
        "summary after",
    ):
        assert shown in out, out
    progress = [line for line in out.splitlines() if "| items stored" in line]
    assert len(progress) >= 3

    with contextlib.closing(sqlite3.connect(db)) as conn:
        items = conn.execute("SELECT count(*) FROM items").fetchone()[0]
    events, jobs = counts(db, "events"), counts(db, "jobs")
    assert items >= 120
    assert events.get("pending", 0) + events.get("processing", 0) == 0, events
    assert events.get("done", 0) >= 5
    assert events.get("dead") == 1  # the scan whose item could not be read yet, left to replay
    assert jobs.get("pending", 0) + jobs.get("running", 0) == 0, jobs
    with contextlib.closing(sqlite3.connect(db)) as conn:
        held = conn.execute("SELECT count(*) FROM items WHERE hold_state = 'held'").fetchone()[0]
    lines = (tmp_path / "dimmy-demo-items.jsonl").read_text().splitlines()
    assert len({json.loads(line)["item_id"] for line in lines}) == items - held
    # the scans whose webhooks were lost came through the poller, and are reported as such
    assert "reconciled  3 arrived only through the poller" in out, out[-1500:]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        polled = conn.execute("SELECT count(*) FROM items WHERE first_source = 'poll'").fetchone()
    assert polled[0] >= 3
    assert took < 25


def test_demo_says_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_demo(tmp_path, "--port", str(port), "--duration", "1")

    assert code == 2
    assert f"error: port {port} on 127.0.0.1 is in use" in err
    assert "--port" in err
    assert "Traceback" not in err
    assert not (tmp_path / "dimmy-demo.sqlite3").exists()


def test_demo_refuses_the_services_own_database(tmp_path: Path) -> None:
    real = tmp_path / "real.sqlite3"
    code, _, err = run_demo(
        tmp_path,
        *("--port", "0", "--database", str(real), "--duration", "1"),
        DIMMY_DATABASE_URL=f"sqlite:///{real}",
    )

    assert code == 2
    assert "the service's own database" in err
    assert not real.exists()
