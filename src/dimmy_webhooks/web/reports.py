"""The JSON API's operator additions: the twins of the dashboard's pages, and exports.

Under ``/api`` with the same access rules as :mod:`.api` (the admin token, or a dashboard
session). Each dashboard page has its JSON twin here or in :mod:`.api`: ``/api/overview``
(the overview's counts), ``/api/events.json`` and ``/api/items.json`` (the lists with the
pages' filters), ``/api/events/{id}/work`` and ``/body``, ``/api/items/{id}/versions`` and
``/deliveries``. Exports (``/api/items.csv``, ``/api/items.jsonl``, ``/api/deliveries.jsonl``)
are streamed a page at a time: memory stays flat however many rows a range holds.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from dimmy_webhooks.items import api_fields, to_api_json
from dimmy_webhooks.models import StoredItem
from dimmy_webhooks.services import Services
from dimmy_webhooks.store.ops import ItemFilter
from dimmy_webhooks.web.api import (
    _NOT_FOUND,
    _ROW_ID,
    AttemptOut,
    AttemptPage,
    EventId,
    ItemId,
    ItemOut,
    _attempt_dict,
    _csv_cell,
    _event_dict,
    _iso,
    _Outcome,
    _Output,
    _Since,
    _timestamp,
    api_router,
)

router = api_router()
PAGE = 500  # rows per store read of an export


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


# the overview ---------------------------------------------------------------------------------


class OverviewOut(BaseModel):
    """The dashboard's overview: today, what is open, the queue, the destinations, problems."""

    at: str
    day_start: str = Field(description="midnight, the server's local time: 'today' starts here")
    today: dict[str, Any] = Field(description="events (by status) and items stored today")
    events: dict[str, int] = Field(description="events pending, processing and dead")
    items: int
    quarantine: int
    jobs: dict[str, dict[str, int]] = Field(description="jobs by kind and status")
    oldest_due_age_seconds: dict[str, float] = Field(description="per kind; 0: none due")
    destinations: list[dict[str, Any]] = Field(description="per output: backlog, failures")
    reconciliation_gap: int = Field(description="items only the poller found")
    problems: list[str]
    failures: list[str]
    api_key_refused: bool
    webhooks: dict[str, int] = Field(description="answered by this process, by outcome")
    signature_failures_last_5_minutes: int
    recent_rejections: list[dict[str, Any]]


@router.get("/overview", response_model=OverviewOut)
async def get_overview(request: Request) -> dict[str, Any]:
    """The counts of the dashboard's first page (cheap: every figure is one indexed query or
    held by this process)."""
    services = _services(request)
    overview = await services.overview()
    return overview.as_json()


# events ---------------------------------------------------------------------------------------


class EventOut(BaseModel):
    id: int
    message_id: str
    event_type: str
    status: str
    received_at: str
    item_count: int | None
    last_error: str | None
    jobs: dict[str, int]


class EventPage(BaseModel):
    events: list[EventOut]
    next: int | None = Field(description="pass back as `before` for the next page")


_Status = Annotated[str | None, Query(pattern="^(pending|processing|done|dead|unknown)$")]
_Type = Annotated[
    str | None, Query(pattern=r"^(items\.scanned|item\.scanned\.full_payload|unknown)$")
]


@router.get("/events.json", response_model=EventPage)
async def browse_events(
    request: Request,
    status: _Status = None,
    type: _Type = None,
    since: _Since = None,
    until: _Since = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(ge=1, le=_ROW_ID)] = None,
) -> dict[str, Any]:
    """The events page: events newest first, by status, type and time received
    (``[since, until)``)."""
    events = await _services(request).store.browse_events(
        status=status,
        event_type=type,
        since=_timestamp(since),
        until=_timestamp(until, "until"),
        before=before,
        limit=limit,
    )
    return {
        "events": [_event_dict(event) for event in events],
        "next": events[-1].id if len(events) == limit else None,
    }


class JobOut(BaseModel):
    id: int
    kind: str
    item_id: str | None
    output: str | None
    status: str
    attempts: int
    max_attempts: int
    run_at: str
    last_error: str | None
    updated_at: str


class EventWorkOut(BaseModel):
    """An event's page: the event, the headers kept, its jobs and their delivery attempts."""

    event: EventOut
    headers: dict[str, str] = Field(description="the signature headers, content type, agent")
    sender_deliveries: int = Field(description="times the sender delivered this message id")
    jobs: list[JobOut]
    deliveries: list[AttemptOut] = Field(description="newest first")


