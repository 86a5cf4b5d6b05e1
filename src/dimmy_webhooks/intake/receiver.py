"""``POST /webhook``: check the signature headers, read the body (capped, timed, budgeted),
verify its signature, commit to the inbox, then answer.

Answers (the public contract, as the README's HTTP interface table lists it): 204 accepted or
duplicate; 401 signature, timestamp or headers rejected; 400 not JSON (or nested deeper than
``DIMMY_MAX_JSON_DEPTH``) after a valid signature; a body with a byte order mark, or in UTF-16
or UTF-32, is stored as UTF-8 JSON text without the mark (the signature is over the bytes sent);
413 body over the cap (decided while reading, never after buffering it all); 408 body not
received in time; 503 when the inbox cannot commit, or when the bodies held unverified would
exceed their budget (both with ``Retry-After``: the sender retries). Nothing is fetched here:
the worker does that after the answer.

In order, each as early as HTTP allows: a declared ``Content-Length`` over the cap is 413, and
headers that can never verify (missing, malformed, timestamp outside the window) are 401, both
before a byte of the body is read and with the connection closed, so the rest of the body is
never read either. Until its signature is checked, a body is held against one process-wide
budget (:class:`UnverifiedBodies`): unsigned senders cannot make the process hold more than
that, however many of them there are, and large ones cannot take its last part, kept for the
small bodies genuine webhooks are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dimmy_webhooks.config import SMALL_BODY_BYTES, SMALL_BODY_RESERVE
from dimmy_webhooks.errors import StoreError, VerificationError
from dimmy_webhooks.failpoints import NONE as NO_FAILPOINTS
from dimmy_webhooks.failpoints import Failpoints
from dimmy_webhooks.items import clean_json_bytes
from dimmy_webhooks.models import (
    ITEMS_SCANNED,
    IncomingEvent,
    InsertOutcome,
    classify_event,
    nested_deeper_than,
    nesting_bound,
)
from dimmy_webhooks.signatures import SignedHeaders, VerifiedMessage, Verifier
from dimmy_webhooks.store import Store

log = logging.getLogger("dimmy_webhooks.intake.receiver")

_KEPT_HEADERS = (
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "user-agent",
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
_JSON = [(b"content-type", b"application/json")]
_CLOSE = [(b"connection", b"close")]
_RETRY = [(b"retry-after", b"5")]
_TOO_DEEP = object()


class BodyRejected(Exception):
    """A verified body that is no event: the 400's reason, and the log line's."""

    def __init__(self, answer: str, log_reason: str) -> None:
        super().__init__(answer)
        self.answer = answer
        self.log_reason = log_reason


def parse_event(body: bytes, max_depth: int) -> tuple[str, int | None]:
    """The event type of a verified body, and for ``items.scanned`` how many ids it carries.

    Raises :class:`BodyRejected` when ``body`` is not JSON as :func:`json.loads` reads it (the
    worker parses the stored body again with it), or nests arrays and objects deeper than
    ``max_depth``. The depth is walked only when :func:`nesting_bound` cannot rule it out, which
    a body of ids always does.
    """
    try:
        payload = json.loads(body)
    except ValueError:  # includes UnicodeDecodeError
        raise BodyRejected("body is not JSON", "invalid JSON") from None
    except RecursionError:  # nested beyond what the parser follows: a 400 too, not a 503
        payload = _TOO_DEEP
    if payload is _TOO_DEEP or (
        nesting_bound(body) > max_depth and nested_deeper_than(payload, max_depth)
    ):
        reason = f"JSON nested deeper than {max_depth} levels"
        raise BodyRejected(reason, reason)
    event_type = classify_event(payload)
    return event_type, len(payload["item_ids"]) if event_type == ITEMS_SCANNED else None


def clean_body(body: bytes) -> bytes:
    """A verified body as UTF-8 without a byte order mark (a UTF-8 BOM is dropped, UTF-16 and
    UTF-32 are decoded, as :func:`json.loads` would read them); the same bytes when it already
    is. Raises :class:`BodyRejected` when it is not text in the encoding its first bytes tell.
    """
    try:
        return clean_json_bytes(body)
    except ValueError:  # UnicodeDecodeError
        reason = "body is not UTF-8, UTF-16 or UTF-32 text"
        raise BodyRejected(reason, reason) from None


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class OverBudget(Exception):
    pass


class UnverifiedBodies:
    """The budget of webhook body bytes held before their signature is checked, for the whole
    process (the receiver runs on one event loop, so no lock).

    A request takes bytes as they arrive (:meth:`take`) and gives all of them back once its
    signature has been checked or it failed (:meth:`give_back`), so what is held never exceeds
    ``budget``. A request that declares more than :data:`SMALL_BODY_BYTES` (or no length) may
    only take bytes while the total stays within ``budget - SMALL_BODY_RESERVE``: large unsigned
    bodies cannot crowd out the small ones that every genuine Dimmy webhook is.
    """

    __slots__ = ("budget", "held", "large_limit")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.large_limit = budget - SMALL_BODY_RESERVE if budget > SMALL_BODY_RESERVE else budget
        self.held = 0

    def take(self, count: int, *, small: bool) -> bool:
        """Count ``count`` more bytes for a request (``small``: it declared at most
        :data:`SMALL_BODY_BYTES`); ``False``, counting nothing, when they do not fit."""
        if self.held + count > (self.budget if small else self.large_limit):
            return False
        self.held += count
        return True

    def give_back(self, count: int) -> None:
        self.held -= count


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    reason: str | None = None  # sent as {"error": reason}
    headers: tuple[tuple[bytes, bytes], ...] = ()
    outcome: str | None = None  # a 204's InsertOutcome, for the metrics


def _headers(scope: Scope) -> dict[str, str]:
    # ASGI header names are lower-case bytes; the first of repeated headers wins
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}


class _Body:
    """One request's body as it is read, and the budget bytes it holds (given back by the
    caller once the signature is checked)."""

    __slots__ = ("budget", "cap", "data", "held", "small")

    def __init__(self, cap: int, budget: UnverifiedBodies, declared: int | None) -> None:
        self.cap = cap
        self.budget = budget
        self.small = declared is not None and declared <= SMALL_BODY_BYTES
        self.data = bytearray()
        self.held = 0

    async def read(self, receive: Receive) -> bytes:
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            if len(self.data) + len(chunk) > self.cap:
                raise BodyTooLarge
            if chunk:
                if not self.budget.take(len(chunk), small=self.small):
                    raise OverBudget
                self.held += len(chunk)
                self.data += chunk
            if not message.get("more_body", False):
                body = bytes(self.data)
                self.data = bytearray()
                return body


def _declared_length(headers: dict[str, str]) -> int | None:
    declared = headers.get("content-length")
    return int(declared) if declared is not None and declared.isdecimal() else None


class Receiver:
    """The webhook endpoint as a plain ASGI app: no framework between the socket and the inbox."""

    def __init__(
        self,
        store: Store,
        verifier: Verifier,
        *,
        max_body_bytes: int,
        body_timeout: float,
        unverified_body_bytes: int,
        max_json_depth: int = 64,
        on_accepted: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        crash: Failpoints = NO_FAILPOINTS,
        observe: Callable[[int, str | None, str | None], None] | None = None,
        account: str = "default",
        unverified: UnverifiedBodies | None = None,
    ) -> None:
        self.account = account
        self.crash = crash
        # (status, outcome, reason) of every answer: /metrics and the dashboard
        self.observe = observe
        self.store = store
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.body_timeout = body_timeout
        # one budget for every account's receiver: it bounds the memory of the whole process
        self.unverified = unverified or UnverifiedBodies(unverified_body_bytes)
        self.on_accepted = on_accepted
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            answer = await self._receive(scope, receive)
        except Exception:  # a bug must not become a 500 or a lost event: the sender retries
            log.exception("webhook failed unexpectedly")
            answer = Answer(503, "internal error, retry later", tuple(_RETRY))
        if self.observe is not None:
            self.observe(answer.status, answer.outcome, answer.reason)
        headers = [*SECURITY_HEADERS, *answer.headers]
        body = b""
        if answer.reason is not None:
            body = json.dumps({"error": answer.reason}).encode()
            headers += _JSON
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _receive(self, scope: Scope, receive: Receive) -> Answer:
        client = scope["client"][0] if scope.get("client") else "-"
        headers = _headers(scope)
        declared = _declared_length(headers)
        if declared is not None and declared > self.max_body_bytes:
            return self._too_large(client)
        try:
            signed = self.verifier.check_headers(headers)
        except VerificationError as exc:
            # the body is never read: close rather than wait for (and discard) the rest of it
            log.info("webhook rejected", extra={"fields": {"reason": exc.reason, "client": client}})
            return Answer(401, exc.reason, tuple(_CLOSE))
        body = _Body(self.max_body_bytes, self.unverified, declared)
        try:
            verified = await self._read_and_verify(body, signed, receive, client)
        finally:
            self.unverified.give_back(body.held)
        if isinstance(verified, Answer):
            return verified
        raw, message = verified
        return await self._store(headers, raw, message)

    async def _read_and_verify(
        self, body: _Body, signed: SignedHeaders, receive: Receive, client: str
    ) -> tuple[bytes, VerifiedMessage] | Answer:
        try:
            async with asyncio.timeout(self.body_timeout):
                raw = await body.read(receive)
        except BodyTooLarge:
            return self._too_large(client)
        except OverBudget:
            log.info(
                "webhook rejected",
                extra={"fields": {"reason": "unverified bodies over budget", "client": client}},
            )
            reason = "too many unverified bodies in memory, retry later"
            return Answer(503, reason, (*_RETRY, *_CLOSE))
        except TimeoutError:
            log.info(
                "webhook rejected", extra={"fields": {"reason": "body timeout", "client": client}}
            )
            return Answer(408, "body not received in time", tuple(_CLOSE))
        except ClientGone:
            log.info(
                "webhook abandoned",
                extra={"fields": {"reason": "client disconnected", "client": client}},
            )
            return Answer(400, "client disconnected")
        try:
            return raw, self.verifier.check_signature(signed, raw)
        except VerificationError as exc:
            log.info("webhook rejected", extra={"fields": {"reason": exc.reason, "client": client}})
            return Answer(401, exc.reason)

    def _too_large(self, client: str) -> Answer:
        log.info(
            "webhook rejected", extra={"fields": {"reason": "body too large", "client": client}}
        )
        return Answer(413, f"body larger than {self.max_body_bytes} bytes", tuple(_CLOSE))

    async def _store(
        self, headers: dict[str, str], body: bytes, message: VerifiedMessage
    ) -> Answer:
        fields: dict[str, object] = {"msg_id": message.msg_id}
        if self.account != "default":
            fields["account"] = self.account
        try:
            # the signature was over the bytes as sent; what is stored (and later spliced into
            # JSON answers and deliveries) is UTF-8 JSON text without a byte order mark
            body = clean_body(body)
            event_type, item_count = parse_event(body, self.max_json_depth)
        except BodyRejected as exc:
            # retrying cannot help: a 4xx tells the sender so (a 5xx would be retried for 27 h)
            log.info("webhook rejected", extra={"fields": {**fields, "reason": exc.log_reason}})
            return Answer(400, exc.answer)
        event = IncomingEvent(
            message_id=message.msg_id,
            event_type=event_type,
            body=body,
            headers={k: v for k in _KEPT_HEADERS if (v := headers.get(k)) is not None},
            received_at=self.clock(),
            item_count=item_count,
            account=self.account,
        )
        try:
            outcome = await self.store.insert_event(event)
        except StoreError as exc:
            log.warning("webhook not stored", extra={"fields": {**fields, "reason": str(exc)}})
            return Answer(503, "inbox unavailable, retry later", tuple(_RETRY))

        self.crash.hit("after_insert")
        fields.update(type=event_type, outcome=outcome.value)
        if item_count is not None:
            fields["items"] = item_count
        log.info(f"webhook {outcome.value}", extra={"fields": fields})
        if outcome is not InsertOutcome.DUPLICATE:
            self.on_accepted()
        return Answer(204, outcome=outcome.value)


async def _pull_mode(scope: Scope, receive: Receive, send: Send) -> None:
    body = json.dumps(
        {
            "error": "webhooks are off: this service reads items from the Dimmy API (pull mode, "
            "no DIMMY_WEBHOOK_SECRET configured)"
        }
    ).encode()
    headers = [*SECURITY_HEADERS, *_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})


PULL_MODE: ASGIApp = _pull_mode
"""The webhook path of a service in pull mode: 404, saying why (no body is read)."""


async def _no_account(scope: Scope, receive: Receive, send: Send) -> None:
    body = json.dumps({"error": "no such account: check the endpoint URL"}).encode()
    headers = [*SECURITY_HEADERS, *_JSON, *_CLOSE, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})


NO_ACCOUNT: ASGIApp = _no_account
"""``POST <path>/<name>`` for a name no account has: 404 (no body is read)."""


class WebhookRoute:
    """ASGI middleware sending ``POST`` to a webhook path straight to its account's receiver
    (``receivers``: by path), ``POST <path>/<anything else>`` to :data:`NO_ACCOUNT`, and the
    rest to the app."""

    def __init__(
        self,
        app: ASGIApp,
        receiver: ASGIApp | None = None,
        path: str = "/webhook",
        receivers: dict[str, ASGIApp] | None = None,
    ) -> None:
        self.app = app
        self.receivers = dict(receivers or {})
        if receiver is not None:
            self.receivers.setdefault(path, receiver)
        self.prefix = path.rstrip("/") + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            receiver = self.receivers.get(path)
            if receiver is None and path.startswith(self.prefix):
                receiver = NO_ACCOUNT
            if receiver is not None:
                await receiver(scope, receive, send)
                return
        await self.app(scope, receive, send)
