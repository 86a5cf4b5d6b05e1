"""Logins: a signed session cookie and the CSRF token that goes with it (dashboard and API).

When ``DIMMY_ADMIN_TOKEN`` is set, a person logs in once with it (``POST /ui/login``, throttled
per address like the API's bearer token) and gets a session cookie:

- ``v2.<issued>.<nonce>.<epoch>.<mac>`` for the admin,
  ``v3.<issued>.<nonce>.<epoch>.<account>.<mac>`` for an account's operator (a login with its
  ``operator_token``: the session sees that account only). The MAC is an HMAC-SHA256 under a
  key derived from the admin token, over the operator token's digest too for an operator:
  every ``serve`` process sharing the store accepts it, changing the admin token ends every
  session at once, and changing (or removing) an account's operator token, or the account,
  ends that account's sessions. It expires after ``DIMMY_SESSION_HOURS``.
- **Logging out ends it server-side, at once** (S17): a session is valid only while its
  ``epoch`` is the one the store holds for its principal (:data:`EPOCH_STATE` for the admin,
  ``EPOCH_STATE:<account>`` for an account's operators; one row each, read at each request a
  cookie carries), and ``POST /ui/logout`` draws a new epoch, so the logged-out cookie and its
  CSRF token are refused by every process, even when copied elsewhere. Every session of the
  same principal ends with it (one token, one epoch: a logout is the way to end a session one
  fears was copied); the admin logging out does not log the accounts' operators out, nor one
  operator another account's.
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
_ACCOUNT = re.compile(r"[a-z0-9-]{1,40}")  # config.accounts.ACCOUNT_NAME
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
    account: str | None = None
    """``None``: the admin's session; else the operator's of this account."""


def epoch_state(account: str | None) -> str:
    """The store's state row holding the epoch of the admin's sessions (``None``) or of an
    account's operators'."""
    return EPOCH_STATE if account is None else f"{EPOCH_STATE}:{account}"


class Sessions:
    """Issues and checks session cookies and CSRF tokens; ``token`` ``None``: no login.

    ``operator_digest(name)`` is the SHA-256 digest of account ``name``'s operator token now
    (``None``: the account is gone or has none), which an operator's session is bound to.
    """

    def __init__(
        self,
        token: str | None,
        epochs: EpochStore,
        *,
        hours: float = 12.0,
        clock: Callable[[], float] = time.time,
        operator_digest: Callable[[str], str | None] = lambda name: None,
    ) -> None:
        self.required = token is not None
        self.lifetime = hours * 3600
        self.clock = clock
        self._epochs = epochs
        self._operator_digest = operator_digest
        seed = (token or "").encode()
        self._key = hmac.new(seed, b"dimmy-webhooks dashboard session v1", hashlib.sha256).digest()

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def _signed(self, payload: str, account: str | None) -> str | None:
        """The MAC of a cookie's ``payload``: for an operator's, over its token's digest too
        (``None`` when the account has no operator token now)."""
        if account is None:
            return self._mac(payload)
        digest = self._operator_digest(account)
        return None if digest is None else self._mac(f"{payload}\n{digest}")

    async def epoch(self, account: str | None = None) -> str:
        """The store's epoch now for the admin (or ``account``'s operators): sessions of
        another one have ended."""
        return await self._epochs.get_state(epoch_state(account)) or FIRST_EPOCH

    async def issue(self, account: str | None = None) -> str:
        """A new session cookie value of the admin (or of ``account``'s operator), of the
        store's epoch."""
        head = "v2" if account is None else "v3"
        stamp = f"{int(self.clock())}.{secrets.token_urlsafe(18)}.{await self.epoch(account)}"
        payload = f"{head}.{stamp}" if account is None else f"{head}.{stamp}.{account}"
        mac = self._signed(payload, account)
        if mac is None:
            raise ValueError(f"account {account!r} has no operator token")
        return f"{payload}.{mac}"

    def verify(self, cookie: str | None) -> Session | None:
        """The session ``cookie`` stands for, or ``None`` (absent, forged, expired); whether
        it was ended since is :meth:`current`'s to ask the store."""
        if not self.required or not cookie or len(cookie) > 300:
            return None
        payload, _, mac = cookie.rpartition(".")
        parts = payload.split(".")
        size = {"v2": 4, "v3": 5}.get(parts[0])
        if size is None or len(parts) != size or not parts[1].isdecimal():
            return None
        if not all(_WORD.fullmatch(part) for part in parts[2:4]):
            return None
        account = parts[4] if size == 5 else None
        if account is not None and not _ACCOUNT.fullmatch(account):
            return None
        expected = self._signed(payload, account)
        if expected is None or not hmac.compare_digest(mac, expected):
            return None
        issued = float(parts[1])
        now = self.clock()
        if issued > now + _CLOCK_SKEW or issued + self.lifetime <= now:
            return None
        return Session(parts[2], issued, issued + self.lifetime, parts[3], account)

    async def end_all(self, account: str | None = None) -> None:
        """End every session of the admin (or of ``account``'s operators) at once, in every
        process sharing the store: a new epoch."""
        name = epoch_state(account)
        await self._epochs.set_state(name, secrets.token_urlsafe(12), self.clock())

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
        if session is not None:
            epoch = await self.epoch(session.account)
            if not hmac.compare_digest(session.epoch, epoch):
                session = None
        state[_CHECKED] = session
        return session

    async def start(self, request: Request, response: Response, account: str | None = None) -> None:
        """Log the browser in (as the admin, or as ``account``'s operator): a new session
        cookie on ``response``."""
        cookie = await self.issue(account)
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
