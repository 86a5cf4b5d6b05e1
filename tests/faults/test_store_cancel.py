"""S9: a caller that stops waiting for its write never breaks the store for everyone else.

The SQLite writer thread used to die for good when a task waiting on its write was cancelled
(``set_result`` on a cancelled future raised in the writer): every later webhook then hung while
``/readyz`` said ready. Now a write cancelled while queued is skipped, one already running
finishes and is discarded, the next writes succeed, and a stopped writer makes ``/readyz``
answer 503.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.models import IncomingEvent, InsertOutcome
from dimmy_webhooks.web import create_app

from ..support.builders import make_settings, scanned_event
from ..support.databases import query

pytestmark = pytest.mark.faults


def event(n: int) -> IncomingEvent:
    return scanned_event(f"msg_cancel_{n}", [f"{n:024x}"], headers={})


def _lane(store: Any) -> Any:
    """The group commit every webhook insert of this backend goes through."""
    return store._writer.commits if hasattr(store, "_writer") else store._inbox


async def test_writes_cancelled_while_queued_or_running_leave_the_store_working(store: Any) -> None:
    lane = _lane(store)
    for round_ in range(5):
        # hold the lane busy so the inserts below queue behind it, then cancel some of them
        # while queued and others while their batch runs
        blockers = [asyncio.wrap_future(lane.submit(_sleeper(store, 0.2))) for _ in range(2)]
        tasks = [
            asyncio.create_task(store.insert_event(event(round_ * 100 + n))) for n in range(40)
        ]
        await asyncio.sleep(0.05)
        for task in tasks[::2]:
            task.cancel()
        await asyncio.sleep(0.2)
        for task in tasks[1::4]:
            task.cancel()
        await asyncio.gather(*blockers, return_exceptions=True)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(o, InsertOutcome | asyncio.CancelledError) for o in outcomes), (
            outcomes
        )
        # the next writes succeed at once, and nothing reports a stopped part
        async with asyncio.timeout(10):
            assert await store.insert_event(event(round_ * 100 + 99)) in (
                InsertOutcome.ACCEPTED,
                InsertOutcome.DUPLICATE,
            )
            await store.claim("w", 5, 30, time.time())
        assert store.failures() == []
        assert lane.alive


def _sleeper(store: Any, seconds: float) -> Any:
    """An operation that holds a lane's thread, in the shape that lane takes (SQLite: with its
    savepoint flag; PostgreSQL's webhook lane: answering (outcome, queued work?))."""

    def op(tx: Any) -> tuple[None, bool]:
        time.sleep(seconds)
        return None, False

    return (op, True) if hasattr(store, "_writer") else op


def test_readyz_reports_a_stopped_writer(sqlite_url: str) -> None:
    app = create_app(make_settings(sqlite_url), run_worker=False)
    with serve_in_thread(app) as url:
        assert httpx.get(url + "/readyz").json()["status"] == "ready"
        app.state.services.store._writer.commits.stop()  # as if the thread had died
        answer = httpx.get(url + "/readyz")
        assert answer.status_code == 503
        assert answer.json()["status"] == "unavailable"
        assert "sqlite writer thread stopped" in answer.json()["problems"][0]
    assert query(sqlite_url, "SELECT count(*) AS n FROM events")[0]["n"] == 0
