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

Nothing here does IO by itself: the route gathers the overview and calls :meth:`Metrics.render`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from dimmy_webhooks.items import format_timestamp
from dimmy_webhooks.observe.logs import redact_urls
from dimmy_webhooks.observe.overview import Overview
from dimmy_webhooks.store import Store

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

    # hooks ----------------------------------------------------------------------------------

    def webhook(self, status: int, outcome: str | None, reason: str | None) -> None:
        """The receiver answered ``status`` (``outcome`` for a 204: accepted, duplicate or
        requeued; ``reason``: what a refusal said)."""
        label = outcome or _STATUS_OUTCOME.get(status, f"status_{status}")
        self.webhooks.labels(label).inc()
        if status == 401:
            self.signature_failures.inc()
            with self._lock:
                self._signature_times.append(self.clock())
        if status >= 400 and status != 404:
            self.rejections.appendleft(Rejection(self.clock(), status, (reason or "")[:300]))

    def api_request(self, path: str, status: str, seconds: float) -> None:
        """One Dimmy API request to ``path`` ended with ``status`` after ``seconds``."""
        endpoint = "items" if path == "/items" else "item"
        self.api_requests.labels(endpoint, status).inc()
        self.api_latency.labels(endpoint).observe(seconds)

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

    def render(self, overview: Overview, deliveries: dict[tuple[str, str], int]) -> bytes:
        """The exposition: this process's counters, then the store's figures."""
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(_Fixed(self.registry.collect()))
        scrape.register(_Fixed(_store_families(overview, deliveries)))
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
        self.totals: collections.Counter[tuple[str, str]] = collections.Counter()
        self._seen: collections.deque[tuple[float, int]] = collections.deque(maxlen=1000)

    async def counts(self, store: Store) -> dict[tuple[str, str], int]:
        now = self.clock()
        upto = None
        while self._seen and self._seen[0][0] <= now - self.settle:
            upto = self._seen.popleft()[1]
        if upto is not None and upto > self.after:
            for row in await store.attempt_counts(after=self.after, upto=upto):
                self.totals[(row["output"], row["outcome"])] += int(row["n"])
            self.after = upto
        fresh = collections.Counter(self.totals)
        top = self.after
        for row in await store.attempt_counts(after=self.after):
            fresh[(row["output"], row["outcome"])] += int(row["n"])
            top = max(top, int(row["top"]))
        self._seen.append((now, top))
        return dict(fresh)


class _Fixed(Collector):
    """Metric families computed before the registry asks for them."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _store_families(overview: Overview, deliveries: dict[tuple[str, str], int]) -> list[Metric]:
    jobs = GaugeMetricFamily(
        "dimmy_queue_jobs",
        "Jobs by kind and status (pending, running, dead).",
        labels=["kind", "status"],
    )
    due = GaugeMetricFamily(
        "dimmy_queue_oldest_due_age_seconds",
        "How long the oldest job that is due now has been waiting, by kind (0: none due).",
        labels=["kind"],
    )
    backlog = GaugeMetricFamily(
        "dimmy_delivery_backlog",
        "Deliveries pending or running, by output.",
        labels=["output"],
    )
    for (kind, status), count in sorted(overview.jobs_by_kind().items()):
        jobs.add_metric([kind, status], count)
    for kind, age in sorted(overview.oldest_due_by_kind().items()):
        due.add_metric([kind], age)
    for destination in overview.destinations:
        backlog.add_metric([redact_urls(destination.output)], destination.backlog)
    delivered = CounterMetricFamily(
        "dimmy_deliveries",
        "Delivery attempts in the ledger, by output and outcome (delivered, failed, dead, "
        "filtered, superseded).",
        labels=["output", "outcome"],
    )
    for (output, outcome), count in sorted(deliveries.items()):
        delivered.add_metric([redact_urls(output), outcome], count)
    single = [
        ("dimmy_items_stored", "Items in the item store.", overview.items_total),
        ("dimmy_quarantine_items", "Items held in quarantine.", overview.held),
        (
            "dimmy_reconciliation_gap_items",
            "Items that reached the service only through polling (their webhooks were lost).",
            overview.reconciliation_gap,
        ),
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
    ]
    families: list[Metric] = [jobs, due, backlog, delivered]
    for name, text, value in single:
        gauge = GaugeMetricFamily(name, text)
        gauge.add_metric([], value)
        families.append(gauge)
    return families
