"""The JSON API under ``/api`` (OpenAPI at ``/openapi.json``), protected by the admin token.

``GET /api/items/{id}`` returns the stored item with ``raw`` exactly as fetched; lists are
paginated with a cursor (``after`` / ``before``) so pages stay stable while data arrives.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, TypeAdapter
from pydantic import Field as PydanticField

from dimmy_webhooks.items import to_api_json
from dimmy_webhooks.models import ITEM_ID_PATTERN, DeliveryAttempt, EventRecord, StoredItem
from dimmy_webhooks.services import Services
from dimmy_webhooks.store import ReplayMode
from dimmy_webhooks.web.auth import TokenCheck, retry_after_header
from dimmy_webhooks.web.dashboard.sessions import api_session_admits

_bearer = HTTPBearer(auto_error=False)
log = logging.getLogger("dimmy_webhooks.web.api")


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """When ``DIMMY_ADMIN_TOKEN`` is set, demand ``Authorization: Bearer <token>`` (401) or a
    dashboard session (:mod:`.dashboard.sessions`), and answer 429 to a client that keeps
    giving wrong tokens (:mod:`.access`)."""
    tokens: TokenCheck = request.app.state.tokens
    if not tokens.required:
        return
    # a dashboard session stands for the token (a POST also needs its CSRF header, else 403)
    if getattr(request.app.state, "sessions", None) is not None and api_session_admits(request):
        return
    client = request.client.host if request.client else "-"
    verdict = tokens.check(credentials.credentials if credentials is not None else "", client)
    if verdict.ok:
        return
    throttled = verdict.retry_after is not None
    reason = "too many wrong admin tokens" if throttled else "missing or wrong admin token"
    fields = {"reason": reason, "client": client, "path": request.url.path}
    log.warning("API request refused", extra={"fields": fields})
    if verdict.retry_after is not None:
        raise HTTPException(
            status_code=429,
            detail=f"{reason} from this address: retry later",
            headers={"Retry-After": retry_after_header(verdict.retry_after)},
        )
    raise HTTPException(status_code=401, detail=reason, headers={"WWW-Authenticate": "Bearer"})


_ROW_ID = 2**63 - 1  # the largest id a row can have (and SQLite can bind)
EventId = Annotated[int, Path(ge=1, le=_ROW_ID)]
ItemId = Annotated[
    str,
    Path(
        pattern=ITEM_ID_PATTERN,
        max_length=128,
        description="a Dimmy item id (`_id`): letters, digits, `_` and `-`",
    ),
]


class Problem(BaseModel):
    detail: str


def api_router() -> APIRouter:
    """A router under ``/api``, behind the admin token, with the answers every route shares
    (this module's routes and :mod:`.api_reports`')."""
    return APIRouter(
        prefix="/api",
        dependencies=[Depends(require_admin)],
        tags=["api"],
        responses={
            401: {"model": Problem, "description": "missing or wrong admin token"},
            429: {
                "model": Problem,
                "description": "too many wrong admin tokens from this address",
            },
            503: {"model": Problem, "description": "store unavailable, retry later"},
        },
    )


router = api_router()
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "not found"}}


_DATE_TIME = TypeAdapter(datetime)
_LOOKS_LIKE_DATE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")


_Since = Annotated[
    str | None,
    Query(
        max_length=64,
        description="ISO-8601 date-time (UTC when it has no offset)",
        json_schema_extra={"format": "date-time"},
    ),
]


def _timestamp(value: str | None, name: str = "since") -> float | None:
    """Unix seconds of an ISO-8601 date-time (UTC when no offset); 422 for anything else
    (bare numbers too, which pydantic would take for Unix seconds)."""
    if value is None:
        return None
    try:
        if not _LOOKS_LIKE_DATE.match(value):
            raise ValueError(value)
        moment = _DATE_TIME.validate_strings(value)
    except ValueError:
        error = {
            "loc": ("query", name),
            "msg": "use an ISO-8601 date-time, e.g. 2026-01-05T09:00:00Z",
            "type": "datetime_from_date_parsing",
            "input": value,
        }
        raise RequestValidationError([error]) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def _event_dict(event: EventRecord) -> dict[str, Any]:
    return {
        "id": event.id,
        "message_id": event.message_id,
        "event_type": event.event_type,
        "status": event.status,
        "received_at": _iso(event.received_at),
        "item_count": event.item_count,
        "last_error": event.last_error,
        "jobs": event.jobs,
    }


class AttemptOut(BaseModel):
    """One attempt to hand one item revision to one output."""

    id: int
    item_id: str
    revision: int | None
    version: str | None
    output: str
    idempotency_key: str = Field(description="`webhook-id` of an `http:` forward")
    attempt: int
    started_at: str
    outcome: str = Field(description="delivered, failed, dead, filtered or superseded")
    status_code: int | None
    latency_ms: float | None
    error: str | None
    response_excerpt: str | None = Field(description="the first 500 characters of the answer")
    record_id: str | None = Field(description="the record id the receiving system returned")


class ItemOut(BaseModel):
    """A stored item: its Dimmy ``_id``, the normalised fields, ``version``, ``fetched_at`` and
    ``raw``, the document exactly as fetched."""

    id: str
    created_at: str | None
    updated_at: str | None
    started_at: str | None
    ended_at: str | None
    owner_id: str | None
    scanner_account_id: str | None
    flow_id: str | None
    width: float | None
    height: float | None
    depth: float | None
    dimension_unit: str | None
    volume: float | None
    volume_unit: str | None
    weight: float | None
    weight_unit: str | None
    barcode: str | None
    barcodes: list[str]
    photo_urls: list[str]
    version: str
    revision: int = PydanticField(description="stored changes of this item so far (1: first)")
    dim_weight: float | None = PydanticField(
        description="volume / DIMMY_DIM_WEIGHT_DIVISOR, in the weight unit"
    )
    billable_weight: float | None = PydanticField(description="the larger of weight and dim_weight")
    fetched_at: str
    raw: dict[str, Any]


class HoldOut(BaseModel):
    state: str = Field(description="held, released or rejected")
    reason: str | None
    note: str | None


class ItemDetail(ItemOut):
    hold: HoldOut | None = Field(description="quarantine: null when never held")
    deliveries: list[AttemptOut] = Field(description="the delivery ledger, newest first")


class ItemPage(BaseModel):
    items: list[ItemOut]
    next: str | None = Field(description="pass back as `after` for the next page")


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


@router.get(
    "/items/{item_id}",
    response_model=None,
    responses={200: {"model": ItemDetail}, **_NOT_FOUND},
)
async def get_item(item_id: ItemId, request: Request) -> Response:
    """One stored item: ``raw`` exactly as fetched, normalised fields, ``fetched_at``, whether
    it is held in quarantine (``hold``), and its delivery ledger (``deliveries``, newest
    first)."""
    store = _services(request).store
    item = await store.get_item(item_id)
    if item is None:
        raise HTTPException(status_code=404, detail="item not found")
    ledger = await store.attempts(item_id=item_id, limit=100)
    extra = {"hold": _hold(item), "deliveries": [_attempt_dict(a) for a in ledger]}
    return _json(to_api_json(item, extra))


def _hold(item: StoredItem) -> dict[str, Any] | None:
    if item.hold_state is None:
        return None
    return {"state": item.hold_state, "reason": item.hold_reason, "note": item.hold_note}


@router.get("/items", response_model=None, responses={200: {"model": ItemPage}})
async def list_items(
    request: Request,
    since: Annotated[
        str | None,
        Query(
            max_length=64,
            description="ISO-8601 date-time: items fetched at or after it",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    barcode: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    after: Annotated[str | None, Query(max_length=64, description="cursor: last id seen")] = None,
) -> Response:
    """Stored items in id order; pass ``next`` back as ``after`` for the next page."""
    items = await _services(request).store.list_items(
        since=_timestamp(since), barcode=barcode, limit=limit, after=after
    )
    following = json.dumps(items[-1].id if len(items) == limit else None)
    listed = b",".join(to_api_json(item) for item in items)
    return _json(b'{"items":[' + listed + b'],"next":' + following.encode() + b"}")


@router.get("/events")
async def list_events(
    request: Request,
    status: Annotated[str | None, Query(pattern="^(pending|processing|done|dead|unknown)$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=_ROW_ID, description="cursor: last id seen")
    ] = None,
) -> dict[str, Any]:
    """Inbox events, newest first, optionally by status."""
    events = await _services(request).store.list_events(status=status, limit=limit, before=before)
    return {
        "events": [_event_dict(event) for event in events],
        "next": events[-1].id if len(events) == limit else None,
    }


@router.get("/events/{event_id}", responses=_NOT_FOUND)
async def get_event(event_id: EventId, request: Request) -> dict[str, Any]:
    """One event with its work counted by kind and status."""
    event = await _services(request).store.get_event(event_id)
    if event is None:
        raise HTTPException(status_code=404, detail="event not found")
    return _event_dict(event)


@router.post("/events/{event_id}/replay", responses=_NOT_FOUND)
async def replay_event(
    event_id: EventId, request: Request, mode: ReplayMode = ReplayMode.REFETCH
) -> dict[str, Any]:
    """Put an event's work back in the queue: ``refetch`` from Dimmy or ``redeliver``."""
    try:
        queued = await _services(request).replay_event(event_id, mode)
    except LookupError:
        raise HTTPException(status_code=404, detail="event not found") from None
    return {"event_id": event_id, "mode": mode.value, "queued": queued}


