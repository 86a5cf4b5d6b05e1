"""Dashboard logins: a signed session cookie and the CSRF token that goes with it.

When ``DIMMY_ADMIN_TOKEN`` is set, a person logs in once with it (``POST /ui/login``, throttled
per address like the API's bearer token) and gets a session cookie:

- ``v1.<issued>.<nonce>.<mac>``, the MAC an HMAC-SHA256 under a key derived from the admin
  token: nothing is stored server-side, every ``serve`` process behind a load balancer accepts
  it, and changing the token ends every session at once. It expires after
  ``DIMMY_SESSION_HOURS``; logging out deletes it from the browser.
- ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it),
  ``Secure`` when the request came over https (``X-Forwarded-Proto`` from a proxy uvicorn
  trusts, by default one on loopback).

**CSRF**: every state-changing request a browser makes with the cookie carries
``X-CSRF-Token``: the session's token (an HMAC of its nonce), which pages put in
``<meta name="csrf-token">`` for the dashboard's script. ``/api/*`` accepts the cookie instead of
the bearer token, and then wants that header on every POST (:func:`api_session_admits`). The
login itself is guarded by a double-submit token (a short-lived cookie and the same value in the
page). The service's :class:`~dimmy_webhooks.web.auth.AccessGuard` refuses, besides, every
cross-site and every form-encoded POST: the dashboard only posts JSON, from its own script.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request
from starlette.responses import Response

SESSION_COOKIE = "dimmy_session"
LOGIN_COOKIE = "dimmy_login"
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CLOCK_SKEW = 60.0  # a cookie issued this far in the future (another process's clock) is fine


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in browser: its nonce names it; it ends at ``expires_at`` (Unix seconds)."""

    nonce: str
    issued_at: float
    expires_at: float


class Sessions:
    """Issues and checks session cookies and CSRF tokens; ``token`` ``None``: no login."""

    def __init__(
        self, token: str | None, *, hours: float = 12.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.required = token is not None
        self.lifetime = hours * 3600
        self.clock = clock
        seed = (token or "").encode()
        self._key = hmac.new(seed, b"dimmy-webhooks dashboard session v1", hashlib.sha256).digest()

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        """A new session cookie value."""
        payload = f"v1.{int(self.clock())}.{secrets.token_urlsafe(18)}"
        return f"{payload}.{self._mac(payload)}"

    def verify(self, cookie: str | None) -> Session | None:
        """The session ``cookie`` stands for, or ``None`` (absent, forged, expired)."""
        if not self.required or not cookie or len(cookie) > 200:
            return None
        payload, _, mac = cookie.rpartition(".")
        parts = payload.split(".")
        if len(parts) != 3 or parts[0] != "v1" or not parts[1].isdecimal():
            return None
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        issued = float(parts[1])
        now = self.clock()
        if issued > now + _CLOCK_SKEW or issued + self.lifetime <= now:
            return None
        return Session(parts[2], issued, issued + self.lifetime)

    def csrf(self, session: Session) -> str:
        """The CSRF token of ``session`` (the same for its whole life)."""
        return self._mac(f"csrf.{session.nonce}")

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given), self.csrf(session))


def sessions_of(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


def current_session(request: Request) -> Session | None:
    """The request's valid session, or ``None``."""
    return sessions_of(request).verify(request.cookies.get(SESSION_COOKIE))


def api_session_admits(request: Request) -> bool:
    """Whether ``request`` to ``/api/*`` is admitted by a dashboard session instead of the
    bearer token. A state-changing request with the cookie but without the session's
    ``X-CSRF-Token`` is refused (403): a page of another site cannot have sent that header."""
    session = current_session(request)
    if session is None:
        return False
    if request.method in _SAFE_METHODS:
        return True
    if sessions_of(request).csrf_ok(session, request.headers.get(CSRF_HEADER)):
        return True
    raise HTTPException(
        status_code=403,
        detail="CSRF token missing or wrong: the dashboard sends X-CSRF-Token with its "
        "session; programs use Authorization: Bearer",
    )


def set_cookie(
    request: Request, response: Response, name: str, value: str, **options: object
) -> None:
    """Set a cookie the dashboard's way: ``HttpOnly``, ``SameSite=Strict``, ``Secure`` over
    https."""
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        **options,  # type: ignore[arg-type]
    )


def start_session(request: Request, response: Response) -> None:
    sessions = sessions_of(request)
    set_cookie(
        request,
        response,
        SESSION_COOKIE,
        sessions.issue(),
        max_age=int(sessions.lifetime),
        path="/",
    )


def end_session(request: Request, response: Response) -> None:
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def local_path(target: str | None) -> str:
    """``target`` when it is a path of this site (``/...``, not ``//host`` or ``/\\host``),
    else ``/``: a login never redirects to another site."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    if any(c in target for c in "\r\n\t\\") or len(target) > 2000:
        return "/"
    return target
