"""The API's inbox events: the lists, one event, its work and body, replaying it.

``/api/events`` lists the inbox newest first by status; ``/api/events.json`` is the events
page's twin (status, type, time received); an event's page has ``/work`` and ``/body``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import HTTPException, Query, Response
from pydantic import BaseModel, Field

from dimmy_webhooks.models import EventRecord
from dimmy_webhooks.observe.logs import redact_urls
from dimmy_webhooks.store import ReplayMode, Store
from dimmy_webhooks.web.api.common import (
    NOT_FOUND,
    ROW_ID,
    AttemptOut,
    EventId,
    EventOut,
    EventPage,
    EventStatus,
    Limit,
    RowCursor,
    Since,
    api_router,
    attempt_dict,
    event_dict,
    event_page,
    iso,
    or_404,
    timestamp,
)
from dimmy_webhooks.web.deps import AccountDep, ServicesDep, StoreDep, ViewerDep
from dimmy_webhooks.web.principal import Viewer

router = api_router()


@router.get("/events")
async def list_events(
    store: StoreDep,
    account: AccountDep,
    status: EventStatus = None,
    limit: Limit = 50,
    before: Annotated[
        int | None, Query(ge=1, le=ROW_ID, description="cursor: last id seen")
    ] = None,
) -> dict[str, Any]:
    """Inbox events, newest first, optionally by status."""
    events = await store.list_events(status=status, limit=limit, before=before, account=account)
    return event_page(events, limit)


@router.get("/events/{event_id}", responses=NOT_FOUND)
async def get_event(event_id: EventId, store: StoreDep, viewer: ViewerDep) -> dict[str, Any]:
    """One event with its work counted by kind and status."""
    return event_dict(await stored_event(store, viewer, event_id))


async def stored_event(store: Store, viewer: Viewer, event_id: int) -> EventRecord:
    """The event ``event_id`` if ``viewer`` may see it; else 404, the same answer whether it
    is missing or another account's."""
    event = await store.get_event(event_id)
    if event is None or not viewer.owns(event.account):
        raise HTTPException(status_code=404, detail="event not found")
    return event


@router.post("/events/{event_id}/replay", responses=NOT_FOUND)
async def replay_event(
    event_id: EventId,
    services: ServicesDep,
    viewer: ViewerDep,
    mode: ReplayMode = ReplayMode.REFETCH,
) -> dict[str, Any]:
    """Put an event's work back in the queue: ``refetch`` from Dimmy or ``redeliver``."""
    if not viewer.admin:
        await stored_event(services.store, viewer, event_id)
    queued = await or_404(services.replay_event(event_id, mode), "event not found")
    return {"event_id": event_id, "mode": mode.value, "queued": queued}


_Type = Annotated[
    str | None, Query(pattern=r"^(items\.scanned|item\.scanned\.full_payload|unknown)$")
]


@router.get("/events.json", response_model=EventPage)
async def browse_events(
    store: StoreDep,
    account: AccountDep,
    status: EventStatus = None,
    type: _Type = None,
    since: Since = None,
    until: Since = None,
    limit: Limit = 50,
    before: RowCursor = None,
) -> dict[str, Any]:
    """The events page: events newest first, by status, type and time received
    (``[since, until)``)."""
    events = await store.browse_events(
        status=status,
        event_type=type,
        since=timestamp(since),
        until=timestamp(until, "until"),
        before=before,
        limit=limit,
        account=account,
    )
    return event_page(events, limit)


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


@router.get("/events/{event_id}/work", response_model=EventWorkOut, responses=NOT_FOUND)
async def event_work(event_id: EventId, store: StoreDep, viewer: ViewerDep) -> dict[str, Any]:
    """What an event's page shows: headers, every job with its last error, the ledger."""
    event = await stored_event(store, viewer, event_id)
    work = await store.event_work(event_id)
    jobs = [
        {
            **dataclasses.asdict(job),
            "run_at": iso(job.run_at),
            "updated_at": iso(job.updated_at),
            # an output's name is its URL: never show the credentials in it
            "output": redact_urls(job.output) if job.output else job.output,
            "last_error": redact_urls(job.last_error) if job.last_error else job.last_error,
        }
        for job in work.jobs
    ]
    return {
        "event": event_dict(event),
        "headers": work.headers,
        "sender_deliveries": work.deliveries,
        "jobs": jobs,
        "deliveries": [attempt_dict(a) for a in work.attempts],
    }


@router.get(
    "/events/{event_id}/body",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}, "description": "the body"}, **NOT_FOUND},
)
async def event_body(event_id: EventId, store: StoreDep, viewer: ViewerDep) -> Response:
    """The event's body as received (verified JSON; stored as UTF-8 without a byte order mark
    when it came with one, or in UTF-16/32)."""
    await stored_event(store, viewer, event_id)
    body = await or_404(store.get_event_body(event_id), "event not found")
    return Response(body, media_type="application/json")
