"""Logins: a signed session cookie and the CSRF token that goes with it (dashboard and API).

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
the bearer token, and then wants that header on every POST
(:func:`~dimmy_webhooks.web.auth.require_admin`). The
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

from starlette.requests import Request
from starlette.responses import Response

SESSION_COOKIE = "dimmy_session"
LOGIN_COOKIE = "dimmy_login"
CSRF_HEADER = "x-csrf-token"
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

    def current(self, request: Request) -> Session | None:
        """The valid session ``request`` carries, or ``None``."""
        return self.verify(request.cookies.get(SESSION_COOKIE))

    def start(self, request: Request, response: Response) -> None:
        """Log the browser in: a new session cookie on ``response``."""
        set_cookie(
            request, response, SESSION_COOKIE, self.issue(), max_age=int(self.lifetime), path="/"
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
