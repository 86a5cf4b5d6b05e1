"""The composition root: every long-running part of the service, built from the settings.

:meth:`Services.from_settings` builds the store, the Dimmy API client, the outputs, the
workers, the poller and the alert notifier (nothing is opened or started);
:meth:`Services.opened` opens the store and the client (one-off commands), and
:meth:`Services.running` also starts every part, undoing it all on the way out. ``serve``
(through the web app's lifespan), ``worker``, the operator commands and the demo all go through
here, so a new long-running part is added in one place: a :class:`Part` with a ``run(stop)``.

Observers never see this object: they get a :meth:`Services.status` snapshot. May import every
stage but the web layer: the ``worker`` command runs without FastAPI or Starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from dimmy_webhooks.config import Settings
from dimmy_webhooks.errors import ConfigError, StoreError
from dimmy_webhooks.failpoints import Failpoints
from dimmy_webhooks.models import ReplayMode
from dimmy_webhooks.observe.alerts import AlertPolicy, HttpPoster, Notifier
from dimmy_webhooks.observe.health import Readiness, check_readiness
from dimmy_webhooks.observe.metrics import Metrics
from dimmy_webhooks.observe.overview import Overview, Status, take_overview
from dimmy_webhooks.outputs import Output, OutputContext, load_destinations, parse_outputs
from dimmy_webhooks.pipeline.poller import Poller, PollPolicy, Reconciliation, reconciliation
from dimmy_webhooks.pipeline.validation import Intake
from dimmy_webhooks.pipeline.worker import Worker, WorkerPolicy
from dimmy_webhooks.store import Store, create_store
from dimmy_webhooks.upstream.client import DimmyClient
from dimmy_webhooks.upstream.pacing import AdaptiveRate

log = logging.getLogger("dimmy_webhooks.services")

RATE_STATE = "api.rate"
"""``sync_state`` key of the adaptive client's learned rate: ``{"rate": ..., "api_url": ...}``."""
RATE_SAVE_SECONDS = 30.0  # how often a changed learned rate is written (and once at stop)


def worker_policy(settings: Settings) -> WorkerPolicy:
    """The workers' pacing, from the settings."""
    return WorkerPolicy(
        concurrency=settings.api_concurrency * 2,
        lease_seconds=settings.lease_seconds,
        retry_base_seconds=settings.retry_base_seconds,
        retry_max_seconds=settings.retry_max_seconds,
        grace_seconds=settings.shutdown_grace_seconds,
        output_timeout_seconds=settings.output_timeout_seconds,
        intake=Intake.from_settings(settings),
    )


def build_outputs(settings: Settings) -> list[Output]:
    """The outputs ``DIMMY_OUTPUTS`` lists and the destinations of ``DIMMY_DESTINATIONS_FILE``
    (:class:`ConfigError` naming what is wrong)."""
    destinations = (
        load_destinations(settings.destinations_file)
        if settings.destinations_file is not None
        else []
    )
    secret = settings.forward_secret.get_secret_value() if settings.forward_secret else None
    return parse_outputs(
        settings.outputs, OutputContext(forward_secret=secret, destinations=destinations)
    )


def poll_policy(settings: Settings) -> PollPolicy:
    """The poller's pacing, from the settings."""
    return PollPolicy(
        interval=settings.poll_interval_seconds,
        overlap=settings.poll_overlap_seconds,
        first_lookback=settings.poll_lookback_hours * 3600,
        sweep_days=settings.poll_sweep_days,
        sweep_interval=settings.poll_sweep_interval_hours * 3600,
        page_size=settings.poll_page_size,
        reconcile_grace=settings.reconcile_grace_seconds,
        intake=Intake.from_settings(settings),
    )


def create_client(settings: Settings, metrics: Metrics | None = None) -> DimmyClient | None:
    """The Dimmy API client (counting its requests in ``metrics``), or ``None`` when no API
    key is configured."""
    if settings.api_key is None or not settings.api_key.get_secret_value().strip():
        return None
    client = DimmyClient(
        settings.api_url,
        settings.api_key.get_secret_value().strip(),
        timeout=settings.api_timeout_seconds,
        concurrency=settings.api_concurrency,
        rate_limit=settings.api_rate_limit,
        rate_mode=settings.api_rate_mode,
        rate_min=settings.api_rate_min,
        rate_max=settings.api_rate_max,
        max_json_depth=settings.max_json_depth,
        max_item_bytes=settings.max_item_bytes,
        max_page_bytes=settings.max_page_bytes,
        observe=metrics.api_request if metrics is not None else None,
    )
    if metrics is not None:
        metrics.watch_api_rate(lambda: client.rate_limit)
    return client


