"""Webhooks first: while they arrive, a worker in the same process writes in a small share of
the time.

In the all-in-one ``serve`` the receiver and the worker share one process, one event loop and
the store's writers (SQLite's single writer thread, PostgreSQL's connections and CPU). A burst of
webhooks comes exactly when a device uploads a shift's worth of scans, which is when the worker
is busiest: without a rule its claims, expansions and item writes take the writer and the
interpreter from the acknowledgements Svix is waiting for.

:class:`IntakeFirst` is that rule. The store notes each webhook insert; the intake is *busy*
while at least :data:`BUSY_INSERTS` of them arrived within :data:`BUSY_WINDOW_SECONDS`. While
busy, the worker's writes (claims and the writes about its jobs) pass one at a time, each
followed by a pause that keeps them to :data:`WORKER_SHARE` of the time: a write that took
4 ms lets the next start 36 ms later at 10 %. The worker slows down but never stops (a write is
never refused, only delayed), and runs at full speed again once the burst is over. Nothing
about durability changes: every write still commits before its caller goes on.

A process that only receives (``serve --no-worker``) or only works (``worker``) never waits
here: the first never makes worker writes, the second never inserts webhooks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable

BUSY_INSERTS = 8
"""Webhook inserts within :data:`BUSY_WINDOW_SECONDS` that make the intake busy (80/s): a few
devices uploading now and then never slow the worker down."""

BUSY_WINDOW_SECONDS = 0.1

WORKER_SHARE = 0.05
"""The share of the time a worker's writes take while the intake is busy: what the
acknowledgements lose to them (``bench/ack.py``'s all-in-one rows), and what the worker keeps
(about 5-10 items/s at the default rate during a flood of 10-id webhooks)."""

MAX_PAUSE_SECONDS = 1.0
"""The longest pause after one write (a slow write does not stop the worker for long)."""


class IntakeFirst:
    """Counts webhook inserts and paces worker writes while they come quickly (see module)."""

    def __init__(
        self,
        *,
        busy_inserts: int = BUSY_INSERTS,
        window_seconds: float = BUSY_WINDOW_SECONDS,
        share: float = WORKER_SHARE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self._recent: collections.deque[float] = collections.deque(maxlen=busy_inserts)
        self._window = window_seconds
        self._rest = (1 - share) / share  # pause per second of write
        self._clock = clock
        self._next = 0.0  # when the next worker write may start, while busy
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.waited = 0.0
        """Seconds worker writes have waited here in all (for the benchmarks and tests)."""

    def note_insert(self) -> None:
        """A webhook insert was submitted (called by the store, in the event loop)."""
        self._recent.append(self._clock())

    def busy(self) -> bool:
        """Whether webhooks are arriving quickly now."""
        recent = self._recent
        return len(recent) == recent.maxlen and self._clock() - recent[0] <= self._window

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
