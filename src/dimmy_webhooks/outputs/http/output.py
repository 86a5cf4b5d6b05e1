"""One destination as an output: :class:`HttpOutput`, what its answers mean."""

from __future__ import annotations

import asyncio
import base64
import time
import zlib
from collections.abc import Callable
from types import SimpleNamespace
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
from multidict import CIMultiDict

from dimmy_webhooks import outbound
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
        headers: CIMultiDict[str] = CIMultiDict(
            {"user-agent": "dimmy-webhooks", "accept-encoding": "identity"}
        )
        headers.update(destination.headers)  # theirs replace ours, whatever their case
        self._url, credentials = _without_credentials(destination.url)
        if credentials is not None and "authorization" not in headers:
            headers["authorization"] = credentials  # user:password@ in the URL: basic auth
        self._headers = headers
        self._http: aiohttp.ClientSession | None = None  # opened by the first forward
        self._gate = Gate(self.name, destination.concurrency, destination.rate, clock)
        self._breaker = Breaker(self.name, destination.pause_seconds, clock)

    def _session(self) -> aiohttp.ClientSession:
        """The destination's connections: at most its ``concurrency``, each phase bounded by its
        ``timeout`` (the whole attempt by three times it), answers read as sent (we inflate them
        ourselves, no further than we read: :func:`_read_capped`)."""
        if self._http is None:
            traces = None
            if self.destination.rate:  # a rate counts each request from when it was written
                trace = aiohttp.TraceConfig()
                trace.on_request_chunk_sent.append(_settle_when_written)
                traces = [trace]
            self._http = outbound.session(
                url=self.destination.url,
                concurrency=self.destination.concurrency,
                timeout=self.destination.timeout,
                headers=self._headers,
                auto_decompress=False,
                trace_configs=traces,
            )
        return self._http

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
        http = self._session()
        try:
            async with (
                asyncio.timeout(self.destination.timeout * 3),
                http.post(
                    self._url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    trace_request_ctx=mark,
                ) as response,
            ):
                content = await _read_capped(response, ANSWER_LIMIT)
        except (aiohttp.ClientError, OSError) as exc:  # timeouts included
            self._gate.took(time.monotonic() - started)
            latency = (time.monotonic() - started) * 1000
            reason = f"{self.name}: {outbound.failure(exc)}"
            self._breaker.failed(reason, probe)
            raise DeliveryFailed(reason[:300], Receipt(latency_ms=latency)) from exc
        self._gate.took(time.monotonic() - started)
        latency = (time.monotonic() - started) * 1000
        excerpt, record_id = read_answer(
            content, response.headers, self.destination.record_id_field
        )
        receipt = Receipt(
            status_code=response.status,
            latency_ms=latency,
            excerpt=excerpt,
            record_id=record_id,
        )
        status = response.status
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
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    def problems(self) -> list[str]:
        return self._breaker.problems()


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The first ``limit`` bytes of the answer at most: a WMS answering hundreds of MB costs a
    connection, not the memory (S16); if more was left unread, the connection is closed. We ask
    for no compression; a gzip or deflate answer all the same is inflated no further than
    ``limit`` (a small bomb stays small), any other encoding is kept as sent."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    inflate = None
    if encoding in ("gzip", "x-gzip", "deflate"):
        inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib, by the header
    content = bytearray()
    async for raw in response.content.iter_any():
        chunk = raw
        if inflate is not None:
            try:
                chunk = inflate.decompress(raw, limit - len(content))
            except zlib.error:
                inflate = None  # not what it said: keep what came as it came
        content += chunk[: limit - len(content)]
        if len(content) >= limit:
            break
    if not response.content.at_eof():
        response.close()  # the rest is never read: drop the connection
    return bytes(content)


def _without_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without its ``user:password@``, and the basic ``Authorization`` they make."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), f"Basic {token}"


async def _settle_when_written(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestChunkSentParams,
) -> None:
    """aiohttp's trace hook: the request counts once its body goes to the connection."""
    mark = context.trace_request_ctx
    if isinstance(mark, Mark):
        mark.settle(time.monotonic())
