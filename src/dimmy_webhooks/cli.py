"""``dimmy-webhooks``: the command line, the other composition root (with :mod:`.web`).

Every command reads the settings once, reports a bad setting as one actionable line (exit 2),
and never prints a traceback for a problem the user can fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import signal
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import httpx

from . import __version__, logs, schema
from .config import Settings, load_settings, require_loopback_or_token
from .errors import ConfigError, DimmyWebhooksError
from .signatures import parse_secrets, signed_headers

if TYPE_CHECKING:
    from .fake_dimmy import FakeDimmy
    from .sender import SimulatedSender
    from .store import Store

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """Turn our own errors into ``error: ...`` on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DimmyWebhooksError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _settings(**overrides: Any) -> Settings:
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    logs.configure(settings.log_format, settings.log_level)
    return settings


def prepare_database(settings: Settings) -> None:
    """SQLite is migrated automatically (one file, one site); PostgreSQL must be migrated
    explicitly with ``dimmy-webhooks migrate`` and is only checked here."""
    if settings.sqlite_path is not None:
        schema.upgrade(settings.database_url)
    else:
        schema.require_current(settings.database_url)


@click.group()
@click.version_option(__version__, prog_name="dimmy-webhooks")
def main() -> None:
    """Receive Dimmy webhooks durably, fetch the scanned items, hand them to your systems.

    Settings come from DIMMY_* environment variables or a .env file in the working directory
    (see docs/configuration.md).
    """


@main.command()
@click.option("--host", help="Address to bind (default DIMMY_HOST, 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (default DIMMY_PORT, 5000).")
@click.option("--no-worker", is_flag=True, help="Only receive; run workers elsewhere.")
@friendly_errors
def serve(host: str | None, port: int | None, no_worker: bool) -> None:
    """Run the receiver (POST /webhook), the JSON API and, by default, the workers."""
    import uvicorn

    from .web import create_app

    settings = _settings(host=host, port=port)
    require_loopback_or_token(settings, settings.host)
    prepare_database(settings)
    app = create_app(settings, run_worker=settings.worker_enabled and not no_worker)
    click.echo(
        f"dimmy-webhooks {__version__}: webhooks at http://{settings.host}:{settings.port}"
        f"{settings.webhook_path}, database {_describe_db(settings)}",
        err=True,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=15,
        timeout_graceful_shutdown=30,
        server_header=False,
    )


def _describe_db(settings: Settings) -> str:
    if settings.sqlite_path is not None:
        return str(settings.sqlite_path.resolve())
    return "PostgreSQL"


