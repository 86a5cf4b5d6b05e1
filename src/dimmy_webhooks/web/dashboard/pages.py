"""The dashboard's pages: overview at ``/``, events, items and quarantine under ``/ui``, the login.

Server-rendered (:mod:`.render`), each with its JSON twin in the API linked at its foot. The
parts that change (counts, lists, an event's work) refresh themselves without a reload: the
script asks the same URL with ``?live=1`` every few seconds. Actions (replay, release, reject)
are the API's own routes, posted as JSON by the script with the session's CSRF token. Pages get
the service's parts through the same dependencies as the API (:mod:`dimmy_webhooks.web.deps`).

Accounts: a page is read as its session's viewer (:class:`~dimmy_webhooks.web.principal.Viewer`):
an operator's pages show its account only (named in the header), and anything of another
account is "not found", as in the API. The admin's pages show every account, or the one
``?account=`` names (the switcher in the header sets it, and the pages' links keep it); a column
names each row's account when there are several.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from dimmy_webhooks.config import problems_of
from dimmy_webhooks.config.accounts import ACCOUNT_NAME
from dimmy_webhooks.items import format_timestamp
from dimmy_webhooks.models import ITEM_ID_PATTERN, StoredItem
from dimmy_webhooks.observe.logs import redact_urls
from dimmy_webhooks.services import Services
from dimmy_webhooks.store import ItemFilter
from dimmy_webhooks.web.auth import accounts_of, client_of, refusal
from dimmy_webhooks.web.dashboard.charts import overview_charts
from dimmy_webhooks.web.dashboard.render import http_url, query, render
from dimmy_webhooks.web.deps import (
    AccountsDep,
    Login,
    ServicesDep,
    SessionsDep,
    StoreDep,
    TokensDep,
)
from dimmy_webhooks.web.principal import ADMIN, AccountHidden, Viewer
from dimmy_webhooks.web.sessions import (
    CSRF_HEADER,
    LOGIN_COOKIE,
    Session,
    Sessions,
    end_session,
    local_path,
    set_cookie,
)

log = logging.getLogger("dimmy_webhooks.web.dashboard")
router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
_ROW_ID = 2**63 - 1
_Text = Annotated[str | None, Query(max_length=200)]


def login_required(request: Request, exc: Exception) -> Response:
    """A page asked without a session: the login page, then back (a live part: 401)."""
    if request.query_params.get("live") == "1":
        return JSONResponse({"detail": "login required"}, status_code=401)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target, safe='/')}", status_code=303)


class PageMissing(Exception):
    """What a page asked for is not there, or is another account's: the "not found" page."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def page_missing(request: Request, exc: Exception) -> Response:
    """The "not found" page (404) for :class:`PageMissing`, in the page's frame when the page
    had started (its session's CSRF token, its problems)."""
    page: Page | None = getattr(request.state, "page", None)
    if page is None:
        page = Page(request, {"nav": "", "twin": "", "csrf": "", "login_required": False})
        page.context.update(problems=[], errors=[], viewer=ADMIN, accounts=(), account=None)
        page.context.update(several=False, scope={})
    what = exc.what if isinstance(exc, PageMissing) else "page"
    return page.missing(what)


@dataclass
class Page:
    """A page being rendered: its request, who asks (``viewer``), the account it shows
    (``account``: ``None``, every account the viewer sees) and the values every template
    shows."""

    request: Request
    context: dict[str, Any] = field(default_factory=dict)
    viewer: Viewer = ADMIN
    account: str | None = None

    def owns(self, account: str) -> bool:
        """Whether a row of ``account`` is shown to this page's viewer."""
        return self.viewer.owns(account)

    @property
    def errors(self) -> list[str]:
        errors: list[str] = self.context["errors"]
        return errors

    def render(self, name: str, *, live: str | None = None, status_code: int = 200) -> Response:
        return render(self.request, name, self.context, live=live, status_code=status_code)

    def missing(self, what: str) -> Response:
        self.context["what"] = what
        return self.render("missing.html", status_code=404)


def _page(
    request: Request, services: Services, sessions: Sessions, session: Session | None
) -> Page:
    viewer = Viewer(session.account) if session is not None else ADMIN
    problems = services.problems()
    if viewer.account is not None:  # an operator: the problems of its account
        problems = problems_of(problems, viewer.account)
    problems = services.failures() + problems
    accounts = accounts_of(request)
    page = Page(
        request,
        {
            "nav": "",
            "twin": "",
            "csrf": sessions.csrf(session) if session is not None else "",
            "login_required": sessions.required,
            "problems": problems,
            "errors": [],
            "viewer": viewer,
            "accounts": viewer.visible(accounts.names) if accounts.several else (),
            "several": accounts.several and viewer.admin,
            "account": None,
            "scope": {},
        },
        viewer,
    )
    request.state.page = page
    requested = request.query_params.get("account") or None
    try:
        if requested is not None and not ACCOUNT_NAME.fullmatch(requested):
            raise AccountHidden(requested)
        page.account = viewer.filter(requested)
    except AccountHidden:
        raise PageMissing(f"account {requested[:40] if requested else ''}") from None
    if viewer.admin and page.account is not None:
        page.context.update(account=page.account, scope={"account": page.account})
    return page


