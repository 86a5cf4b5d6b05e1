"""``backfill``: import every item created in a range once, resumably.

The range is read through the poller's :class:`~.ranges.RangeReader` (source ``backfill``, so
its work queues behind live webhooks'), and its progress is kept in ``sync_state`` after every
slice committed: the same command started again goes on after the last one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from dimmy_webhooks.models import Source
from dimmy_webhooks.pipeline.ranges import RangeReader, RangeResult, iso, parse_time


@dataclass
class BackfillProgress:
    """Where a backfill of ``[since, until]`` stands, kept in ``sync_state`` after every slice,
    so an interrupted backfill started again resumes after its last committed slice."""

    since: str
    until: str
    done_until: str
    read: int = 0
    stored: int = 0
    finished: bool = False
    resumed: bool = False

    @staticmethod
    def key(since: datetime, until: datetime | None, account: str = "default") -> str:
        key = f"backfill:{iso(since)}:{iso(until) if until is not None else 'now'}"
        return key if account == "default" else f"{key}:{account}"

    def dump(self) -> str:
        fields = ("since", "until", "done_until", "read", "stored", "finished")
        return json.dumps({name: getattr(self, name) for name in fields})


async def backfill(
    reader: RangeReader,
    since: datetime,
    until: datetime | None,
    *,
    restart: bool = False,
    progress: Callable[[BackfillProgress], None] | None = None,
    stop: asyncio.Event | None = None,
) -> BackfillProgress:
    """Import every item created in ``[since, until]`` once, resumably: the progress is saved
    after every slice, and the same command started again goes on from there. Without
    ``until``, up to now: a finished one started again reads on from where it ended to the new
    now. ``restart`` reads a finished range again from the start."""
    store = reader.store
    key = BackfillProgress.key(since, until, reader.account)
    saved = None if restart else await store.get_state(key)
    now = iso(datetime.fromtimestamp(reader.clock(), UTC))
    if saved is not None:
        state = BackfillProgress(**json.loads(saved), resumed=True)
        if state.finished and until is None:
            state.until, state.finished = now, False
    else:
        end = iso(until) if until is not None else now
        state = BackfillProgress(since=iso(since), until=end, done_until=iso(since))
    if state.finished:
        return state
    base_read, base_stored = state.read, state.stored

    async def committed(slice_end: datetime, totals: RangeResult) -> None:
        state.done_until = iso(slice_end)
        state.read, state.stored = base_read + totals.read, base_stored + totals.stored
        await store.set_state(key, state.dump(), reader.clock())
        if progress is not None:
            progress(state)

    await store.set_state(key, state.dump(), reader.clock())  # the range is fixed from now on
    await reader.read_range(
        parse_time(state.done_until),
        parse_time(state.until),
        Source.BACKFILL,
        progress=committed,
        stop=stop,
    )
    state.finished = state.done_until == state.until
    await store.set_state(key, state.dump(), reader.clock())
    return state
