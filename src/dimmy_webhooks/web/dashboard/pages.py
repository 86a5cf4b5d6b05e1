"""The dashboard's pages: overview at ``/``, events, items and quarantine under ``/ui``.

Server-rendered (:mod:`.render`), each with its JSON twin in the API linked at its foot. The
parts that change (counts, lists, an event's work) refresh themselves without a reload: the
script asks the same URL with ``?live=1`` every few seconds. Actions (replay, release, reject)
are the API's own routes, posted as JSON by the script with the session's CSRF token.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from dimmy_webhooks.items import format_timestamp
from dimmy_webhooks.models import ITEM_ID_PATTERN, StoredItem
from dimmy_webhooks.services import Services
from dimmy_webhooks.store.ops import ItemFilter
from dimmy_webhooks.web.auth import TokenCheck, retry_after_header
from dimmy_webhooks.web.dashboard.render import http_url, render
from dimmy_webhooks.web.dashboard.sessions import (
    CSRF_HEADER,
    LOGIN_COOKIE,
    Session,
    current_session,
    end_session,
    local_path,
    sessions_of,
    set_cookie,
    start_session,
)

log = logging.getLogger("dimmy_webhooks.web.dashboard")
router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
_ROW_ID = 2**63 - 1
_Text = Annotated[str | None, Query(max_length=200)]


class LoginRequired(Exception):
    """The page needs a session: answered with a redirect to the login page."""


def login_required(request: Request, exc: Exception) -> Response:
    if request.query_params.get("live") == "1":
        return JSONResponse({"detail": "login required"}, status_code=401)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={_quote(target)}", status_code=303)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="/")


def require_login(request: Request) -> Session | None:
    """The request's session (``None`` when no admin token is set: the dashboard is open)."""
    if not sessions_of(request).required:
        return None
    session = current_session(request)
    if session is None:
        raise LoginRequired
    return session


Login = Annotated[Session | None, Depends(require_login)]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _context(request: Request, session: Session | None, nav: str, twin: str) -> dict[str, Any]:
    services = _services(request)
    sessions = sessions_of(request)
    return {
        "nav": nav,
        "twin": twin,
        "csrf": sessions.csrf(session) if session is not None else "",
        "login_required": sessions.required,
        "problems": services.failures() + services.problems(),
        "errors": [],
    }


