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
- **Sessions** (:mod:`.sessions`): a dashboard login stands for the admin token on ``/api/*``
  too; a state-changing request with the cookie also needs the session's ``X-CSRF-Token``.
- **Metrics**: ``/metrics`` takes ``DIMMY_METRICS_TOKEN`` or the admin token, when one is set.

The rules are applied by the ASGI middlewares :class:`AccessGuard` (Host, cross-site) and
:class:`TokenFirst` (``/api/*`` before anything is parsed), and by the dependencies
:func:`require_admin`, :func:`metrics_guard` and :func:`require_login`, which the routes
receive through :mod:`.deps`. The app's :class:`TokenCheck` and :class:`.sessions.Sessions`
are built once, by :func:`~dimmy_webhooks.web.app.create_app`.
"""

from __future__ import annotations

import collections
import hmac
import ipaddress
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
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
from dimmy_webhooks.errors import StoreError
from dimmy_webhooks.ratelimit import SlidingWindow
from dimmy_webhooks.web.sessions import CSRF_HEADER, Session, Sessions

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
    "allowed_hosts",
    "metrics_guard",
    "require_admin",
    "require_login",
    "sessions_of",
    "tokens_of",
]

_CHECKED_HEADERS = frozenset({b"host", b"origin", b"sec-fetch-site", b"content-type"})
_FORWARDING_HEADERS = frozenset({b"x-forwarded-for", b"forwarded", b"x-real-ip"})
REMOTE_CLIENT = "dimmy_remote_client"
"""``scope["state"]`` key: the remote address a request was forwarded for (:class:`AccessGuard`)."""
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FORM_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_bearer = HTTPBearer(auto_error=False)


class FailureThrottle:
    """Wrong-token attempts per client: more than ``limit`` within ``window`` seconds locks the
    client out until ``window`` seconds after its first counted failure. Remembers at most
    ``max_clients`` clients (the oldest are forgotten first), so it cannot grow without bound."""

    def __init__(
        self,
        *,
        limit: int = 10,
        window: float = 60.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._failures: collections.OrderedDict[str, SlidingWindow] = collections.OrderedDict()

    def retry_after(self, client: str) -> float | None:
        """Seconds ``client`` must wait before it is heard again, or ``None``."""
        failures = self._failures.get(client)
        wait = failures.wait() if failures is not None else 0.0
        return wait if wait > 0 else None

    def failed(self, client: str) -> None:
        failures = self._failures.get(client)
        if failures is None:
            failures = SlidingWindow(self.limit, self.window, clock=self._clock)
            self._failures[client] = failures
        failures.add()
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a token check decided: ``ok``; else refused, ``retry_after`` seconds when the
    client is throttled (answer 429), ``None`` when the token is wrong (answer 401)."""

    ok: bool
    retry_after: float | None = None


class TokenCheck:
    """The admin token (``None``: not required) and the throttle of wrong attempts."""

    def __init__(self, token: str | None, throttle: FailureThrottle | None = None) -> None:
        self._token = token.encode() if token is not None else None
        self.throttle = throttle or FailureThrottle()

    @property
    def required(self) -> bool:
        return self._token is not None

    def check(self, given: str, client: str, *, accepted: Sequence[str] | None = None) -> Verdict:
        """Whether ``given`` (from ``client``) is the token (or one of ``accepted``, when
        given: none accepted means none required). The right token is accepted even from a
        throttled client; a wrong one from it is answered with the wait, uncounted."""
        tokens = [self._token] if accepted is None else [t.encode() for t in accepted]
        if not any(tokens):
            return Verdict(ok=True)
        # the right token is always heard: clients behind a proxy that does not forward
        # addresses share one, and wrong guesses there must not lock the operator out (S24);
        # a guess's odds come from the token's strength, the throttle only slows the guessing
        if any(token and hmac.compare_digest(given.encode(), token) for token in tokens):
            return Verdict(ok=True)
        wait = self.throttle.retry_after(client)
        if wait is not None:
            return Verdict(ok=False, retry_after=wait)
        self.throttle.failed(client)
        return Verdict(ok=False)


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


async def _session_admits(request: Request, sessions: Sessions) -> bool:
    """Whether ``request`` to ``/api/*`` is admitted by a dashboard session instead of the
    bearer token. A state-changing request with the cookie but without the session's
    ``X-CSRF-Token`` is refused (403): a page of another site cannot have sent that header."""
    session = await sessions.current(request)
    if session is None:
        return False
    if request.method in _SAFE_METHODS:
        return True
    if sessions.csrf_ok(session, request.headers.get(CSRF_HEADER)):
        return True
    raise HTTPException(
        status_code=403,
        detail="CSRF token missing or wrong: the dashboard sends X-CSRF-Token with its "
        "session; programs use Authorization: Bearer",
    )


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """When ``DIMMY_ADMIN_TOKEN`` is set, demand ``Authorization: Bearer <token>`` (401) or a
    dashboard session, and answer 429 to a client that keeps giving wrong tokens."""
    tokens = tokens_of(request)
    if not tokens.required:
        return
    # a dashboard session stands for the token (a POST also needs its CSRF header, else 403)
    if await _session_admits(request, sessions_of(request)):
        return
    client = client_of(request)
    verdict = tokens.check(credentials.credentials if credentials is not None else "", client)
    if verdict.ok:
        return
    throttled = verdict.retry_after is not None
    reason = "too many wrong admin tokens" if throttled else "missing or wrong admin token"
    fields = {"reason": reason, "client": client, "path": request.url.path}
    api_log.warning("API request refused", extra={"fields": fields})
    raise refusal(reason, verdict.retry_after)


def metrics_guard(settings: Settings) -> Callable[[Request], None]:
    """The dependency guarding ``/metrics``: it answers when no token is configured, or the
    bearer is ``DIMMY_METRICS_TOKEN`` or the admin token (wrong ones count against the same
    per-address throttle as the API's)."""
    accepted = [t for t in (settings.metrics_token_value(), settings.admin_token_value()) if t]
    # a client a proxy forwarded is offered only the tokens strong enough for a network
    strong = [t for t in accepted if not weak_token(t)]

    def require_metrics_token(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip() if scheme.lower() == "bearer" else ""
        client = client_of(request)
        offered = strong if REMOTE_CLIENT in request.scope.get("state", {}) else accepted
        if accepted and not offered:
            raise refusal("missing or wrong token", None)
        verdict = tokens_of(request).check(given, client, accepted=offered)
        if verdict.ok:
            return
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
            await require_admin(request, credentials)
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
