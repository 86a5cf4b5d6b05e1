"""The backlog over time: the queue counted every minute by this process, kept in memory.

Why sampled and not rebuilt from the jobs table: a job row keeps only when it was created and
when it last changed, so the past cannot be read back from it. A job that failed and waited
for a retry, was replayed or was moved to another output has lost the times it was due; a
replay even puts an old ``created_at`` back in the queue. A count taken at the time is exact,
costs one indexed query a minute, and holds nothing another process needs (each process that
serves the dashboard keeps its own). It starts empty when the process starts, which the chart
says (:attr:`BacklogSampler.started_at`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from dimmy_webhooks.errors import StoreError
from dimmy_webhooks.store import Reports

log = logging.getLogger("dimmy_webhooks.observe.backlog")

EVERY_SECONDS = 60.0
KEEP_POINTS = 1440  # 24 h of minutes


@dataclass(frozen=True, slots=True)
class BacklogPoint:
    """The queue at ``at`` (Unix seconds): jobs due, running and dead."""

    at: float
    due: int
    running: int
    dead: int


class BacklogSampler:
    """Counts the queue of ``store`` every ``every`` seconds while :meth:`run` runs, keeping
    the newest ``keep`` points (a store that does not answer skips a point). ``started_at`` is
    ``None`` until it runs."""

    def __init__(
        self,
        store: Reports,
        *,
        every: float = EVERY_SECONDS,
        keep: int = KEEP_POINTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.every = every
        self.clock = clock
        self.started_at: float | None = None
        self._points: deque[BacklogPoint] = deque(maxlen=keep)

    def points(self) -> list[BacklogPoint]:
        """The points kept, oldest first."""
        return list(self._points)

    async def sample(self) -> BacklogPoint | None:
        """Take one point now (``None`` when the store did not answer)."""
        now = self.clock()
        try:
            counts = await self.store.backlog_now(now)
        except StoreError as exc:
            log.warning("backlog not sampled", extra={"fields": {"reason": str(exc)}})
            return None
        point = BacklogPoint(now, counts.due, counts.running, counts.dead)
        self._points.append(point)
        return point

    async def run(self, stop: asyncio.Event) -> None:
        """Sample now and every :attr:`every` seconds until ``stop`` is set."""
        self.started_at = self.clock()
        while not stop.is_set():
            await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)
