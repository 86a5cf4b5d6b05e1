"""What the API's routers share: the router itself, path and query types, parsers, answers.

:func:`api_router` makes a router under ``/api`` behind the admin token with the error answers
every route documents; the ``*Out`` models describe the JSON answers in the OpenAPI document,
and the ``*_dict`` functions build them from the store's rows. Nothing here reads a request:
the routers get their parts through :mod:`dimmy_webhooks.web.deps`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, TypeAdapter

from dimmy_webhooks.models import ITEM_ID_PATTERN, DeliveryAttempt, EventRecord
from dimmy_webhooks.observe.logs import redact_urls
from dimmy_webhooks.store import ItemFilter
from dimmy_webhooks.web.deps import Admin

T = TypeVar("T")
ROW_ID = 2**63 - 1  # the largest id a row can have (and SQLite can bind)
EventId = Annotated[int, Path(ge=1, le=ROW_ID)]
ItemId = Annotated[
    str,
    Path(
        pattern=ITEM_ID_PATTERN,
        max_length=128,
        description="a Dimmy item id (`_id`): letters, digits, `_` and `-`",
    ),
]
Limit = Annotated[int, Query(ge=1, le=500)]
RowCursor = Annotated[int | None, Query(ge=1, le=ROW_ID)]
Since = Annotated[
    str | None,
    Query(
        max_length=64,
        description="ISO-8601 date-time (UTC when it has no offset)",
        json_schema_extra={"format": "date-time"},
    ),
]
EVENT_STATUSES = ("pending", "processing", "done", "dead", "unknown")
EventStatus = Annotated[str | None, Query(pattern=f"^({'|'.join(EVENT_STATUSES)})$")]
OUTCOMES = ("delivered", "failed", "dead", "filtered", "superseded")
Outcome = Annotated[str | None, Query(pattern=f"^({'|'.join(OUTCOMES)})$")]
OutcomeStatus = Annotated[
    str | None,
    Query(
        max_length=64,
        description="an attempt's outcome: delivered, failed, dead, filtered or superseded "
        "(the same filter as `outcome`; any other value is a 400)",
        json_schema_extra={"enum": list(OUTCOMES)},
    ),
]
Output = Annotated[str | None, Query(max_length=2000, description="an output's name")]
Text = Annotated[str | None, Query(max_length=200)]


class Problem(BaseModel):
    detail: str


def api_router() -> APIRouter:
    """A router under ``/api``, behind the admin token, with the answers every route shares."""
    return APIRouter(
        prefix="/api",
        dependencies=[Admin],
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


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "not found"}}
BAD_STATUS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "`status` is not an outcome"}
}

# parsers --------------------------------------------------------------------------------------

_DATE_TIME = TypeAdapter(datetime)
_LOOKS_LIKE_DATE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")


def timestamp(value: str | None, name: str = "since") -> float | None:
    """Unix seconds of an ISO-8601 date-time (UTC when no offset); 422 for anything else
    (bare numbers too, which pydantic would take for Unix seconds)."""
    if value is None:
        return None
    try:
        if not _LOOKS_LIKE_DATE.match(value):
            raise ValueError(value)
        moment = _DATE_TIME.validate_strings(value)
    except ValueError:
        raise invalid_query(
            name,
            value,
            "use an ISO-8601 date-time, e.g. 2026-01-05T09:00:00Z",
            "datetime_from_date_parsing",
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def invalid_query(name: str, value: str, message: str, kind: str) -> RequestValidationError:
    """A 422 naming query parameter ``name``, shaped like FastAPI's own."""
    return RequestValidationError(
        [{"loc": ("query", name), "msg": message, "type": kind, "input": value}]
    )


def check_status(status: str | None) -> str | None:
    """``status`` when it is an outcome or absent: else a 400 naming the outcomes, never an
    unfiltered list."""
    if status is not None and status not in OUTCOMES:
        raise HTTPException(
            status_code=400,
            detail=f"unknown status {status[:64]!r}: use one of {', '.join(OUTCOMES)}",
        )
    return status


async def or_404(lookup: Awaitable[T], detail: str) -> T:
    """What ``lookup`` answers; 404 with ``detail`` when it raises :class:`LookupError`."""
    try:
        return await lookup
    except LookupError:
        raise HTTPException(status_code=404, detail=detail) from None


