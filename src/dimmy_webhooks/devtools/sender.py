"""A Svix-like webhook sender, for the offline demo, the tests and the benchmarks.

It behaves like Svix, the sender Dimmy's webhooks go through:

* a message is tried at most ``len(RETRY_SCHEDULE)`` (8) times: immediately, then 5 s, 5 min,
  30 min, 2 h, 5 h, 10 h and 10 h after the previous failure; ``compress`` divides those delays
  (``compress=60`` turns the 27.6 h schedule into about 28 min);
* success is any 2xx answered within ``timeout`` seconds (whole request, default 15); anything
  else fails the attempt: another status (3xx included, redirects are not followed), a timeout
  or a transport error;
* every attempt of a message carries the same message id and a fresh timestamp and signature
  (:func:`~dimmy_webhooks.signatures.signed_headers`, ``svix-*`` or ``webhook-*`` headers);
* delivery is at least once: with probability ``duplicate_rate`` a delivered message is sent
  once more (one attempt, same id) after the next delay of the schedule, as when the sender did
  not record a success. Those duplicates run in the background; :meth:`SimulatedSender.join`
  waits for them and leaving the ``async with`` block cancels those not yet sent.

Counters (plain ints, read them at any time): ``sent`` HTTP attempts made (duplicates included),
``attempts_failed`` attempts that did not succeed, ``succeeded`` messages delivered, ``failed``
messages given up after the last attempt, ``duplicates_sent`` extra deliveries made.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx

from dimmy_webhooks import __version__
from dimmy_webhooks.signatures import signed_headers

__all__ = [
    "RETRY_SCHEDULE",
    "AttemptRecord",
    "DeliveryResult",
    "SimulatedSender",
    "items_scanned_body",
]

#: Seconds to wait before each attempt (the first is immediate): Svix's schedule, 8 attempts.
RETRY_SCHEDULE: tuple[int, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One HTTP attempt: ``status`` is ``None`` when no answer came (then ``error`` says why).

    ``elapsed`` is the attempt's duration in seconds; ``at`` when it started, in seconds after
    the message's first attempt started.
    """

    status: int | None
    error: str | None
    elapsed: float
    at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """Every attempt of one message, in order; ``delivered`` when the last one got a 2xx."""

    msg_id: str
    attempts: list[AttemptRecord]
    delivered: bool


def items_scanned_body(ids: Iterable[str]) -> bytes:
    """The body of an ``items.scanned`` event: ``{"item_ids": [...]}`` as compact JSON."""
    return json.dumps({"item_ids": list(ids)}, separators=(",", ":")).encode()


class SimulatedSender:
    """Delivers signed webhooks to ``url`` with the Svix retry schedule (module docstring).

    Use as ``async with SimulatedSender(url, key) as sender: await sender.deliver(body)``.
    ``key`` is the decoded HMAC key (:func:`~dimmy_webhooks.signatures.parse_secrets`); ``rng``
    drives message ids and duplicates (seed it for reproducible runs); ``clock`` gives the Unix
    time put in the timestamp header; ``transport`` replaces the network (tests).
    """

    def __init__(
        self,
        url: str,
        key: bytes,
        *,
        compress: float = 1.0,
        timeout: float = 15.0,
        duplicate_rate: float = 0.0,
        family: str = "svix",
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if compress <= 0:
            raise ValueError("compress must be > 0")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if not 0.0 <= duplicate_rate <= 1.0:
            raise ValueError("duplicate_rate must be between 0 and 1")
        if family not in ("svix", "webhook"):
            raise ValueError(f"family must be 'svix' or 'webhook', not {family!r}")
        self.url = url
        self.compress = compress
        self.timeout = timeout
        self.duplicate_rate = duplicate_rate
        self.family = family
        self._key = key
        self._rng = rng or random.Random()
        self._transport = transport
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.attempts_failed = 0
        self.succeeded = 0
        self.failed = 0
        self.duplicates_sent = 0

    async def __aenter__(self) -> Self:
        self._client = httpx.AsyncClient(
            transport=self._transport,
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            headers={"user-agent": f"dimmy-webhooks-sender/{__version__}"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def new_msg_id(self) -> str:
        """A fresh message id in Svix's style (``msg_`` + 32 hex digits from ``rng``)."""
        return f"msg_{self._rng.getrandbits(128):032x}"

    async def deliver(self, body: bytes, msg_id: str | None = None) -> DeliveryResult:
        """Run the whole schedule for one message until a 2xx or the last attempt fails.

        Waits for the (compressed) delays, so with ``compress=1`` a failing endpoint keeps this
        call busy for about 27.6 hours. ``msg_id`` defaults to :meth:`new_msg_id`.
        """
        msg_id = msg_id or self.new_msg_id()
        attempts: list[AttemptRecord] = []
        started = time.monotonic()
        for index, delay in enumerate(RETRY_SCHEDULE):
            if delay:
                await asyncio.sleep(delay / self.compress)
            record = await self._attempt(body, msg_id, started)
            attempts.append(record)
            if record.ok:
                self.succeeded += 1
                if self.duplicate_rate and self._rng.random() < self.duplicate_rate:
                    later = RETRY_SCHEDULE[min(index + 1, len(RETRY_SCHEDULE) - 1)]
                    self._spawn(self._duplicate(body, msg_id, later / self.compress))
                return DeliveryResult(msg_id, attempts, delivered=True)
        self.failed += 1
        return DeliveryResult(msg_id, attempts, delivered=False)

    async def deliver_many(
        self, bodies: Iterable[bytes], concurrency: int = 16
    ) -> list[DeliveryResult]:
        """Deliver each body as its own message, at most ``concurrency`` at a time; results
        come back in the order of ``bodies``."""
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        gate = asyncio.Semaphore(concurrency)

        async def one(body: bytes) -> DeliveryResult:
            async with gate:
                return await self.deliver(body)

        return list(await asyncio.gather(*(one(body) for body in bodies)))

    async def join(self) -> None:
        """Wait until every scheduled duplicate delivery has been made."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # internals ---------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _duplicate(self, body: bytes, msg_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        self.duplicates_sent += 1
        await self._attempt(body, msg_id, time.monotonic())

    async def _attempt(self, body: bytes, msg_id: str, started: float) -> AttemptRecord:
        client = self._client
        if client is None:
            raise RuntimeError("use the sender inside `async with SimulatedSender(...)`")
        headers = signed_headers(
            self._key, msg_id, body, timestamp=int(self._clock()), family=self.family
        )
        headers["content-type"] = "application/json"
        self.sent += 1
        begin = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.timeout):
                response = await client.post(self.url, content=body, headers=headers)
            status = response.status_code
        except (TimeoutError, httpx.TimeoutException):
            error = f"timeout: no answer within {self.timeout:g} s"
        except httpx.HTTPError as exc:
            error = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
        record = AttemptRecord(status, error, time.monotonic() - begin, begin - started)
        if not record.ok:
            self.attempts_failed += 1
        return record
