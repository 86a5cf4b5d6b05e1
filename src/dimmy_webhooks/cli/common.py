"""What every command family shares: settings read once, our errors as one line (exit 2), the
database prepared, the services opened for one command, ``--account``, the event loop, signals
and ISO-8601 times.

May import: the shared root modules, :mod:`dimmy_webhooks.config`, :mod:`dimmy_webhooks.store`,
:mod:`dimmy_webhooks.observe` and :mod:`dimmy_webhooks.services`. Never the web stack: the
``worker`` command imports this module.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from dimmy_webhooks.config import Account, Accounts, Settings, load_accounts, load_settings
from dimmy_webhooks.errors import DimmyWebhooksError
from dimmy_webhooks.observe import logs
from dimmy_webhooks.services import Services
from dimmy_webhooks.store import schema

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


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


def command_settings(**overrides: Any) -> Settings:
    """The settings (options given on the command line win), with logging configured."""
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


def describe_db(settings: Settings) -> str:
    if settings.sqlite_path is not None:
        return str(settings.sqlite_path.resolve())
    return "PostgreSQL"


def account_option(what: str) -> Callable[[F], F]:
    """``--account NAME``: a configured account's name, ``what`` saying what it limits."""
    return click.option("--account", metavar="NAME", help=what)


def pick_account(accounts: Accounts, name: str) -> Account:
    """The configured account ``name``; else a usage error (exit 2) naming the configured
    ones. An account removed from the file is not one: its data waits for it to come back."""
    if name not in accounts:
        raise click.BadParameter(
            f"no account {name!r}; configured: {', '.join(accounts.names)}",
            param_hint="'--account'",
        )
    return accounts[name]


def with_services(use: Callable[[Services], Awaitable[T]], *, account: str | None = None) -> T:
    """What a one-shot command does: the settings read, ``account`` checked (when given), the
    database prepared, the services built without workers and opened for the time ``use``
    takes; returns what it returned."""
    settings = command_settings()
    if account is not None:
        pick_account(load_accounts(settings), account)
    prepare_database(settings)
    services = Services.from_settings(settings, run_workers=False)

    async def run() -> T:
        async with services.opened():
            return await use(services)

    return asyncio.run(run())


def run_until_signalled(services: Services) -> None:
    """Run every part of ``services`` until SIGTERM or SIGINT (``worker``, ``poll``)."""
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


def parse_time(value: str) -> float:
    """An ISO-8601 option value as Unix seconds (UTC when it names no zone)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use ISO-8601, e.g. 2026-01-05T09:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
