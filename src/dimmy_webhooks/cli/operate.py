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
    account_option,
    command_settings,
    friendly_errors,
    parse_time,
    pick_account,
    prepare_database,
    run_until_signalled,
    with_services,
)
from dimmy_webhooks.config import Settings, load_accounts, postgres_driver_missing
from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.models import ReplayMode, StoredItem, valid_item_id
from dimmy_webhooks.observe import logs
from dimmy_webhooks.pipeline import ranges
from dimmy_webhooks.pipeline.backfill import BackfillProgress
from dimmy_webhooks.pipeline.backfill import backfill as backfill_range
from dimmy_webhooks.pipeline.poller import Poller
from dimmy_webhooks.services import Part, Services


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
@account_option("Poll this account only (default: every account with an API key).")
@friendly_errors
def poll(once: bool, deliver: bool, timeout: float, account: str | None) -> None:
    """Read the Dimmy API for items webhooks missed, from the stored watermark: with --once one
    pass (for cron), else a pass every DIMMY_POLL_INTERVAL_SECONDS until stopped, with workers
    delivering (a site without inbound webhooks and without serve)."""
    settings = command_settings()
    accounts = load_accounts(settings)
    if account is not None:
        pick_account(accounts, account)
    prepare_database(settings)
    if not once:
        services = Services.from_settings(settings, run_workers=deliver, run_poller=account is None)
        if account is not None:  # this account's poller, whether its table says poll or not
            services.poller = services.new_poller(account)
            services.pollers.append(services.poller)
            services.parts.append(Part(f"poller:{account}", services.poller.run))
        run_until_signalled(services)
        return
    services = Services.from_settings(settings, run_workers=deliver)
    pollers = _once_pollers(services, [account] if account else list(accounts))
    several = accounts.several

    async def run() -> tuple[list[tuple[Poller, Any, Any]], int]:
        passes = []
        async with services.running():
            for poller in pollers:  # one after the other: they may share a key's rate
                result = await poller.pass_once()
                report = await poller.reconcile() if result is not None else None
                passes.append((poller, result, report))
            read = any(result is not None for _, result, _ in passes)
            left = await services.drain(timeout) if deliver and read else 0
        return passes, left

    passes, left = asyncio.run(run())
    failed = False
    for poller, result, report in passes:
        who = f"account {poller.account}: " if several else ""
        if result is None:  # the poller's problem names its account, as /readyz shows it
            problem = logs.redact_urls(poller.problem or "poll failed")
            click.echo(f"error: {problem}", err=True)
            failed = True
            continue
        click.echo(
            f"{who}read {result.read} items in {result.pages} pages, stored {result.stored} new "
            f"or newer; {report.missed} never arrived by webhook (GET /api/reconciliation)"
            + (f"; {result.refused} refused (logged with the reason)" if result.refused else "")
            + (f"; {left} deliveries still queued" if left and not several else "")
        )
    if left and several:
        click.echo(f"{left} deliveries still queued")
    if failed:
        sys.exit(1)


def _once_pollers(services: Services, names: list[str]) -> list[Poller]:
    """A poller for each of ``names`` that has an API key, skipping (with a line) those
    without one; when none has, the first one's error (:class:`ConfigError`)."""
    pollers = []
    for name in names:
        try:
            pollers.append(services.new_poller(name))
        except ConfigError as exc:
            if len(names) == 1:
                raise
            click.echo(f"account {name}: skipped, {exc}", err=True)
    if not pollers:
        services.new_poller(names[0])  # raises: it says which key to set
    return pollers


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
@account_option("The account whose API is read and whose items these are (needed when several).")
@friendly_errors
def backfill(
    since: str, until: str | None, restart: bool, deliver: bool, account: str | None
) -> None:
    """Import every item created in a range once. Interrupted (Ctrl-C, a kill) and started
    again with the same arguments, it goes on after the last committed slice."""
    settings = command_settings()
    accounts = load_accounts(settings)
    if account is not None:
        pick_account(accounts, account)
    elif len(accounts) > 1:
        raise click.UsageError(
            "a backfill reads one account's API into that account: give --account NAME "
            f"(configured: {', '.join(accounts.names)})"
        )
    name = account or accounts.names[0]
    prepare_database(settings)
    start = datetime.fromtimestamp(parse_time(since), UTC)
    end = datetime.fromtimestamp(parse_time(until), UTC) if until else None
    if end is not None and end <= start:
        raise click.BadParameter("--until must be after --since", param_hint="--until")
    state = asyncio.run(_backfill(settings, name, start, end, restart=restart, deliver=deliver))
    if not state.finished:
        click.echo(f"stopped at {state.done_until}: run the same command again to go on", err=True)
        sys.exit(130)
    click.echo(
        (f"account {name}: " if accounts.several else "")
        + f"backfill {state.since} .. {state.until}: {state.read} items read, "
        f"{state.stored} stored new or newer"
    )


