"""S16 (the Dimmy API half): every answer read from the API is capped per answer, not only by
time. An item larger than ``DIMMY_MAX_ITEM_BYTES`` (``GET /items/{id}``, or one item of a
``GET /items`` page) is never stored: its fetch is dead with the reason, a polled one is refused
and counted; a page larger than ``DIMMY_MAX_PAGE_BYTES`` fails the poll pass with the reason.
Reading stops at the cap (the client-level tests in ``tests/unit/test_client.py`` count the
bytes read), so a huge answer never sits in memory.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.web import create_app

from ..support.builders import make_settings
from ..support.constants import API_KEY, AUTH, CLI, SECRET
from ..support.databases import query
from ..support.processes import run, wait_until
from ..support.senders import post_signed

pytestmark = pytest.mark.faults

ITEM_CAP = 64 * 1024
HUGE = "x" * (4 * ITEM_CAP)  # a field that takes an item far over the cap


def test_an_item_over_the_cap_is_dead_with_the_reason(
    db_url: str, fake: FakeDimmy, fake_url: str
) -> None:
    ids = fake.generate_items(3)
    fake.update_item(ids[1], blob=HUGE)
    settings = make_settings(
        db_url, api_key=API_KEY, api_url=fake_url, max_item_bytes=ITEM_CAP, max_attempts=3
    )
    with serve_in_thread(create_app(settings)) as url:
        post_signed(url, "m-huge", ids, expect=204)

        def settled() -> bool:
            jobs = query(db_url, "SELECT status FROM jobs WHERE kind = 'fetch'")
            return len(jobs) == 3 and all(j["status"] in ("done", "dead") for j in jobs)

        assert wait_until(settled, 30, 0.1), query(db_url, "SELECT * FROM jobs")
        stored = httpx.get(url + "/api/items", headers=AUTH).json()["items"]
    assert sorted(item["id"] for item in stored) == sorted([ids[0], ids[2]])
    [dead] = query(db_url, "SELECT item_id, attempts, last_error FROM jobs WHERE status = 'dead'")
    assert dead["item_id"] == ids[1]
    assert dead["attempts"] == 1  # not retried: the same answer would come again
    assert f"larger than {ITEM_CAP} bytes" in dead["last_error"]
    assert "DIMMY_MAX_ITEM_BYTES" in dead["last_error"]
    assert query(db_url, "SELECT count(*) AS n FROM items")[0]["n"] == 2


def _poll_env(db_url: str, fake_url: str, tmp_path: Path, **caps: int) -> dict[str, str]:
    return {
        "DIMMY_DATABASE_URL": db_url,
        "DIMMY_API_KEY": API_KEY,
        "DIMMY_API_URL": fake_url,
        "DIMMY_WEBHOOK_SECRET": SECRET,
        "DIMMY_OUTPUTS": f"jsonl:{tmp_path / 'out.jsonl'}",
        "DIMMY_RECONCILE_GRACE_SECONDS": "0",
        **{f"DIMMY_{name.upper()}": str(value) for name, value in caps.items()},
    }


def _scanned_recently(fake: FakeDimmy, n: int) -> list[str]:
    return fake.generate_items(n, start=datetime.now(UTC) - timedelta(seconds=90 * n + 60))


def test_a_polled_item_over_the_cap_is_refused_and_counted(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    ids = _scanned_recently(fake, 5)
    fake.update_item(ids[2], blob=HUGE)
    env = _poll_env(db_url, fake_url, tmp_path, max_item_bytes=ITEM_CAP)
    proc = run([CLI, "poll", "--once"], tmp_path, **env)
    assert proc.returncode == 0, proc.stderr
    assert "stored 4" in proc.stdout
    assert "1 refused" in proc.stdout
    assert "polled item refused" in proc.stderr
    assert "DIMMY_MAX_ITEM_BYTES" in proc.stderr
    assert "Traceback" not in proc.stderr
    stored = {row["id"] for row in query(db_url, "SELECT id FROM items")}
    assert stored == set(ids) - {ids[2]}


def test_a_page_over_the_cap_fails_the_pass_with_the_reason(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    ids = _scanned_recently(fake, 5)
    fake.update_item(ids[2], blob=HUGE)
    env = _poll_env(
        db_url, fake_url, tmp_path, max_item_bytes=ITEM_CAP, max_page_bytes=2 * ITEM_CAP
    )
    proc = run([CLI, "poll", "--once"], tmp_path, **env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"GET /items: answer larger than {2 * ITEM_CAP} bytes" in proc.stderr
    assert "DIMMY_MAX_PAGE_BYTES" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert query(db_url, "SELECT count(*) AS n FROM items")[0]["n"] == 0


def test_the_page_cap_is_at_least_the_item_cap(tmp_path: Path) -> None:
    proc = run(
        [CLI, "config"],
        tmp_path,
        DIMMY_MAX_ITEM_BYTES=str(ITEM_CAP),
        DIMMY_MAX_PAGE_BYTES=str(ITEM_CAP - 1),
    )
    assert proc.returncode == 2
    assert "DIMMY_MAX_PAGE_BYTES" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.dumps(ITEM_CAP) in proc.stderr
