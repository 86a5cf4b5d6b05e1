"""Logins: a signed session cookie and the CSRF token that goes with it (dashboard and API).

When ``DIMMY_ADMIN_TOKEN`` is set, a person logs in once with it (``POST /ui/login``, throttled
per address like the API's bearer token) and gets a session cookie:

- ``v2.<issued>.<nonce>.<epoch>.<mac>``, the MAC an HMAC-SHA256 under a key derived from the
  admin token: every ``serve`` process sharing the store accepts it, and changing the token
  ends every session at once. It expires after ``DIMMY_SESSION_HOURS``.
- **Logging out ends it server-side, at once** (S17): a session is valid only while its
  ``epoch`` is the one the store holds (:data:`EPOCH_STATE`, one row, read at each request a
  cookie carries), and ``POST /ui/logout`` draws a new epoch, so the logged-out cookie and its
  CSRF token are refused by every process, even when copied elsewhere. Every session ends with
  it: the dashboard has one operator, one token, and a logout is the way to end a session one
  fears was copied.
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
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

SESSION_COOKIE = "dimmy_session"
LOGIN_COOKIE = "dimmy_login"
CSRF_HEADER = "x-csrf-token"
EPOCH_STATE = "dashboard_session_epoch"
"""The store's state row holding the sessions' epoch (absent: :data:`FIRST_EPOCH`)."""
FIRST_EPOCH = "0"
_CLOCK_SKEW = 60.0  # a cookie issued this far in the future (another process's clock) is fine
_WORD = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CHECKED = "dimmy_session"  # the request's session, once looked up (request.state)


class EpochStore(Protocol):
    """Where the sessions' epoch is kept: the service's store (one row of its sync state)."""

    async def get_state(self, name: str) -> str | None: ...

    async def set_state(self, name: str, value: str, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in browser: its nonce names it; it ends at ``expires_at`` (Unix seconds), or
    when the store's epoch is no longer ``epoch``."""

    nonce: str
    issued_at: float
    expires_at: float
    epoch: str


class Sessions:
    """Issues and checks session cookies and CSRF tokens; ``token`` ``None``: no login."""

    def __init__(
        self,
        token: str | None,
        epochs: EpochStore,
        *,
        hours: float = 12.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.required = token is not None
        self.lifetime = hours * 3600
        self.clock = clock
        self._epochs = epochs
        seed = (token or "").encode()
        self._key = hmac.new(seed, b"dimmy-webhooks dashboard session v1", hashlib.sha256).digest()

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    async def epoch(self) -> str:
        """The store's epoch now: sessions of another one have ended."""
        return await self._epochs.get_state(EPOCH_STATE) or FIRST_EPOCH

    async def issue(self) -> str:
        """A new session cookie value, of the store's epoch."""
        payload = f"v2.{int(self.clock())}.{secrets.token_urlsafe(18)}.{await self.epoch()}"
        return f"{payload}.{self._mac(payload)}"

    def verify(self, cookie: str | None) -> Session | None:
        """The session ``cookie`` stands for, or ``None`` (absent, forged, expired); whether
        it was ended since is :meth:`current`'s to ask the store."""
        if not self.required or not cookie or len(cookie) > 300:
            return None
        payload, _, mac = cookie.rpartition(".")
        parts = payload.split(".")
        if len(parts) != 4 or parts[0] != "v2" or not parts[1].isdecimal():
            return None
        if not all(_WORD.fullmatch(part) for part in parts[2:]):
            return None
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        issued = float(parts[1])
        now = self.clock()
        if issued > now + _CLOCK_SKEW or issued + self.lifetime <= now:
            return None
        return Session(parts[2], issued, issued + self.lifetime, parts[3])

    async def end_all(self) -> None:
        """End every session at once, in every process sharing the store: a new epoch."""
        await self._epochs.set_state(EPOCH_STATE, secrets.token_urlsafe(12), self.clock())

    def csrf(self, session: Session) -> str:
        """The CSRF token of ``session`` (the same for its whole life)."""
        return self._mac(f"csrf.{session.nonce}")

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given), self.csrf(session))

    async def current(self, request: Request) -> Session | None:
        """The valid session ``request`` carries, or ``None``: the store is asked whether it
        was ended (once per request). Raises :class:`~dimmy_webhooks.errors.StoreError` when
        the store does not answer (the caller refuses the request: it cannot tell)."""
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is None:
            return None  # a program with a bearer token: the store is not asked
        state = request.scope.setdefault("state", {})
        if _CHECKED in state:
            checked: Session | None = state[_CHECKED]
            return checked
        session = self.verify(cookie)
        if session is not None and not hmac.compare_digest(session.epoch, await self.epoch()):
            session = None
        state[_CHECKED] = session
        return session

    async def start(self, request: Request, response: Response) -> None:
        """Log the browser in: a new session cookie on ``response``."""
        cookie = await self.issue()
        set_cookie(request, response, SESSION_COOKIE, cookie, max_age=int(self.lifetime), path="/")


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