@main.command()
@click.option("--concurrency", type=int, help="Jobs in flight (default 2 x DIMMY_API_CONCURRENCY).")
@friendly_errors
def worker(concurrency: int | None) -> None:
    """Run workers only (no HTTP): fetch items and deliver them to the outputs."""
    settings = _settings()
    prepare_database(settings)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_run_worker(settings, concurrency))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (it comes with uvicorn[standard]), as serve gets from uvicorn."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without uvloop wheels
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _run_worker(settings: Settings, concurrency: int | None) -> None:
    from dataclasses import replace

    from .failpoints import Failpoints
    from .outputs import parse_outputs
    from .store import create_store
    from .web import create_client, worker_policy
    from .worker import Worker

    policy = worker_policy(settings)
    if concurrency:
        policy = replace(policy, concurrency=concurrency)
    store = create_store(settings.database_url, max_attempts=settings.max_attempts)
    outputs = parse_outputs(settings.outputs)
    client = create_client(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await store.open()
    gc.collect()
    gc.freeze()  # as in serve: start-up objects stay out of full GC passes
    try:
        async with contextlib.AsyncExitStack() as stack:
            if client is not None:
                await stack.enter_async_context(client)
            for output in outputs:
                stack.push_async_callback(output.aclose)
            crash = Failpoints(settings.failpoint)
            await Worker(store, client, outputs, policy, crash=crash).run(stop)
    finally:
        await store.close()


@main.command()
@friendly_errors
def migrate() -> None:
    """Apply database migrations (needed once per upgrade on PostgreSQL)."""
    settings = _settings()
    state = schema.upgrade(settings.database_url)
    click.echo(f"schema at {state.current} (latest {state.head}): {_describe_db(settings)}")


@main.command("config")
@click.option(
    "--check-credentials",
    is_flag=True,
    help="Exit 1 unless a webhook secret and an API key are configured.",
)
@friendly_errors
def show_config(check_credentials: bool) -> None:
    """Print the effective settings (secrets hidden) after validating them."""
    settings = load_settings()
    if settings.webhook_secret is not None:
        parse_secrets(settings.webhook_secret.get_secret_value())
    if check_credentials:
        sys.exit(0 if settings.webhook_secret and settings.api_key else 1)
    for name, value in settings.model_dump().items():
        shown = "(set, hidden)" if value is not None and name in _SECRETS else value
        click.echo(f"DIMMY_{name.upper()}={'' if shown is None else shown}")


_SECRETS = frozenset({"webhook_secret", "api_key", "admin_token"})

SAMPLE_IDS = ["6592008029c8c3e4dc76256c", "6592008029c8c3e4dc76256d"]


@main.command()
@click.argument("url", default="http://127.0.0.1:5000/webhook")
@click.option(
    "--secret",
    envvar="DIMMY_WEBHOOK_SECRET",
    help="Signing secret (whsec_...); default DIMMY_WEBHOOK_SECRET (the first one when several).",
)
@click.option(
    "--file",
    "body_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Send this file's bytes as the body instead of a sample items.scanned.",
)
@click.option("--ids", "item_ids", multiple=True, help="Item ids for the sample (repeatable).")
@click.option("--msg-id", help="Message id (default a new msg_...; reuse one to test dedup).")
@click.option(
    "--family",
    type=click.Choice(["svix", "webhook"]),
    default="svix",
    help="Header names: svix-* (Dimmy) or webhook-* (white-labelled senders).",
)
@click.option("--timeout", type=float, default=15.0, show_default=True)
@friendly_errors
def send(
    url: str,
    secret: str | None,
    body_file: Path | None,
    item_ids: tuple[str, ...],
    msg_id: str | None,
    family: str,
    timeout: float,
) -> None:
    """Post a correctly signed webhook to URL and print the answer (like the Testing tab)."""
    if not secret:
        raise ConfigError("no secret: pass --secret whsec_... or set DIMMY_WEBHOOK_SECRET")
    key = parse_secrets(secret)[0]
    if body_file is not None:
        body = body_file.read_bytes()
    else:
        body = json.dumps({"item_ids": list(item_ids) or SAMPLE_IDS}).encode()
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    headers = signed_headers(key, msg_id, body, family=family)
    headers["content-type"] = "application/json"
    started = time.perf_counter()
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        click.echo(f"error: could not reach {url}: {exc.__class__.__name__}: {exc}", err=True)
        sys.exit(1)
    elapsed = (time.perf_counter() - started) * 1000
    click.echo(f"{msg_id} -> HTTP {response.status_code} in {elapsed:.0f} ms")
    if response.content:
        click.echo(response.text)
    sys.exit(0 if response.is_success else 1)


def _parse_time(value: str) -> float:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use ISO-8601, e.g. 2026-01-05T09:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@main.command()
@click.option("--event", "event_id", type=int, help="Replay one inbox event (its id).")
@click.option("--item", "item_id", help="Replay one item (its Dimmy _id).")
@click.option("--dead-since", help="Replay all dead work since this time (ISO-8601).")
@click.option(
    "--mode",
    type=click.Choice(["refetch", "redeliver"]),
    default="refetch",
    show_default=True,
    help="Fetch from Dimmy again, or deliver the stored item again.",
)
@friendly_errors
def replay(event_id: int | None, item_id: str | None, dead_since: str | None, mode: str) -> None:
    """Put work back in the queue; a running service picks it up within a second."""
    if sum(x is not None for x in (event_id, item_id, dead_since)) != 1:
        raise click.UsageError("give exactly one of --event, --item, --dead-since")
    settings = _settings()
    prepare_database(settings)
    queued = asyncio.run(_replay(settings, event_id, item_id, dead_since, mode))
    click.echo(f"queued {queued} job(s)")


async def _replay(
    settings: Settings, event_id: int | None, item_id: str | None, dead_since: str | None, mode: str
) -> int:
    from .outputs import parse_outputs
    from .store import ReplayMode, create_store

    store = create_store(settings.database_url, max_attempts=settings.max_attempts)
    names = [output.name for output in parse_outputs(settings.outputs)]
    await store.open()
    try:
        now = time.time()
        try:
            if event_id is not None:
                return await store.replay_event(event_id, ReplayMode(mode), names, now)
            if item_id is not None:
                return await store.replay_item(item_id, ReplayMode(mode), names, now)
            assert dead_since is not None
            return await store.replay_dead(_parse_time(dead_since), now)
        except LookupError as exc:
            raise ConfigError(str(exc).strip("'\"")) from None
    finally:
        await store.close()


@main.command("fake-api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--api-key", default="demo-key", show_default=True)
@click.option(
    "--items", "n_items", type=int, default=100, show_default=True, help="Items generated at start."
)
@click.option("--latency", type=float, default=0.0, show_default=True, help="Seconds per call.")
@click.option(
    "--error-rate", type=float, default=0.0, show_default=True, help="Share of calls answered 503."
)
@click.option("--seed", type=int, default=None)
@friendly_errors
def fake_api(
    host: str,
    port: int,
    api_key: str,
    n_items: int,
    latency: float,
    error_rate: float,
    seed: int | None,
) -> None:
    """Run a local fake of the Dimmy API (for development, tests and the demo)."""
    import uvicorn

    from .fake_dimmy import FakeDimmy, FakeDimmyConfig, create_app

    logs.configure()
    fake = FakeDimmy(
        FakeDimmyConfig(api_key=api_key, latency_seconds=latency, error_rate=error_rate, seed=seed)
    )
    ids = fake.generate_items(n_items)
    click.echo(
        f"fake Dimmy API at http://{host}:{port} with {len(ids)} items "
        f"(X-API-KEY: {api_key}); e.g. GET /items/{ids[0] if ids else '<id>'}",
        err=True,
    )
    uvicorn.run(create_app(fake), host=host, port=port, log_config=None, access_log=False)


# -- demo --------------------------------------------------------------------------------------

_DEMO_DEVICES = 3
_DEMO_BIG_BATCH_AFTER = 5.0  # seconds before the offline device comes back
_DEMO_PROGRESS_EVERY = 3.0
_DEMO_DRAIN_SECONDS = 8.0  # at the end, time allowed for queued work to finish
_DEMO_DUPLICATE_RATE = 0.1
_DEMO_JSONL = "dimmy-demo-items.jsonl"


@main.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=5000,
    show_default=True,
    help="Port of the service on 127.0.0.1 (0: any free port).",
)
@click.option(
    "--fake-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port of the fake Dimmy API (0: any free port).",
)
@click.option(
    "--items",
    "n_items",
    type=click.IntRange(min=1),
    default=40,
    show_default=True,
    help="Items scanned before the demo starts (uploaded first, then new ones are scanned).",
)
@click.option(
    "--big-batch",
    type=click.IntRange(min=0),
    default=300,
    show_default=True,
    help="Items an offline device uploads in one webhook after about 5 s (0: none).",
)
@click.option(
    "--speed",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Time compression of the sender's retry schedule.",
)
@click.option(
    "--database",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("dimmy-demo.sqlite3"),
    show_default=True,
    help="SQLite file of the demo (never the service's own database).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Stop after this many seconds (default: run until Ctrl-C).",
)
@friendly_errors
def demo(
    port: int,
    fake_port: int,
    n_items: int,
    big_batch: int,
    speed: float,
    database: Path,
    duration: float,
) -> None:
    """Run everything offline in one process: a fake Dimmy API, the service, and devices whose
    scans arrive as signed webhooks with Svix's retries and duplicates. Ctrl-C stops it."""
    import base64
    import secrets

    from .fake_dimmy import FakeDimmy, FakeDimmyConfig
    from .fake_dimmy import create_app as create_fake_app
    from .runner import free_port
    from .web import create_app

    logs.configure("text", "WARNING")
    database = database.resolve()
    _refuse_real_database(database)
    for flag, value in (("--port", port), ("--fake-port", fake_port)):
        if value and not _port_free(value):
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
    backlog = _scan(fake, n_items)
    database_url = f"sqlite:///{database}"
    schema.upgrade(database_url)
    jsonl = database.parent / _DEMO_JSONL
    try:
        with contextlib.ExitStack() as stack:
            fake_url = _serve_demo_part(stack, create_fake_app(fake), fake_port, "--fake-port")
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
                admin_token=None,
                worker_enabled=True,
                log_level="WARNING",
            )
            app = create_app(settings)
            url = _serve_demo_part(stack, app, port, "--port")
            click.echo(
                "dimmy-webhooks demo: a fake Dimmy API, the service and simulated devices, "
                "all offline in this process\n"
                f"  service      {url}\n"
                f"  webhooks     {url}/webhook  (throwaway secret of this run: {secret})\n"
                f"  events       {url}/api/events\n"
                f"  an item      {url}/api/items/{backlog[0]}\n"
                f"  OpenAPI      {url}/openapi.json\n"
                f"  readiness    {url}/readyz\n"
                f"  fake Dimmy   {fake_url}/items/{backlog[0]}  (X-API-KEY: {api_key})\n"
                f"  database     {database}\n"
                f"  JSON Lines   {jsonl}\n"
                f"{_DEMO_DEVICES} devices upload 1-5 items every ~2 s; an offline device uploads "
                f"{big_batch} items after ~{_DEMO_BIG_BATCH_AFTER:g} s; retry schedule "
                f"{speed:g}x faster. "
                + (f"Stopping after {duration:g} s." if duration else "Ctrl-C to stop.")
            )
            demo_run = _DemoRun(
                url=url,
                key=parse_secrets(secret)[0],
                fake=fake,
                store=app.state.services.store,
                backlog=backlog,
                big_batch=big_batch,
                speed=speed,
                duration=duration,
                database=database,
                jsonl=jsonl,
            )
            asyncio.run(demo_run.run())
            click.echo("demo stopped", err=True)
    except KeyboardInterrupt:
        click.echo("demo interrupted", err=True)
        sys.exit(130)


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


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