def page_of(request: Request, session: Login, services: ServicesDep, sessions: SessionsDep) -> Page:
    """A page for a logged-in person (or anyone, with no admin token set), as its viewer
    sees it; ``?account=`` another account's, for an operator: :class:`PageMissing`."""
    return _page(request, services, sessions, session)


PageDep = Annotated[Page, Depends(page_of)]


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


def _twin(path: str, params: dict[str, Any], **extra: Any) -> str:
    """The URL of a page's JSON twin (or export) with the page's filters."""
    text = query(params, **extra)
    return f"{path}?{text}" if text else path


# overview -------------------------------------------------------------------------------------


@router.get("/")
async def overview_page(page: PageDep, services: ServicesDep) -> Response:
    account = page.account
    overview = await services.overview(account=account, operator=not page.viewer.admin)
    outputs = services.output_names(account)
    page.context.update(
        nav="overview",
        twin=_twin("/api/overview", page.context["scope"]),
        o=overview,
        outputs=outputs,
    )
    if page.request.query_params.get("live") != "1":  # the charts are not refreshed live
        series = await services.series(account=account)
        page.context.update(charts=overview_charts(series, redact_urls), series=series)
    return page.render("overview.html", live="overview_live.html")


# events ---------------------------------------------------------------------------------------

_STATUSES = ("pending", "processing", "done", "dead", "unknown")
_TYPES = ("items.scanned", "item.scanned.full_payload", "unknown")


@router.get("/ui/events")
async def events_page(
    page: PageDep,
    store: StoreDep,
    status: _Text = None,
    type: _Text = None,
    since: _Text = None,
    until: _Text = None,
    before: Annotated[int | None, Query(ge=1, le=_ROW_ID)] = None,
) -> Response:
    status = status if status in _STATUSES else None
    event_type = type if type in _TYPES else None
    low, high = _moment(since, "since", page.errors), _moment(until, "until", page.errors)
    events = await store.browse_events(
        status=status,
        event_type=event_type,
        since=low,
        until=high,
        before=before,
        limit=PAGE_SIZE,
        account=page.account,
    )
    params = {"status": status, "type": event_type, "since": since, "until": until}
    params.update(page.context["scope"])
    page.context.update(
        nav="events",
        events=events,
        params=params,
        statuses=_STATUSES,
        types=_TYPES,
        before=before,
        next=events[-1].id if len(events) == PAGE_SIZE else None,
        twin=_twin("/api/events.json", params, before=before),
    )
    return page.render("events.html", live="events_live.html")


@router.get("/ui/events/{event_id}")
async def event_page(
    page: PageDep, store: StoreDep, event_id: Annotated[int, Path(ge=1, le=_ROW_ID)]
) -> Response:
    page.context.update(nav="events", twin=f"/api/events/{event_id}/work")
    event = await store.get_event(event_id)
    if event is None or not page.owns(event.account):
        return page.missing(f"event {event_id}")
    work = await store.event_work(event_id)
    body = await store.get_event_body(event_id)
    page.context.update(
        event=event,
        work=work,
        body=body,
        verification=_verification(work.headers, event.received_at),
    )
    return page.render("event.html", live="event_live.html")


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
    account: str | None = None,
) -> ItemFilter:
    return ItemFilter(
        account=account,
        since=_moment(since, "since", errors),
        until=_moment(until, "until", errors),
        scanner=scanner.strip() if scanner and scanner.strip() else None,
        has_dimensions={"yes": True, "no": False}.get(dims or ""),
        q=q.strip() if q and q.strip() else None,
    )


