"""The API's exports: items and the delivery ledger as CSV and JSON Lines, streamed.

``/api/items.csv`` and ``/api/items.jsonl`` take the items page's filters, ``/api/deliveries.csv``
and ``/api/deliveries.jsonl`` the ledger's. Each is read from the store a page at a time and
sent as it is read: memory stays flat however many rows a range holds.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

from fastapi.responses import StreamingResponse

from dimmy_webhooks.items import api_fields, to_api_json_line
from dimmy_webhooks.models import DeliveryAttempt, StoredItem
from dimmy_webhooks.store import ItemFilter, Store
from dimmy_webhooks.web.api.common import (
    BAD_STATUS,
    AttemptOut,
    ItemWhere,
    LedgerFilter,
    LedgerWhere,
    api_router,
    attempt_dict,
    csv_cell,
)
from dimmy_webhooks.web.deps import AccountDep, StoreDep

router = api_router()
PAGE = 500  # rows per store read of an export


def _doc(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {media_type: {}}, "description": description}}


def _download(
    rows: AsyncIterator[bytes] | AsyncIterator[str], name: str, media_type: str
) -> StreamingResponse:
    headers = {"content-disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(rows, media_type=media_type, headers=headers)


def csv_row(values: Sequence[object]) -> bytes:
    """One CSV line of ``values``, every cell neutralised (:func:`csv_cell`): a list is joined
    with spaces first, so its first value cannot start a formula either (S15)."""
    cells = [csv_cell(" ".join(map(str, v)) if isinstance(v, list | tuple) else v) for v in values]
    buffer = io.StringIO()
    csv.writer(buffer).writerow(cells)
    return buffer.getvalue().encode()


# the delivery ledger --------------------------------------------------------------------------

_CSV_COLUMNS = list(AttemptOut.model_fields)


async def _ledger(
    store: Store, where: LedgerFilter, account: str | None
) -> AsyncIterator[list[DeliveryAttempt]]:
    """The ledger's rows ``where`` selects (of ``account``: ``None``, every one), newest
    first, a page at a time."""
    before = None
    while not where.matches_none:
        page = await store.attempts(before=before, limit=PAGE, account=account, **where.params())
        yield page
        if len(page) < PAGE:
            return
        before = page[-1].id


@router.get(
    "/deliveries.csv",
    response_class=StreamingResponse,
    responses={**_doc("text/csv", "the ledger as CSV"), **BAD_STATUS},
)
async def export_deliveries(
    store: StoreDep, where: LedgerWhere, account: AccountDep
) -> StreamingResponse:
    """The ledger for a time range as CSV (one row per attempt, oldest last), streamed page by
    page: memory stays flat however long the range."""

    async def rows() -> AsyncIterator[bytes]:
        yield csv_row(_CSV_COLUMNS)
        async for page in _ledger(store, where, account):
            entries = (attempt_dict(attempt) for attempt in page)
            yield b"".join(csv_row([e[name] for name in _CSV_COLUMNS]) for e in entries)

    return _download(rows(), "deliveries.csv", "text/csv; charset=utf-8")


@router.get(
    "/deliveries.jsonl",
    response_class=StreamingResponse,
    responses={**_doc("application/x-ndjson", "one item per line"), **BAD_STATUS},
)
async def export_deliveries_jsonl(
    store: StoreDep, where: LedgerWhere, account: AccountDep
) -> StreamingResponse:
    """The ledger for a time range as JSON Lines (one attempt per line, newest first, as
    ``/api/deliveries`` lists them), streamed page by page."""

    async def lines() -> AsyncIterator[bytes]:
        async for page in _ledger(store, where, account):
            yield b"".join(
                json.dumps(attempt_dict(a), ensure_ascii=False).encode() + b"\n" for a in page
            )

    return _download(lines(), "deliveries.jsonl", "application/x-ndjson")


# items ----------------------------------------------------------------------------------------

_ITEM_COLUMNS = [
    "id", "barcode", "barcodes", "width", "height", "depth", "dimension_unit", "volume",
    "volume_unit", "weight", "weight_unit", "dim_weight", "billable_weight",
    "scanner_account_id", "owner_id", "flow_id", "created_at", "updated_at", "started_at",
    "ended_at", "fetched_at", "version", "revision", "hold_state", "photo_urls",
    "account",  # last: a script reading the columns by position keeps working
]  # fmt: skip


def _item_csv(item: StoredItem) -> bytes:
    fields = api_fields(item)
    fields["hold_state"] = item.hold_state
    return csv_row([fields[name] for name in _ITEM_COLUMNS])


def _jsonl(item: StoredItem) -> bytes:
    return to_api_json_line(item) + b"\n"


async def _items(
    store: Store,
    where: ItemFilter,
    account: str | None,
    line: Callable[[StoredItem], bytes],
    head: bytes,
) -> AsyncIterator[bytes]:
    yield head
    after = None
    where = replace(where, account=account)
    while True:
        page = await store.export_items(where, limit=PAGE, after=after)
        yield b"".join(line(item) for item in page)
        if len(page) < PAGE:
            return
        after = page[-1].id


@router.get(
    "/items.csv", response_class=StreamingResponse, responses=_doc("text/csv", "one row per item")
)
async def export_items_csv(
    store: StoreDep, where: ItemWhere, account: AccountDep
) -> StreamingResponse:
    """The items of a range (``fetched_at`` in ``[since, until)``, the items page's filters) as
    CSV in id order, without ``raw``; lists are space separated; a cell a spreadsheet would run
    as a formula starts with ``'``. Streamed page by page."""
    rows = _items(store, where, account, _item_csv, csv_row(_ITEM_COLUMNS))
    return _download(rows, "items.csv", "text/csv; charset=utf-8")


@router.get(
    "/items.jsonl",
    response_class=StreamingResponse,
    responses=_doc("application/x-ndjson", "one item per line"),
)
async def export_items_jsonl(
    store: StoreDep, where: ItemWhere, account: AccountDep
) -> StreamingResponse:
    """The items of a range as JSON Lines in id order: each line what ``GET
    /api/items/{id}`` returns (``raw`` included, exactly as fetched). Streamed page by page."""
    lines = _items(store, where, account, _jsonl, b"")
    return _download(lines, "items.jsonl", "application/x-ndjson")