async def _backfill(
    settings: Settings,
    account: str,
    start: datetime,
    end: datetime | None,
    *,
    restart: bool,
    deliver: bool,
) -> BackfillProgress:
    """Run ``account``'s backfill with a progress bar on a terminal (plain lines otherwise);
    the first Ctrl-C or SIGTERM stops it after the current page (the slice is read again next
    time)."""
    services = Services.from_settings(settings, run_workers=deliver)
    reader = services.new_poller(account).reader()
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
@account_option("Replay only this account's work (another account's event or item is refused).")
@friendly_errors
def replay(
    event_id: int | None,
    item_id: str | None,
    dead_since: str | None,
    mode: str,
    account: str | None,
) -> None:
    """Put work back in the queue; a running service picks it up within a second."""
    if sum(x is not None for x in (event_id, item_id, dead_since)) != 1:
        raise click.UsageError("give exactly one of --event, --item, --dead-since")
    if item_id is not None and not valid_item_id(item_id):
        raise click.BadParameter(
            "an item id is letters, digits, '_' and '-' (Dimmy's _id, e.g. "
            "6592008029c8c3e4dc76256c)",
            param_hint="--item",
        )
    queued = with_services(
        lambda services: _replay(services, event_id, item_id, dead_since, mode, account),
        account=account,
    )
    click.echo(f"queued {queued} job(s)")


async def _replay(
    services: Services,
    event_id: int | None,
    item_id: str | None,
    dead_since: str | None,
    mode: str,
    account: str | None,
) -> int:
    """The replay asked for, kept to ``account`` when given: another account's event or
    item is answered as one that does not exist."""
    try:
        if event_id is not None:
            if account is not None:
                event = await services.store.get_event(event_id)
                if event is None or event.account != account:
                    raise LookupError(f"event {event_id} does not exist in account {account}")
            return await services.replay_event(event_id, ReplayMode(mode))
        if item_id is not None:
            if account is not None:
                stored = await services.store.get_item(item_id)
                # an item not stored yet may be fetched for the account; redelivery needs one
                absent = stored is None and mode == ReplayMode.REDELIVER
                if absent or (stored is not None and stored.account != account):
                    raise LookupError(f"item {item_id} is not stored in account {account}")
            return await services.replay_item(item_id, ReplayMode(mode), account)
        assert dead_since is not None
        return await services.replay_dead(parse_time(dead_since), account)
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
@account_option("List only this account's held items.")
@friendly_errors
def quarantine_list(limit: int, account: str | None) -> None:
    """List held items, most recently held first: id, barcode, reason (and, with several
    accounts, each item's account first)."""

    async def held(services: Services) -> tuple[list[StoredItem], bool]:
        several = services.accounts is not None and services.accounts.several
        found = await services.store.held_items(limit=limit, account=account)
        return found, several and account is None

    items, by_account = with_services(held, account=account)
    for item in items:
        click.echo(
            (f"{item.account}  " if by_account else "")
            + f"{item.id}  r{item.revision}  {item.item.barcode or '-'}  {item.hold_reason}"
        )
    click.echo(f"{len(items)} item(s) held", err=True)


Decision = Callable[[str, str, str | None], None]


def _decision(name: str, why: str) -> Callable[[Decision], click.Command]:
    """A quarantine decision command: ITEM_ID, a required ``--note`` saying ``why`` and
    ``--account``."""

    def declare(func: Decision) -> click.Command:
        note = click.option("--note", required=True, help=f"{why} (kept with the item).")
        account = account_option("The item's account (another account's is not held).")
        command = click.argument("item_id")(note(account(friendly_errors(func))))
        return quarantine.command(name)(command)

    return declare


@_decision("release", "Why it may go")
def quarantine_release(item_id: str, note: str, account: str | None) -> None:
    """Release a held item: it is delivered to every output."""
    _decide(item_id, note, account, release=True)


@_decision("reject", "Why it must not go")
def quarantine_reject(item_id: str, note: str, account: str | None) -> None:
    """Reject a held item: it is never delivered (a newer version is checked again)."""
    _decide(item_id, note, account, release=False)


def _decide(item_id: str, note: str, account: str | None, *, release: bool) -> None:
    if not valid_item_id(item_id):
        raise click.BadParameter("not an item id", param_hint="ITEM_ID")
    note = note.strip()[:1000]
    if not note:
        raise click.BadParameter("say why", param_hint="--note")

    async def decide(services: Services) -> int:
        if account is not None:
            stored = await services.store.get_item(item_id)
            if stored is None or stored.account != account:
                raise LookupError(item_id)  # as an item that is not held
        return await services.decide_hold(item_id, release=release, note=note)

    try:
        queued = with_services(decide, account=account)
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