@router.get("/events/{event_id}/work", response_model=EventWorkOut, responses=_NOT_FOUND)
async def event_work(event_id: EventId, request: Request) -> dict[str, Any]:
    """What an event's page shows: headers, every job with its last error, the ledger."""
    store = _services(request).store
    event = await store.get_event(event_id)
    if event is None:
        raise HTTPException(status_code=404, detail="event not found")
    work = await store.event_work(event_id)
    jobs = [
        {**dataclasses.asdict(job), "run_at": _iso(job.run_at), "updated_at": _iso(job.updated_at)}
        for job in work.jobs
    ]
    return {
        "event": _event_dict(event),
        "headers": work.headers,
        "sender_deliveries": work.deliveries,
        "jobs": jobs,
        "deliveries": [_attempt_dict(a) for a in work.attempts],
    }


@router.get(
    "/events/{event_id}/body",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}, "description": "the body"}, **_NOT_FOUND},
)
async def event_body(event_id: EventId, request: Request) -> Response:
    """The event's body exactly as received (verified JSON)."""
    try:
        body = await _services(request).store.get_event_body(event_id)
    except LookupError:
        raise HTTPException(status_code=404, detail="event not found") from None
    return Response(body, media_type="application/json")


# items ----------------------------------------------------------------------------------------

_Text = Annotated[str | None, Query(max_length=200)]
_Dims = Annotated[
    bool | None, Query(description="true: measured items only; false: items without dimensions")
]


def _filter(
    q: str | None,
    since: str | None,
    until: str | None,
    scanner: str | None,
    has_dimensions: bool | None,
) -> ItemFilter:
    return ItemFilter(
        since=_timestamp(since),
        until=_timestamp(until, "until"),
        scanner=scanner or None,
        has_dimensions=has_dimensions,
        q=q or None,
    )


class ItemBrowsePage(BaseModel):
    items: list[ItemOut]
    next: str | None = Field(description="pass back as `before` for the next page")


@router.get("/items.json", response_model=None, responses={200: {"model": ItemBrowsePage}})
async def browse_items(
    request: Request,
    q: Annotated[str | None, Query(max_length=200, description="an item id or a barcode")] = None,
    since: _Since = None,
    until: _Since = None,
    scanner: _Text = None,
    has_dimensions: _Dims = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=r"^-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,2})?:[A-Za-z0-9_-]{1,128}$",
            description="cursor",
        ),
    ] = None,
) -> Response:
    """The items page: items most recently stored first (``fetched_at`` in ``[since,
    until)``), found by id or barcode (``q``), scanner account, with or without dimensions."""
    cursor = None
    if before is not None:
        at, _, item_id = before.partition(":")
        try:
            cursor = (float(at), item_id)
        except ValueError:
            error = {
                "loc": ("query", "before"),
                "msg": "not a cursor: pass back the `next` of the previous page",
                "type": "value_error",
                "input": before,
            }
            raise RequestValidationError([error]) from None
    where = _filter(q, since, until, scanner, has_dimensions)
    items = await _services(request).store.browse_items(where, limit=limit, before=cursor)
    last = items[-1] if len(items) == limit else None
    following = json.dumps(f"{last.fetched_at!r}:{last.id}" if last is not None else None)
    listed = b",".join(to_api_json(item) for item in items)
    return Response(
        b'{"items":[' + listed + b'],"next":' + following.encode() + b"}",
        media_type="application/json",
    )


_ITEM_COLUMNS = [
    "id", "barcode", "barcodes", "width", "height", "depth", "dimension_unit", "volume",
    "volume_unit", "weight", "weight_unit", "dim_weight", "billable_weight",
    "scanner_account_id", "owner_id", "flow_id", "created_at", "updated_at", "started_at",
    "ended_at", "fetched_at", "version", "revision", "hold_state", "photo_urls",
]  # fmt: skip


def _item_csv(item: StoredItem) -> list[object]:
    fields = api_fields(item)
    fields["hold_state"] = item.hold_state
    row = []
    for name in _ITEM_COLUMNS:
        value = fields[name]
        row.append(" ".join(value) if isinstance(value, list) else _csv_cell(value))
    return row


async def _export_items(
    request: Request, where: ItemFilter, line: Callable[[StoredItem], bytes], head: bytes
) -> AsyncIterator[bytes]:
    store = _services(request).store
    yield head
    after = None
    while True:
        page = await store.export_items(where, limit=PAGE, after=after)
        yield b"".join(line(item) for item in page)
        if len(page) < PAGE:
            return
        after = page[-1].id


