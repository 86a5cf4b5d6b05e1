"""Reconciliation: the items that exist upstream but reached us only through polling.

An item the poller (or a backfill) stored first and no webhook ever named, once ``grace`` seconds
have passed, is a webhook that was lost. :func:`reconciliation` is the report (``GET
/api/reconciliation``, the summary of ``poll --once``); :class:`MissedAlarm` is what the poller
does with it after every pass: when the count grew, a WARNING, and a problem on ``/readyz`` for a
day. In pull mode (no webhook secret) nothing comes by webhook, so nothing is missed either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dimmy_webhooks.store import Store

log = logging.getLogger("dimmy_webhooks.pipeline.poller")

RECONCILED = "reconcile.missed"
"""``sync_state`` key of the count last reported, so that only a growth is warned about."""
ALARM_SECONDS = 86_400.0


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """Items that exist upstream but reached us only through polling, per creation day."""

    missed: int
    days: list[dict[str, object]]
    pull_mode: bool


async def reconciliation(
    store: Store,
    now: float,
    grace: float,
    pull_mode: bool,
    ids_per_day: int = 100,
    *,
    account: str | None = None,
) -> Reconciliation:
    """The reconciliation report: per creation day, how many items (and which, up to
    ``ids_per_day``) were first read by polling at least ``grace`` seconds ago and never named by
    a webhook."""
    rows = await store.unwebhooked(now - grace, account=account)
    days: dict[str, dict[str, object]] = {}
    for item_id, created_at in rows:
        day = (created_at or "unknown")[:10]
        entry = days.setdefault(day, {"day": day, "count": 0, "item_ids": []})
        entry["count"] = int(str(entry["count"])) + 1
        ids = entry["item_ids"]
        assert isinstance(ids, list)
        if len(ids) < ids_per_day:
            ids.append(item_id)
    return Reconciliation(missed=len(rows), days=list(days.values()), pull_mode=pull_mode)


@dataclass
class MissedAlarm:
    """Raised for :data:`ALARM_SECONDS` when a report counts more missed webhooks than the one
    before (the count is kept in ``sync_state``, so a restart does not warn again)."""

    until: float = 0.0

    async def note(self, store: Store, report: Reconciliation, now: float) -> None:
        """Compare ``report`` with the count last kept: warn when it grew, keep the new one."""
        before = await store.get_state(RECONCILED)
        previous = int(before) if before is not None and before.isdigit() else 0
        if report.missed > previous:
            self.until = now + ALARM_SECONDS
            log.warning(
                "reconciliation: items reached us only through polling: webhooks are being lost",
                extra={
                    "fields": {
                        "missed": report.missed,
                        "new": report.missed - previous,
                        "days": ",".join(f"{d['day']}:{d['count']}" for d in report.days[-7:]),
                    }
                },
            )
        if report.missed != previous:
            await store.set_state(RECONCILED, str(report.missed), now)

    def problem(self, now: float) -> str | None:
        """What ``/readyz`` says while the alarm is raised."""
        if now < self.until:
            return (
                "reconciliation found items that never arrived by webhook: see "
                "GET /api/reconciliation (webhooks are being lost)"
            )
        return None
