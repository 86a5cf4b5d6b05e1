"""Operating a running site: ``replay``, ``move-deliveries``, ``quarantine``, ``poll``,
``backfill``, ``export-sqlite-to-postgres`` and ``outputs``.

Each builds its parts with :meth:`Services.from_settings` and opens or runs them under
:meth:`Services.opened` / :meth:`Services.running` (the one-shot ``replay`` and ``quarantine``
through :func:`~dimmy_webhooks.cli.common.with_services`): no command opens a store of its own.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from dimmy_webhooks.cli.common import (
    command_settings,
    friendly_errors,
    parse_time,
    prepare_database,
    run_until_signalled,
    with_services,
)
from dimmy_webhooks.config import Settings, postgres_driver_missing
from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.models import ReplayMode, valid_item_id
from dimmy_webhooks.observe import logs
from dimmy_webhooks.pipeline import ranges
from dimmy_webhooks.pipeline.backfill import BackfillProgress
from dimmy_webhooks.pipeline.backfill import backfill as backfill_range
from dimmy_webhooks.services import Services


@click.command()
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
    settings = command_settings()
    prepare_database(settings)
    if not once:
        run_until_signalled(Services.from_settings(settings, run_workers=deliver, run_poller=True))
        return
    services = Services.from_settings(settings, run_workers=deliver)
    once_poller = services.new_poller()

    async def run() -> tuple[Any, Any, int]:
        async with services.running():
            result = await once_poller.pass_once()
            report = await once_poller.reconcile() if result is not None else None
            left = await services.drain(timeout) if deliver and result is not None else 0
        return result, report, left

    result, report, left = asyncio.run(run())
    if result is None:
        click.echo(f"error: {logs.redact_urls(once_poller.problem or 'poll failed')}", err=True)
        sys.exit(1)
    click.echo(
        f"read {result.read} items in {result.pages} pages, stored {result.stored} new or "
        f"newer; {report.missed} never arrived by webhook (GET /api/reconciliation)"
        + (f"; {result.refused} refused (logged with the reason)" if result.refused else "")
        + (f"; {left} deliveries still queued" if left else "")
    )


@click.command()
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
    settings = command_settings()
    prepare_database(settings)
    start = datetime.fromtimestamp(parse_time(since), UTC)
    end = datetime.fromtimestamp(parse_time(until), UTC) if until else None
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
    services = Services.from_settings(settings, run_workers=deliver)
    reader = services.new_poller().reader()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    show = _BackfillProgress(start, end)
    async with services.running():
        state = await backfill_range(reader, start, end, restart=restart, progress=show, stop=stop)
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
        self.updates += 1
        since, until = ranges.parse_time(state.since), ranges.parse_time(state.until)
        span = max(1.0, (until - since).total_seconds())
        done = (ranges.parse_time(state.done_until) - since).total_seconds()
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


@click.command()
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
    queued = with_services(lambda services: _replay(services, event_id, item_id, dead_since, mode))
    click.echo(f"queued {queued} job(s)")


async def _replay(
    services: Services, event_id: int | None, item_id: str | None, dead_since: str | None, mode: str
) -> int:
    try:
        if event_id is not None:
            return await services.replay_event(event_id, ReplayMode(mode))
        if item_id is not None:
            return await services.replay_item(item_id, ReplayMode(mode))
        assert dead_since is not None
        return await services.replay_dead(parse_time(dead_since))
    except LookupError as exc:
        raise ConfigError(str(exc).strip("'\"")) from None


@click.command("move-deliveries")
@click.option("--from", "source", required=True, help="The output they wait for (its name).")
@click.option("--to", "target", help="A configured output to give them to.")
@click.option("--drop", is_flag=True, help="Drop them instead (they are never delivered).")
@friendly_errors
def move_deliveries(source: str, target: str | None, drop: bool) -> None:
    """Hand the deliveries waiting for a renamed or removed output to another output."""
    if (target is None) == (not drop):
        raise click.UsageError("give exactly one of --to and --drop")
    settings = command_settings()
    prepare_database(settings)

    async def move() -> int:
        services = Services.from_settings(settings, run_workers=False)
        async with services.opened():
            return await services.move_deliveries(source, target)

    moved = asyncio.run(move())
    click.echo(f"{'dropped' if drop else 'moved'} {moved} delivery(ies) of {source}")


@click.group()
def quarantine() -> None:
    """Item versions the plausibility rules (DIMMY_VALIDATE_*) held back from every output."""


@quarantine.command("list")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@friendly_errors
def quarantine_list(limit: int) -> None:
    """List held items, most recently held first: id, barcode, reason."""
    held = with_services(lambda services: services.store.held_items(limit=limit))
    for item in held:
        click.echo(f"{item.id}  r{item.revision}  {item.item.barcode or '-'}  {item.hold_reason}")
    click.echo(f"{len(held)} item(s) held", err=True)


def _decision(name: str, why: str) -> Callable[[Callable[[str, str], None]], click.Command]:
    """A quarantine decision command: ITEM_ID and a required ``--note`` saying ``why``."""

    def declare(func: Callable[[str, str], None]) -> click.Command:
        note = click.option("--note", required=True, help=f"{why} (kept with the item).")
        return quarantine.command(name)(click.argument("item_id")(note(friendly_errors(func))))

    return declare


@_decision("release", "Why it may go")
def quarantine_release(item_id: str, note: str) -> None:
    """Release a held item: it is delivered to every output."""
    _decide(item_id, note, release=True)


@_decision("reject", "Why it must not go")
def quarantine_reject(item_id: str, note: str) -> None:
    """Reject a held item: it is never delivered (a newer version is checked again)."""
    _decide(item_id, note, release=False)


def _decide(item_id: str, note: str, *, release: bool) -> None:
    if not valid_item_id(item_id):
        raise click.BadParameter("not an item id", param_hint="ITEM_ID")
    note = note.strip()[:1000]
    if not note:
        raise click.BadParameter("say why", param_hint="--note")
    try:
        queued = with_services(
            lambda services: services.decide_hold(item_id, release=release, note=note)
        )
    except LookupError:
        raise ConfigError(f"item {item_id} is not held in quarantine") from None
    done = "released" if release else "rejected"
    click.echo(f"{item_id} {done}" + (f": {queued} delivery(ies) queued" if release else ""))


@click.command("export-sqlite-to-postgres")
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
        target = command_settings().database_url
    elif (missing := postgres_driver_missing(target)) is not None:
        raise ConfigError(f"--to: {missing}")
    # psycopg is the [postgres] extra: imported by this command only, not on a SQLite-only site
    from dimmy_webhooks.store.export import export_sqlite_to_postgres as export

    result = export(sqlite_path, target, batch_rows=batch, echo=click.echo)
    copied = ", ".join(f"{n} {table}" for table, n in result.copied.items())
    click.echo(f"exported {copied} from {sqlite_path}")


@click.command("outputs")
@friendly_errors
def list_outputs() -> None:
    """List the kinds of output installed (built in, and those plug-in packages add under the
    entry-point group dimmy_webhooks.outputs): the scheme DIMMY_OUTPUTS names, how an entry is
    written, and the package each comes from. A kind that cannot be used says why."""
    import importlib.util

    from dimmy_webhooks.outputs import discover

    rows: list[tuple[str, str, str, str | None]] = []
    for key, plugin in discover().items():
        problem = plugin.problem
        if problem is None:
            missing = [
                module
                for module in plugin.load().requires
                if importlib.util.find_spec(module) is None
            ]
            if missing:
                extra = f"'dimmy-webhooks[{plugin.scheme}]'" if plugin.builtin else "its extra"
                problem = f"needs {', '.join(missing)}: pip install {extra}"
        rows.append((key, plugin.usage, f"{plugin.source} ({plugin.target})", problem))
    width = [max(len(row[0]) for row in rows), max(len(row[1]) for row in rows)]
    click.echo(f"{'scheme':<{width[0]}}  {'usage':<{width[1]}}  from")
    for scheme, usage, source, problem in rows:
        click.echo(f"{scheme:<{width[0]}}  {usage:<{width[1]}}  {source}")
        if problem is not None:
            click.echo(f"{'':<{width[0]}}  ! {logs.redact_urls(problem)}")
