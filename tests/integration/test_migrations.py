"""Upgrading a database that holds data: what an earlier version stored keeps working."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from dimmy_webhooks.items import normalise, version_of
from dimmy_webhooks.store import schema

from ..support.databases import query

DOC = {"_id": "6592008029c8c3e4dc76256c", "updated_at": "2026-01-05T09:00:05Z", "b": [1, 2]}
RAW = '{"_id": "6592008029c8c3e4dc76256c",  "updated_at": "2026-01-05T09:00:05Z", "b": [1,2]}'
OLD_VERSION = "2026-01-05T09:00:05.000000Z#" + hashlib.sha256(RAW.encode()).hexdigest()[:16]


@pytest.fixture
def empty_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_empty_url")
        return url
    return f"sqlite:///{tmp_path / 'old.sqlite3'}"


def _at_0001_with_data(url: str) -> None:
    command.upgrade(schema._config(url), "0001")
    engine = create_engine(schema.sqlalchemy_url(url))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO items (id, raw, version, updated_at, barcodes, photo_urls, "
                "fetched_at, first_seen_at) VALUES (:id, :raw, :v, :u, '[]', '[]', 10, 10)"
            ),
            {"id": DOC["_id"], "raw": RAW, "v": OLD_VERSION, "u": "2026-01-05T09:00:05.000000Z"},
        )
        for status, output in (("pending", "jsonl:/a"), ("done", "jsonl:/b")):
            conn.execute(
                text(
                    "INSERT INTO jobs (kind, item_id, output, version, dedupe_key, status, "
                    "attempts, max_attempts, run_at, created_at, updated_at) VALUES ('deliver', "
                    ":id, :o, :v, :k, :s, 0, 8, 10, 10, 10)"
                ),
                {
                    "id": DOC["_id"],
                    "o": output,
                    "v": OLD_VERSION,
                    "k": f"d:{output}:{DOC['_id']}:{OLD_VERSION}",
                    "s": status,
                },
            )
    engine.dispose()


@pytest.mark.parametrize(
    "empty_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_0002_keeps_items_and_pending_deliveries_consistent(empty_url: str) -> None:
    _at_0001_with_data(empty_url)
    state = schema.upgrade(empty_url)
    assert state.up_to_date
    [item] = query(
        empty_url, "SELECT version, revision, first_source, webhook_seen_at, raw FROM items"
    )
    canonical = version_of(json.loads(RAW), normalise(DOC))
    assert item["version"] == canonical != OLD_VERSION
    assert item["raw"] == RAW  # the stored text is untouched
    assert (item["revision"], item["first_source"], item["webhook_seen_at"]) == (1, "webhook", 10)
    jobs = {
        row["status"]: row["version"]
        for row in query(empty_url, "SELECT status, version FROM jobs")
    }
    # the pending delivery follows its item (else the worker would call it superseded)
    assert jobs == {"pending": canonical, "done": OLD_VERSION}
