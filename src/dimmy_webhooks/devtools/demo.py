"""``dimmy-webhooks demo``: the whole service offline, in one process.

A fake Dimmy API (:mod:`.fake_dimmy`), the service itself (:func:`~dimmy_webhooks.web.create_app`
on a throwaway SQLite file), and simulated devices whose scans arrive as signed webhooks with
Svix's retries and duplicates (:mod:`.sender`), all on 127.0.0.1. :func:`run_demo` prints the URLs
to open, progress lines and a summary; Ctrl-C (or ``duration``) stops it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import secrets
import signal
import sys
import time
import webbrowser
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from dimmy_webhooks.config import load_settings
from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy, FakeDimmyConfig
from dimmy_webhooks.devtools.fake_dimmy import create_app as create_fake_app
from dimmy_webhooks.devtools.runner import free_port, port_free, serve_in_thread
from dimmy_webhooks.devtools.sender import SimulatedSender, items_scanned_body
from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.services import Services
from dimmy_webhooks.signatures import parse_secrets
from dimmy_webhooks.store import QueueStats, schema

DEVICES = 3
BIG_BATCH_AFTER = 5.0  # seconds before the offline device comes back
PROGRESS_EVERY = 3.0
DRAIN_SECONDS = 8.0  # at the end, time allowed for queued work to finish
DUPLICATE_RATE = 0.1
LOST_AFTER = 8.0  # seconds before scans are made whose webhooks never arrive
LOST_SCANS = 3
LOST_GRACE = 5.0  # the demo's reconciliation grace (DIMMY_RECONCILE_GRACE_SECONDS)
LATE_AFTER = 4.0  # seconds before a scan's webhook comes before its item can be read
LATE_READABLE = 5.0  # ... and how long after that the item can be read (replay it then)
MAX_SIDE = 100.0  # cm: items with a longer side are held in quarantine (a pallet on the table?)
JSONL = "dimmy-demo-items.jsonl"


def run_demo(
    *,
    port: int,
    fake_port: int,
    n_items: int,
    big_batch: int,
    speed: float,
    database: Path,
    duration: float,
    browser: bool | None = None,
    admin_token: str | None = None,
) -> None:
    """Run the demo until Ctrl-C or ``duration`` seconds (0: no limit).

    The dashboard's URL is printed first and, when ``browser`` (default: stdout is a
    terminal), opened in the default web browser. With ``admin_token`` the dashboard and
    the API want it (a login), as a real deployment does.

    Raises :class:`ConfigError` when a port is taken or ``database`` is the service's own.
    """
    from dimmy_webhooks.web import create_app

    database = database.resolve()
    _refuse_real_database(database)
    for flag, value in (("--port", port), ("--fake-port", fake_port)):
        if value and not port_free(value):
            raise ConfigError(
                f"port {value} on 127.0.0.1 is in use (another dimmy-webhooks running?): "
                f"try {flag} {value + 1}, or {flag} 0 for any free port"
            )
    port = port or free_port()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    api_key = "demo-" + secrets.token_hex(8)
    fake = FakeDimmy(
        FakeDimmyConfig(
            api_key=api_key,
            latency_seconds=0.02,
            latency_jitter=0.01,
            error_rate=0.03,
            rate_limit_every=40,
            retry_after_seconds=1,
        )
    )
    database_url = f"sqlite:///{database}"
    schema.upgrade(database_url)
    jsonl = database.parent / JSONL
    with contextlib.ExitStack() as stack:
        fake_url = _serve(stack, create_fake_app(fake), fake_port, "--fake-port")
        fake.config.photo_base = fake_url  # the fake serves the photos: the dashboard shows them
        backlog = _scan(fake, n_items)
        settings = load_settings(
            None,
            webhook_secret=secret,
            api_key=api_key,
            api_url=fake_url,
            database_url=database_url,
            outputs=f"jsonl:{jsonl}",
            host="127.0.0.1",
            port=port,
            webhook_path="/webhook",
            admin_token=admin_token,
            validate_max_side=MAX_SIDE,
            worker_enabled=True,
            log_level="WARNING",
            # the poller reconciles: scans whose webhook was lost arrive through it
            poll_interval_seconds=5,
            poll_overlap_seconds=60,
            poll_lookback_hours=0,
            poll_sweep_days=0,
            reconcile_grace_seconds=LOST_GRACE,
        )
        app = create_app(settings, run_poller=True)
        url = _serve(stack, app, port, "--port")
        access = "log in with the admin token" if admin_token else "open on this machine only"
        click.echo(
            f"dashboard: {url}/\n"
            "dimmy-webhooks demo: a fake Dimmy API, the service and simulated devices, "
            "all offline in this process\n"
            f"  dashboard    {url}/  ({access})\n"
            f"  service      {url}\n"
            f"  webhooks     {url}/webhook  (throwaway secret of this run: {secret})\n"
            f"  events       {url}/api/events\n"
            f"  an item      {url}/api/items/{backlog[0]}\n"
            f"  OpenAPI      {url}/openapi.json\n"
            f"  readiness    {url}/readyz\n"
            f"  reconciled   {url}/api/reconciliation\n"
            f"  fake Dimmy   {fake_url}/items/{backlog[0]}  (X-API-KEY: {api_key})\n"
            f"  database     {database}\n"
            f"  JSON Lines   {jsonl}\n"
            f"{DEVICES} devices upload 1-5 items every ~2 s; an offline device uploads "
            f"{big_batch} items after ~{BIG_BATCH_AFTER:g} s; after ~{LOST_AFTER:g} s the "
            f"receiver misses {LOST_SCANS} scans, which the poller finds; a scan whose item "
            f"cannot be read yet goes dead (replay it from the dashboard once it can); items "
            f"with a side over {MAX_SIDE:g} cm are held in quarantine; retry schedule "
            f"{speed:g}x faster. "
            + (f"Stopping after {duration:g} s." if duration else "Ctrl-C to stop.")
        )
        if browser if browser is not None else sys.stdout.isatty():
            webbrowser.open(f"{url}/")
        demo = DemoRun(
            url=url,
            key=parse_secrets(secret)[0],
            fake=fake,
            services=app.state.services,
            backlog=backlog,
            big_batch=big_batch,
            speed=speed,
            duration=duration,
            database=database,
            jsonl=jsonl,
        )
        asyncio.run(demo.run())


def _refuse_real_database(path: Path) -> None:
    """The demo writes throwaway events and items: never into the configured database."""
    try:
        real = load_settings().sqlite_path
    except ConfigError:
        return  # a broken setting is no concern of the demo, which ignores it
    if real is not None and real.resolve() == path:
        raise ConfigError(
            f"{path} is the service's own database (DIMMY_DATABASE_URL): give the demo "
            "another --database, e.g. the default dimmy-demo.sqlite3"
        )


def _serve(stack: contextlib.ExitStack, app: Any, port: int, flag: str) -> str:
    try:
        url: str = stack.enter_context(serve_in_thread(app, "127.0.0.1", port))
    except RuntimeError:
        raise ConfigError(
            f"could not listen on 127.0.0.1:{port} (port in use?): try another {flag}"
        ) from None
    return url


def _scan(fake: FakeDimmy, n: int) -> list[str]:
    """``n`` new items in the fake Dimmy, created over the last minutes (as if just scanned)."""
    start = datetime.now(UTC) - timedelta(seconds=47 * n)
    return fake.generate_items(n, start=start)


class DemoRun:
    """The simulated side of the demo: devices, the offline device, progress and summary."""

    def __init__(
        self,
        *,
        url: str,
        key: bytes,
        fake: FakeDimmy,
        services: Services,
        backlog: list[str],
        big_batch: int,
        speed: float,
        duration: float,
        database: Path,
        jsonl: Path,
    ) -> None:
        self.url = url
        self.key = key
        self.fake = fake
        self.services = services
        self.store = services.store
        self.lost: list[str] = []
        self.backlog = list(backlog)
        self.big_batch = big_batch
        self.speed = speed
        self.duration = duration
        self.database = database
        self.jsonl = jsonl
        self.rng = random.Random()
        self.started = time.monotonic()
        self.stop = asyncio.Event()
        self.force = asyncio.Event()
        self.deliveries: set[asyncio.Task[Any]] = set()

    def _elapsed(self) -> str:
        return f"[{time.monotonic() - self.started:3.0f}s]"

    def _signal(self) -> None:
        if self.stop.is_set():
            self.force.set()
        self.stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._signal)
        if self.duration:
            loop.call_later(self.duration, self.stop.set)
        async with SimulatedSender(
            f"{self.url}/webhook",
            self.key,
            compress=self.speed,
            duplicate_rate=DUPLICATE_RATE,
            rng=self.rng,
        ) as sender:
            self._upload(sender, self._take(3))
            background = [asyncio.create_task(self._device(sender)) for _ in range(DEVICES)]
            background.append(asyncio.create_task(self._offline_device(sender)))
            background.append(asyncio.create_task(self._lost_webhooks()))
            background.append(asyncio.create_task(self._late_item(sender)))
            background.append(asyncio.create_task(self._progress(sender)))
            await self.stop.wait()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            click.echo(
                f"{self._elapsed()} stopping: no new scans; waiting up to "
                f"{DRAIN_SECONDS:g} s for queued work (Ctrl-C again to quit now)"
            )
            if self.deliveries:
                await asyncio.wait(self.deliveries, timeout=3)
            for task in list(self.deliveries):
                task.cancel()
            await asyncio.gather(*self.deliveries, return_exceptions=True)
            left = await self._drain()
            await self._summary(sender, left)

    def _take(self, n: int) -> list[str]:
        """The next ``n`` scans: the backlog first, then newly scanned items."""
        ids, self.backlog = self.backlog[:n], self.backlog[n:]
        return ids + _scan(self.fake, n - len(ids)) if len(ids) < n else ids

    def _upload(self, sender: SimulatedSender, ids: list[str]) -> None:
        task = asyncio.create_task(sender.deliver(items_scanned_body(ids)))
        self.deliveries.add(task)
        task.add_done_callback(self.deliveries.discard)

    async def _device(self, sender: SimulatedSender) -> None:
        while True:
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            self._upload(sender, self._take(self.rng.randint(1, 5)))

    async def _offline_device(self, sender: SimulatedSender) -> None:
        if not self.big_batch:
            return
        await asyncio.sleep(BIG_BATCH_AFTER)
        click.echo(
            f"{self._elapsed()} an offline device is back: {self.big_batch} items "
            "in one items.scanned webhook"
        )
        self._upload(sender, _scan(self.fake, self.big_batch))

    async def _lost_webhooks(self) -> None:
        await asyncio.sleep(LOST_AFTER)
        now = datetime.now(UTC)  # one scan a second, just now (the fake spaces a batch wider)
        self.lost = [
            self.fake.generate_items(1, start=now - timedelta(seconds=n))[0]
            for n in range(LOST_SCANS, 0, -1)
        ]
        click.echo(
            f"{self._elapsed()} the receiver was down: {LOST_SCANS} scans' webhooks were lost "
            f"({', '.join(self.lost)}); the poller will find them"
        )

    async def _late_item(self, sender: SimulatedSender) -> None:
        """A webhook that names an item Dimmy cannot serve yet: its fetch gets 404 and the
        event is dead; the item becomes readable a little later, for a replay to succeed."""
        await asyncio.sleep(LATE_AFTER)
        [item_id] = _scan(self.fake, 1)
        doc = self.fake.items[item_id]
        self.fake.remove_item(item_id)
        self._upload(sender, [item_id])
        click.echo(
            f"{self._elapsed()} a scan's webhook came before its item could be read "
            f"({item_id}): its event goes dead (404)"
        )
        await asyncio.sleep(LATE_READABLE)
        self.fake.add_item(doc)
        click.echo(
            f"{self._elapsed()} item {item_id} is now readable: replay its dead event from "
            f"the dashboard ({self.url}/ui/events?status=dead)"
        )

    async def _reconciled(self) -> int:
        return (await self.services.reconciliation()).missed

    async def _progress(self, sender: SimulatedSender) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            stats = await self._stats()
            jobs = stats.jobs
            click.echo(
                f"{self._elapsed()} webhooks {sender.succeeded} delivered, "
                f"{_n(sender.duplicates_sent, 'duplicate')}, "
                f"{_n(sender.attempts_failed, 'failed attempt')}"
                f" | events {_describe(stats.events)} | jobs {jobs.get('dead', 0)} dead, "
                f"{jobs.get('pending', 0) + jobs.get('running', 0)} queued"
                f" | items stored {stats.items} ({await self._reconciled()} through the poller)"
                f" | Dimmy API {self._api_line()}"
            )

    def _api_line(self) -> str:
        fetches = sum(dict(self.fake.attempts).values())
        answered = sum(dict(self.fake.counts).values())
        return f"{fetches} item fetches, {fetches - answered} refused (429/503) and retried"

    async def _stats(self) -> QueueStats:
        return await self.store.stats(time.time())

    async def _drain(self) -> int:
        """Wait (bounded) until no event or job is queued and the lost scans are stored and
        reconciled; returns how many jobs are still queued."""
        deadline = time.monotonic() + DRAIN_SECONDS + (LOST_GRACE + 5 if self.lost else 0)
        while True:
            stats = await self._stats()
            queued = stats.jobs.get("pending", 0) + stats.jobs.get("running", 0)
            queued += stats.events.get("pending", 0) + stats.events.get("processing", 0)
            found = not self.lost or await self._reconciled() >= len(self.lost)
            if (not queued and found) or time.monotonic() > deadline or self.force.is_set():
                return queued
            await asyncio.sleep(0.2)

    async def _summary(self, sender: SimulatedSender, left: int) -> None:
        stats = await self._stats()
        click.echo(
            f"summary after {time.monotonic() - self.started:.0f} s\n"
            f"  webhooks    {sender.succeeded} delivered in {sender.sent} attempts "
            f"({_n(sender.duplicates_sent, 'duplicate')}, {sender.failed} given up)\n"
            f"  events      {_describe(stats.events)}\n"
            f"  items       {stats.items} stored in {self.database}\n"
            f"  reconciled  {await self._reconciled()} arrived only through the poller "
            f"(their webhooks were lost; GET /api/reconciliation)\n"
            f"  outputs     {self.jsonl}\n"
            f"  Dimmy API   {self._api_line()}\n"
            f"  jobs        {_describe(stats.jobs)}"
            + (f"\n  {left} still queued: they resume on the next run" if left else "")
        )


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _describe(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