def _serve_demo_part(stack: contextlib.ExitStack, app: Any, port: int, flag: str) -> str:
    from .runner import serve_in_thread

    try:
        url: str = stack.enter_context(serve_in_thread(app, "127.0.0.1", port))
    except RuntimeError:
        raise ConfigError(
            f"could not listen on 127.0.0.1:{port} (port in use?): try another {flag}"
        ) from None
    return url


def _scan(fake: FakeDimmy, n: int) -> list[str]:
    """``n`` new items in the fake Dimmy, created over the last minutes (as if just scanned)."""
    from datetime import timedelta

    start = datetime.now(UTC) - timedelta(seconds=47 * n)
    return fake.generate_items(n, start=start)


class _DemoRun:
    """The simulated side of the demo: devices, the offline device, progress and summary."""

    def __init__(
        self,
        *,
        url: str,
        key: bytes,
        fake: FakeDimmy,
        store: Store,
        backlog: list[str],
        big_batch: int,
        speed: float,
        duration: float,
        database: Path,
        jsonl: Path,
    ) -> None:
        import random

        self.url = url
        self.key = key
        self.fake = fake
        self.store = store
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
        from .sender import SimulatedSender

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._signal)
        if self.duration:
            loop.call_later(self.duration, self.stop.set)
        async with SimulatedSender(
            f"{self.url}/webhook",
            self.key,
            compress=self.speed,
            duplicate_rate=_DEMO_DUPLICATE_RATE,
            rng=self.rng,
        ) as sender:
            self._upload(sender, self._take(3))
            background = [asyncio.create_task(self._device(sender)) for _ in range(_DEMO_DEVICES)]
            background.append(asyncio.create_task(self._offline_device(sender)))
            background.append(asyncio.create_task(self._progress(sender)))
            await self.stop.wait()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            click.echo(
                f"{self._elapsed()} stopping: no new scans; waiting up to "
                f"{_DEMO_DRAIN_SECONDS:g} s for queued work (Ctrl-C again to quit now)"
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
        from .sender import items_scanned_body

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
        await asyncio.sleep(_DEMO_BIG_BATCH_AFTER)
        click.echo(
            f"{self._elapsed()} an offline device is back: {self.big_batch} items "
            "in one items.scanned webhook"
        )
        self._upload(sender, _scan(self.fake, self.big_batch))

    async def _progress(self, sender: SimulatedSender) -> None:
        while True:
            await asyncio.sleep(_DEMO_PROGRESS_EVERY)
            events, jobs, items = await self._counts()
            click.echo(
                f"{self._elapsed()} webhooks {sender.succeeded} delivered, "
                f"{_n(sender.duplicates_sent, 'duplicate')}, "
                f"{_n(sender.attempts_failed, 'failed attempt')}"
                f" | events {_describe_counts(events)} | jobs {jobs.get('dead', 0)} dead, "
                f"{jobs.get('pending', 0) + jobs.get('running', 0)} queued"
                f" | items stored {items} | Dimmy API {self._api_line()}"
            )

    def _api_line(self) -> str:
        fetches = sum(dict(self.fake.attempts).values())
        answered = sum(dict(self.fake.counts).values())
        return f"{fetches} item fetches, {fetches - answered} refused (429/503) and retried"

    async def _counts(self) -> tuple[dict[str, int], dict[str, int], int]:
        stats = await self.store.stats(time.time())
        items = await asyncio.to_thread(_count_items, self.database)
        return dict(stats.events), dict(stats.jobs), items

    async def _drain(self) -> int:
        """Wait (bounded) until no event or job is queued; returns how many jobs still are."""
        deadline = time.monotonic() + _DEMO_DRAIN_SECONDS
        while True:
            events, jobs, _ = await self._counts()
            queued = jobs.get("pending", 0) + jobs.get("running", 0)
            queued += events.get("pending", 0) + events.get("processing", 0)
            if not queued or time.monotonic() > deadline or self.force.is_set():
                return queued
            await asyncio.sleep(0.2)

    async def _summary(self, sender: SimulatedSender, left: int) -> None:
        events, jobs, items = await self._counts()
        click.echo(
            f"summary after {time.monotonic() - self.started:.0f} s\n"
            f"  webhooks    {sender.succeeded} delivered in {sender.sent} attempts "
            f"({_n(sender.duplicates_sent, 'duplicate')}, {sender.failed} given up)\n"
            f"  events      {_describe_counts(events)}\n"
            f"  items       {items} stored in {self.database}\n"
            f"  outputs     {self.jsonl}\n"
            f"  Dimmy API   {self._api_line()}\n"
            f"  jobs        {_describe_counts(jobs)}"
            + (f"\n  {left} still queued: they resume on the next run" if left else "")
        )


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _describe_counts(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _count_items(path: Path) -> int:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path.as_uri() + "?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])


@main.command("export-sqlite-to-postgres")
@click.argument("sqlite_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--to",
    "target",
    metavar="postgresql://...",
    help="Target database (default DIMMY_DATABASE_URL); migrated first if empty.",
)
@click.option(
    "--batch", type=click.IntRange(min=1), default=1000, show_default=True, help="Rows per batch."
)
@friendly_errors
def export_sqlite_to_postgres(sqlite_path: Path, target: str | None, batch: int) -> None:
    """Copy events, jobs and items from a SQLite file into an empty PostgreSQL database.

    Ids are kept and the id sequences moved past them; everything arrives in one transaction
    or nothing does. Jobs running in the file become pending. Stop the service on the SQLite
    file first, or events that arrive meanwhile stay behind in the file.
    """
    from .export import export_sqlite_to_postgres as export

    if target is None:
        target = _settings().database_url
    result = export(sqlite_path, target, batch_rows=batch, echo=click.echo)
    copied = ", ".join(f"{n} {table}" for table, n in result.copied.items())
    click.echo(f"exported {copied} from {sqlite_path}")


if __name__ == "__main__":
    main()
