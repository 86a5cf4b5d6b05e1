"""How fast we may send, wherever we send: the one place rate limits are implemented.

Two shapes of limit, each built once and used by every stage that needs it:

- :class:`Pacer` spaces requests *before* they go, at a rate that may change at any moment (GCRA):
  the Dimmy client's fixed ``DIMMY_API_RATE_LIMIT`` and its adaptive rate
  (:mod:`dimmy_webhooks.upstream.pacing`) both take their turns from one.
- :class:`SlidingWindow` counts events *after* they happened: at most ``limit`` within any
  ``window`` seconds. A forward's rate limit (counted when a request's body has reached the
  connection, since the WMS counts what arrives) and the throttle of wrong admin tokens (counted
  when a guess failed) both use one. A pacer cannot do either: it decides before the event, and
  these know the event's time only afterwards. Nor can a window pace the client: it would let a
  second's worth go in a bunch every window instead of spacing them, and its size cannot follow
  a rate that moves at every answer.

And what the other side asks: :func:`parse_retry_after` reads a ``Retry-After`` header, for the
Dimmy client and the HTTP output alike; :func:`backoff_delay` is how long a failed attempt waits
before the next (never sooner than that header), for the worker's jobs and the poller's pages.

Clocks and sleeps are injectable (monotonic seconds); nothing here does IO.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC


class Pacer:
    """Spaces requests at ``rate()`` per second (read at every turn, so it may change), with
    bursts of at most ``burst`` seconds' worth; :meth:`hold` keeps everyone waiting until a time.

    Turns are taken in arrival order (one waiter at a time measures the gap), on ``clock``.
    """

    def __init__(
        self,
        rate: Callable[[], float],
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        burst: float = 0.1,
    ) -> None:
        self._rate = rate
        self._clock = clock
        self._sleep = sleep
        self._burst = burst
        self._next = clock()  # the theoretical time of the next request (GCRA)
        self._lock = asyncio.Lock()

    def hold(self, until: float) -> None:
        """No turn before ``until`` (a 429 pause), and no burst right after it."""
        self._next = max(self._next, until + self._burst)

    async def acquire(self) -> None:
        """Wait for this caller's turn."""
        async with self._lock:
            while (wait := self._next - self._burst - self._clock()) > 0:
                await self._sleep(wait)
            self._next = max(self._next, self._clock()) + 1.0 / self._rate()


class Mark:
    """One event in a :class:`SlidingWindow`: its time (``at``), which stays provisional (when
    it was let go) until :meth:`settle` sets when it really happened."""

    __slots__ = ("_settled", "at")

    def __init__(self, at: float, *, settled: bool = True) -> None:
        self.at = at
        self._settled = asyncio.Event()
        if settled:
            self._settled.set()

    def settle(self, at: float) -> None:
        """The event happened at ``at`` (the first call counts)."""
        if not self._settled.is_set():
            self.at = at
            self._settled.set()

    async def settled(self) -> None:
        await self._settled.wait()


class SlidingWindow:
    """At most ``limit`` events within any ``window`` seconds: a log of the last ``limit``
    events' times (so its size is bounded whatever happens).

    Synchronous users record events that already happened (:meth:`add`) and ask how long the
    next must wait (:meth:`wait`); asynchronous ones wait for their turn (:meth:`turn`) and
    settle its time once the event is done.
    """

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic):
        self.limit = max(1, limit)
        self.window = window
        self._clock = clock
        self._marks: collections.deque[Mark] = collections.deque(maxlen=self.limit)

    def wait(self, ahead: int = 0) -> float:
        """Seconds until one more event keeps within the limit, with ``ahead`` others waiting
        before it (each ``limit`` of them is one more window); 0 or less: now."""
        if len(self._marks) < self.limit:
            return 0.0
        return self._marks[0].at + self.window * (1 + ahead // self.limit) - self._clock()

    def add(self, at: float | None = None) -> None:
        """Record an event that happened at ``at`` (now by default)."""
        self._marks.append(Mark(self._clock() if at is None else at))

    async def turn(self) -> Mark:
        """Wait until one more event keeps within the limit, then record it, provisionally at
        now: the caller settles it when the event is done (until then, those behind it wait
        for that)."""
        while len(self._marks) == self.limit:
            oldest = self._marks[0]
            await oldest.settled()
            wait = oldest.at + self.window - self._clock()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        mark = Mark(self._clock(), settled=False)
        self._marks.append(mark)
        return mark


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds from ``now`` (Unix time) asked by a ``Retry-After`` header, or ``None``.

    Accepts delta-seconds (``"2"``) and an HTTP-date (``"Wed, 21 Oct 2026 07:28:00 GMT"``); a date
    in the past gives 0; anything unreadable gives ``None``.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    rng: random.Random | None = None,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1``, after ``attempt`` (>= 1) failures.

    Exponential backoff with *equal jitter*: ``d = min(cap, base * 2 ** (attempt - 1))``, and the
    result is uniform in ``[d / 2, d]``, so delays grow but never bunch up at zero. When the
    server asked for ``retry_after`` seconds, the result is at least that (even above ``cap``).
    Raises :class:`ValueError` for ``attempt < 1``.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    delay = min(cap, base * 2.0 ** min(attempt - 1, 1023))
    uniform = rng.uniform if rng is not None else random.uniform
    result = delay / 2 + uniform(0, delay / 2)
    if retry_after is not None:
        result = max(result, retry_after)
    return result
