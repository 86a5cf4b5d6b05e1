"""Async client of the Dimmy REST API: one HTTP request per call, every failure classified.

The client never retries; the durable job queue above it does, with
:func:`~dimmy_webhooks.ratelimit.backoff_delay`. What
the caller sees (all from :mod:`dimmy_webhooks.errors`)::

    UpstreamError
    ├── TransientUpstream     retry later with backoff. ``status`` is None for a transport error
    │                         or timeout, else 408, 429 or 5xx; ``retry_after`` (seconds) is set
    │                         from a 429's Retry-After, and the whole client then holds every
    │                         request until that time has passed (the limit is on the key).
    ├── PermanentUpstream     give up on this id or request: 404, 422, any other 4xx, a 3xx, a
    │                         200 whose body is not the expected JSON (``status`` 200), or one
    │                         larger than its cap (``max_item_bytes`` for an item,
    │                         ``max_page_bytes`` for a page: the body is streamed and reading
    │                         stops past the cap, so a huge answer never sits in memory).
    └── UpstreamAuthError     stop fetching and tell an operator: the key was refused (401/403).
                              ``client.auth_failed`` keeps the reason until a request succeeds.

The pace: at most ``rate_limit`` requests start per second (``rate_mode="fixed"``, the default),
or, with ``rate_mode="adaptive"``, a rate learned from the answers between ``rate_min`` and
``rate_max`` (:mod:`dimmy_webhooks.upstream.pacing`), starting at ``rate_limit``.

Reasons are short, name the method and path, include at most ~200 characters of the server's
``detail``, and never contain the API key (it is redacted even when a server echoes it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

import aiohttp

from dimmy_webhooks import outbound
from dimmy_webhooks.config import Settings
from dimmy_webhooks.errors import PermanentUpstream, TransientUpstream, UpstreamAuthError
from dimmy_webhooks.items import clean_json_bytes
from dimmy_webhooks.models import nested_deeper_than, nesting_bound, valid_item_id
from dimmy_webhooks.ratelimit import Pacer, parse_retry_after
from dimmy_webhooks.upstream.answers import (
    DETAIL_LIMIT,
    ERROR_BODY_LIMIT,
    Answer,
    detail_of,
    read_capped,
)
from dimmy_webhooks.upstream.pacing import AdaptiveRate
from dimmy_webhooks.upstream.transport import AiohttpTransport, Transport

logger = logging.getLogger(__name__)

DEFAULT_MAX_ITEM_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_PAGE_BYTES = 32 * 1024 * 1024
DEFAULT_429_PAUSE = 1.0  # seconds the client holds requests after a 429 without Retry-After
RateMode = Literal["fixed", "adaptive"]


def _user_agent() -> str:
    try:
        return f"dimmy-webhooks/{metadata.version('dimmy-webhooks')}"
    except metadata.PackageNotFoundError:
        return "dimmy-webhooks"


def _format_time(moment: datetime) -> str:
    """UTC with ``Z``; a naive datetime is taken as UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat() + "Z"


