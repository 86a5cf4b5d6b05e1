"""Who may use the JSON API (and the dashboard): token, throttling, Host and cross-site checks.

``POST /webhook`` is not governed here: its signature is its access control. Everything else:

- **Admin token** (``DIMMY_ADMIN_TOKEN``): when set, ``/api/*`` wants ``Authorization: Bearer``;
  compared in constant time. Binding anything but loopback needs one of at least
  :data:`MIN_TOKEN_LENGTH` characters (``dimmy-webhooks token`` makes one).
- **Throttling**: a client (by address, as uvicorn reports it, ``X-Forwarded-For`` from a
  loopback proxy included) that gives :data:`FailureThrottle.limit` wrong tokens within its window
  is answered 429 with ``Retry-After`` until the window has passed, whatever it sends meanwhile.
- **Host** (DNS rebinding): with no admin token, a request must name this machine in ``Host``
  (``127.0.0.1``, ``localhost``, ``::1``, any port) or one of ``DIMMY_ALLOWED_HOSTS``; else 400.
  With a token, only ``DIMMY_ALLOWED_HOSTS`` restricts it, when set.
- **Cross-site requests** (CSRF): a state-changing request (``POST``, ``PUT``, ``PATCH``,
  ``DELETE``) is refused (403) when the browser says it comes from another site (``Origin`` not
  this host, ``Sec-Fetch-Site: cross-site``) or when it has a body type an HTML form can send
  (``text/plain``, ``application/x-www-form-urlencoded``, ``multipart/form-data``). Programs
  (curl, scripts) send neither and pass.
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from dimmy_webhooks.config import LOOPBACK_HOSTS, MIN_TOKEN_LENGTH, host_name
from dimmy_webhooks.ratelimit import SlidingWindow

log = logging.getLogger("dimmy_webhooks.web.auth")

__all__ = ["MIN_TOKEN_LENGTH", "AccessGuard", "FailureThrottle", "TokenCheck", "allowed_hosts"]

_CHECKED_HEADERS = frozenset({b"host", b"origin", b"sec-fetch-site", b"content-type"})
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FORM_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})


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

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


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

    def check(self, given: str, client: str) -> Verdict:
        """Whether ``given`` (from ``client``) is the token; a throttled client is refused
        without looking at what it gave."""
        if self._token is None:
            return Verdict(ok=True)
        wait = self.throttle.retry_after(client)
        if wait is not None:
            return Verdict(ok=False, retry_after=wait)
        if hmac.compare_digest(given.encode(), self._token):
            self.throttle.succeeded(client)
            return Verdict(ok=True)
        self.throttle.failed(client)
        return Verdict(ok=False)


class AccessGuard:
    """ASGI middleware applying the Host and cross-site rules above to every HTTP request.

    ``allowed_hosts`` is the set of names ``Host`` may carry, or ``None`` for any.
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: frozenset[str] | None) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            k: v
            for k, v in scope["headers"]
            if k in (b"host", b"origin", b"sec-fetch-site", b"content-type")
        }
        host = headers.get(b"host", b"").decode("latin-1")
        refusal = None
        if self.allowed_hosts is not None and host_name(host) not in self.allowed_hosts:
            refusal = (400, "unknown Host: set DIMMY_ALLOWED_HOSTS to serve this name")
        elif scope["method"] in _STATE_CHANGING:
            refusal = _cross_site(headers, host)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, reason = refusal
        client = scope["client"][0] if scope.get("client") else "-"
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