def _moment(value: str | None, name: str, errors: list[str]) -> float | None:
    """An ISO-8601 date-time (UTC without an offset) as Unix seconds; a bad one is reported
    and ignored."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        errors.append(f"{name}: not a date and time, ignored")
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# overview -------------------------------------------------------------------------------------


@router.get("/")
async def overview_page(request: Request, session: Login) -> Response:
    services = _services(request)
    overview = await services.overview()
    context = _context(request, session, "overview", "/api/overview")
    context.update(o=overview, outputs=services.output_names())
    return render(request, "overview.html", context, live="overview_live.html")


# events ---------------------------------------------------------------------------------------

_STATUSES = ("pending", "processing", "done", "dead", "unknown")
_TYPES = ("items.scanned", "item.scanned.full_payload", "unknown")


@router.get("/ui/events")
async def events_page(
    request: Request,
    session: Login,
    status: _Text = None,
    type: _Text = None,
    since: _Text = None,
    until: _Text = None,
    before: Annotated[int | None, Query(ge=1, le=_ROW_ID)] = None,
) -> Response:
    context = _context(request, session, "events", "")
    errors: list[str] = context["errors"]
    status = status if status in _STATUSES else None
    event_type = type if type in _TYPES else None
    low, high = _moment(since, "since", errors), _moment(until, "until", errors)
    events = await _services(request).store.browse_events(
        status=status,
        event_type=event_type,
        since=low,
        until=high,
        before=before,
        limit=PAGE_SIZE,
    )
    params = {"status": status, "type": event_type, "since": since, "until": until}
    context.update(
        events=events,
        params=params,
        statuses=_STATUSES,
        types=_TYPES,
        before=before,
        next=events[-1].id if len(events) == PAGE_SIZE else None,
        twin=_twin("/api/events.json", params, before=before),
    )
    return render(request, "events.html", context, live="events_live.html")


@router.get("/ui/events/{event_id}")
async def event_page(
    request: Request, session: Login, event_id: Annotated[int, Path(ge=1, le=_ROW_ID)]
) -> Response:
    store = _services(request).store
    context = _context(request, session, "events", f"/api/events/{event_id}/work")
    event = await store.get_event(event_id)
    if event is None:
        context["what"] = f"event {event_id}"
        return render(request, "missing.html", context, status_code=404)
    work = await store.event_work(event_id)
    body = await store.get_event_body(event_id)
    context.update(
        event=event,
        work=work,
        body=body,
        verification=_verification(work.headers, event.received_at),
    )
    return render(request, "event.html", context, live="event_live.html")


def _verification(headers: dict[str, str], received_at: float) -> dict[str, Any]:
    """What the receiver checked before storing the event (only verified ones are stored)."""
    prefix = "svix" if "svix-id" in headers else "webhook"
    stamp = headers.get(f"{prefix}-timestamp", "")
    skew = received_at - int(stamp) if stamp.isdecimal() else None
    signatures = headers.get(f"{prefix}-signature", "").split()
    return {"scheme": prefix, "timestamp": stamp, "skew": skew, "signatures": len(signatures)}


# items ----------------------------------------------------------------------------------------


def item_filter(
    q: str | None,
    since: str | None,
    until: str | None,
    scanner: str | None,
    dims: str | None,
    errors: list[str],
) -> ItemFilter:
    return ItemFilter(
        since=_moment(since, "since", errors),
        until=_moment(until, "until", errors),
        scanner=scanner.strip() if scanner and scanner.strip() else None,
        has_dimensions={"yes": True, "no": False}.get(dims or ""),
        q=q.strip() if q and q.strip() else None,
    )


@router.get("/ui/items")
async def items_page(
    request: Request,
    session: Login,
    q: _Text = None,
    since: _Text = None,
    until: _Text = None,
    scanner: _Text = None,
    dims: _Text = None,
    before: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    context = _context(request, session, "items", "")
    errors: list[str] = context["errors"]
    where = item_filter(q, since, until, scanner, dims, errors)
    cursor = _cursor(before)
    items = await _services(request).store.browse_items(where, limit=PAGE_SIZE, before=cursor)
    params = {"q": q, "since": since, "until": until, "scanner": scanner, "dims": dims}
    last = items[-1] if len(items) == PAGE_SIZE else None
    context.update(
        items=[_row(item) for item in items],
        params=params,
        before=before,
        next=f"{last.fetched_at!r}:{last.id}" if last is not None else None,
        twin=_twin("/api/items.json", params, before=before),
        exports={kind: _twin(f"/api/items.{kind}", params) for kind in ("csv", "jsonl")},
    )
    return render(request, "items.html", context, live="items_live.html")


def _cursor(before: str | None) -> tuple[float, str] | None:
    if not before or ":" not in before:
        return None
    at, _, item_id = before.partition(":")
    try:
        return float(at), item_id
    except ValueError:
        return None


def _twin(path: str, params: dict[str, Any], **extra: Any) -> str:
    from dimmy_webhooks.web.dashboard.render import query

    text = query(params, **extra)
    return f"{path}?{text}" if text else path


def _row(item: StoredItem) -> dict[str, Any]:
    photos = [url for url in map(http_url, item.item.photo_urls) if url is not None]
    return {"item": item, "fields": item.item, "thumb": photos[0] if photos else None}


@router.get("/ui/items/{item_id}")
async def item_page(
    request: Request,
    session: Login,
    item_id: Annotated[str, Path(pattern=ITEM_ID_PATTERN, max_length=128)],
) -> Response:
    store = _services(request).store
    context = _context(request, session, "items", f"/api/items/{item_id}")
    item = await store.get_item(item_id)
    if item is None:
        context["what"] = f"item {item_id}"
        return render(request, "missing.html", context, status_code=404)
    revisions, event_ids = await store.item_history(item_id)
    ledger = await store.attempts(item_id=item_id, limit=200)
    photos = [{"url": http_url(url), "text": url} for url in item.item.photo_urls]
    context.update(
        item=item,
        fields=item.item,
        photos=photos,
        revisions=revisions,
        event_ids=event_ids,
        ledger=ledger,
        fetched=format_timestamp(item.fetched_at),
    )
    return render(request, "item.html", context, live="item_live.html")


@router.get("/ui/quarantine")
async def quarantine_page(request: Request, session: Login) -> Response:
    held = await _services(request).store.held_items(limit=200)
    context = _context(request, session, "quarantine", "/api/quarantine")
    context.update(rows=[_row(item) for item in held])
    return render(request, "quarantine.html", context)


# login ----------------------------------------------------------------------------------------


@router.get("/ui/login")
async def login_page(request: Request, next: _Text = None) -> Response:
    target = local_path(next)
    sessions = sessions_of(request)
    if not sessions.required or current_session(request) is not None:
        return RedirectResponse(target, status_code=303)
    import secrets

    nonce = secrets.token_urlsafe(24)
    context = _context(request, None, "login", "")
    context.update(login_csrf=nonce, next=target)
    response = render(request, "login.html", context)
    set_cookie(request, response, LOGIN_COOKIE, nonce, max_age=3600, path="/ui/login")
    return response


class LoginForm(BaseModel):
    token: str = Field(max_length=1000)
    next: str | None = Field(default=None, max_length=2000)


@router.post("/ui/login")
async def login(request: Request, form: LoginForm) -> Response:
    import hmac

    sessions = sessions_of(request)
    if not sessions.required:
        return JSONResponse({"next": local_path(form.next)})
    expected = request.cookies.get(LOGIN_COOKIE, "")
    given = request.headers.get(CSRF_HEADER, "")
    if not expected or not hmac.compare_digest(expected, given):
        return JSONResponse(
            {"detail": "login form expired or sent from elsewhere: reload the page"}, 403
        )
    tokens: TokenCheck = request.app.state.tokens
    client = request.client.host if request.client else "-"
    verdict = tokens.check(form.token.strip(), client)
    if not verdict.ok:
        throttled = verdict.retry_after is not None
        reason = "too many wrong admin tokens" if throttled else "wrong admin token"
        log.warning(
            "dashboard login refused", extra={"fields": {"reason": reason, "client": client}}
        )
        if verdict.retry_after is not None:
            return JSONResponse(
                {"detail": f"{reason} from this address: retry later"},
                429,
                headers={"Retry-After": retry_after_header(verdict.retry_after)},
            )
        return JSONResponse({"detail": reason}, 401)
    log.info("dashboard login", extra={"fields": {"client": client}})
    response = JSONResponse({"next": local_path(form.next)})
    start_session(request, response)
    response.delete_cookie(LOGIN_COOKIE, path="/ui/login")
    return response


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    session = current_session(request)
    sessions = sessions_of(request)
    if session is not None and not sessions.csrf_ok(session, request.headers.get(CSRF_HEADER)):
        return JSONResponse({"detail": "CSRF token missing or wrong"}, 403)
    response = JSONResponse({"next": "/ui/login" if sessions.required else "/"})
    end_session(request, response)
    return response
