"""The API's view of the whole service: the overview's counts and the reconciliation report.

``/api/overview`` is the dashboard's first page as JSON; ``/api/reconciliation`` what the
poller found that no webhook named.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from dimmy_webhooks.web.api.common import api_router
from dimmy_webhooks.web.deps import AccountDep, OverviewDep, ServicesDep, ViewerDep

router = api_router()


class OverviewOut(BaseModel):
    """The dashboard's overview: today, what is open, the queue, the destinations, problems."""

    at: str
    account: str | None = Field(description="the account counted; null: every account")
    day_start: str = Field(description="midnight, the server's local time: 'today' starts here")
    today: dict[str, Any] = Field(description="events (by status) and items stored today")
    events: dict[str, int] = Field(description="events pending, processing and dead")
    items: int
    quarantine: int
    jobs: dict[str, dict[str, int]] = Field(description="jobs by kind and status")
    oldest_due_age_seconds: dict[str, float] = Field(description="per kind; 0: none due")
    destinations: list[dict[str, Any]] = Field(description="per output: backlog, failures")
    reconciliation_gap: int = Field(description="items only the poller found")
    problems: list[str]
    failures: list[str]
    api_key_refused: bool
    webhooks: dict[str, int] = Field(description="answered by this process, by outcome")
    signature_failures_last_5_minutes: int
    recent_rejections: list[dict[str, Any]]


@router.get("/overview", response_model=OverviewOut)
async def get_overview(overview: OverviewDep) -> dict[str, Any]:
    """The counts of the dashboard's first page (cheap: every figure is one indexed query or
    held by this process), of every account or of ``?account=`` (an operator: its own)."""
    return overview.as_json()


class ChartsOut(BaseModel):
    """The series the overview's charts draw."""

    at: str
    scans_per_hour: dict[str, Any] = Field(
        description="`hours` and `points`: `{hour, items}` per hour (UTC), items first stored"
    )
    delivery_latency: dict[str, Any] = Field(
        description="`hours` and `outputs`: per output `attempts`, `p50_ms`, `p95_ms`, "
        "`max_ms` over the window and the same `per_hour`"
    )
    backlog: dict[str, Any] = Field(
        description="`points` `{at, due, running, dead}` sampled every `every_seconds` by this "
        "process since `sampled_since` (empty after a restart; `null`: not sampled here)"
    )


@router.get("/charts", response_model=ChartsOut)
async def get_charts(services: ServicesDep, account: AccountDep) -> dict[str, Any]:
    """The overview's charts as data: items first stored per hour over the last 72 hours,
    delivery latency per output over the last 24 hours (nearest-rank percentiles of the
    newest 100,000 attempts), and the backlog this process sampled every minute (the last
    24 hours at most; every account's, so not shown for one account)."""
    series = await services.series(account=account)
    return series.as_json()


class ReconciliationDay(BaseModel):
    day: str = Field(description="creation day (UTC) of the items, `YYYY-MM-DD`")
    count: int
    item_ids: list[str] = Field(description="the first 100 of them")


class ReconciliationOut(BaseModel):
    mode: str = Field(description="`webhooks`, or `pull` when no webhook secret is configured")
    missed: int = Field(description="items that reached us only through polling")
    days: list[ReconciliationDay]
    last_pass: dict[str, Any] | None = Field(description="the poller's last pass in this process")


@router.get("/reconciliation", response_model=ReconciliationOut)
async def get_reconciliation(
    services: ServicesDep, viewer: ViewerDep, account: AccountDep
) -> dict[str, Any]:
    """Items that exist upstream but never arrived by webhook, per creation day, with their ids.

    Counts what the poller (``serve --poll``, ``poll --once``) and backfills found that no
    webhook named; an item is counted only ``DIMMY_RECONCILE_GRACE_SECONDS`` after it was found
    (its webhook may still be on its way). A growing count means webhooks are being lost.
    """
    report = await services.reconciliation(account=account)
    # the poller's last pass is the process's, of any account: the admin's to see
    last = services.poller.last_pass if services.poller is not None and viewer.admin else None
    return {
        "mode": "pull" if report.pull_mode else "webhooks",
        "missed": report.missed,
        "days": report.days,
        "last_pass": last or None,
    }