@router.post("/items/{item_id}/replay", responses=_NOT_FOUND)
async def replay_item(
    item_id: ItemId, request: Request, mode: ReplayMode = ReplayMode.REFETCH
) -> dict[str, Any]:
    """Fetch one item again, or deliver its stored version to the outputs again."""
    try:
        queued = await _services(request).replay_item(item_id, mode)
    except LookupError:
        raise HTTPException(status_code=404, detail="item not found") from None
    return {"item_id": item_id, "mode": mode.value, "queued": queued}


class ReconciliationDay(BaseModel):
    day: str = Field(description="creation day (UTC) of the items, `YYYY-MM-DD`")
    count: int
    item_ids: list[str] = Field(description="the first 100 of them")


class ReconciliationOut(BaseModel):
    mode: str = Field(description="`webhooks`, or `pull` when no webhook secret is configured")
    missed: int = Field(description="items that reached us only through polling")
    days: list[ReconciliationDay]
    last_pass: dict[str, Any] | None = Field(description="the poller's last pass in this process")


@router.get("/reconciliation", response_model=ReconciliationOut)
async def get_reconciliation(request: Request) -> dict[str, Any]:
    """Items that exist upstream but never arrived by webhook, per creation day, with their ids.

    Counts what the poller (``serve --poll``, ``poll --once``) and backfills found that no
    webhook named; an item is counted only ``DIMMY_RECONCILE_GRACE_SECONDS`` after it was found
    (its webhook may still be on its way). A growing count means webhooks are being lost.
    """
    services = _services(request)
    report = await services.reconciliation()
    last = services.poller.last_pass if services.poller is not None else None
    return {
        "mode": "pull" if report.pull_mode else "webhooks",
        "missed": report.missed,
        "days": report.days,
        "last_pass": last or None,
    }


