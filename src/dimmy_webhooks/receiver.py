"""``POST /webhook``: read the body (capped, timed), verify, commit to the inbox, then answer.

Answers (the public contract, as the README's HTTP interface table lists it): 204 accepted or
duplicate; 401 signature, timestamp or headers rejected; 400 not JSON (or nested deeper than
``DIMMY_MAX_JSON_DEPTH``) after a valid signature;
413 body over the cap (decided while reading, never after buffering it all); 408 body not
received in time; 503 when the inbox cannot commit. Nothing is fetched here: the worker does
that after the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import StoreError, VerificationError
from .failpoints import NONE as NO_FAILPOINTS
from .failpoints import Failpoints
from .models import ITEMS_SCANNED, IncomingEvent, InsertOutcome, classify_event, nested_deeper_than
from .signatures import Verifier
from .store import Store

log = logging.getLogger("dimmy_webhooks.receiver")

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


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    reason: str | None = None  # sent as {"error": reason}
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _headers(scope: Scope) -> dict[str, str]:
    # ASGI header names are lower-case bytes; the first of repeated headers wins
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}


async def _read_body(headers: dict[str, str], receive: Receive, cap: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise BodyTooLarge
    body = bytearray()
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body += message.get("body", b"")
        if len(body) > cap:
            raise BodyTooLarge
        if not message.get("more_body", False):
            return bytes(body)


class Receiver:
    """The webhook endpoint as a plain ASGI app: no framework between the socket and the inbox."""

    def __init__(
        self,
        store: Store,
        verifier: Verifier,
        *,
        max_body_bytes: int,
        body_timeout: float,
        max_json_depth: int = 64,
        on_accepted: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        crash: Failpoints = NO_FAILPOINTS,
    ) -> None:
        self.crash = crash
        self.store = store
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.body_timeout = body_timeout
        self.on_accepted = on_accepted
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            answer = await self._receive(scope, receive)
        except Exception:  # a bug must not become a 500 or a lost event: the sender retries
            log.exception("webhook failed unexpectedly")
            answer = Answer(503, "internal error, retry later", tuple(_RETRY))
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
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await _read_body(headers, receive, self.max_body_bytes)
        except BodyTooLarge:
            log.info(
                "webhook rejected", extra={"fields": {"reason": "body too large", "client": client}}
            )
            reason = f"body larger than {self.max_body_bytes} bytes"
            return Answer(413, reason, tuple(_CLOSE))
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
            message = self.verifier.verify(headers, body)
        except VerificationError as exc:
            log.info("webhook rejected", extra={"fields": {"reason": exc.reason, "client": client}})
            return Answer(401, exc.reason)

        fields: dict[str, object] = {"msg_id": message.msg_id}
        try:
            payload = json.loads(body)
        except ValueError:  # includes UnicodeDecodeError
            log.info("webhook rejected", extra={"fields": {**fields, "reason": "invalid JSON"}})
            return Answer(400, "body is not JSON")
        except RecursionError:  # nested beyond what the parser follows: a 400 too, not a 503
            payload = _TOO_DEEP
        if payload is _TOO_DEEP or nested_deeper_than(payload, self.max_json_depth):
            # retrying cannot help: a 4xx tells the sender so (a 5xx would be retried for 27 h)
            reason = f"JSON nested deeper than {self.max_json_depth} levels"
            log.info("webhook rejected", extra={"fields": {**fields, "reason": reason}})
            return Answer(400, reason)

        event_type = classify_event(payload)
        item_count = len(payload["item_ids"]) if event_type == ITEMS_SCANNED else None
        event = IncomingEvent(
            message_id=message.msg_id,
            event_type=event_type,
            body=body,
            headers={k: v for k in _KEPT_HEADERS if (v := headers.get(k)) is not None},
            received_at=self.clock(),
            item_count=item_count,
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
        return Answer(204)


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


class WebhookRoute:
    """ASGI middleware sending ``POST <path>`` straight to the receiver, the rest to the app."""

    def __init__(self, app: ASGIApp, receiver: ASGIApp, path: str) -> None:
        self.app = app
        self.receiver = receiver
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path and scope["method"] == "POST":
            await self.receiver(scope, receive, send)
        else:
            await self.app(scope, receive, send)
