"""The poller: read ``GET /items`` from a stored watermark and feed it into the same pipeline.

Passes (:class:`Poller`): every ``interval`` seconds, the window from the watermark minus
``overlap`` to ``now - settle``, read by a :class:`~.ranges.RangeReader` (how a range is read,
and why nothing is skipped or stored twice, is said there); the watermark moves to the window's
end only once the whole window is committed, so a pass that dies is read again; a pass cut short
at a slice moves it only to that slice's start and counts as failed. Every ``sweep_interval`` a
deeper pass re-reads the last ``sweep_days``: ``start_date`` filters on creation time, so an item
updated after its window was read (photos uploaded later, a re-scan) is only seen again by a sweep
or a webhook (docs/operations.md says what reconciliation does and does not catch). After every
pass, :mod:`.reconciliation` counts the webhooks that never came.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from dimmy_webhooks.errors import StoreError, UpstreamError
from dimmy_webhooks.models import Source
from dimmy_webhooks.pipeline.ranges import PollPolicy, RangeReader, RangeResult, iso, parse_time
from dimmy_webhooks.pipeline.reconciliation import MissedAlarm, Reconciliation, reconciliation
from dimmy_webhooks.store import Store
from dimmy_webhooks.upstream.client import DimmyClient

log = logging.getLogger("dimmy_webhooks.pipeline.poller")

WATERMARK = "poll.watermark"
SWEPT = "poll.swept"


def state_key(name: str, account: str) -> str:
    """``name`` for ``account``'s poller: as it always was for ``default`` (an upgraded
    installation goes on from its watermark), ``name:account`` for the others."""
    return name if account == "default" else f"{name}:{account}"


@dataclass
class Poller:
    """The long-running part of ``serve --poll``: a pass every ``policy.interval`` seconds."""

    store: Store
    client: DimmyClient
    outputs: Sequence[str]
    policy: PollPolicy
    pull_mode: bool = False
    clock: Callable[[], float] = time.time
    on_stored: Callable[[], None] = lambda: None
    account: str = "default"
    problem: str | None = None
    last_pass: dict[str, object] = field(default_factory=dict)
    _missed: MissedAlarm = field(default_factory=MissedAlarm)

    def reader(self) -> RangeReader:
        return RangeReader(
            self.store,
            self.client,
            self.outputs,
            self.policy,
            clock=self.clock,
            on_stored=self.on_stored,
            account=self.account,
        )

    async def run(self, stop: asyncio.Event) -> None:
        fields = {"every": self.policy.interval, "account": self.account}
        log.info("poller started", extra={"fields": fields})
        while not stop.is_set():
            await self.pass_once(stop)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.policy.interval)
        log.info("poller stopped", extra={"fields": {"account": self.account}})

    async def pass_once(self, stop: asyncio.Event | None = None) -> RangeResult | None:
        """One pass (and a sweep when one is due), then reconciliation. Never raises for an
        upstream or store failure: it is logged, kept as :attr:`problem` (``/readyz``), and the
        next pass reads the same window again. Returns the pass's totals (``None``: failed)."""
        started = time.monotonic()
        now = self.clock()
        end = datetime.fromtimestamp(now - self.policy.settle, UTC)
        try:
            mark = await self.store.get_state(state_key(WATERMARK, self.account))
            start = (
                parse_time(mark) - timedelta(seconds=self.policy.overlap)
                if mark is not None
                else end - timedelta(seconds=self.policy.first_lookback)
            )
            reader = self.reader()
            result = await reader.read_range(start, end, Source.POLL, stop=stop)
            if stop is not None and stop.is_set():
                return result  # the watermark stays: the next pass reads this window again
            if result.cut_at is not None:
                await self._cut_short(mark, result.cut_at)
                return None
            await self.store.set_state(state_key(WATERMARK, self.account), iso(end), self.clock())
            await self._sweep_if_due(reader, end, stop)
            report = await self.reconcile()
        except (UpstreamError, StoreError) as exc:
            self.problem = (
                f"poller: {exc}"
                if self.account == "default"
                else (f"poller of {self.account}: {exc}")
            )
            fields = {"account": self.account, "reason": str(exc)}
            log.warning("poll failed, will retry", extra={"fields": fields})
            return None
        self.problem = None
        self.last_pass = {
            "at": iso(datetime.fromtimestamp(now, UTC)),
            "window": [iso(start), iso(end)],
            "pages": result.pages,
            "read": result.read,
            "stored": result.stored,
            "seconds": round(time.monotonic() - started, 3),
            "missed_by_webhooks": report.missed,
        }
        log.info("poll pass", extra={"fields": dict(self.last_pass)})
        return result

    async def _cut_short(self, mark: str | None, cut_at: datetime) -> None:
        """A pass stopped at a slice it could not read whole: the watermark moves to that
        slice's start at most (never back), the pass counts as failed (``problem``)."""
        if mark is None or cut_at > parse_time(mark):
            await self.store.set_state(
                state_key(WATERMARK, self.account), iso(cut_at), self.clock()
            )
        kept = cut_at if mark is None else max(cut_at, parse_time(mark))
        self.problem = f"poller: a slice from {iso(cut_at)} could not be read whole"
        log.warning(
            "poll pass cut short: the watermark stays at what was read",
            extra={"fields": {"watermark": iso(kept), "slice_from": iso(cut_at)}},
        )

    async def _sweep_if_due(
        self, reader: RangeReader, end: datetime, stop: asyncio.Event | None
    ) -> None:
        if self.policy.sweep_days <= 0:
            return
        swept = await self.store.get_state(state_key(SWEPT, self.account))
        if (
            swept is not None
            and (end - parse_time(swept)).total_seconds() < self.policy.sweep_interval
        ):
            return
        start = end - timedelta(days=self.policy.sweep_days)
        result = await reader.read_range(
            start, end, Source.POLL, stop=stop, slice_seconds=self.policy.sweep_slice_seconds
        )
        if (stop is None or not stop.is_set()) and result.cut_at is None:
            await self.store.set_state(state_key(SWEPT, self.account), iso(end), self.clock())
            log.info(
                "poll sweep",
                extra={
                    "fields": {
                        "days": self.policy.sweep_days,
                        "read": result.read,
                        "stored": result.stored,
                    }
                },
            )

    async def reconcile(self) -> Reconciliation:
        """Count the items that reached us only through polling; log a WARNING (and report on
        ``/readyz`` for a day) when the count grew, since webhooks are then being lost."""
        now = self.clock()
        report = await reconciliation(
            self.store, now, self.policy.reconcile_grace, self.pull_mode, account=self.account
        )
        if not self.pull_mode and self.account == "default":
            await self._missed.note(self.store, report, now)
        return report

    def problems(self) -> list[str]:
        problems = [self.problem, self._missed.problem(self.clock())]
        return [problem for problem in problems if problem]
