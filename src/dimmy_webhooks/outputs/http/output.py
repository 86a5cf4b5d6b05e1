"""One destination as an output: :class:`HttpOutput`, what its answers mean."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable
from typing import Any

import httpx

from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.models import Receipt, StoredItem
from dimmy_webhooks.outputs.base import DeliveryFailed
from dimmy_webhooks.outputs.http.destinations import Destination
from dimmy_webhooks.outputs.http.envelope import (
    ANSWER_LIMIT,
    envelope,
    read_answer,
    signed_request_headers,
)
from dimmy_webhooks.outputs.http.limits import MAX_QUEUE_WAIT, Breaker, Gate
from dimmy_webhooks.ratelimit import Mark, parse_retry_after
from dimmy_webhooks.signatures import parse_secrets

PERMANENT = frozenset({400, 413, 415, 422})
"""Answers that refuse this item: retrying cannot help."""


class HttpOutput:
    """One destination as an output: signed POSTs with their own connections, concurrency,
    rate limit and pause (see :mod:`dimmy_webhooks.outputs.http`)."""

    def __init__(
        self,
        destination: Destination,
        *,
        forward_secret: str | None,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        secret = destination.secret or forward_secret
        if secret is None:
            raise ConfigError(
                f"output {destination.name}: set DIMMY_FORWARD_SECRET (a whsec_... secret your "
                "WMS verifies our signatures with; `dimmy-webhooks token --whsec` makes one) or "
                "the destination's own secret"
            )
        self._key = parse_secrets(secret)[0]
        self.destination = destination
        self.name = destination.name
        self.max_attempts: int | None = destination.max_attempts
        self.delivery_timeout: float | None = destination.timeout * 3 + MAX_QUEUE_WAIT + 5
        self._clock = clock
        headers = httpx.Headers({"user-agent": "dimmy-webhooks", "accept-encoding": "identity"})
        headers.update(destination.headers)  # theirs replace ours, whatever their case
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(destination.timeout),
            limits=httpx.Limits(
                max_connections=destination.concurrency,
                max_keepalive_connections=destination.concurrency,
            ),
            follow_redirects=False,
            transport=transport,
            headers=headers,
        )
        self._gate = Gate(self.name, destination.concurrency, destination.rate, clock)
        self._breaker = Breaker(self.name, destination.pause_seconds, clock)

    async def deliver(self, item: StoredItem, idempotency_key: str) -> Receipt:
        """POST the signed envelope of ``item``; the receipt of a 2xx. Raises
        :class:`DeliveryFailed` (with what the WMS answered) or :class:`DestinationPaused`."""
        refused = self.destination.filter.refuses(item)
        if refused is not None:
            return Receipt(note=refused)
        now = self._clock()
        with self._breaker.admit(now) as probe:
            body = self.envelope(item, now)
            headers = signed_request_headers(self._key, idempotency_key, body, now)
            async with self._gate.enter() as mark:
                return await self._post(body, headers, probe, mark)

    def envelope(self, item: StoredItem, now: float) -> bytes:
        """The JSON body of one forward to this destination."""
        destination = self.destination
        return envelope(item, now, include=destination.include, rename=destination.rename)

    async def _post(
        self, body: bytes, headers: dict[str, str], probe: bool, mark: Mark | None
    ) -> Receipt:
        started = time.monotonic()
        extensions = {} if mark is None else {"trace": _settle_when_written(mark)}
        try:
            async with (
                asyncio.timeout(self.destination.timeout * 3),
                self._http.stream(
                    "POST",
                    self.destination.url,
                    content=body,
                    headers=headers,
                    extensions=extensions,
                ) as response,
            ):
                content = await _read_capped(response, ANSWER_LIMIT)
        except (httpx.HTTPError, TimeoutError) as exc:
            self._gate.took(time.monotonic() - started)
            latency = (time.monotonic() - started) * 1000
            reason = f"{self.name}: {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
            self._breaker.failed(reason, probe)
            raise DeliveryFailed(reason[:300], Receipt(latency_ms=latency)) from exc
        self._gate.took(time.monotonic() - started)
        latency = (time.monotonic() - started) * 1000
        excerpt, record_id = read_answer(
            content, response.headers, self.destination.record_id_field
        )
        receipt = Receipt(
            status_code=response.status_code,
            latency_ms=latency,
            excerpt=excerpt,
            record_id=record_id,
        )
        status = response.status_code
        if 200 <= status < 300 or status in PERMANENT:  # it answered about the item: it is up
            self._breaker.succeeded()
        if 200 <= status < 300:
            return receipt
        reason = f"{self.name}: HTTP {status}"
        if 300 <= status < 400:
            reason += " (a redirect: not followed)"
        if status in PERMANENT:
            raise DeliveryFailed(reason, receipt, permanent=True)
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=self._clock())
        self._breaker.failed(reason, probe)
        raise DeliveryFailed(reason, receipt, retry_after=retry_after)

    async def aclose(self) -> None:
        await self._http.aclose()

    def problems(self) -> list[str]:
        return self._breaker.problems()


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """The first ``limit`` bytes of the answer at most: a WMS answering hundreds of MB costs a
    connection, not the memory (S16); what is left unread closes the connection when the stream
    ends. We ask for no compression; a gzip or deflate answer all the same is inflated no
    further than ``limit`` (a small bomb stays small), any other encoding is kept as sent."""
    if response.is_stream_consumed:  # a transport (a test's) that handed it over whole
        return response.content[:limit]
    encoding = response.headers.get("content-encoding", "").strip().lower()
    inflate = None
    if encoding in ("gzip", "x-gzip", "deflate"):
        inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib, by the header
    content = bytearray()
    async for raw in response.aiter_raw():
        chunk = raw
        if inflate is not None:
            try:
                chunk = inflate.decompress(raw, limit - len(content))
            except zlib.error:
                inflate = None  # not what it said: keep what came as it came
        content += chunk[: limit - len(content)]
        if len(content) >= limit:
            break
    return bytes(content)


def _settle_when_written(mark: Mark) -> Callable[[str, dict[str, Any]], Any]:
    """httpcore's trace hook: the request counts once its body has been written."""

    async def trace(name: str, info: dict[str, Any]) -> None:
        if name == "http11.send_request_body.complete":
            mark.settle(time.monotonic())

    return trace