@router.get("/ui/items")
async def items_page(
    page: PageDep,
    store: StoreDep,
    q: _Text = None,
    since: _Text = None,
    until: _Text = None,
    scanner: _Text = None,
    dims: _Text = None,
    before: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    where = item_filter(q, since, until, scanner, dims, page.errors, page.account)
    items = await store.browse_items(where, limit=PAGE_SIZE, before=_cursor(before))
    params = {"q": q, "since": since, "until": until, "scanner": scanner, "dims": dims}
    params.update(page.context["scope"])
    last = items[-1] if len(items) == PAGE_SIZE else None
    page.context.update(
        nav="items",
        items=[_row(item) for item in items],
        params=params,
        before=before,
        next=f"{last.fetched_at!r}:{last.id}" if last is not None else None,
        twin=_twin("/api/items.json", params, before=before),
        exports={kind: _twin(f"/api/items.{kind}", params) for kind in ("csv", "jsonl")},
    )
    return page.render("items.html", live="items_live.html")


def _cursor(before: str | None) -> tuple[float, str] | None:
    if not before or ":" not in before:
        return None
    at, _, item_id = before.partition(":")
    try:
        return float(at), item_id
    except ValueError:
        return None


def _row(item: StoredItem) -> dict[str, Any]:
    photos = [url for url in map(http_url, item.item.photo_urls) if url is not None]
    return {"item": item, "fields": item.item, "thumb": photos[0] if photos else None}


@router.get("/ui/items/{item_id}")
async def item_page(
    page: PageDep,
    store: StoreDep,
    item_id: Annotated[str, Path(pattern=ITEM_ID_PATTERN, max_length=128)],
) -> Response:
    page.context.update(nav="items", twin=f"/api/items/{item_id}")
    item = await store.get_item(item_id)
    if item is None or not page.owns(item.account):
        return page.missing(f"item {item_id}")
    revisions, event_ids = await store.item_history(item_id)
    ledger = await store.attempts(item_id=item_id, limit=200, account=item.account)
    photos = [{"url": http_url(url), "text": url} for url in item.item.photo_urls]
    page.context.update(
        item=item,
        fields=item.item,
        photos=photos,
        revisions=revisions,
        event_ids=event_ids,
        ledger=ledger,
        fetched=format_timestamp(item.fetched_at),
    )
    return page.render("item.html", live="item_live.html")


@router.get("/ui/quarantine")
async def quarantine_page(page: PageDep, store: StoreDep) -> Response:
    held = await store.held_items(limit=200, account=page.account)
    page.context.update(
        nav="quarantine",
        twin=_twin("/api/quarantine", page.context["scope"]),
        rows=[_row(item) for item in held],
    )
    return page.render("quarantine.html")


# login ----------------------------------------------------------------------------------------


@router.get("/ui/login")
async def login_page(
    request: Request, services: ServicesDep, sessions: SessionsDep, next: _Text = None
) -> Response:
    target = local_path(next)
    if not sessions.required or await sessions.current(request) is not None:
        return RedirectResponse(target, status_code=303)
    nonce = secrets.token_urlsafe(24)
    page = _page(request, services, sessions, None)
    page.context.update(nav="login", login_csrf=nonce, next=target)
    response = page.render("login.html")
    set_cookie(request, response, LOGIN_COOKIE, nonce, max_age=3600, path="/ui/login")
    return response


class LoginForm(BaseModel):
    token: str = Field(max_length=1000)
    next: str | None = Field(default=None, max_length=2000)


@router.post("/ui/login")
async def login(
    request: Request,
    form: LoginForm,
    sessions: SessionsDep,
    tokens: TokensDep,
    accounts: AccountsDep,
) -> Response:
    """Log in with the admin token (every account) or an account's operator token (that
    account only)."""
    if not sessions.required:
        return JSONResponse({"next": local_path(form.next)})
    expected = request.cookies.get(LOGIN_COOKIE, "")
    given = request.headers.get(CSRF_HEADER, "")
    if not expected or not hmac.compare_digest(expected, given):
        return JSONResponse(
            {"detail": "login form expired or sent from elsewhere: reload the page"}, 403
        )
    client = client_of(request)
    verdict = tokens.check(form.token.strip(), client, operators=accounts)
    if not verdict.ok:
        throttled = verdict.retry_after is not None
        reason = "too many wrong admin tokens" if throttled else "wrong admin token"
        log.warning(
            "dashboard login refused", extra={"fields": {"reason": reason, "client": client}}
        )
        raise refusal(reason, verdict.retry_after, challenge=False)
    log.info("dashboard login", extra={"fields": {"client": client, "account": verdict.account}})
    response = JSONResponse({"next": local_path(form.next)})
    await sessions.start(request, response, verdict.account)
    response.delete_cookie(LOGIN_COOKIE, path="/ui/login")
    return response


@router.post("/ui/logout")
async def logout(request: Request, sessions: SessionsDep) -> Response:
    session = await sessions.current(request)
    if session is not None and not sessions.csrf_ok(session, request.headers.get(CSRF_HEADER)):
        return JSONResponse({"detail": "CSRF token missing or wrong"}, 403)
    if session is not None:
        # ended in the store, not only in this browser: a copy of the cookie is refused too
        # (every session of the same token: the admin's, or this account's operators')
        await sessions.end_all(session.account)
        log.info("dashboard logout", extra={"fields": {"client": client_of(request)}})
    response = JSONResponse({"next": "/ui/login" if sessions.required else "/"})
    end_session(request, response)
    return response
