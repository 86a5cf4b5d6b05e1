"""``POST /webhook``: read the body (capped, timed), verify, commit to the inbox, then answer.

Answers (the contract in architecture.md): 204 accepted or duplicate; 401 signature, timestamp or
headers rejected; 400 not JSON after a valid signature; 413 body over the cap (decided while
reading, never after buffering it all); 408 body not received in time; 503 when the inbox cannot
commit. Nothing is fetched here: the worker does that after the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from .errors import StoreError, VerificationError
from .failpoints import NONE as NO_FAILPOINTS
from .failpoints import Failpoints
from .models import ITEMS_SCANNED, IncomingEvent, InsertOutcome, classify_event
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


class BodyTooLarge(Exception):
    pass


def _problem(status: int, reason: str, **headers: str) -> Response:
    return JSONResponse({"error": reason}, status_code=status, headers=headers or None)


async def _read_body(request: Request, cap: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise BodyTooLarge
    body = bytearray()
    async with asyncio.timeout(timeout):
        async for chunk in request.stream():
            body += chunk
            if len(body) > cap:
                raise BodyTooLarge
    return bytes(body)


class Receiver:
    """The webhook endpoint; :meth:`handle` is the Starlette request handler."""

    def __init__(
        self,
        store: Store,
        verifier: Verifier,
        *,
        max_body_bytes: int,
        body_timeout: float,
        on_accepted: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        crash: Failpoints = NO_FAILPOINTS,
    ) -> None:
        self.crash = crash
        self.store = store
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.on_accepted = on_accepted
        self.clock = clock

    async def handle(self, request: Request) -> Response:
        try:
            return await self._receive(request)
        except Exception:  # a bug must not become a 500 or a lost event: the sender retries
            log.exception("webhook failed unexpectedly")
            return _problem(503, "internal error, retry later", **{"Retry-After": "5"})

    async def _receive(self, request: Request) -> Response:
        client = request.client.host if request.client else "-"
        try:
            body = await _read_body(request, self.max_body_bytes, self.body_timeout)
        except BodyTooLarge:
            log.info(
                "webhook rejected", extra={"fields": {"reason": "body too large", "client": client}}
            )
            return _problem(
                413, f"body larger than {self.max_body_bytes} bytes", Connection="close"
            )
        except TimeoutError:
            log.info(
                "webhook rejected", extra={"fields": {"reason": "body timeout", "client": client}}
            )
            return _problem(408, "body not received in time", Connection="close")
        except ClientDisconnect:
            log.info(
                "webhook abandoned",
                extra={"fields": {"reason": "client disconnected", "client": client}},
            )
            return _problem(400, "client disconnected")

        try:
            message = self.verifier.verify(request.headers, body)
        except VerificationError as exc:
            log.info("webhook rejected", extra={"fields": {"reason": exc.reason, "client": client}})
            return _problem(401, exc.reason)

        fields: dict[str, object] = {"msg_id": message.msg_id}
        try:
            payload = json.loads(body)
        except ValueError:  # includes UnicodeDecodeError
            log.info("webhook rejected", extra={"fields": {**fields, "reason": "invalid JSON"}})
            return _problem(400, "body is not JSON")

        event_type = classify_event(payload)
        item_count = len(payload["item_ids"]) if event_type == ITEMS_SCANNED else None
        event = IncomingEvent(
            message_id=message.msg_id,
            event_type=event_type,
            body=body,
            headers={k: v for k in _KEPT_HEADERS if (v := request.headers.get(k)) is not None},
            received_at=self.clock(),
            item_count=item_count,
        )
        try:
            outcome = await self.store.insert_event(event)
        except StoreError as exc:
            log.warning("webhook not stored", extra={"fields": {**fields, "reason": str(exc)}})
            return _problem(503, "inbox unavailable, retry later", **{"Retry-After": "5"})

        self.crash.hit("after_insert")
        fields.update(type=event_type, outcome=outcome.value)
        if item_count is not None:
            fields["items"] = item_count
        log.info(f"webhook {outcome.value}", extra={"fields": fields})
        if outcome is not InsertOutcome.DUPLICATE:
            self.on_accepted()
        return Response(status_code=204)
