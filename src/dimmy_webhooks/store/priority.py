"""Webhooks first: while they arrive, a worker in the same process writes in a small share of
the time.

In the all-in-one ``serve`` the receiver and the worker share one process, one event loop and
the store's writers (SQLite's single writer thread, PostgreSQL's connections and CPU). A burst of
webhooks comes exactly when a device uploads a shift's worth of scans, which is when the worker
is busiest: without a rule its claims, expansions and item writes take the writer and the
interpreter from the acknowledgements Svix is waiting for.

:class:`IntakeFirst` is that rule. The store counts the webhook inserts in flight; the intake
is *busy* while :data:`BUSY_IN_FLIGHT` or more of them wait for the writer at once, and for
:data:`BUSY_WINDOW_SECONDS` after. That is when acknowledgements queue: a steady 100 webhooks a
second that the writer keeps up with is not busy, and the worker keeps pace with it. While
busy, the worker's writes (claims and the writes about its jobs) pass one at a time, each
followed by a pause that keeps them to :data:`WORKER_SHARE` of the time: a write that took
4 ms lets the next start 76 ms later at 5 %. The worker slows down but never stops (a write is
never refused, only delayed), and runs at full speed again once the receiver has caught up.
Nothing about durability changes: every write still commits before its caller goes on.

A process that only receives (``serve --no-worker``) or only works (``worker``) never waits
here: the first never makes worker writes, the second never inserts webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

BUSY_IN_FLIGHT = 4
"""Webhook inserts waiting for the writer at once that make the intake busy: each insert waits
for the commit of its group, so a few at a time is normal; more means acknowledgements queue."""

BUSY_WINDOW_SECONDS = 0.1
"""How long the intake stays busy after the inserts in flight last reached
:data:`BUSY_IN_FLIGHT`."""

WORKER_SHARE = 0.05
"""The share of the time a worker's writes take while the intake is busy: what the
acknowledgements lose to them (``bench/ack.py``'s all-in-one rows), and what the worker keeps
while they queue."""

MAX_PAUSE_SECONDS = 1.0
"""The longest pause after one write (a slow write does not stop the worker for long)."""


class IntakeFirst:
    """Counts webhook inserts and paces worker writes while they come quickly (see module)."""

    def __init__(
        self,
        *,
        busy_in_flight: int = BUSY_IN_FLIGHT,
        window_seconds: float = BUSY_WINDOW_SECONDS,
        share: float = WORKER_SHARE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self._busy_at = busy_in_flight
        self._in_flight = 0
        self._pressed = -float("inf")  # when the inserts in flight last reached _busy_at
        self._window = window_seconds
        self._rest = (1 - share) / share  # pause per second of write
        self._clock = clock
        self._next = 0.0  # when the next worker write may start, while busy
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.waited = 0.0
        """Seconds worker writes have waited here in all (for the benchmarks and tests)."""

    @contextlib.contextmanager
    def inserting(self) -> Iterator[None]:
        """Hold around one webhook insert, from its submission to its commit (the store)."""
        self._in_flight += 1
        if self._in_flight >= self._busy_at:
            self._pressed = self._clock()
        try:
            yield
        finally:
            self._in_flight -= 1

    def busy(self) -> bool:
        """Whether webhook inserts are queueing for the writer now, or were a moment ago."""
        if self._in_flight >= self._busy_at:
            return True
        return self._clock() - self._pressed <= self._window

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold around one worker write: at once while the intake is quiet, else in turn."""
        if not self.busy():
            yield
            return
        async with self._the_lock():
            delay = self._next - self._clock()
            if delay > 0 and self.busy():
                started_wait = self._clock()
                await asyncio.sleep(min(delay, MAX_PAUSE_SECONDS))
                self.waited += self._clock() - started_wait
            started = self._clock()
            try:
                yield
            finally:
                ended = self._clock()
                self._next = ended + min((ended - started) * self._rest, MAX_PAUSE_SECONDS)

    def _the_lock(self) -> asyncio.Lock:
        # a lock belongs to one event loop; a store may be used from several in turn (commands)
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock
