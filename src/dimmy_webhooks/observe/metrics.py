"""What ``/metrics`` tells Prometheus, and the in-process counts behind it.

Two kinds of figures, in one text exposition (``prometheus_client``'s format, from a registry
of this process's own, so that several apps in one process never share counters):

- **counted here**, as things happen in this process: webhooks by outcome and signature
  failures (the receiver calls :meth:`Metrics.webhook`), Dimmy API requests by status and their
  latency (the client calls :meth:`Metrics.api_request`), and the client's rate limit now
  (fixed or adaptive, read from the client at scrape time: :meth:`Metrics.watch_api_rate`);
- **read from the store at scrape time**, the same for every process on the database: jobs
  by kind and status, the age of the oldest due job per kind, the delivery backlog per output,
  items stored, the quarantine, the reconciliation gap (:class:`~.overview.Overview`), and
  deliveries by output and outcome, added up from the ledger incrementally
  (:class:`LedgerTally`: each scrape reads only rows it has not counted yet).

The store's figures carry an ``account`` label (items, open events, jobs, the backlog and the
deliveries), its values bounded by the configured accounts: a row of an account removed from
the accounts file is counted under :data:`OTHER`. An account's operator is shown that account's
series only, none of this process's counters (:meth:`Metrics.render`).

The route gathers the figures (:func:`account_figures`, :class:`LedgerTally`) and calls
:meth:`Metrics.render`, which does no IO.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from dimmy_webhooks.items import format_timestamp
from dimmy_webhooks.observe.logs import redact_urls
from dimmy_webhooks.observe.overview import Overview
from dimmy_webhooks.store import OperatorCounts, QueueDepth, Store

OTHER = "other"
"""The ``account`` label of rows whose account is no longer configured (kept, never deleted)."""
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SIGNATURE_WINDOW = 300.0  # seconds over which signature failures are counted for alerts
_STATUS_OUTCOME = {
    401: "rejected_signature",
    400: "rejected_body",
    413: "rejected_too_large",
    408: "rejected_timeout",
    503: "unavailable",
    404: "pull_mode",
}
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A webhook this process refused: when, the status and the reason it answered."""

    at: float
    status: int
    reason: str


class Metrics:
    """This process's counters and the recent refusals (for the dashboard and the alerts)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        self.webhooks = Counter(
            "dimmy_webhooks",
            "Webhooks answered by this process, by outcome (accepted, duplicate, requeued, "
            "rejected_*, unavailable).",
            ["outcome"],
            registry=self.registry,
        )
        self.signature_failures = Counter(
            "dimmy_webhook_signature_failures",
            "Webhooks refused with 401: signature, timestamp or signature headers wrong.",
            registry=self.registry,
        )
        self.api_requests = Counter(
            "dimmy_api_requests",
            "Dimmy API requests made by this process, by endpoint (item, items) and status (the "
            "HTTP status, timeout or transport_error).",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.api_latency = Histogram(
            "dimmy_api_request_duration_seconds",
            "Time of one Dimmy API request, by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.api_rate = Gauge(
            "dimmy_api_rate_limit_per_second",
            "Dimmy API requests per second this process allows now: DIMMY_API_RATE_LIMIT, or the "
            "rate adaptive mode has learned.",
            registry=self.registry,
        )
        self.rejections: collections.deque[Rejection] = collections.deque(maxlen=20)
        self._signature_times: collections.deque[float] = collections.deque(maxlen=100_000)
        self.ledger = LedgerTally(clock=clock)
        self._lock = threading.Lock()  # the client may call from several event loops (tests)
        # each label set's child, found once: labels() validates and locks on every call, and
        # these hooks run for every webhook and every API request
        self._children: dict[tuple[object, ...], Any] = {}

    # hooks ----------------------------------------------------------------------------------

    def webhook(self, status: int, outcome: str | None, reason: str | None) -> None:
        """The receiver answered ``status`` (``outcome`` for a 204: accepted, duplicate or
        requeued; ``reason``: what a refusal said)."""
        label = outcome or _STATUS_OUTCOME.get(status, f"status_{status}")
        self._child(self.webhooks, label).inc()
        if status == 401:
            self.signature_failures.inc()
            with self._lock:
                self._signature_times.append(self.clock())
        if status >= 400 and status != 404:
            self.rejections.appendleft(Rejection(self.clock(), status, (reason or "")[:300]))

    def api_request(self, path: str, status: str, seconds: float) -> None:
        """One Dimmy API request to ``path`` ended with ``status`` after ``seconds``."""
        endpoint = "items" if path == "/items" else "item"
        self._child(self.api_requests, endpoint, status).inc()
        self._child(self.api_latency, endpoint).observe(seconds)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (the label values here
        come from short fixed lists: outcomes, endpoints, HTTP statuses)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def watch_api_rate(self, rate: Callable[[], float]) -> None:
        """Report ``rate()`` (requests per second) as the API rate gauge at every scrape."""
        self.api_rate.set_function(rate)

    # reads ----------------------------------------------------------------------------------

    def signature_failures_within(self, seconds: float = SIGNATURE_WINDOW) -> int:
        """Signature failures in the last ``seconds``."""
        horizon = self.clock() - seconds
        with self._lock:
            while self._signature_times and self._signature_times[0] < horizon:
                self._signature_times.popleft()
            return len(self._signature_times)

    def webhook_counts(self) -> dict[str, int]:
        """Webhooks answered by this process so far, by outcome."""
        counts: dict[str, int] = {}
        for metric in self.webhooks.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["outcome"]] = int(sample.value)
        return counts

    def recent_rejections(self) -> tuple[dict[str, Any], ...]:
        """The webhooks this process refused lately, newest first (for the overview)."""
        return tuple(
            {"at": format_timestamp(r.at), "status": r.status, "reason": r.reason}
            for r in list(self.rejections)
        )

    def render(
        self,
        overview: Overview | None,
        accounts: Mapping[str, OperatorCounts],
        deliveries: Mapping[tuple[str, str, str], int],
        outputs: Mapping[str, Sequence[str]] | None = None,
    ) -> bytes:
        """The exposition: this process's counters and its problems (``overview``: the
        admin's; ``None`` for an account's operator, who sees none of them), then the store's
        figures of each ``account`` label (:func:`account_figures`) and the ledger by account,
        output and outcome. ``outputs``: per label, the outputs whose backlog is shown even
        when nothing waits (0)."""
        scrape = CollectorRegistry(auto_describe=False)
        if overview is not None:
            scrape.register(_Fixed(self.registry.collect()))
        now = overview.at if overview is not None else self.clock()
        scrape.register(_Fixed(_store_families(now, accounts, deliveries, outputs or {})))
        if overview is not None:
            scrape.register(_Fixed(_process_families(overview)))
        return generate_latest(scrape)


class LedgerTally:
    """Deliveries by output and outcome, added up from the ledger without reading it again.

    Rows up to an id seen at least :attr:`settle` seconds ago are added to running totals once
    (any transaction that had taken such an id has committed by then); rows above it are
    counted afresh on every scrape. The first scrape of a process reads the whole ledger once.
    """

    def __init__(self, *, settle: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.settle = settle
        self.clock = clock
        self.after = 0
        self.totals: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._seen: collections.deque[tuple[float, int]] = collections.deque(maxlen=1000)

    async def counts(self, store: Store) -> dict[tuple[str, str, str], int]:
        """Attempts by ``(account, output, outcome)``, every account's."""
        now = self.clock()
        upto = None
        while self._seen and self._seen[0][0] <= now - self.settle:
            upto = self._seen.popleft()[1]
        if upto is not None and upto > self.after:
            for row in await store.attempt_counts(after=self.after, upto=upto):
                self.totals[_ledger_key(row)] += int(row["n"])
            self.after = upto
        fresh = collections.Counter(self.totals)
        top = self.after
        for row in await store.attempt_counts(after=self.after):
            fresh[_ledger_key(row)] += int(row["n"])
            top = max(top, int(row["top"]))
        self._seen.append((now, top))
        return dict(fresh)


def _ledger_key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(row["account"]), str(row["output"]), str(row["outcome"]))


def account_label(account: str, configured: Sequence[str]) -> str:
    """The ``account`` label of a row of ``account``: its name while it is configured, else
    :data:`OTHER` (so the label's values are bounded by the accounts file)."""
    return account if account in configured else OTHER


async def account_figures(
    store: Store,
    accounts: Iterable[str],
    configured: Sequence[str],
    *,
    now: float,
    seen_before: float,
) -> dict[str, OperatorCounts]:
    """The store's counts of each of ``accounts`` (those with rows, and the configured ones),
    by ``account`` label: the accounts no longer ``configured`` added up under :data:`OTHER`.
    One read of :meth:`~dimmy_webhooks.store.Store.operator_counts` per account."""
    figures: dict[str, OperatorCounts] = {}
    for account in dict.fromkeys(accounts):
        counts = await store.operator_counts(
            since=now, now=now, seen_before=seen_before, account=account
        )
        label = account_label(account, configured)
        figures[label] = _added(figures[label], counts) if label in figures else counts
    return figures


def _added(one: OperatorCounts, other: OperatorCounts) -> OperatorCounts:
    def merged(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
        return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}

    return OperatorCounts(
        events_since=merged(one.events_since, other.events_since),
        events_open=merged(one.events_open, other.events_open),
        items_since=one.items_since + other.items_since,
        items=one.items + other.items,
        held=one.held + other.held,
        queue=[*one.queue, *other.queue],
        unwebhooked=one.unwebhooked + other.unwebhooked,
    )


class _Fixed(Collector):
    """Metric families computed before the registry asks for them."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _jobs(
    queue: Sequence[QueueDepth], at: float
) -> tuple[dict[tuple[str, str], int], dict[str, float]]:
    """Jobs by ``(kind, status)`` and the age of the oldest due one by kind, every kind and
    status listed (as :meth:`~.overview.Overview.jobs_by_kind` counts them)."""
    jobs = {
        (k, s): 0 for k in ("event", "fetch", "deliver") for s in ("pending", "running", "dead")
    }
    due = dict.fromkeys(("event", "fetch", "deliver"), 0.0)
    for row in queue:
        jobs[(row.kind, row.status)] = jobs.get((row.kind, row.status), 0) + row.count
        if row.due_since is not None:
            due[row.kind] = max(due.get(row.kind, 0.0), 0.0, at - row.due_since)
    return jobs, due


def _store_families(
    at: float,
    accounts: Mapping[str, OperatorCounts],
    deliveries: Mapping[tuple[str, str, str], int],
    outputs: Mapping[str, Sequence[str]],
) -> list[Metric]:
    jobs = GaugeMetricFamily(
        "dimmy_queue_jobs",
        "Jobs by account, kind and status (pending, running, dead).",
        labels=["account", "kind", "status"],
    )
    due = GaugeMetricFamily(
        "dimmy_queue_oldest_due_age_seconds",
        "How long the oldest job that is due now has been waiting, by account and kind (0: none "
        "due).",
        labels=["account", "kind"],
    )
    backlog = GaugeMetricFamily(
        "dimmy_delivery_backlog",
        "Deliveries pending or running, by account and output.",
        labels=["account", "output"],
    )
    events = GaugeMetricFamily(
        "dimmy_events_open",
        "Inbox events not done, by account and status (pending, processing, dead).",
        labels=["account", "status"],
    )
    single = {
        "dimmy_items_stored": GaugeMetricFamily(
            "dimmy_items_stored", "Items in the item store, by account.", labels=["account"]
        ),
        "dimmy_quarantine_items": GaugeMetricFamily(
            "dimmy_quarantine_items", "Items held in quarantine, by account.", labels=["account"]
        ),
        "dimmy_reconciliation_gap_items": GaugeMetricFamily(
            "dimmy_reconciliation_gap_items",
            "Items that reached the service only through polling (their webhooks were lost), "
            "by account.",
            labels=["account"],
        ),
    }
    for account, counts in sorted(accounts.items()):
        by_kind, ages = _jobs(counts.queue, at)
        for (kind, status), count in sorted(by_kind.items()):
            jobs.add_metric([account, kind, status], count)
        for kind, age in sorted(ages.items()):
            due.add_metric([account, kind], age)
        waiting = collections.Counter(dict.fromkeys(outputs.get(account, ()), 0))
        for row in counts.queue:
            if row.kind == "deliver" and row.output is not None:
                waiting[row.output] += row.count if row.status in ("pending", "running") else 0
        for output, count in sorted(waiting.items()):
            backlog.add_metric([account, redact_urls(output)], count)
        for status in ("pending", "processing", "dead"):
            events.add_metric([account, status], counts.events_open.get(status, 0))
        single["dimmy_items_stored"].add_metric([account], counts.items)
        single["dimmy_quarantine_items"].add_metric([account], counts.held)
        single["dimmy_reconciliation_gap_items"].add_metric([account], counts.unwebhooked)
    delivered = CounterMetricFamily(
        "dimmy_deliveries",
        "Delivery attempts in the ledger, by account, output and outcome (delivered, failed, "
        "dead, filtered, superseded).",
        labels=["account", "output", "outcome"],
    )
    for (account, output, outcome), count in sorted(deliveries.items()):
        delivered.add_metric([account, redact_urls(output), outcome], count)
    return [jobs, due, backlog, events, delivered, *single.values()]


def _process_families(overview: Overview) -> list[Metric]:
    """What the admin is shown of the process: its problems and the API key's state."""
    families: list[Metric] = []
    for name, text, value in [
        (
            "dimmy_problems",
            "Problems that need an operator (as /readyz lists them).",
            len(overview.problems) + len(overview.failures),
        ),
        (
            "dimmy_api_key_refused",
            "1 while the Dimmy API refuses the API key.",
            int(overview.api_key_refused),
        ),
    ]:
        gauge = GaugeMetricFamily(name, text)
        gauge.add_metric([], value)
        families.append(gauge)
    return families