# the delivery ledger and quarantine ----------------------------------------------------------


class AttemptPage(BaseModel):
    deliveries: list[AttemptOut]
    next: int | None = Field(description="pass back as `before` for the next page")


def _attempt_dict(attempt: DeliveryAttempt) -> dict[str, Any]:
    out = dataclasses.asdict(attempt)
    out.pop("job_id")
    out["started_at"] = _iso(attempt.started_at)
    return out


_Outcome = Annotated[str | None, Query(pattern="^(delivered|failed|dead|filtered|superseded)$")]
_Output = Annotated[str | None, Query(max_length=2000, description="an output's name")]


@router.get("/deliveries", response_model=AttemptPage)
async def list_deliveries(
    request: Request,
    item: Annotated[str | None, Query(pattern=ITEM_ID_PATTERN, description="an item id")] = None,
    barcode: Annotated[str | None, Query(max_length=200)] = None,
    output: _Output = None,
    outcome: _Outcome = None,
    since: _Since = None,
    until: _Since = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[int | None, Query(ge=1, le=_ROW_ID)] = None,
) -> dict[str, Any]:
    """The delivery ledger, newest first: every attempt to hand an item to an output, with its
    outcome, HTTP status, latency, an excerpt of the answer and the record id. "We never got
    parcel X" is ``?barcode=X`` (or ``?item=ID``)."""
    rows = await _services(request).store.attempts(
        item_id=item,
        barcode=barcode,
        output=output,
        outcome=outcome,
        since=_timestamp(since),
        until=_timestamp(until, "until"),
        before=before,
        limit=limit,
    )
    return {
        "deliveries": [_attempt_dict(row) for row in rows],
        "next": rows[-1].id if len(rows) == limit else None,
    }


