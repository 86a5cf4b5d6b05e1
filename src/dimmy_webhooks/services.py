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
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from dimmy_webhooks.config import (
    DEFAULT_ACCOUNT,
    Account,
    Accounts,
    Settings,
    load_accounts,
    of_account,
)
from dimmy_webhooks.errors import ConfigError, StoreError
from dimmy_webhooks.failpoints import Failpoints
from dimmy_webhooks.models import ReplayMode
from dimmy_webhooks.observe.alerts import AlertPolicy, HttpPoster, Notifier
from dimmy_webhooks.observe.backlog import BacklogSampler
from dimmy_webhooks.observe.health import Readiness, check_readiness
from dimmy_webhooks.observe.metrics import Metrics
from dimmy_webhooks.observe.overview import Overview, Status, take_overview
from dimmy_webhooks.observe.series import Series, take_series
from dimmy_webhooks.outputs import Output
from dimmy_webhooks.pipeline.accounts import (
    account_outputs,
    account_work,
    clients_by_account,
    has_api_key,
)
from dimmy_webhooks.pipeline.jobs import WorkerPolicy
from dimmy_webhooks.pipeline.learned_rate import LearnedRate
from dimmy_webhooks.pipeline.poller import Poller
from dimmy_webhooks.pipeline.ranges import PollPolicy
from dimmy_webhooks.pipeline.reconciliation import Reconciliation, reconciliation
from dimmy_webhooks.pipeline.worker import Worker
from dimmy_webhooks.store import Store, create_store
from dimmy_webhooks.upstream.client import DimmyClient

log = logging.getLogger("dimmy_webhooks.services")

GC_THRESHOLDS = (10_000, 10, 10)
"""The cyclic GC's thresholds while the service runs (Python's default: 700 allocations for
the young generation). Every item fetched and delivered allocates a few thousand objects, nearly
all freed at once by reference counting; at 700 the young collection ran several times per
item and scanned whatever was alive then (items in flight, their documents)."""