class DimmyClient:
    """One connection pool to the Dimmy API, shared by every worker task of a process.

    ``timeout`` (seconds) bounds each phase of a request (connect, write, each read) and the
    whole request at three times that. At most ``concurrency`` requests are in flight and at most
    ``rate_limit`` start per second (bursts up to that many); with ``rate_mode="adaptive"`` the
    rate starts there and moves between ``rate_min`` and ``rate_max`` (:attr:`adaptive`, bursts
    of a tenth of a second's worth). ``clock``/``sleep`` (monotonic) and
    ``wall_clock`` (Unix time, for HTTP-date Retry-After) are injectable for tests;
    ``max_item_bytes`` and ``max_page_bytes`` cap the body of one ``GET /items/{id}`` and of one
    ``GET /items`` page (decoded, after any content encoding); an error answer is read up to
    :data:`ERROR_BODY_LIMIT` bytes.
    Requests go through ``transport`` (:mod:`.transport`: by default one aiohttp session,
    opened on the first request, at most ``concurrency`` connections, no retry, no redirect
    followed); tests give a fake one. Use as ``async with``, or call :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        concurrency: int = 64,
        rate_limit: float = 100.0,
        rate_mode: RateMode = "fixed",
        rate_min: float = 1.0,
        rate_max: float = 1000.0,
        max_retry_after: float = 900.0,
        max_json_depth: int = 64,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
        max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        observe: Callable[[str, str, float], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._total_timeout = 3 * timeout
        self._max_retry_after = max_retry_after
        self._max_json_depth = max_json_depth
        self._max_item_bytes = max_item_bytes
        self._max_page_bytes = max_page_bytes
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._headers = {
            "X-API-KEY": api_key,
            "Accept": "application/json",
            "User-Agent": _user_agent(),
        }
        self._transport: Transport = transport or AiohttpTransport(
            self.base_url, concurrency=concurrency, timeout=timeout
        )
        self._semaphore = asyncio.Semaphore(concurrency)
        self._fixed_rate = rate_limit
        self.adaptive: AdaptiveRate | None = None
        if rate_mode == "adaptive":
            self.adaptive = AdaptiveRate(rate_limit, floor=rate_min, ceiling=rate_max, clock=clock)
            adaptive = self.adaptive
            self._limiter = Pacer(lambda: adaptive.rate, clock=clock, sleep=sleep)
        else:  # bursts of up to one second's worth of requests, then rate_limit per second
            burst = max(0.0, 1.0 - 1.0 / rate_limit)
            self._limiter = Pacer(lambda: rate_limit, clock=clock, sleep=sleep, burst=burst)
        self._paused_until = 0.0
        self._live_waiting = 0  # get_item calls waiting for their turn
        self._live_idle = asyncio.Event()
        self._live_idle.set()
        self.auth_failed: str | None = None
        # (path, status or "timeout"/"transport_error", seconds) of every request: /metrics
        self._observe = observe

    def __repr__(self) -> str:
        return f"DimmyClient({urlsplit(self.base_url).hostname!r})"  # never the user-info

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (a client never used has none open)."""
        await self._transport.aclose()

    @property
    def rate_limit(self) -> float:
        """Requests per second allowed now (the fixed rate, or the adaptive one)."""
        return self.adaptive.rate if self.adaptive is not None else self._fixed_rate

    @property
    def pause_remaining(self) -> float:
        """Seconds left of a 429 pause (0 when requests may go)."""
        return max(0.0, self._paused_until - self._clock())

    # -- the API ---------------------------------------------------------------------------

    async def get_item(self, item_id: str) -> bytes:
        """``GET /items/{id}``: the response body as UTF-8 JSON text (as received, less a byte
        order mark; a UTF-16 or UTF-32 body decoded), at most ``max_item_bytes`` long.

        Checked to be a JSON object whose ``_id`` is ``item_id`` (else :class:`PermanentUpstream`).
        An ``item_id`` that :func:`~dimmy_webhooks.models.valid_item_id` refuses is a
        :class:`PermanentUpstream` without any request.
        """
        raw, _ = await self.get_item_document(item_id)
        return raw

    async def get_item_document(self, item_id: str) -> tuple[bytes, dict[str, Any]]:
        """:meth:`get_item`, with the document it was checked as: the body is parsed once (the
        check needs it), not again by the caller."""
        if not valid_item_id(item_id):  # never let an id choose another path
            raise PermanentUpstream(f"GET /items/{{id}}: {item_id[:80]!r} is not a valid item id")
        path = f"/items/{item_id}"
        response = await self._request("GET", path, limit=self._max_item_bytes)
        document = self._json(response, "GET", path)
        if not isinstance(document, dict) or document.get("_id") != item_id:
            raise PermanentUpstream(
                self._redact(f"GET {path}: unexpected body (not an item with this _id)"),
                status=response.status,
            )
        try:
            return clean_json_bytes(response.content), document
        except ValueError:  # json.loads let lone surrogates pass; as text they cannot be stored
            raise PermanentUpstream(
                f"GET {path}: body is not UTF-8, UTF-16 or UTF-32 text", status=200
            ) from None

    async def list_items(
        self,
        *,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        skip: int = 0,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """``GET /items``: one page of items created between the dates (naive means UTC).

        A bulk read: it waits while any :meth:`get_item` of this client waits for its turn
        (live work first), then shares the same rate limit, concurrency cap and 429 pause.
        """
        params: dict[str, str | int] = {"skip": skip, "limit": limit}
        if start_date is not None:
            params["start_date"] = _format_time(start_date)
        if end_date is not None:
            params["end_date"] = _format_time(end_date)
        return await self._items("GET", "/items", params=params, bulk=True)

    # -- plumbing --------------------------------------------------------------------------

    async def _items(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, bulk: bool = False
    ) -> list[dict[str, Any]]:
        response = await self._request(
            method, path, params=params, bulk=bulk, limit=self._max_page_bytes
        )
        items = self._json(response, method, path)
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise PermanentUpstream(
                f"{method} {path}: unexpected body (not an array of items)", status=200
            )
        return items

    def _json(self, response: Answer, method: str, path: str) -> Any:
        """The body parsed; :class:`PermanentUpstream` when it is not JSON or nests deeper than
        ``max_json_depth`` (such an item could not be stored, served or delivered)."""
        try:
            document = json.loads(response.content)
        except ValueError:
            raise PermanentUpstream(
                self._redact(f"{method} {path}: body is not JSON"), status=response.status
            ) from None
        except RecursionError:
            document = None
            deep = True
        else:  # the walk visits every value; the bracket count (in C) mostly rules it out
            deep = nesting_bound(response.content) > self._max_json_depth and nested_deeper_than(
                document, self._max_json_depth
            )
        if deep:
            raise PermanentUpstream(
                f"{method} {path}: body nested deeper than {self._max_json_depth} levels",
                status=response.status,
            )
        return document

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        bulk: bool = False,
        limit: int = ERROR_BODY_LIMIT,
    ) -> Answer:
        if bulk:
            await self._live_idle.wait()  # a live request waiting for its turn goes first
            return await self._in_turn(method, path, params, limit=limit)
        self._live_waiting += 1
        self._live_idle.clear()
        waiting = True

        def turn() -> None:
            nonlocal waiting
            if waiting:
                waiting = False
                self._live_waiting -= 1
                if not self._live_waiting:
                    self._live_idle.set()

        try:
            return await self._in_turn(method, path, params, on_turn=turn, limit=limit)
        finally:
            turn()

    async def _in_turn(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        on_turn: Callable[[], None] | None = None,
        limit: int = ERROR_BODY_LIMIT,
    ) -> Answer:
        """One request once the concurrency cap, the rate limit and any 429 pause allow it,
        its body read up to ``limit`` bytes (:func:`~.answers.read_capped`)."""
        async with self._semaphore:
            await self._wait_out_pause()
            await self._limiter.acquire()
            await self._wait_out_pause()  # a 429 may have arrived while this waited its turn
            if on_turn is not None:
                on_turn()
            started = time.monotonic()
            adaptive = self.adaptive
            if adaptive is not None:
                adaptive.sent()
            sent_at = self._clock()
            try:
                async with (
                    asyncio.timeout(self._total_timeout),
                    self._transport.send(method, path, params, self._headers) as reply,
                ):
                    status = reply.status
                    response = await read_capped(reply, limit)
            except (aiohttp.ClientError, OSError) as exc:  # timeouts included
                timed_out = outbound.timed_out(exc)
                self._observed(path, "timeout" if timed_out else "transport_error", started)
                if timed_out and adaptive is not None:  # a timeout is the slowest answer of all
                    adaptive.answered(self._clock() - sent_at)
                reason = self._redact(f"{method} {path}: {outbound.failure(exc)}")
                raise TransientUpstream(reason[: DETAIL_LIMIT + 100]) from exc
            self._observed(path, str(status), started)
            if adaptive is not None and status != 429:
                adaptive.answered(self._clock() - sent_at)
        if response is None:  # a 2xx over the cap: the same answer will come next time
            cap = "DIMMY_MAX_PAGE_BYTES" if path == "/items" else "DIMMY_MAX_ITEM_BYTES"
            raise PermanentUpstream(
                f"{method} {path}: answer larger than {limit} bytes (the cap: {cap})",
                status=status,
            )
        self._classify(method, path, response, sent_at)
        return response

    def _classify(self, method: str, path: str, response: Answer, sent_at: float = 0.0) -> None:
        status = response.status
        if 200 <= status < 300:
            self.auth_failed = None
            return
        detail = detail_of(response, self._redact)
        reason = self._redact(f"{method} {path}: HTTP {status}" + (f" {detail}" if detail else ""))
        if status in (401, 403):
            self.auth_failed = reason
            logger.error("Dimmy API refused the API key (check DIMMY_API_KEY): %s", reason)
            raise UpstreamAuthError(reason, status=status)
        if status == 429:
            retry_after = parse_retry_after(
                response.headers.get("retry-after"), now=self._wall_clock()
            )
            if retry_after is not None:
                retry_after = min(retry_after, self._max_retry_after)
            pause = DEFAULT_429_PAUSE if retry_after is None else retry_after
            self._paused_until = max(self._paused_until, self._clock() + pause)
            if self.adaptive is not None:
                self._limiter.hold(self._paused_until)
                self.adaptive.throttled(sent_at, self._paused_until)
            logger.warning("Dimmy API rate limit: holding requests for %.1f s", pause)
            raise TransientUpstream(reason, status=status, retry_after=retry_after)
        if status == 408 or status >= 500:
            raise TransientUpstream(reason, status=status)
        raise PermanentUpstream(reason, status=status)

    def _observed(self, path: str, status: str, started: float) -> None:
        if self._observe is not None:
            # the template, not the id: one series per endpoint
            self._observe(
                "/items" if path == "/items" else "/items/{id}", status, time.monotonic() - started
            )

    async def _wait_out_pause(self) -> None:
        while (remaining := self._paused_until - self._clock()) > 0:
            await self._sleep(remaining)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def client_from_settings(
    settings: Settings, *, observe: Callable[[str, str, float], None] | None = None
) -> DimmyClient | None:
    """The client the ``DIMMY_API_*`` settings describe (``observe``: as :class:`DimmyClient`),
    or ``None`` when no API key is configured."""
    key = settings.api_key.get_secret_value().strip() if settings.api_key is not None else ""
    if not key:
        return None
    return DimmyClient(
        settings.api_url,
        key,
        timeout=settings.api_timeout_seconds,
        concurrency=settings.api_concurrency,
        rate_limit=settings.api_rate_limit,
        rate_mode=settings.api_rate_mode,
        rate_min=settings.api_rate_min,
        rate_max=settings.api_rate_max,
        max_json_depth=settings.max_json_depth,
        max_item_bytes=settings.max_item_bytes,
        max_page_bytes=settings.max_page_bytes,
        observe=observe,
    )