# answers --------------------------------------------------------------------------------------


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def json_response(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def item_page(listed: Sequence[bytes], following: str | None) -> Response:
    """A page of items (each already JSON) and the cursor of the next page."""
    after = json.dumps(following).encode()
    return json_response(b'{"items":[' + b",".join(listed) + b'],"next":' + after + b"}")


def event_dict(event: EventRecord) -> dict[str, Any]:
    return {
        "id": event.id,
        "message_id": event.message_id,
        "event_type": event.event_type,
        "status": event.status,
        "received_at": iso(event.received_at),
        "item_count": event.item_count,
        "last_error": event.last_error,
        "jobs": event.jobs,
    }


def event_page(events: Sequence[EventRecord], limit: int) -> dict[str, Any]:
    return {
        "events": [event_dict(event) for event in events],
        "next": events[-1].id if len(events) == limit else None,
    }


def attempt_dict(attempt: DeliveryAttempt) -> dict[str, Any]:
    out = dataclasses.asdict(attempt)
    out.pop("job_id")
    out["started_at"] = iso(attempt.started_at)
    out["output"] = redact_urls(attempt.output)  # the name is the URL: never its credentials
    if attempt.error is not None:
        out["error"] = redact_urls(attempt.error)
    return out


def attempt_page(rows: Sequence[DeliveryAttempt], limit: int) -> dict[str, Any]:
    return {
        "deliveries": [attempt_dict(row) for row in rows],
        "next": rows[-1].id if len(rows) == limit else None,
    }


def csv_cell(value: object) -> object:
    """``value`` for a CSV cell: a cell a spreadsheet would run as a formula is written as
    text (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


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


class AttemptPage(BaseModel):
    deliveries: list[AttemptOut]
    next: int | None = Field(description="pass back as `before` for the next page")


class ItemOut(BaseModel):
    """A stored item: its Dimmy ``_id``, its ``account``, the normalised fields, ``version``,
    ``fetched_at`` and ``raw``, the document exactly as fetched."""

    id: str
    account: str = Field(description="the Dimmy account the item belongs to")
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
    revision: int = Field(description="stored changes of this item so far (1: first)")
    dim_weight: float | None = Field(
        description="volume / DIMMY_DIM_WEIGHT_DIVISOR, in the weight unit"
    )
    billable_weight: float | None = Field(description="the larger of weight and dim_weight")
    fetched_at: str
    raw: dict[str, Any]


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


Dims = Annotated[
    bool | None, Query(description="true: measured items only; false: items without dimensions")
]


def item_filter(
    q: Annotated[str | None, Query(max_length=200, description="an item id or a barcode")] = None,
    since: Since = None,
    until: Since = None,
    scanner: Text = None,
    has_dimensions: Dims = None,
) -> ItemFilter:
    """The items page's filters (``fetched_at`` in ``[since, until)``), as query parameters."""
    return ItemFilter(
        since=timestamp(since),
        until=timestamp(until, "until"),
        scanner=scanner or None,
        has_dimensions=has_dimensions,
        q=q or None,
    )


ItemWhere = Annotated[ItemFilter, Depends(item_filter)]


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerFilter:
    """Which delivery attempts a ledger list or export selects (times as Unix seconds);
    ``matches_none`` when ``status`` and ``outcome`` name two outcomes (no attempt has both)."""

    output: str | None
    outcome: str | None
    since: float | None
    until: float | None
    matches_none: bool = False

    def params(self) -> dict[str, Any]:
        """The filter as :meth:`~dimmy_webhooks.store.Store.attempts`' keyword arguments."""
        return {
            "output": self.output,
            "outcome": self.outcome,
            "since": self.since,
            "until": self.until,
        }


def ledger_filter(
    output: Output = None,
    outcome: Outcome = None,
    since: Since = None,
    until: Since = None,
    status: OutcomeStatus = None,
) -> LedgerFilter:
    """The ledger's filters as query parameters: by output, outcome (``status``, as the README
    names it, or ``outcome``: both given, both apply) and start time in ``[since, until)``."""
    status = check_status(status)
    return LedgerFilter(
        output=output,
        outcome=status or outcome,
        since=timestamp(since),
        until=timestamp(until, "until"),
        matches_none=status is not None and outcome is not None and status != outcome,
    )


LedgerWhere = Annotated[LedgerFilter, Depends(ledger_filter)]