KEPT_LOOK_SECONDS = 5.0  # how often /readyz counts the deliveries kept for unconfigured outputs


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
    """The first account's API client (one account: its only one)."""
    workers: list[Worker] = field(default_factory=list)
    poller: Poller | None = None
    """The first account's poller (``serve --poll``; every account's: :attr:`pollers`)."""
    accounts: Accounts | None = None
    outputs_by_account: dict[str, list[Output]] = field(default_factory=dict)
    clients: dict[str, DimmyClient] = field(default_factory=dict)  # by account
    pollers: list[Poller] = field(default_factory=list)
    parts: list[Part] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    crash: Failpoints = field(default_factory=Failpoints)
    started_at: float = field(default_factory=time.time)
    metrics: Metrics = field(default_factory=Metrics)
    alert_poster: HttpPoster | None = None
    backlog: BacklogSampler | None = None  # the queue counted every minute (the dashboard)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _kept: dict[str, int] = field(default_factory=dict)  # backlogs of outputs not configured
    _removed: dict[str, int] = field(default_factory=dict)  # open work of accounts not configured
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
        accounts = load_accounts(settings)
        by_account = {name: account_outputs(accounts[name]) for name in accounts}
        outputs = [output for listed in by_account.values() for output in listed]
        services = cls(
            settings=settings,
            store=store or create_store(settings.database_url, max_attempts=settings.max_attempts),
            outputs=outputs,
            clock=clock,
            crash=crash,
            metrics=Metrics(clock),
            accounts=accounts,
            outputs_by_account=by_account,
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
            services._new_clients()
            work = account_work(accounts, services.clients, by_account, policy.concurrency)
            worker = Worker(
                services.store, None, [], policy, accounts=work, clock=clock, crash=crash
            )
            services.workers.append(worker)
            services.parts.append(Part("worker", worker.run))
        if run_poller:
            for name, account in accounts.items():
                if not account.polls(run_poller):
                    continue  # its table says poll = false
                if not has_api_key(account) and len(accounts) > 1:
                    continue  # an account without a key cannot be polled: /readyz says so
                poller = services.new_poller(name)
                services.pollers.append(poller)
                services.parts.append(Part(_part_name("poller", name), poller.run))
            services.poller = services.pollers[0] if services.pollers else None
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

    def _new_clients(self) -> None:
        """One Dimmy API client per API key and URL (Dimmy counts rate and concurrency per
        key, so accounts sharing a key share one), their requests and rate in this process's
        metrics; an account without a key has none."""
        if self.clients:
            return
        self.clients = clients_by_account(self._accounts(), observe=self.metrics.api_request)
        self.client = first = next(iter(self.clients.values()), None)
        if first is not None:
            self.metrics.watch_api_rate(lambda: first.rate_limit)

    def _learned_rates(self) -> list[LearnedRate]:
        """One :class:`LearnedRate` per adaptive client (accounts sharing a key share one)."""
        memories: dict[int, LearnedRate] = {}
        for name, client in self.clients.items():
            if client.adaptive is not None and id(client) not in memories:
                url = self._accounts()[name].settings.api_url
                memories[id(client)] = LearnedRate(
                    self.store, client.adaptive, url, name, clock=self.clock
                )
        return list(memories.values())

    def _accounts(self) -> Accounts:
        if self.accounts is None:
            self.accounts = load_accounts(self.settings)
        return self.accounts

    def account(self, name: str) -> Account:
        """A configured account (:class:`ConfigError` naming the configured ones if not)."""
        accounts = self._accounts()
        if name not in accounts:
            raise ConfigError(
                f"no account {name!r}; configured: {', '.join(accounts.names) or 'none'}"
            )
        return accounts[name]

    async def _alert_look(self) -> tuple[Overview, int]:
        """What the notifier looks at: the overview and the signature failures of 5 minutes."""
        return await self.overview(), self.metrics.signature_failures_within()

    def new_poller(self, account: str | None = None) -> Poller:
        """A poller of ``account`` (by default the first) on this process's store and that
        account's client (``poll --once`` and ``backfill`` run its passes themselves; ``serve
        --poll`` runs one per account as a part). Needs the account's API key."""
        name = account or self._accounts().names[0]
        chosen = self.account(name)
        self._new_clients()
        client = self.clients.get(name)
        if client is None:
            what = "DIMMY_API_KEY" if name == DEFAULT_ACCOUNT else f"an api_key for {name}"
            raise ConfigError(f"polling needs the Dimmy API: set {what}")
        return Poller(
            self.store,
            client,
            self.output_names(name),
            PollPolicy.from_settings(chosen.settings),
            pull_mode=chosen.settings.webhook_secret is None,
            clock=self.clock,
            on_stored=self.wake_workers,
            account=name,
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
            for client in dict.fromkeys(self.clients.values()):
                await stack.enter_async_context(client)
            if self.client is not None and self.client not in self.clients.values():
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
            if self.workers:
                with contextlib.suppress(StoreError):  # the first /readyz reports the store
                    await self._report_removed_accounts()
            # everything loaded so far lives as long as the process: keep it out of the cyclic
            # GC's full collections, which otherwise stall every request in flight for 50-100 ms
            gc.collect()
            gc.freeze()
            thresholds = gc.get_threshold()
            gc.set_threshold(*GC_THRESHOLDS)
            stop = asyncio.Event()
            parts = list(self.parts)
            for memory in self._learned_rates():
                await memory.recall()
                parts.append(Part(_part_name("rate", memory.account), memory.keep))
            for part in parts:
                self._tasks[part.name] = asyncio.create_task(part.run(stop), name=part.name)
            try:
                yield self
            finally:
                stop.set()
                if self._tasks:
                    await asyncio.gather(*self._tasks.values(), return_exceptions=True)
                gc.set_threshold(*thresholds)

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

    def output_names(self, account: str | None = None) -> list[str]:
        """The names of ``account``'s outputs (``None``: every account's, each name once)."""
        if account is None:
            return list(dict.fromkeys(output.name for output in self.outputs))
        return [output.name for output in self.outputs_by_account.get(account, [])]

    async def kept_backlogs(self) -> dict[str, int]:
        """Deliveries waiting for an output this process does not have (renamed or removed),
        by output name; also what :meth:`problems` reports until the next look. A process
        without workers (``serve --no-worker``) does not judge: the workers' outputs are theirs."""
        if not self.workers:
            return {}
        configured = set(self.output_names())
        backlogs = await self.store.backlogs()
        self._kept = {name: n for name, n in sorted(backlogs.items()) if name not in configured}
        accounts = self._accounts()
        open_work = await self.store.open_work_by_account()
        self._removed = {name: n for name, n in sorted(open_work.items()) if name not in accounts}
        self._kept_at = self.clock()
        return dict(self._kept)

    async def _report_removed_accounts(self) -> None:
        """Say once, at start, which accounts no longer configured still have rows, with their
        events, items and open jobs: all kept (nothing is deleted by itself; put the account
        back in the file to go on). ``/readyz`` goes on naming those whose work waits."""
        accounts = self._accounts()
        counts = await self.store.account_counts()
        for name, count in sorted(counts.items()):
            if name not in accounts:
                log.warning(
                    "account %s is no longer configured: its %s events, %s items and %s open "
                    "jobs are kept (`dimmy-webhooks accounts list`)",
                    name,
                    count.get("events", 0),
                    count.get("items", 0),
                    count.get("jobs", 0),
                )

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
        number of jobs queued, which this process's workers start on at once. Deliveries go to
        the outputs of the event's account."""
        event = await self.store.get_event(event_id)
        if event is None:
            raise LookupError(f"event {event_id} does not exist")
        outputs = self.output_names(event.account)
        queued = await self.store.replay_event(event_id, mode, outputs, self.clock())
        self.wake_workers()
        return queued

    async def replay_item(self, item_id: str, mode: ReplayMode, account: str | None = None) -> int:
        """Fetch one item again, or deliver its stored version again (``LookupError``: not
        stored, for ``redeliver``), with its account's outputs; an item not stored yet is
        fetched for ``account`` (by default the first)."""
        stored = await self.store.get_item(item_id)
        if stored is not None:
            account = stored.account
        name = account or self._accounts().names[0]
        outputs = self.output_names(name)
        queued = await self.store.replay_item(item_id, mode, outputs, self.clock(), name)
        self.wake_workers()
        return queued

    async def decide_hold(self, item_id: str, *, release: bool, note: str) -> int:
        """Release a quarantined item (its deliveries are queued and this process's workers
        start on them) or reject it; ``LookupError`` when it is not held."""
        stored = await self.store.get_item(item_id)
        outputs = self.output_names(stored.account if stored is not None else None)
        queued = await self.store.decide_hold(
            item_id, release=release, note=note, outputs=outputs, now=self.clock()
        )
        log.info(
            "quarantine " + ("released" if release else "rejected"),
            extra={"fields": {"item": item_id, "note": note[:200], "queued": queued}},
        )
        self.wake_workers()
        return queued

    async def replay_dead(self, since: float, account: str | None = None) -> int:
        """Put every job that died since ``since`` (Unix seconds) back in the queue: of one
        ``account``, or every account's."""
        queued = await self.store.replay_dead(since, self.clock(), account)
        self.wake_workers()
        return queued

    def problems(self) -> list[str]:
        """Problems that leave the service working but need an operator (a refused API key, an
        output's threads stuck in calls that timed out): ``/readyz`` answers ``degraded``, and
        the receiver stays in its load balancer."""
        problems = []
        for name, client in self.clients.items():
            if client.auth_failed:
                problems.append(
                    of_account(name, f"Dimmy API refused the key: {client.auth_failed}")
                )
        for worker in self.workers:
            problems += [
                of_account(name, work.config_error)
                for name, work in worker.accounts.items()
                if work.config_error is not None
            ]
        for name, listed in self.outputs_by_account.items():
            problems += [of_account(name, p) for output in listed for p in output.problems()]
        if self.workers:
            problems += [
                of_account(name, "DIMMY_API_KEY is not set: items cannot be fetched")
                for name in self._accounts()
                if name not in self.clients
            ]
        for poller in self.pollers:
            problems += [of_account(poller.account, p) for p in poller.problems()]
        problems += [
            f"account {name} is no longer configured: its {jobs} open jobs wait, and its data "
            "is kept (put it back in DIMMY_ACCOUNTS_FILE to go on; `dimmy-webhooks accounts "
            "list` counts it)"
            for name, jobs in self._removed.items()
        ]
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

    async def overview(self, *, account: str | None = None, operator: bool = False) -> Overview:
        """The operator's overview (:func:`~dimmy_webhooks.observe.overview.take_overview`):
        the dashboard, ``/api/overview``, ``/metrics`` and the alerts all read this one. Of
        one ``account`` (``None``: all); ``operator``: as an account's operator is shown it
        (:meth:`~dimmy_webhooks.observe.overview.Status.for_operator`)."""
        status = self.status()
        if account is not None:
            status = replace(status, outputs=tuple(self.output_names(account)))
            if operator:
                status = status.for_operator(account)
        return await take_overview(self.store, status, account=account)

    async def series(self, *, account: str | None = None) -> Series:
        """The dashboard's charts (:func:`~dimmy_webhooks.observe.series.take_series`), the
        backlog as this process sampled it; of one ``account``, without the backlog (it is
        sampled for every account at once)."""
        if account is not None:
            return await take_series(self.store, self.clock(), (), None, account=account)
        sampler = self.backlog or BacklogSampler(self.store)
        return await take_series(self.store, self.clock(), sampler.points(), sampler.started_at)

    async def reconciliation(self, *, account: str | None = None) -> Reconciliation:
        """The reconciliation report (of ``account``, or of all), with the settings' grace
        (:func:`~dimmy_webhooks.pipeline.reconciliation.reconciliation`)."""
        return await reconciliation(
            self.store,
            self.clock(),
            self.settings.reconcile_grace_seconds,
            pull_mode=self.settings.webhook_secret is None,
            account=account,
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


def _part_name(part: str, account: str) -> str:
    return part if account == DEFAULT_ACCOUNT else f"{part}:{account}"