def _csv_line(row: list[object]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(row)
    return buffer.getvalue().encode()


def _jsonl(item: StoredItem) -> bytes:
    # the raw document is kept as fetched, possibly indented: a newline can only be
    # whitespace between JSON tokens there (inside a string it is escaped), so a space keeps
    # the line one line
    return to_api_json(item).replace(b"\n", b" ").replace(b"\r", b" ") + b"\n"


_EXPORT_DOC: dict[str, dict[int | str, dict[str, Any]]] = {
    "csv": {200: {"content": {"text/csv": {}}, "description": "one row per item"}},
    "jsonl": {200: {"content": {"application/x-ndjson": {}}, "description": "one item per line"}},
}


@router.get("/items.csv", response_class=StreamingResponse, responses=_EXPORT_DOC["csv"])
async def export_items_csv(
    request: Request,
    q: _Text = None,
    since: _Since = None,
    until: _Since = None,
    scanner: _Text = None,
    has_dimensions: _Dims = None,
) -> StreamingResponse:
    """The items of a range (``fetched_at`` in ``[since, until)``, the items page's filters) as
    CSV in id order, without ``raw``; lists are space separated. Streamed page by page."""
    where = _filter(q, since, until, scanner, has_dimensions)
    rows = _export_items(
        request, where, lambda item: _csv_line(_item_csv(item)), _csv_line(list(_ITEM_COLUMNS))
    )
    headers = {"content-disposition": 'attachment; filename="items.csv"'}
    return StreamingResponse(rows, media_type="text/csv; charset=utf-8", headers=headers)


@router.get("/items.jsonl", response_class=StreamingResponse, responses=_EXPORT_DOC["jsonl"])
async def export_items_jsonl(
    request: Request,
    q: _Text = None,
    since: _Since = None,
    until: _Since = None,
    scanner: _Text = None,
    has_dimensions: _Dims = None,
) -> StreamingResponse:
    """The items of a range as JSON Lines in id order: each line what ``GET
    /api/items/{id}`` returns (``raw`` included, exactly as fetched). Streamed page by page."""
    where = _filter(q, since, until, scanner, has_dimensions)
    rows = _export_items(request, where, _jsonl, b"")
    headers = {"content-disposition": 'attachment; filename="items.jsonl"'}
    return StreamingResponse(rows, media_type="application/x-ndjson", headers=headers)


class RevisionOut(BaseModel):
    revision: int
    version: str
    first_queued: str = Field(description="when its deliveries were first queued")
    deliveries: int = Field(description="deliveries queued for it (one per output)")


class VersionsOut(BaseModel):
    """An item's versions: the stored one, and every revision handed to the outputs."""

    item_id: str
    current: dict[str, Any] = Field(description="revision, version, fetched_at, hold")
    revisions: list[RevisionOut] = Field(description="newest first")
    event_ids: list[int] = Field(description="inbox events that named the item, newest first")


@router.get("/items/{item_id}/versions", response_model=VersionsOut, responses=_NOT_FOUND)
async def item_versions(item_id: ItemId, request: Request) -> dict[str, Any]:
    """The item's revisions (the stored document is the newest; earlier ones are known by
    the deliveries queued for them) and the events that named it."""
    store = _services(request).store
    item = await store.get_item(item_id)
    if item is None:
        raise HTTPException(status_code=404, detail="item not found")
    revisions, event_ids = await store.item_history(item_id)
    return {
        "item_id": item_id,
        "current": {
            "revision": item.revision,
            "version": item.version,
            "fetched_at": _iso(item.fetched_at),
            "hold": item.hold_state,
        },
        "revisions": [
            {
                "revision": r.revision,
                "version": r.version,
                "first_queued": _iso(r.first_queued),
                "deliveries": r.deliveries,
            }
            for r in revisions
        ],
        "event_ids": event_ids,
    }


@router.get("/items/{item_id}/deliveries", response_model=AttemptPage, responses=_NOT_FOUND)
async def item_deliveries(
    item_id: ItemId,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[int | None, Query(ge=1, le=_ROW_ID)] = None,
) -> dict[str, Any]:
    """The item's delivery ledger, newest first (the same rows as
    ``/api/deliveries?item=ID``)."""
    store = _services(request).store
    if await store.get_item(item_id) is None:
        raise HTTPException(status_code=404, detail="item not found")
    rows = await store.attempts(item_id=item_id, before=before, limit=limit)
    return {
        "deliveries": [_attempt_dict(row) for row in rows],
        "next": rows[-1].id if len(rows) == limit else None,
    }


@router.get("/deliveries.jsonl", response_class=StreamingResponse, responses=_EXPORT_DOC["jsonl"])
async def export_deliveries_jsonl(
    request: Request,
    output: _Output = None,
    outcome: _Outcome = None,
    since: _Since = None,
    until: _Since = None,
) -> StreamingResponse:
    """The ledger for a time range as JSON Lines (one attempt per line, newest first, as
    ``/api/deliveries`` lists them), streamed page by page."""
    store = _services(request).store
    low, high = _timestamp(since), _timestamp(until, "until")

    async def lines() -> AsyncIterator[bytes]:
        before = None
        while True:
            page = await store.attempts(
                output=output, outcome=outcome, since=low, until=high, before=before, limit=PAGE
            )
            yield b"".join(
                json.dumps(_attempt_dict(a), ensure_ascii=False).encode() + b"\n" for a in page
            )
            if len(page) < PAGE:
                return
            before = page[-1].id

    headers = {"content-disposition": 'attachment; filename="deliveries.jsonl"'}
    return StreamingResponse(lines(), media_type="application/x-ndjson", headers=headers)
