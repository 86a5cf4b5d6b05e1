"""``dimmy-webhooks``: the click group (:func:`main`, the console script) and its commands.

Each command is a thin shim over the composition root (:mod:`dimmy_webhooks.services`), the
store's schema or the development tools, in four families: :mod:`.run` (serve, worker,
migrate, config, token), :mod:`.operate` (replay, quarantine, poll, backfill,
export-sqlite-to-postgres, outputs), :mod:`.accounts` (accounts list, accounts check) and
:mod:`.dev` (demo, fake-api, send); :mod:`.common` holds what they share. Every command reads
the settings once, reports a bad setting as one actionable line (exit 2), and never prints a
traceback for a problem the user can fix.

May import every stage below it; the web stack (FastAPI, Starlette, uvicorn) only inside the
commands that serve HTTP, so that ``worker`` never loads it.
"""

from __future__ import annotations

import click

from dimmy_webhooks import __version__
from dimmy_webhooks.cli import accounts, dev, operate, run

__all__ = ["main"]


@click.group()
@click.version_option(__version__, prog_name="dimmy-webhooks")
def main() -> None:
    """Receive Dimmy webhooks durably, fetch the scanned items, hand them to your systems.

    Settings come from DIMMY_* environment variables or a .env file in the working directory
    (see docs/configuration.md).
    """


for command in (
    run.serve,
    run.worker,
    run.migrate,
    run.show_config,
    run.token,
    operate.poll,
    operate.backfill,
    operate.replay,
    operate.move_deliveries,
    operate.quarantine,
    operate.export_sqlite_to_postgres,
    operate.list_outputs,
    accounts.accounts,
    dev.send,
    dev.fake_api,
    dev.demo,
):
    main.add_command(command)