@dataclass(frozen=True, slots=True)
class Part:
    """A long-running part: ``run(stop)`` works until ``stop`` is set, then returns."""

    name: str
    run: Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclass
class Services:
    """The parts of one process (build with :meth:`from_settings`, run with :meth:`running`)."""

    settings: Settings
    store: Store
    outputs: list[Output]
    client: DimmyClient | None = None
    workers: list[Worker] = field(default_factory=list)
    poller: Poller | None = None
    parts: list[Part] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    crash: Failpoints = field(default_factory=Failpoints)
    started_at: float = field(default_factory=time.time)
    metrics: Metrics = field(default_factory=Metrics)
    alert_poster: HttpPoster | None = None
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        run_workers: bool = True,
        run_poller: bool = False,
        concurrency: int | None = None,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        alerts: bool = False,
    ) -> Services:
        """Build every part from ``settings``; raises :class:`ConfigError` for unusable ones.

        ``run_workers=False`` is a receiver only (``serve --no-worker``); ``run_poller`` adds the
        poller (``serve --poll``, which needs an API key); ``concurrency`` overrides the workers'
        jobs in flight; ``alerts`` adds the notifier when ``DIMMY_ALERT_URL`` is set (``serve``
        only: a one-off command must not alert); ``store`` and ``clock`` are for tests.
        """
        crash = Failpoints(settings.failpoint)
        outputs = build_outputs(settings)
        services = cls(
            settings=settings,
            store=store or create_store(settings.database_url, max_attempts=settings.max_attempts),
            outputs=outputs,
            clock=clock,
            crash=crash,
            metrics=Metrics(clock),
        )
        services.store.output_attempts = {
            output.name: output.max_attempts
            for output in outputs
            if output.max_attempts is not None
        }
        if run_workers:
            policy = worker_policy(settings)
            if concurrency:
                policy = replace(policy, concurrency=concurrency)
            services.client = create_client(settings, services.metrics)
            worker = Worker(
                services.store, services.client, services.outputs, policy, clock=clock, crash=crash
            )
            services.workers.append(worker)
            services.parts.append(Part("worker", worker.run))
        if run_poller:
            services.poller = services.new_poller()
            services.parts.append(Part("poller", services.poller.run))
        if alerts and settings.alert_url is not None:
            # the notifier posts with its own HTTP client, closed when the service stops
            services.alert_poster = HttpPoster(settings.alert_url.get_secret_value())
            notifier = Notifier(
                services._alert_look,
                services.alert_poster,
                AlertPolicy.from_settings(settings),
                fmt=settings.alert_format,
                link=settings.public_url,
                clock=clock,
            )
            services.parts.append(Part("notifier", notifier.run))
        return services

    async def _alert_look(self) -> tuple[Overview, int]:
        """What the notifier looks at: the overview and the signature failures of 5 minutes."""
        return await self.overview(), self.metrics.signature_failures_within()

    def new_poller(self) -> Poller:
        """A poller on this process's store and client (``poll --once`` and ``backfill`` run
        its passes themselves; ``serve --poll`` runs it as a part). Needs an API key."""
        self.client = self.client or create_client(self.settings, self.metrics)
        if self.client is None:
            raise ConfigError("polling needs the Dimmy API: set DIMMY_API_KEY")
        return Poller(
            self.store,
            self.client,
            self.output_names(),
            poll_policy(self.settings),
            pull_mode=self.settings.webhook_secret is None,
            clock=self.clock,
            on_stored=self.wake_workers,
        )

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[Services]:
        """Open the store and the client (no part is started: the one-off commands); on exit
        close the alert poster, the outputs, the client and the store."""
        await self.store.open()
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.store.close)
            for output in self.outputs:
                stack.push_async_callback(self._close_output, output)
            if self.client is not None:
                await stack.enter_async_context(self.client)
            if self.alert_poster is not None:
                stack.push_async_callback(self.alert_poster.aclose)
            yield self

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Services]:
        """:meth:`opened`, and every part started; on exit stop the parts (each within its
        grace period) before closing what :meth:`opened` opened."""
        async with self.opened():
            # everything loaded so far lives as long as the process: keep it out of the cyclic
            # GC's full collections, which otherwise stall every request in flight for 50-100 ms
            gc.collect()
            gc.freeze()
            stop = asyncio.Event()
            parts = list(self.parts)
            adaptive = self.client.adaptive if self.client is not None else None
            if adaptive is not None:
                await self._recall_rate(adaptive)
                parts.append(Part("rate", functools.partial(self._keep_rate, adaptive)))
            for part in parts:
                self._tasks[part.name] = asyncio.create_task(part.run(stop), name=part.name)
            try:
                yield self
            finally:
                stop.set()
                if self._tasks:
                    await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _recall_rate(self, adaptive: AdaptiveRate) -> None:
        """Start the adaptive client at the rate a previous run learned against the same API."""
        try:
            saved = await self.store.get_state(RATE_STATE)
        except StoreError as exc:
            log.warning("learned API rate not read", extra={"fields": {"reason": str(exc)}})
            return
        try:
            state = json.loads(saved) if saved else {}
            rate = float(state["rate"]) if state.get("api_url") == self.settings.api_url else None
        except (ValueError, TypeError, KeyError, AttributeError):
            rate = None
        if rate is not None and rate > 0:
            adaptive.restore(rate)
            log.info(
                "Dimmy API rate restored",
                extra={"fields": {"rate": round(adaptive.rate, 1), "learned": round(rate, 1)}},
            )

    async def _keep_rate(self, adaptive: AdaptiveRate, stop: asyncio.Event) -> None:
        """Write the adaptive client's rate every :data:`RATE_SAVE_SECONDS` when it changed,
        and once more at stop, so that the next start begins there."""
        saved = None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RATE_SAVE_SECONDS)
            rate = round(adaptive.rate, 1)
            if rate != saved:
                value = json.dumps({"rate": rate, "api_url": self.settings.api_url})
                try:
                    await self.store.set_state(RATE_STATE, value, self.clock())
                    saved = rate
                except StoreError as exc:
                    log.warning(
                        "learned API rate not saved", extra={"fields": {"reason": str(exc)}}
                    )
            if stop.is_set():
                return

    async def drain(self, timeout: float) -> int:
        """Wait until no job is due or running (this process's workers, and any others on the
        database, deliver what a pass queued), at most ``timeout`` seconds; returns how many
        are still due or running then."""
        deadline = time.monotonic() + timeout
        while True:
            left = await self.store.due_work(self.clock())
            if not left or time.monotonic() >= deadline:
                return left
            self.wake_workers()
            await asyncio.sleep(0.2)

    async def _close_output(self, output: Output) -> None:
        """Close one output, waiting at most ``DIMMY_OUTPUT_TIMEOUT_SECONDS``: an output stuck
        in a call must not keep the process from stopping."""
        try:
            await asyncio.wait_for(output.aclose(), self.settings.output_timeout_seconds)
        except TimeoutError:
            log.warning("output not closed in time", extra={"fields": {"output": output.name}})
        except Exception as exc:
            log.warning(
                "output not closed",
                extra={"fields": {"output": output.name, "reason": f"{type(exc).__name__}: {exc}"}},
            )

    async def run_until(self, stop: asyncio.Event) -> None:
        """Run every part until ``stop`` is set (the ``worker`` command)."""
        async with self.running():
            await stop.wait()

    # what the routes and the commands ask of the running service ----------------------------

    def wake_workers(self) -> None:
        """New work may be due (a webhook was stored, work was replayed)."""
        for worker in self.workers:
            worker.wake()

    def output_names(self) -> list[str]:
        return [output.name for output in self.outputs]

    async def replay_event(self, event_id: int, mode: ReplayMode) -> int:
        """Put an event's work back in the queue (``LookupError``: no such event); returns the
        number of jobs queued, which this process's workers start on at once."""
        queued = await self.store.replay_event(event_id, mode, self.output_names(), self.clock())
        self.wake_workers()
        return queued

    async def replay_item(self, item_id: str, mode: ReplayMode) -> int:
        """Fetch one item again, or deliver its stored version again (``LookupError``: not
        stored, for ``redeliver``)."""
        queued = await self.store.replay_item(item_id, mode, self.output_names(), self.clock())
        self.wake_workers()
        return queued

    async def decide_hold(self, item_id: str, *, release: bool, note: str) -> int:
        """Release a quarantined item (its deliveries are queued and this process's workers
        start on them) or reject it; ``LookupError`` when it is not held."""
        queued = await self.store.decide_hold(
            item_id, release=release, note=note, outputs=self.output_names(), now=self.clock()
        )
        log.info(
            "quarantine " + ("released" if release else "rejected"),
            extra={"fields": {"item": item_id, "note": note[:200], "queued": queued}},
        )
        self.wake_workers()
        return queued

    async def replay_dead(self, since: float) -> int:
        """Put every job that died since ``since`` (Unix seconds) back in the queue."""
        queued = await self.store.replay_dead(since, self.clock())
        self.wake_workers()
        return queued

    def problems(self) -> list[str]:
        """Problems that leave the service working but need an operator (a refused API key, an
        output's threads stuck in calls that timed out): ``/readyz`` answers ``degraded``, and
        the receiver stays in its load balancer."""
        problems = []
        if self.client is not None and self.client.auth_failed:
            problems.append(f"Dimmy API refused the key: {self.client.auth_failed}")
        problems += [w.config_error for w in self.workers if w.config_error is not None]
        problems += [problem for output in self.outputs for problem in output.problems()]
        if self.workers and self.client is None:
            problems.append("DIMMY_API_KEY is not set: items cannot be fetched")
        if self.poller is not None:
            problems += self.poller.problems()
        return list(dict.fromkeys(problems))

    def failures(self) -> list[str]:
        """Parts that stopped working (the store's writer, a background part that ended before
        its stop): ``/readyz`` answers ``unavailable``."""
        failures = self.store.failures()
        failures += [
            f"{name} stopped: {_ending(task)}" for name, task in self._tasks.items() if task.done()
        ]
        return failures

    def status(self) -> Status:
        """What this process knows now, for the observers (overview, metrics, alerts)."""
        client = self.client
        return Status(
            at=self.clock(),
            started_at=self.started_at,
            reconcile_grace=self.settings.reconcile_grace_seconds,
            outputs=tuple(self.output_names()),
            problems=tuple(self.problems()),
            failures=tuple(self.failures()),
            api_key_refused=client is not None and client.auth_failed is not None,
            api_rate=None if client is None else _api_rate(client),
            webhooks=self.metrics.webhook_counts(),
            signature_failures_recent=self.metrics.signature_failures_within(),
            rejections=self.metrics.recent_rejections(),
        )

    async def overview(self) -> Overview:
        """The operator's overview (:func:`~dimmy_webhooks.observe.overview.take_overview`):
        the dashboard, ``/api/overview``, ``/metrics`` and the alerts all read this one."""
        return await take_overview(self.store, self.status())

    async def reconciliation(self) -> Reconciliation:
        """The reconciliation report (:func:`dimmy_webhooks.pipeline.poller.reconciliation`)."""
        return await reconciliation(
            self.store,
            self.clock(),
            self.settings.reconcile_grace_seconds,
            pull_mode=self.settings.webhook_secret is None,
        )

    async def readiness(self) -> Readiness:
        """What ``/readyz`` answers (:func:`~dimmy_webhooks.observe.health.check_readiness`)."""
        return await check_readiness(self.store, self.status())


def _ending(task: asyncio.Task[None]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return "returned" if exc is None else f"{type(exc).__name__}: {exc}"


def _api_rate(client: DimmyClient) -> dict[str, Any]:
    """The client's rate: ``mode``, ``per_second`` now, and in adaptive mode its bounds,
    whether it started from a learned rate and how many times it was cut."""
    adaptive = client.adaptive
    if adaptive is None:
        return {"mode": "fixed", "per_second": client.rate_limit}
    return {
        "mode": "adaptive",
        "per_second": round(adaptive.rate, 1),
        "min": adaptive.floor,
        "max": adaptive.ceiling,
        "restored": adaptive.restored,
        "cuts": adaptive.cuts,
    }
