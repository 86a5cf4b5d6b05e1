"""The operator's overview: what arrived today, what is stuck, what needs a person.

:func:`take_overview` reads it in a few cheap queries (each on an index) plus what the running
process knows (problems, this process's refused webhooks). The dashboard's first page, its JSON
twin ``GET /api/overview``, the gauges of ``/metrics`` and the alert conditions all read this one
picture, so they never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from dimmy_webhooks.config import problems_of
from dimmy_webhooks.items import format_timestamp
from dimmy_webhooks.observe.logs import redact_urls
from dimmy_webhooks.store import OperatorCounts, Store

RECENT_ATTEMPTS = 50  # ledger rows read per output to tell whether it is failing


@dataclass(frozen=True, slots=True)
class Status:
    """What the running process knows at ``at`` (Unix seconds), taken by the composition root
    (:meth:`dimmy_webhooks.services.Services.status`) for the observers.

    ``outputs`` are this process's output names; ``problems`` and ``failures`` are what
    ``/readyz`` lists; ``webhooks``, ``signature_failures_recent`` and ``rejections`` are this
    process's counts (:class:`~dimmy_webhooks.observe.metrics.Metrics`); ``api_rate`` the Dimmy
    API client's pace (``None``: no API key here).
    """

    at: float
    started_at: float
    reconcile_grace: float
    outputs: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()
    api_key_refused: bool = False
    api_rate: dict[str, Any] | None = None
    webhooks: dict[str, int] = field(default_factory=dict)
    signature_failures_recent: int = 0
    rejections: tuple[dict[str, Any], ...] = ()

    def for_operator(self, account: str) -> Status:
        """What of the process ``account``'s operator is shown: whether it runs
        (``failures``), the problems that name its account (``account NAME: ...``), and
        nothing that may be another account's (refused webhooks name no account, the API
        client's pace and the webhook counts are the process's)."""
        return replace(
            self,
            problems=tuple(problems_of(self.problems, account)),
            api_key_refused=False,
            api_rate=None,
            webhooks={},
            signature_failures_recent=0,
            rejections=(),
        )


@dataclass(frozen=True, slots=True)
class Destination:
    """One output: its backlog, dead deliveries and how its latest attempts went.

    ``failing_since`` is the start of the run of failed attempts since its last success
    (``None``: its latest attempt succeeded, or it has none).
    """

    output: str
    backlog: int = 0
    dead: int = 0
    oldest_due_age: float | None = None
    last_success_at: float | None = None
    failing_since: float | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Overview:
    """One picture of the service at ``at`` (Unix seconds); "today" starts at ``day_start``
    (midnight, the server's local time)."""

    at: float
    day_start: float
    counts: OperatorCounts
    destinations: list[Destination]
    problems: list[str]
    failures: list[str]
    api_key_refused: bool
    webhooks: dict[str, int] = field(default_factory=dict)
    signature_failures_recent: int = 0
    rejections: list[dict[str, Any]] = field(default_factory=list)
    api_rate: dict[str, Any] | None = None  # the client's pace (None: no API key here)
    account: str | None = None  # the account counted (None: every account)

    @property
    def items_total(self) -> int:
        return self.counts.items

    @property
    def held(self) -> int:
        return self.counts.held

    @property
    def reconciliation_gap(self) -> int:
        return self.counts.unwebhooked

    @property
    def dead_jobs(self) -> int:
        return sum(q.count for q in self.counts.queue if q.status == "dead")

    def jobs_by_kind(self) -> dict[tuple[str, str], int]:
        """Jobs by ``(kind, status)`` (pending, running, dead), every kind and status listed."""
        out = {
            (k, s): 0 for k in ("event", "fetch", "deliver") for s in ("pending", "running", "dead")
        }
        for row in self.counts.queue:
            out[(row.kind, row.status)] = out.get((row.kind, row.status), 0) + row.count
        return out

    def oldest_due_by_kind(self) -> dict[str, float]:
        """Seconds the oldest due job of each kind has waited (0 when none is due)."""
        out = dict.fromkeys(("event", "fetch", "deliver"), 0.0)
        for row in self.counts.queue:
            if row.due_since is not None:
                out[row.kind] = max(out.get(row.kind, 0.0), 0.0, self.at - row.due_since)
        return out

    def as_json(self) -> dict[str, Any]:
        """The JSON twin of the overview page (``GET /api/overview``)."""
        jobs: dict[str, dict[str, int]] = {}
        for (kind, status), count in self.jobs_by_kind().items():
            jobs.setdefault(kind, {})[status] = count
        return {
            "at": _iso(self.at),
            "account": self.account,
            "day_start": _iso(self.day_start),
            "today": {
                "events": sum(self.counts.events_since.values()),
                "events_by_status": self.counts.events_since,
                "items": self.counts.items_since,
            },
            "events": {
                s: self.counts.events_open.get(s, 0) for s in ("pending", "processing", "dead")
            },
            "items": self.counts.items,
            "quarantine": self.counts.held,
            "jobs": jobs,
            "oldest_due_age_seconds": self.oldest_due_by_kind(),
            "destinations": [
                {
                    "output": redact_urls(d.output),
                    "backlog": d.backlog,
                    "dead": d.dead,
                    "oldest_due_age_seconds": d.oldest_due_age,
                    "last_success_at": _iso(d.last_success_at),
                    "failing_since": _iso(d.failing_since),
                    "last_error": redact_urls(d.last_error) if d.last_error else d.last_error,
                }
                for d in self.destinations
            ],
            "reconciliation_gap": self.counts.unwebhooked,
            "problems": [redact_urls(p) for p in self.problems],
            "failures": [redact_urls(f) for f in self.failures],
            "api_key_refused": self.api_key_refused,
            "webhooks": self.webhooks,
            "signature_failures_last_5_minutes": self.signature_failures_recent,
            "recent_rejections": self.rejections,
            "api_rate": self.api_rate,
        }


def local_midnight(at: float) -> float:
    """The start of the day of ``at`` in the server's local time."""
    moment = datetime.fromtimestamp(at).astimezone()
    return moment.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


async def take_overview(store: Store, status: Status, *, account: str | None = None) -> Overview:
    """Read the overview of ``account`` (``None``: every account) from ``store`` and the
    process's ``status`` (raises ``StoreError``)."""
    now = status.at
    day_start = local_midnight(now)
    counts = await store.operator_counts(
        since=day_start, now=now, seen_before=now - status.reconcile_grace, account=account
    )
    names = list(dict.fromkeys([*status.outputs, *_queued_outputs(counts)]))
    destinations = [await _destination(store, counts, name, now, account) for name in names]
    return Overview(
        at=now,
        day_start=day_start,
        counts=counts,
        destinations=destinations,
        problems=list(status.problems),
        failures=list(status.failures),
        api_key_refused=status.api_key_refused,
        webhooks=dict(status.webhooks),
        signature_failures_recent=status.signature_failures_recent,
        rejections=list(status.rejections),
        api_rate=status.api_rate,
        account=account,
    )


def _queued_outputs(counts: OperatorCounts) -> list[str]:
    return [q.output for q in counts.queue if q.kind == "deliver" and q.output is not None]


async def _destination(
    store: Store, counts: OperatorCounts, name: str, now: float, account: str | None
) -> Destination:
    rows = [q for q in counts.queue if q.kind == "deliver" and q.output == name]
    due = [q.due_since for q in rows if q.due_since is not None]
    recent = await store.recent_attempts(name, limit=RECENT_ATTEMPTS, account=account)
    last_success = next((at for outcome, at, _ in recent if outcome == "delivered"), None)
    failures = [
        (at, error)
        for outcome, at, error in recent
        if outcome in ("failed", "dead") and (last_success is None or at > last_success)
    ]
    latest_failed = bool(recent) and recent[0][0] in ("failed", "dead")
    return Destination(
        output=name,
        backlog=sum(q.count for q in rows if q.status in ("pending", "running")),
        dead=sum(q.count for q in rows if q.status == "dead"),
        oldest_due_age=max(0.0, now - min(due)) if due else None,
        last_success_at=last_success,
        failing_since=min(at for at, _ in failures) if latest_failed and failures else None,
        last_error=failures[0][1] if failures else None,
    )


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else format_timestamp(seconds)
