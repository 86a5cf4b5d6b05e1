"""The accounts of an installation (``DIMMY_ACCOUNTS_FILE``): ``accounts list`` and
``accounts check``.

``list`` shows each configured account as the service runs it (webhook path, API, outputs,
operator token, polling) beside what is stored for it, and the accounts that have data but are
no longer configured; ``check`` tries each API key once against the Dimmy API. Neither prints
a key, a secret or a URL's password.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import asdict, dataclass
from typing import Any

import click

from dimmy_webhooks.cli.common import command_settings, friendly_errors, with_services
from dimmy_webhooks.config import DEFAULT_ACCOUNT, Account, Accounts, load_accounts
from dimmy_webhooks.errors import PermanentUpstream, TransientUpstream, UpstreamAuthError
from dimmy_webhooks.observe.logs import redact_urls
from dimmy_webhooks.services import Services
from dimmy_webhooks.upstream.client import client_from_settings

CHECK_CONCURRENCY = 8
"""API keys checked at once by ``accounts check``."""
REMOVED = "removed: data kept"


@click.group()
def accounts() -> None:
    """The Dimmy accounts of this installation (DIMMY_ACCOUNTS_FILE)."""


@accounts.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@friendly_errors
def accounts_list(as_json: bool) -> None:
    """Every configured account (webhook path, API, outputs, operator token, polling) with
    its stored events, items and open jobs; accounts removed from the file whose data is kept
    are listed too."""
    rows = with_services(_rows)
    if as_json:
        click.echo(json.dumps({"accounts": rows}, indent=2))
        return
    header = ["NAME", "WEBHOOK", "API", "OPERATOR", "POLL", "EVENTS", "ITEMS", "OPEN JOBS"]
    table = [[*header, "OUTPUTS"]]
    for row in rows:
        configured = row["configured"]
        table.append(
            [
                row["name"],
                row["webhook_path"] if configured else REMOVED,
                (row["api_url"] if row["api_key"] else "(no key)") if configured else "-",
                ("token" if row["operator_token"] else "-") if configured else "-",
                ("on" if row["poll"] else "off") if configured else "-",
                str(row["events"]),
                str(row["items"]),
                str(row["open_jobs"]),
                (", ".join(row["outputs"]) or "(none)") if configured else "-",
            ]
        )
    for line in _aligned(table):
        click.echo(line)


async def _rows(services: Services) -> list[dict[str, Any]]:
    """What ``accounts list`` shows, one dict per account: the configured ones in the file's
    order, then those with stored rows that are no longer configured."""
    configured = services.accounts or load_accounts(services.settings)
    counts = await services.store.account_counts()
    rows = [_configured(configured[name], services, counts.get(name, {})) for name in configured]
    rows += [
        {"name": name, "configured": False, "note": REMOVED, **_counts(found)}
        for name, found in sorted(counts.items())
        if name not in configured
    ]
    return rows


def _configured(account: Account, services: Services, counts: dict[str, int]) -> dict[str, Any]:
    settings = account.settings
    has_key = _key(account) is not None
    return {
        "name": account.name,
        "configured": True,
        # the default account is also served at the installation's webhook path
        "webhook_path": settings.webhook_path
        if account.name == DEFAULT_ACCOUNT and not account.from_file
        else account.webhook_path,
        "api_url": redact_urls(settings.api_url),
        "api_key": has_key,
        "webhook_secret": settings.webhook_secret is not None,
        "operator_token": account.operator_token_sha256 is not None,
        "poll": settings.poll and has_key,
        "outputs": [redact_urls(name) for name in services.output_names(account.name)],
        **_counts(counts),
    }


def _counts(counts: dict[str, int]) -> dict[str, int]:
    return {
        "events": counts.get("events", 0),
        "items": counts.get("items", 0),
        "open_jobs": counts.get("jobs", 0),
    }


def _aligned(table: list[list[str]]) -> list[str]:
    """The rows with each column padded to its widest cell."""
    widths = [max(len(row[n]) for row in table) for n in range(len(table[0]))]
    return [
        "  ".join(cell.ljust(widths[n]) for n, cell in enumerate(row)).rstrip() for row in table
    ]


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """What ``accounts check`` found for one account: ``result`` is ``ok``, ``refused`` (the
    API answered 401/403), ``unreachable`` (no answer in time, a transport error, 429 or 5xx),
    ``failed`` (another answer: a wrong API URL, a body that is not Dimmy's) or ``skipped``
    (no API key); ``same_key_as`` names the account whose check it shares."""

    name: str
    result: str
    reason: str | None = None
    same_key_as: str | None = None


@accounts.command("check")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@friendly_errors
def accounts_check(as_json: bool) -> None:
    """Try each account's API key with one cheap call (GET /items?limit=1) and print which
    work: ok, refused or unreachable. An API key and URL shared by several accounts is tried
    once. Exits 1 when any fails."""
    settings = command_settings()
    # each refusal is this command's report; the client's log line would say it again
    logging.getLogger("dimmy_webhooks.upstream.client").setLevel(logging.CRITICAL)
    checks = asyncio.run(check_keys(load_accounts(settings)))
    failed = [check for check in checks if check.result not in ("ok", "skipped")]
    if as_json:
        click.echo(json.dumps({"accounts": [asdict(c) for c in checks], "ok": not failed}))
    else:
        width = max((len(check.name) for check in checks), default=0)
        for check in checks:
            shown = check.result + (f": {check.reason}" if check.reason else "")
            shared = f" (same key as {check.same_key_as})" if check.same_key_as else ""
            click.echo(f"{check.name.ljust(width)}  {shown}{shared}")
    if failed or not any(check.result != "skipped" for check in checks):
        sys.exit(1)


async def check_keys(configured: Accounts) -> list[KeyCheck]:
    """Each account's key tried once per API URL and key (at most :data:`CHECK_CONCURRENCY`
    at a time, each within its client's timeout), in the accounts' order."""
    first_of: dict[tuple[str, str], str] = {}
    for name in configured:
        key = _key(configured[name])
        if key is not None:
            first_of.setdefault(key, name)
    gate = asyncio.Semaphore(CHECK_CONCURRENCY)

    async def limited(name: str) -> KeyCheck:
        async with gate:
            return await _try_key(configured[name])

    tried = dict(
        zip(
            first_of.values(),
            await asyncio.gather(*(limited(name) for name in first_of.values())),
            strict=True,
        )
    )
    checks = []
    for name in configured:
        key = _key(configured[name])
        if key is None:
            checks.append(KeyCheck(name, "skipped", "no API key"))
            continue
        first = first_of[key]
        found = tried[first]
        checks.append(found if first == name else KeyCheck(name, found.result, found.reason, first))
    return checks


async def _try_key(account: Account) -> KeyCheck:
    """``GET /items?limit=1`` with the account's key: the client's own timeouts bound it (each
    phase ``DIMMY_API_TIMEOUT_SECONDS``, the whole request three times that)."""
    client = client_from_settings(account.settings)
    assert client is not None  # only accounts with a key are tried
    name = account.name
    async with client:
        try:
            await client.list_items(limit=1)
        except UpstreamAuthError as exc:
            return KeyCheck(name, "refused", redact_urls(str(exc)))
        except TransientUpstream as exc:
            return KeyCheck(name, "unreachable", redact_urls(str(exc)))
        except PermanentUpstream as exc:
            return KeyCheck(name, "failed", redact_urls(str(exc)))
    return KeyCheck(name, "ok")


def _key(account: Account) -> tuple[str, str] | None:
    """The account's API URL and key (what Dimmy tells apart), or ``None`` without a key."""
    settings = account.settings
    key = settings.api_key.get_secret_value().strip() if settings.api_key is not None else ""
    return (settings.api_url, key) if key else None
