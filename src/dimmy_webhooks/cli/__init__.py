"""``dimmy-webhooks``: the commands, each a thin shim over the services, the store or the
development tools (:mod:`.devtools`).

Every command reads the settings once, reports a bad setting as one actionable line (exit 2),
and never prints a traceback for a problem the user can fix.
"""

from __future__ import annotations

import asyncio
import functools
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

from dimmy_webhooks import __version__
from dimmy_webhooks.config import (
    SECRET_SETTINGS,
    Settings,
    env_example,
    load_settings,
    postgres_driver_missing,
    require_loopback_or_token,
)
from dimmy_webhooks.errors import ConfigError, DimmyWebhooksError
from dimmy_webhooks.models import valid_item_id
from dimmy_webhooks.observe import logs
from dimmy_webhooks.signatures import parse_secrets, signed_headers
from dimmy_webhooks.store import schema

if TYPE_CHECKING:
    from dimmy_webhooks.pipeline.poller import BackfillProgress
    from dimmy_webhooks.services import Services

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """Turn our own errors into ``error: ...`` on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DimmyWebhooksError as exc:
            click.echo(f"error: {logs.redact_urls(str(exc))}", err=True)
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
@click.option(
    "--poll",
    is_flag=True,
    help="Also poll the Dimmy API for items webhooks missed (default DIMMY_POLL); with no "
    "DIMMY_WEBHOOK_SECRET, pull mode: no inbound webhooks at all.",
)
@friendly_errors
def serve(host: str | None, port: int | None, no_worker: bool, poll: bool) -> None:
    """Run the receiver (POST /webhook), the JSON API and, by default, the workers."""
    import uvicorn

    from dimmy_webhooks.intake.httpserver import HttpLimits, protocol
    from dimmy_webhooks.web import create_app

    settings = _settings(host=host, port=port)
    require_loopback_or_token(settings, settings.host)
    limits = HttpLimits.from_settings(settings)
    prepare_database(settings)
    poll = poll or settings.poll
    app = create_app(
        settings, run_worker=settings.worker_enabled and not no_worker, run_poller=poll
    )
    where = f"http://{settings.host}:{settings.port}"
    receiving = (
        f"webhooks at {where}{settings.webhook_path}"
        if settings.webhook_secret is not None
        else f"pull mode (no webhooks), API at {where}"
    )
    click.echo(
        f"dimmy-webhooks {__version__}: {receiving}"
        + (", polling the Dimmy API" if poll else "")
        + f", database {_describe_db(settings)}",
        err=True,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol(limits),  # uvicorn's httptools, with head and connection limits
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
    from dimmy_webhooks.services import Services

    settings = _settings()
    prepare_database(settings)
    services = Services.from_settings(settings, concurrency=concurrency)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_until_signalled(services))


async def _until_signalled(services: Services) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await services.run_until(stop)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (it comes with uvicorn[standard]), as serve gets from uvicorn."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without uvloop wheels
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


@main.command()
@click.option(
    "--once", is_flag=True, help="Run one pass, deliver, then exit (else a pass every interval)."
)
@click.option(
    "--deliver/--no-deliver",
    default=True,
    show_default=True,
    help="Deliver what the pass stored before exiting (else a running service's workers do).",
)
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to deliver.")
@friendly_errors
def poll(once: bool, deliver: bool, timeout: float) -> None:
    """Read the Dimmy API for items webhooks missed, from the stored watermark: with --once one
    pass (for cron), else a pass every DIMMY_POLL_INTERVAL_SECONDS until stopped, with workers
    delivering (a site without inbound webhooks and without serve)."""
    from dimmy_webhooks.services import Services

    settings = _settings()
    prepare_database(settings)
    if not once:
        running = Services.from_settings(settings, run_workers=deliver, run_poller=True)
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_until_signalled(running))
        return
    services = Services.from_settings(settings, run_workers=deliver)
    poller = services.new_poller()

    async def run() -> tuple[Any, Any, int]:
        async with services.running():
            result = await poller.pass_once()
            report = await poller.reconcile() if result is not None else None
            left = await services.drain(timeout) if deliver and result is not None else 0
        return result, report, left

    result, report, left = asyncio.run(run())
    if result is None:
        click.echo(f"error: {logs.redact_urls(poller.problem or 'poll failed')}", err=True)
        sys.exit(1)
    click.echo(
        f"read {result.read} items in {result.pages} pages, stored {result.stored} new or "
        f"newer; {report.missed} never arrived by webhook (GET /api/reconciliation)"
        + (f"; {left} deliveries still queued" if left else "")
    )


@main.command()
@click.option("--since", required=True, help="Created at or after this time (ISO-8601).")
@click.option("--until", help="Created at or before this time (ISO-8601; default now).")
@click.option("--restart", is_flag=True, help="Read a range that was finished again.")
@click.option(
    "--deliver/--no-deliver",
    default=True,
    show_default=True,
    help="Deliver what it stores as it goes (else a running service's workers do).",
)
@friendly_errors
def backfill(since: str, until: str | None, restart: bool, deliver: bool) -> None:
    """Import every item created in a range once. Interrupted (Ctrl-C, a kill) and started
    again with the same arguments, it goes on after the last committed slice."""
    settings = _settings()
    prepare_database(settings)
    start = datetime.fromtimestamp(_parse_time(since), UTC)
    end = datetime.fromtimestamp(_parse_time(until), UTC) if until else None
    if end is not None and end <= start:
        raise click.BadParameter("--until must be after --since", param_hint="--until")
    state = asyncio.run(_backfill(settings, start, end, restart=restart, deliver=deliver))
    if not state.finished:
        click.echo(f"stopped at {state.done_until}: run the same command again to go on", err=True)
        sys.exit(130)
    click.echo(
        f"backfill {state.since} .. {state.until}: {state.read} items read, "
        f"{state.stored} stored new or newer"
    )


async def _backfill(
    settings: Settings, start: datetime, end: datetime | None, *, restart: bool, deliver: bool
) -> BackfillProgress:
    """Run the backfill with a progress bar on a terminal (plain lines otherwise); the first
    Ctrl-C or SIGTERM stops it after the current page (the slice is read again next time)."""
    from dimmy_webhooks.pipeline.poller import backfill
    from dimmy_webhooks.services import Services

    services = Services.from_settings(settings, run_workers=deliver)
    reader = services.new_poller().reader()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    show = _BackfillProgress(start, end)
    async with services.running():
        state = await backfill(reader, start, end, restart=restart, progress=show, stop=stop)
        show.close()
        if state.resumed and state.finished and not show.updates:
            click.echo(f"already done up to {state.until} (--restart reads it again)", err=True)
        if deliver and not stop.is_set():
            await services.drain(60.0)
    return state


class _BackfillProgress:
    """Items read, stored, rate and ETA: a bar on a terminal, a line every few seconds else."""

    def __init__(self, start: datetime, end: datetime | None) -> None:
        self.started = time.monotonic()
        self.updates = 0
        self.last_line = 0.0
        self.bar: Any = None
        self.covered = 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, state: BackfillProgress) -> None:
        from dimmy_webhooks.pipeline.poller import parse_time

        self.updates += 1
        since, until = parse_time(state.since), parse_time(state.until)
        span = max(1.0, (until - since).total_seconds())
        done = (parse_time(state.done_until) - since).total_seconds()
        elapsed = max(1e-3, time.monotonic() - self.started)
        rate = state.read / elapsed
        about = f"{state.read} read, {state.stored} stored, {rate:.0f} items/s"
        if self.tty:
            if self.bar is None:
                self.bar = click.progressbar(
                    length=int(span), label="backfill", file=sys.stderr, show_eta=True
                )
                self.bar.__enter__()
            self.bar.label = f"backfill ({about})"
            self.bar.update(int(done - self.covered))
            self.covered = done
            return
        now = time.monotonic()
        if now - self.last_line >= 5 or done >= span:
            self.last_line = now
            left = (span - done) / (done / elapsed) if done else float("nan")
            click.echo(
                f"backfill up to {state.done_until}: {done / span:.0%}, {about}, ETA {left:.0f} s",
                err=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


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
@click.option(
    "--example",
    is_flag=True,
    help="Print a .env template with every setting at its default, and exit.",
)
@friendly_errors
def show_config(check_credentials: bool, example: bool) -> None:
    """Print the effective settings (secrets hidden) after validating them."""
    if example:
        click.echo(env_example(), nl=False)
        return
    settings = load_settings()
    if settings.webhook_secret is not None:
        parse_secrets(settings.webhook_secret.get_secret_value())
    if check_credentials:
        sys.exit(0 if settings.webhook_secret and settings.api_key else 1)
    for name, value in settings.model_dump().items():
        shown = "(set, hidden)" if value is not None and name in SECRET_SETTINGS else value
        click.echo(f"DIMMY_{name.upper()}={'' if shown is None else logs.redact_urls(str(shown))}")


@main.command()
@click.option(
    "--whsec",
    is_flag=True,
    help="A signing secret (whsec_...) instead, e.g. for DIMMY_FORWARD_SECRET.",
)
def token(whsec: bool) -> None:
    """Print a new random admin token (for DIMMY_ADMIN_TOKEN): 43 URL-safe characters."""
    import base64
    import secrets

    if whsec:
        click.echo("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    else:
        click.echo(secrets.token_urlsafe(32))


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
        reason = logs.redact_urls(f"could not reach {url}: {exc.__class__.__name__}: {exc}")
        click.echo(f"error: {reason}", err=True)
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
    if item_id is not None and not valid_item_id(item_id):
        raise click.BadParameter(
            "an item id is letters, digits, '_' and '-' (Dimmy's _id, e.g. "
            "6592008029c8c3e4dc76256c)",
            param_hint="--item",
        )
    settings = _settings()
    prepare_database(settings)
    queued = asyncio.run(_replay(settings, event_id, item_id, dead_since, mode))
    click.echo(f"queued {queued} job(s)")


async def _replay(
    settings: Settings, event_id: int | None, item_id: str | None, dead_since: str | None, mode: str
) -> int:
    from dimmy_webhooks.services import Services
    from dimmy_webhooks.store import ReplayMode

    services = Services.from_settings(settings, run_workers=False)
    async with services.running():
        try:
            if event_id is not None:
                return await services.replay_event(event_id, ReplayMode(mode))
            if item_id is not None:
                return await services.replay_item(item_id, ReplayMode(mode))
            assert dead_since is not None
            return await services.replay_dead(_parse_time(dead_since))
        except LookupError as exc:
            raise ConfigError(str(exc).strip("'\"")) from None


@main.group()
def quarantine() -> None:
    """Item versions the plausibility rules (DIMMY_VALIDATE_*) held back from every output."""


@quarantine.command("list")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@friendly_errors
def quarantine_list(limit: int) -> None:
    """List held items, most recently held first: id, barcode, reason."""
    settings = _settings()
    prepare_database(settings)
    held = asyncio.run(_with_store(settings, lambda store: store.held_items(limit=limit)))
    for item in held:
        click.echo(f"{item.id}  r{item.revision}  {item.item.barcode or '-'}  {item.hold_reason}")
    click.echo(f"{len(held)} item(s) held", err=True)


@quarantine.command("release")
@click.argument("item_id")
@click.option("--note", required=True, help="Why it may go (kept with the item).")
@friendly_errors
def quarantine_release(item_id: str, note: str) -> None:
    """Release a held item: it is delivered to every output."""
    _decide(item_id, note, release=True)


@quarantine.command("reject")
@click.argument("item_id")
@click.option("--note", required=True, help="Why it must not go (kept with the item).")
@friendly_errors
def quarantine_reject(item_id: str, note: str) -> None:
    """Reject a held item: it is never delivered (a newer version is checked again)."""
    _decide(item_id, note, release=False)


def _decide(item_id: str, note: str, *, release: bool) -> None:
    from dimmy_webhooks.services import Services

    if not valid_item_id(item_id):
        raise click.BadParameter("not an item id", param_hint="ITEM_ID")
    note = note.strip()[:1000]
    if not note:
        raise click.BadParameter("say why", param_hint="--note")
    settings = _settings()
    prepare_database(settings)
    services = Services.from_settings(settings, run_workers=False)

    async def decide() -> int:
        async with services.running():
            return await services.decide_hold(item_id, release=release, note=note)

    try:
        queued = asyncio.run(decide())
    except LookupError:
        raise ConfigError(f"item {item_id} is not held in quarantine") from None
    done = "released" if release else "rejected"
    click.echo(f"{item_id} {done}" + (f": {queued} delivery(ies) queued" if release else ""))


async def _with_store(settings: Settings, use: Callable[[Any], Any]) -> Any:
    from dimmy_webhooks.store import create_store

    store = create_store(settings.database_url, max_attempts=settings.max_attempts)
    await store.open()
    try:
        return await use(store)
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
@click.option(
    "--hidden-rate-limit",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Requests per second over which calls get 429 with Retry-After (unset: no limit).",
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
    hidden_rate_limit: float | None,
    seed: int | None,
) -> None:
    """Run a local fake of the Dimmy API (for development, tests and the demo)."""
    import uvicorn

    from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy, FakeDimmyConfig, create_app

    logs.configure()
    fake = FakeDimmy(
        FakeDimmyConfig(
            api_key=api_key,
            latency_seconds=latency,
            error_rate=error_rate,
            hidden_rate_limit=hidden_rate_limit,
            seed=seed,
        )
    )
    ids = fake.generate_items(n_items)
    click.echo(
        f"fake Dimmy API at http://{host}:{port} with {len(ids)} items "
        f"(X-API-KEY: {api_key}); e.g. GET /items/{ids[0] if ids else '<id>'}",
        err=True,
    )
    uvicorn.run(create_app(fake), host=host, port=port, log_config=None, access_log=False)


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
@click.option(
    "--admin-token",
    metavar="TOKEN",
    help="Protect the dashboard and API with this token (a login), as a deployment does.",
)
@click.option(
    "--browser/--no-browser",
    default=None,
    help="Open the dashboard in the web browser (default: when run in a terminal).",
)
@friendly_errors
def demo(**options: Any) -> None:
    """Run everything offline in one process: a fake Dimmy API, the service, and devices whose
    scans arrive as signed webhooks with Svix's retries and duplicates. Ctrl-C stops it."""
    from dimmy_webhooks.devtools.demo import run_demo

    logs.configure("text", "WARNING")
    try:
        run_demo(**options)
    except KeyboardInterrupt:
        click.echo("demo interrupted", err=True)
        sys.exit(130)
    click.echo("demo stopped", err=True)


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
    if target is None:
        target = _settings().database_url
    elif (missing := postgres_driver_missing(target)) is not None:
        raise ConfigError(f"--to: {missing}")
    from dimmy_webhooks.store.export import export_sqlite_to_postgres as export

    result = export(sqlite_path, target, batch_rows=batch, echo=click.echo)
    copied = ", ".join(f"{n} {table}" for table, n in result.copied.items())
    click.echo(f"exported {copied} from {sqlite_path}")
