"""Who may use the JSON API, ``/metrics`` and the dashboard: every access rule of the web layer.

``POST /webhook`` is not governed here: its signature is its access control. Everything else:

- **Admin token** (``DIMMY_ADMIN_TOKEN``): when set, ``/api/*`` wants ``Authorization: Bearer``;
  compared in constant time. Binding anything but loopback needs one of at least
  :data:`MIN_TOKEN_LENGTH` characters (``dimmy-webhooks token`` makes one).
- **Throttling**: a client (by address, as uvicorn reports it, ``X-Forwarded-For`` from a
  loopback proxy included) that gives :data:`FailureThrottle.limit` wrong tokens within its window
  is answered 429 with ``Retry-After`` until the window has passed, for every wrong token it
  sends meanwhile. The right token (admin or metrics) and a valid session are always served:
  an address may be every client of a proxy, and guesses must not lock the operator out.
- **Forwarded clients** (S18): a request a proxy forwarded for another machine
  (``X-Forwarded-For``, ``Forwarded: for=``, ``X-Real-IP`` naming an address that is not
  loopback, or such a client address as uvicorn recorded it) is a remote request, whatever the
  ``Host`` the proxy sent. Without an admin token it is answered 401 everywhere but the webhook,
  ``/healthz`` and ``/readyz``; with a weak one (the rule of a public bind) 403, the right token
  included; ``/metrics`` takes only a strong metrics token from it.
- **Host** (DNS rebinding): with no admin token, a request must name this machine in ``Host``
  (``127.0.0.1``, ``localhost``, ``::1``, any port) or one of ``DIMMY_ALLOWED_HOSTS``; else 400.
  With a token, only ``DIMMY_ALLOWED_HOSTS`` restricts it, when set.
- **Cross-site requests** (CSRF): a state-changing request (``POST``, ``PUT``, ``PATCH``,
  ``DELETE``) is refused (403) when the browser says it comes from another site (``Origin`` not
  this host, ``Sec-Fetch-Site: cross-site``) or when it has a body type an HTML form can send
  (``text/plain``, ``application/x-www-form-urlencoded``, ``multipart/form-data``). Programs
  (curl, scripts) send neither and pass.
- **Operator tokens** (``operator_token`` of an account in ``DIMMY_ACCOUNTS_FILE``): stand for
  the admin token where it is asked for, but the request sees that account only
  (:class:`~.principal.Viewer`); a wrong one counts against the same throttle. Without an
  admin token everything is open as before, and an operator token given anyway narrows the
  view to its account.
- **Sessions** (:mod:`.sessions`): a dashboard login stands for the token it was opened with
  on ``/api/*`` too (the admin's, or an operator's, bound to its account); a state-changing
  request with the cookie also needs the session's ``X-CSRF-Token``.
- **Metrics**: ``/metrics`` takes ``DIMMY_METRICS_TOKEN`` or the admin token, when one is set
  (every account's series), or an operator token (its account's).

The rules are applied by the ASGI middlewares :class:`AccessGuard` (Host, cross-site) and
:class:`TokenFirst` (``/api/*`` before anything is parsed), and by the dependencies
:func:`require_viewer` (who asks: :class:`~.principal.Viewer`), :func:`metrics_guard` and
:func:`require_login`, which the routes receive through :mod:`.deps`. The app's
:class:`TokenCheck` and :class:`.sessions.Sessions` are built once, by
:func:`~dimmy_webhooks.web.app.create_app`; the accounts are the services' (:func:`accounts_of`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dimmy_webhooks.config import (
    LOOPBACK_HOSTS,
    MIN_TOKEN_LENGTH,
    Settings,
    host_name,
    weak_token,
)
from dimmy_webhooks.config.accounts import Accounts
from dimmy_webhooks.errors import StoreError
from dimmy_webhooks.web.principal import Viewer
from dimmy_webhooks.web.sessions import CSRF_HEADER, Session, Sessions
from dimmy_webhooks.web.tokens import FailureThrottle, TokenCheck, retry_after_header

log = logging.getLogger("dimmy_webhooks.web.auth")
# the refusals of /api and /metrics keep the logger names their log lines have always carried
api_log = logging.getLogger("dimmy_webhooks.web.api")
metrics_log = logging.getLogger("dimmy_webhooks.web")

__all__ = [
    "MIN_TOKEN_LENGTH",
    "AccessGuard",
    "FailureThrottle",
    "LoginRequired",
    "TokenCheck",
    "TokenFirst",
    "accounts_of",
    "allowed_hosts",
    "metrics_guard",
    "require_admin",
    "require_login",
    "require_viewer",
    "sessions_of",
    "tokens_of",
]

_CHECKED_HEADERS = frozenset({b"host", b"origin", b"sec-fetch-site", b"content-type"})
_FORWARDING_HEADERS = frozenset({b"x-forwarded-for", b"forwarded", b"x-real-ip"})
REMOTE_CLIENT = "dimmy_remote_client"
"""``scope["state"]`` key: the remote address a request was forwarded for (:class:`AccessGuard`)."""
VIEWER = "dimmy_viewer"
"""``scope["state"]`` key: who the request was resolved to (:func:`require_viewer`), once."""
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FORM_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_bearer = HTTPBearer(auto_error=False)


@dataclass(frozen=True, slots=True)
class RemoteRule:
    """What a request forwarded for another machine may reach: ``open_paths`` always; the
    rest only with a strong admin token (``/metrics`` with a strong metrics token too)."""

    open_paths: frozenset[str]
    admin_token: str | None
    metrics_token: str | None

    @classmethod
    def of(cls, settings: Settings, open_paths: frozenset[str]) -> RemoteRule:
        return cls(open_paths, settings.admin_token_value(), settings.metrics_token_value())

    def refusal(self, path: str) -> tuple[int, str] | None:
        if path in self.open_paths:
            return None
        if self.admin_token is not None and not weak_token(self.admin_token):
            return None
        if path == "/metrics" and self.metrics_token and not weak_token(self.metrics_token):
            return None
        if self.admin_token is None:
            return 401, (
                "this request was forwarded for another machine, and no DIMMY_ADMIN_TOKEN is "
                "set: without one the service answers only this machine (set a strong one, "
                "`dimmy-webhooks token` makes it, to serve clients through a proxy)"
            )
        return 403, (
            "this request was forwarded for another machine, and DIMMY_ADMIN_TOKEN is too "
            f"weak to face a network (at least {MIN_TOKEN_LENGTH} characters, not a repeated "
            "few): `dimmy-webhooks token` makes a strong one"
        )


def _is_loopback(address: str) -> bool:
    """Whether a client address (as a proxy header gives it: a port, brackets or quotes
    around it perhaps) is this machine; an unknown or obfuscated one is not."""
    text = host_name(address.strip().strip('"'))
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return text == "localhost"


def forwarded_for(scope: Scope) -> str | None:
    """The other machine a request comes from or was forwarded for, or ``None`` when it is
    this machine's own: the client uvicorn recorded (``X-Forwarded-For`` from a proxy it
    trusts included), then every address ``X-Forwarded-For``, ``X-Real-IP`` and
    ``Forwarded: for=`` name."""
    client = scope.get("client")
    peer = str(client[0]) if client and client[0] else ""
    if peer and not _is_loopback(peer):
        return peer
    for name, raw in scope["headers"]:
        if name not in _FORWARDING_HEADERS:
            continue
        value: str = raw.decode("latin-1")
        addresses: list[str]
        if name == b"forwarded":
            addresses = [
                pair.partition("=")[2]
                for element in value.split(",")
                for pair in element.split(";")
                if pair.partition("=")[0].strip().lower() == "for"
            ]
        else:
            addresses = value.split(",")
        for address in addresses:
            if address.strip() and not _is_loopback(address):
                return address.strip()[:100]
    return None


class AccessGuard:
    """ASGI middleware applying the forwarded-client, Host and cross-site rules above to every
    HTTP request.

    ``allowed_hosts`` is the set of names ``Host`` may carry, or ``None`` for any; ``remote``
    what a forwarded request may reach (``None``: no rule, as for a bare app in a test).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: frozenset[str] | None,
        remote: RemoteRule | None = None,
    ) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.remote = remote

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k: v for k, v in scope["headers"] if k in _CHECKED_HEADERS}
        host = headers.get(b"host", b"").decode("latin-1")
        refusal = None
        remote = forwarded_for(scope)
        if remote is not None:
            scope.setdefault("state", {})[REMOTE_CLIENT] = remote
        if remote is not None and self.remote is not None:
            refusal = self.remote.refusal(scope["path"])
        if refusal is None:
            if self.allowed_hosts is not None and host_name(host) not in self.allowed_hosts:
                refusal = (400, "unknown Host: set DIMMY_ALLOWED_HOSTS to serve this name")
            elif scope["method"] in _STATE_CHANGING:
                refusal = _cross_site(headers, host)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, reason = refusal
        client = remote or (scope["client"][0] if scope.get("client") else "-")
        log.warning(
            "request refused",
            extra={"fields": {"reason": reason, "client": client, "host": host[:200]}},
        )
        body = json.dumps({"detail": reason}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _cross_site(headers: dict[bytes, bytes], host: str) -> tuple[int, str] | None:
    origin = headers.get(b"origin", b"").decode("latin-1").strip()
    if origin and (origin == "null" or urlsplit(origin).netloc.lower() != host.lower()):
        return 403, "cross-site request refused (Origin is another site)"
    if headers.get(b"sec-fetch-site", b"").lower() in (b"cross-site", b"same-site"):
        return 403, "cross-site request refused (Sec-Fetch-Site)"
    media = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
    if media in _FORM_TYPES:
        return 403, "form posts are refused: send JSON or no body"
    return None


def allowed_hosts(extra: frozenset[str], *, token_set: bool) -> frozenset[str] | None:
    """The names ``Host`` may carry: loopback names and ``extra`` without a token; with one,
    ``extra`` when given, else any (``None``)."""
    if token_set:
        return extra or None
    return LOOPBACK_HOSTS | extra


# the app's token check and sessions, and the dependencies that apply them ---------------------


def tokens_of(request: Request) -> TokenCheck:
    """The admin token check the app was built with (``app.state.tokens``)."""
    tokens: TokenCheck = request.app.state.tokens
    return tokens


def sessions_of(request: Request) -> Sessions:
    """The dashboard sessions the app was built with (``app.state.sessions``)."""
    sessions: Sessions = request.app.state.sessions
    return sessions


def accounts_of(request: Request) -> Accounts:
    """The configured accounts (``app.state.accounts``)."""
    accounts: Accounts = request.app.state.accounts
    return accounts


def client_of(request: Request) -> str:
    return request.client.host if request.client else "-"


def refusal(reason: str, retry_after: float | None, *, challenge: bool = True) -> HTTPException:
    """The answer to a wrong token: 429 with ``Retry-After`` when the client is throttled,
    else 401 (with a ``WWW-Authenticate: Bearer`` challenge unless told otherwise)."""
    if retry_after is not None:
        return HTTPException(
            status_code=429,
            detail=f"{reason} from this address: retry later",
            headers={"Retry-After": retry_after_header(retry_after)},
        )
    headers = {"WWW-Authenticate": "Bearer"} if challenge else None
    return HTTPException(status_code=401, detail=reason, headers=headers)


async def _session_admits(request: Request, sessions: Sessions) -> Session | None:
    """The dashboard session that admits ``request`` to ``/api/*`` instead of the bearer
    token, or ``None``. A state-changing request with the cookie but without the session's
    ``X-CSRF-Token`` is refused (403): a page of another site cannot have sent that header."""
    session = await sessions.current(request)
    if session is None:
        return None
    if request.method in _SAFE_METHODS:
        return session
    if sessions.csrf_ok(session, request.headers.get(CSRF_HEADER)):
        return session
    raise HTTPException(
        status_code=403,
        detail="CSRF token missing or wrong: the dashboard sends X-CSRF-Token with its "
        "session; programs use Authorization: Bearer",
    )


async def require_viewer(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Viewer:
    """Who asks ``/api/*``: when ``DIMMY_ADMIN_TOKEN`` is set, demand ``Authorization: Bearer``
    with it or an account's operator token (401), or a dashboard session, and answer 429 to a
    client that keeps giving wrong tokens. Resolved once per request."""
    state = request.scope.setdefault("state", {})
    if VIEWER in state:
        known: Viewer = state[VIEWER]
        return known
    viewer = await _resolve(request, credentials.credentials if credentials is not None else "")
    state[VIEWER] = viewer
    return viewer


async def _resolve(request: Request, given: str) -> Viewer:
    tokens = tokens_of(request)
    if tokens.required:
        # a dashboard session stands for its token (a POST also needs its CSRF header, else 403)
        session = await _session_admits(request, sessions_of(request))
        if session is not None:
            return Viewer(session.account)
    client = client_of(request)
    verdict = tokens.check(given, client, operators=accounts_of(request))
    if verdict.ok:
        return verdict.viewer
    throttled = verdict.retry_after is not None
    reason = "too many wrong admin tokens" if throttled else "missing or wrong admin token"
    fields = {"reason": reason, "client": client, "path": request.url.path}
    api_log.warning("API request refused", extra={"fields": fields})
    raise refusal(reason, verdict.retry_after)


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The gate of ``/api/*`` (:func:`require_viewer`, its answer left to the routes that
    read it)."""
    await require_viewer(request, credentials)


def metrics_guard(settings: Settings) -> Callable[[Request], Viewer]:
    """The dependency guarding ``/metrics``: it answers when no token is configured, or the
    bearer is ``DIMMY_METRICS_TOKEN`` or the admin token (every account), or an account's
    operator token (that account's series only); wrong ones count against the same
    per-address throttle as the API's."""
    accepted = [t for t in (settings.metrics_token_value(), settings.admin_token_value()) if t]
    # a client a proxy forwarded is offered only the tokens strong enough for a network
    strong = [t for t in accepted if not weak_token(t)]

    def require_metrics_token(request: Request) -> Viewer:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip() if scheme.lower() == "bearer" else ""
        client = client_of(request)
        offered = strong if REMOTE_CLIENT in request.scope.get("state", {}) else accepted
        operators = accounts_of(request)
        if accepted and not offered and operators.by_operator_token(given) is None:
            raise refusal("missing or wrong token", None)
        verdict = tokens_of(request).check(given, client, accepted=offered, operators=operators)
        if verdict.ok:
            return verdict.viewer
        if verdict.retry_after is None:
            metrics_log.warning("metrics request refused", extra={"fields": {"client": client}})
            raise refusal("missing or wrong token", None)
        raise refusal("too many wrong tokens", verdict.retry_after)

    return require_metrics_token


class LoginRequired(Exception):
    """A dashboard page needs a session: answered with a redirect to the login page."""


async def require_login(request: Request) -> Session | None:
    """The request's session (``None`` when no admin token is set: the dashboard is open)."""
    sessions = sessions_of(request)
    if not sessions.required:
        return None
    session = await sessions.current(request)
    if session is None:
        raise LoginRequired
    return session


class TokenFirst:
    """ASGI middleware asking ``/api/*`` for the admin token (or a dashboard session) before
    the app reads anything: a caller without it learns nothing, not even that its body or
    parameters are invalid (the routes' own dependency runs after FastAPI has parsed the
    body)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        credentials = None
        if scheme.lower() == "bearer" and given.strip():
            credentials = HTTPAuthorizationCredentials(scheme=scheme, credentials=given.strip())
        try:
            await require_viewer(request, credentials)
        except HTTPException as exc:
            answer = JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
            await answer(scope, receive, send)
            return
        except StoreError as exc:  # a session cookie, and the store cannot say if it ended
            log.warning("store error checking a session", extra={"fields": {"reason": str(exc)}})
            await JSONResponse({"detail": "store unavailable, retry later"}, 503)(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)
