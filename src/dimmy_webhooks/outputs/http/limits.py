"""What lets a forward go: the destination's pause after failures (:class:`Breaker`) and its
connection slots and rate (:class:`Gate`).

Both answer "not now" with :class:`~dimmy_webhooks.outputs.base.DestinationPaused`: the delivery
waits without using up an attempt, and only that destination's deliveries wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator

from dimmy_webhooks.outputs.base import DestinationPaused
from dimmy_webhooks.ratelimit import Mark, SlidingWindow

FAILURES_BEFORE_PAUSE = 5
PAUSE_SECONDS = 10.0
"""The first pause of a destination that does not set its own ``pause_seconds``."""
MAX_PAUSE = 300.0
RATE_MARGIN = 0.05
MAX_QUEUE_WAIT = 2.0
"""Seconds a delivery may wait here for a connection slot or its turn of the rate limit; a
longer wait is a pause of the job (uncounted), so other destinations keep the worker's places."""
MAX_QUEUED = 1024  # deliveries waiting here at most, however fast the destination answers
FIRST_LATENCY = 0.25  # seconds per request assumed until the destination has answered


class Breaker:
    """After :data:`FAILURES_BEFORE_PAUSE` failures in a row, the destination is paused for
    ``pause_seconds``; then one delivery (the probe) is let through: its success ends the pause,
    its failure doubles it (at most :data:`MAX_PAUSE`)."""

    def __init__(self, name: str, pause_seconds: float, clock: Callable[[], float]) -> None:
        self.name = name
        self.pause_seconds = pause_seconds
        self._clock = clock
        self._failures = 0  # in a row
        self._paused_until = 0.0
        self._pause = 0.0  # the last pause's length (0: not paused since the last success)
        self._probing = False  # the one delivery let through after a pause is in flight
        self.last_error: str | None = None

    @contextlib.contextmanager
    def admit(self, now: float) -> Iterator[bool]:
        """Let one delivery through (:class:`DestinationPaused` if not); yields ``True`` when
        it is the one probe after a pause: its outcome ends the pause or lengthens it."""
        if now < self._paused_until:
            raise DestinationPaused(f"{self.name} paused: {self.last_error}", self._paused_until)
        probe = bool(self._pause)
        if probe and self._probing:
            raise DestinationPaused(f"{self.name} paused: trying one delivery first", now + 1.0)
        if probe:
            self._probing = True
        try:
            yield probe
        finally:
            if probe:
                self._probing = False

    def succeeded(self) -> None:
        """It answered about the item (a 2xx, or a refusal of the item): it is up."""
        self._failures, self._pause, self.last_error = 0, 0.0, None

    def failed(self, reason: str, probe: bool) -> None:
        self.last_error = reason
        self._failures += 1
        if probe:  # the one try after a pause failed too: a longer pause
            self._pause = min(MAX_PAUSE, self._pause * 2)
        elif self._failures >= FAILURES_BEFORE_PAUSE:
            self._pause = self.pause_seconds
        else:
            return
        self._failures = 0
        self._paused_until = self._clock() + self._pause

    def problems(self) -> list[str]:
        if self._clock() < self._paused_until:
            return [f"destination {self.name} is failing ({self.last_error}): paused"]
        return []


class Gate:
    """At most ``concurrency`` requests in flight and, with a ``rate``, at most that many
    arriving per second; a delivery that would wait longer than :data:`MAX_QUEUE_WAIT` for
    either is refused at once, as a pause.

    The rate is a sliding window (:class:`~dimmy_webhooks.ratelimit.SlidingWindow`): at most
    ``capacity`` requests within any ``window`` seconds, a little longer than the rate asks, so
    jitter on the way cannot put one more in the WMS's second (a token bucket the size of the
    rate would allow twice that at a burst's edge). A request counts from when its body has been
    written to its connection, not from when it was handed to the HTTP client: opening a
    connection can take longer than the margin, and the WMS counts what arrives.
    """

    def __init__(
        self, name: str, concurrency: int, rate: float | None, clock: Callable[[], float]
    ) -> None:
        self.name = name
        self.concurrency = concurrency
        self.rate = rate
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._queued = 0  # deliveries waiting for a slot or their turn
        self._latency = FIRST_LATENCY  # a moving average of the seconds per request
        self._window: SlidingWindow | None = None
        if rate:
            window = max(1.0, 1 / rate) + RATE_MARGIN
            self._window = SlidingWindow(max(1, math.floor(rate * (window - RATE_MARGIN))), window)

    @contextlib.asynccontextmanager
    async def enter(self) -> AsyncIterator[Mark | None]:
        """A connection slot and a turn of the rate, for one request; yields its place in the
        rate window (``None`` without a rate), to settle once its body is written."""
        self._make_room()
        self._queued += 1
        try:
            # however many were let in, none waits here longer than it was let in for (a
            # destination that turned slow): the rest go back to the queue, uncounted
            async with asyncio.timeout(MAX_QUEUE_WAIT):
                await self._slots.acquire()
        except TimeoutError:
            until = self._clock() + 0.5
            raise DestinationPaused(f"{self.name} is at its concurrency limit", until) from None
        finally:
            self._queued -= 1  # got a slot, gave up, or cancelled (a shutdown)
        mark = None
        try:
            mark = await self._window.turn() if self._window is not None else None
            yield mark
        finally:
            if mark is not None:  # not written (refused, cancelled): counted from now
                mark.settle(time.monotonic())
            self._slots.release()

    def took(self, seconds: float) -> None:
        """One request took ``seconds``: the latency the room is measured with."""
        self._latency += 0.2 * (seconds - self._latency)

    def _make_room(self) -> None:
        """Refuse (as a pause: no attempt counted) a delivery that would wait long for a slot
        or its turn of the rate: it would hold a worker's place meanwhile, which the deliveries
        to other destinations need. How many may wait is what the destination, at the latency
        it has shown, answers within :data:`MAX_QUEUE_WAIT` (at least twice its
        concurrency) and its rate limit lets go in that time: a WMS that answers in 5 ms takes a
        worker's whole backlog, one that takes a second a few at a time."""
        turns = max(2, int(MAX_QUEUE_WAIT / max(self._latency, 0.001)))
        room = min(MAX_QUEUED, self.concurrency * turns)
        if self.rate:  # nor more than its rate lets go within that time
            room = min(room, max(self.concurrency, int(self.rate * MAX_QUEUE_WAIT)))
        busy = self._queued >= room
        wait = self._window.wait(ahead=self._queued) if self._window is not None else 0.0
        if busy or wait > MAX_QUEUE_WAIT:
            until = self._clock() + max(wait, 0.5)
            raise DestinationPaused(f"{self.name} is at its concurrency or rate limit", until)
