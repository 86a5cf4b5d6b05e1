"""Exports stream: 100,000 items leave a ``serve`` process as JSON Lines and CSV without its
memory growing with them (rows are read a page at a time, written, and dropped)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy, FakeDimmyConfig

from ..support.constants import ADMIN_TOKEN, AUTH, SECRET
from ..support.databases import migrated_sqlite_url
from ..support.processes import proc_status_kb

ITEMS = 100_000
GROWTH_LIMIT_KB = 48 * 1024  # the JSON Lines export alone is ~180 MB


def fill(db_path: Path, n: int) -> int:
    """``n`` realistic items straight into the table (fast: one transaction); returns the
    size of one raw document."""
    fake = FakeDimmy(FakeDimmyConfig(seed=3))
    [template_id] = fake.generate_items(1)
    template = fake.items[template_id]
    now = time.time()

    def rows() -> Any:
        for n_item in range(n):
            item_id = f"{n_item:024x}"
            raw = json.dumps({**template, "_id": item_id})
            at = now - n + n_item
            barcode = f"871{n_item:010d}"
            dims = (30.0, 20.0, 10.0, "cm")
            yield (item_id, raw, f"v#{n_item}", at, at, barcode, json.dumps([barcode]), *dims)

    conn = sqlite3.connect(db_path)
    with conn:
        conn.executemany(
            "INSERT INTO items (id, raw, version, fetched_at, first_seen_at, barcode, barcodes,"
            " width, height, depth, dimension_unit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows(),
        )
    conn.close()
    return len(json.dumps(template))


@pytest.mark.slow
def test_100000_items_export_in_constant_memory(tmp_path: Path, service_factory: Any) -> None:
    url = migrated_sqlite_url(tmp_path / "big.sqlite3")
    raw_size = fill(tmp_path / "big.sqlite3", ITEMS)
    service = service_factory(
        ["serve", "--no-worker"],
        DIMMY_DATABASE_URL=url,
        DIMMY_WEBHOOK_SECRET=SECRET,
        DIMMY_ADMIN_TOKEN=ADMIN_TOKEN,
        DIMMY_LOG_LEVEL="WARNING",
    ).start()
    assert service.proc is not None
    # warm up the routes (imports, first pages) before measuring
    small = httpx.get(
        service.url + "/api/items.jsonl", headers=AUTH, params={"until": "2000-01-01T00:00:00Z"}
    )
    assert small.status_code == 200
    before = proc_status_kb(service.proc.pid)
    figures = {}
    for kind in ("jsonl", "csv"):
        started = time.monotonic()
        lines = size = 0
        with httpx.stream(
            "GET", f"{service.url}/api/items.{kind}", headers=AUTH, timeout=120
        ) as answer:
            assert answer.status_code == 200
            assert "content-length" not in answer.headers  # streamed, not built first
            tail = b""
            for chunk in answer.iter_bytes():
                size += len(chunk)
                lines += chunk.count(b"\n")
                tail = (tail + chunk)[-4096:]
        figures[kind] = (time.monotonic() - started, size)
        assert lines == ITEMS + (1 if kind == "csv" else 0), kind
        assert f"{ITEMS - 1:024x}".encode() in tail  # the last item, in id order
    after = proc_status_kb(service.proc.pid)
    growth = after["VmHWM"] - max(before["VmHWM"], before["VmRSS"])
    print(
        f"\nexport of {ITEMS} items (raw ~{raw_size} B each): "
        f"RSS before {before['VmRSS'] / 1024:.1f} MB, peak after {after['VmHWM'] / 1024:.1f} MB "
        f"(growth {growth / 1024:.1f} MB); "
        + ", ".join(f"{k}: {t:.1f} s, {s / 1e6:.0f} MB" for k, (t, s) in figures.items())
    )
    assert growth < GROWTH_LIMIT_KB, (before, after)
    assert figures["jsonl"][1] > 3 * GROWTH_LIMIT_KB * 1024  # far more than the bound went out
    assert all(took < 120 for took, _ in figures.values()), figures
