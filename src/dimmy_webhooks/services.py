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
from dimmy_webhooks.observe.backlog import BacklogSampler
from dimmy_webhooks.observe.health import Readiness, check_readiness
from dimmy_webhooks.observe.metrics import Metrics
from dimmy_webhooks.observe.overview import Overview, Status, take_overview
from dimmy_webhooks.observe.series import Series, take_series
from dimmy_webhooks.outputs import Output, OutputContext, load_destinations, parse_outputs
from dimmy_webhooks.pipeline.jobs import WorkerPolicy
from dimmy_webhooks.pipeline.poller import Poller
from dimmy_webhooks.pipeline.ranges import PollPolicy
from dimmy_webhooks.pipeline.reconciliation import Reconciliation, reconciliation
from dimmy_webhooks.pipeline.worker import Worker
from dimmy_webhooks.store import Store, create_store
from dimmy_webhooks.upstream.client import DimmyClient, client_from_settings
from dimmy_webhooks.upstream.pacing import AdaptiveRate

log = logging.getLogger("dimmy_webhooks.services")

RATE_STATE = "api.rate"
"""``sync_state`` key of the adaptive client's learned rate: ``{"rate": ..., "api_url": ...}``."""
KEPT_LOOK_SECONDS = 5.0  # how often /readyz counts the deliveries kept for unconfigured outputs
RATE_SAVE_SECONDS = 30.0  # how often a changed learned rate is written (and once at stop)


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
    backlog: BacklogSampler | None = None  # the queue counted every minute (the dashboard)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _kept: dict[str, int] = field(default_factory=dict)  # backlogs of outputs not configured
    _kept_at: float = float("-inf")

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
        sample_backlog: bool = False,
    ) -> Services:
        """Build every part from ``settings``; raises :class:`ConfigError` for unusable ones.

        ``run_workers=False`` is a receiver only (``serve --no-worker``); ``run_poller`` adds the
        poller (``serve --poll``, which needs an API key); ``concurrency`` overrides the workers'
        jobs in flight; ``alerts`` adds the notifier when ``DIMMY_ALERT_URL`` is set (``serve``
        only: a one-off command must not alert); ``sample_backlog`` counts the queue every
        minute for the dashboard's chart; ``store`` and ``clock`` are for tests.
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
            policy = WorkerPolicy.from_settings(settings)
            if concurrency:
                policy = replace(policy, concurrency=concurrency)
            services.client = services._new_client()
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
        if sample_backlog:
            services.backlog = BacklogSampler(services.store, clock=clock)
            services.parts.append(Part("backlog", services.backlog.run))
        return services

    def _new_client(self) -> DimmyClient | None:
        """The Dimmy API client, its requests and rate in this process's metrics (``None``:
        no API key)."""
        client = client_from_settings(self.settings, observe=self.metrics.api_request)
        if client is not None:
            self.metrics.watch_api_rate(lambda: client.rate_limit)
        return client

    async def _alert_look(self) -> tuple[Overview, int]:
        """What the notifier looks at: the overview and the signature failures of 5 minutes."""
        return await self.overview(), self.metrics.signature_failures_within()

    def new_poller(self) -> Poller:
        """A poller on this process's store and client (``poll --once`` and ``backfill`` run
        its passes themselves; ``serve --poll`` runs it as a part). Needs an API key."""
        self.client = self.client or self._new_client()
        if self.client is None:
            raise ConfigError("polling needs the Dimmy API: set DIMMY_API_KEY")
        return Poller(
            self.store,
            self.client,
            self.output_names(),
            PollPolicy.from_settings(self.settings),
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
            for output, count in (await self.kept_backlogs()).items():
                log.warning(
                    "%s deliveries wait for output %s, which is not configured: they are kept "
                    "(`dimmy-webhooks move-deliveries --from %s --to OUTPUT`, or --drop)",
                    count,
                    output,
                    output,
                )
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

    async def kept_backlogs(self) -> dict[str, int]:
        """Deliveries waiting for an output this process does not have (renamed or removed),
        by output name; also what :meth:`problems` reports until the next look. A process
        without workers (``serve --no-worker``) does not judge: the workers' outputs are theirs."""
        if not self.workers:
            return {}
        configured = set(self.output_names())
        backlogs = await self.store.backlogs()
        self._kept = {name: n for name, n in sorted(backlogs.items()) if name not in configured}
        self._kept_at = self.clock()
        return dict(self._kept)

    async def move_deliveries(self, source: str, target: str | None) -> int:
        """Hand the pending deliveries of output ``source`` to output ``target`` (one of this
        process's outputs: :class:`ConfigError` if not), or drop them (``None``); returns how
        many."""
        if target is not None and target not in self.output_names():
            raise ConfigError(
                f"--to {target}: not a configured output; outputs: {self.output_names()}"
            )
        if target == source:
            raise ConfigError("--from and --to name the same output")
        moved = await self.store.move_backlog(source, target, self.clock())
        self.wake_workers()
        return moved

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
        problems += [
            f"{count} deliveries wait for output {output}, which is not configured: "
            f"`dimmy-webhooks move-deliveries --from {output} --to OUTPUT` (or --drop)"
            for output, count in self._kept.items()
        ]
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

    async def series(self) -> Series:
        """The dashboard's charts (:func:`~dimmy_webhooks.observe.series.take_series`), the
        backlog as this process sampled it."""
        sampler = self.backlog or BacklogSampler(self.store)
        return await take_series(self.store, self.clock(), sampler.points(), sampler.started_at)

    async def reconciliation(self) -> Reconciliation:
        """The reconciliation report, with the settings' grace
        (:func:`~dimmy_webhooks.pipeline.reconciliation.reconciliation`)."""
        return await reconciliation(
            self.store,
            self.clock(),
            self.settings.reconcile_grace_seconds,
            pull_mode=self.settings.webhook_secret is None,
        )

    async def readiness(self) -> Readiness:
        """What ``/readyz`` answers (:func:`~dimmy_webhooks.observe.health.check_readiness`)."""
        if self.clock() - self._kept_at >= KEPT_LOOK_SECONDS:
            with contextlib.suppress(StoreError):  # the ping in check_readiness reports it
                await self.kept_backlogs()
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