_CSV_COLUMNS = list(AttemptOut.model_fields)


@router.get(
    "/deliveries.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "the ledger as CSV"}},
)
async def export_deliveries(
    request: Request,
    output: _Output = None,
    outcome: _Outcome = None,
    since: _Since = None,
    until: _Since = None,
) -> StreamingResponse:
    """The ledger for a time range as CSV (one row per attempt, oldest last), streamed page by
    page: memory stays flat however long the range."""
    store = _services(request).store
    low, high = _timestamp(since), _timestamp(until, "until")

    async def rows() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(_CSV_COLUMNS)
        before = None
        while True:
            page = await store.attempts(
                output=output, outcome=outcome, since=low, until=high, before=before, limit=500
            )
            for attempt in page:
                entry = _attempt_dict(attempt)
                writer.writerow([_csv_cell(entry[name]) for name in _CSV_COLUMNS])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(page) < 500:
                return
            before = page[-1].id

    headers = {"content-disposition": 'attachment; filename="deliveries.csv"'}
    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8", headers=headers)


def _csv_cell(value: object) -> object:
    # a cell a spreadsheet would run as a formula is written as text (CSV injection)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


class HeldOut(BaseModel):
    id: str
    revision: int
    reason: str | None
    barcode: str | None
    item: ItemOut


class Decision(BaseModel):
    note: str = Field(min_length=1, max_length=1000, description="why: kept with the item")


@router.get("/quarantine")
async def list_quarantine(
    request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> dict[str, list[HeldOut]]:
    """Item versions held by the plausibility rules (``DIMMY_VALIDATE_*``): no output gets
    them until released."""
    held = await _services(request).store.held_items(limit=limit)
    return {
        "items": [
            HeldOut(
                id=item.id,
                revision=item.revision,
                reason=item.hold_reason,
                barcode=item.item.barcode,
                item=ItemOut.model_validate_json(to_api_json(item)),
            )
            for item in held
        ]
    }


@router.post("/quarantine/{item_id}/release", responses=_NOT_FOUND)
async def release_held(item_id: ItemId, decision: Decision, request: Request) -> dict[str, Any]:
    """Release a held item: its deliveries are queued, with the operator's note kept."""
    return await _decide(request, item_id, decision, release=True)


@router.post("/quarantine/{item_id}/reject", responses=_NOT_FOUND)
async def reject_held(item_id: ItemId, decision: Decision, request: Request) -> dict[str, Any]:
    """Reject a held item: it is never delivered (a newer version is checked again)."""
    return await _decide(request, item_id, decision, release=False)


async def _decide(
    request: Request, item_id: str, decision: Decision, *, release: bool
) -> dict[str, Any]:
    try:
        queued = await _services(request).decide_hold(item_id, release=release, note=decision.note)
    except LookupError:
        raise HTTPException(status_code=404, detail="item is not held in quarantine") from None
    return {"item_id": item_id, "state": "released" if release else "rejected", "queued": queued}
