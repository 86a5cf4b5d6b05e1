"""Development commands: ``demo``, ``fake-api`` and ``send``.

They run the development tools (:mod:`dimmy_webhooks.devtools`); ``demo`` and ``fake-api`` load
the web stack when they run, not when this module is imported (``worker`` must start without it).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
from click.core import ParameterSource

from dimmy_webhooks.cli.common import account_option, friendly_errors, pick_account
from dimmy_webhooks.config import load_accounts, load_settings
from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.observe import logs
from dimmy_webhooks.signatures import parse_secrets, signed_headers

SAMPLE_IDS = ["6592008029c8c3e4dc76256c", "6592008029c8c3e4dc76256d"]


@click.command()
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
@account_option(
    "Post to this account's URL (URL/NAME) signed with its webhook_secret from "
    "DIMMY_ACCOUNTS_FILE (--secret still wins)."
)
@friendly_errors
def send(
    url: str,
    secret: str | None,
    body_file: Path | None,
    item_ids: tuple[str, ...],
    msg_id: str | None,
    family: str,
    timeout: float,
    account: str | None,
) -> None:
    """Post a correctly signed webhook to URL and print the answer (like the Testing tab)."""
    if account is not None:
        url, secret = _account_target(account, url, secret)
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
    import httpx  # here: the other commands (serve among them) never load it

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


def _account_target(name: str, url: str, secret: str | None) -> tuple[str, str | None]:
    """Where ``send --account NAME`` posts and with which secret: URL's path with ``/NAME``
    added (the service's ``/webhook`` becomes ``/webhook/NAME``; a URL with no path gets the
    account's path, one ending in ``/NAME`` is kept), signed with the account's secret unless
    ``--secret`` was typed on the command line (to see a wrong secret refused)."""
    account = pick_account(load_accounts(load_settings()), name)
    source = click.get_current_context().get_parameter_source("secret")
    if source is not ParameterSource.COMMANDLINE:
        own = account.settings.webhook_secret
        if own is None:
            raise ConfigError(f"account {name!r} has no webhook_secret: pass --secret whsec_...")
        secret = own.get_secret_value()
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if not path:
        path = account.webhook_path
    elif not path.endswith(f"/{name}"):
        path = f"{path}/{name}"
    return urlunsplit(parts._replace(path=path)), secret


@click.command("fake-api")
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
    # the web stack, here and not at the top: the worker command never loads it
    from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy, FakeDimmyConfig, create_app
    from dimmy_webhooks.intake.httpserver import default_limits
    from dimmy_webhooks.intake.serving import run_server, server_config

    logs.configure()
    fake = FakeDimmy(
        FakeDimmyConfig(
            api_key=api_key,
            latency_seconds=latency,
            error_rate=error_rate,
            hidden_rate_limit=hidden_rate_limit,
            seed=seed,
            photo_base=f"http://{host}:{port}",  # it serves the items' photos itself
        )
    )
    ids = fake.generate_items(n_items)
    click.echo(
        f"fake Dimmy API at http://{host}:{port} with {len(ids)} items "
        f"(X-API-KEY: {api_key}); e.g. GET /items/{ids[0] if ids else '<id>'}; their "
        "photos at GET /photos/{id}/{n}.png",
        err=True,
    )
    run_server(server_config(create_app(fake), host=host, port=port, limits=default_limits()))


@click.command()
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
    # the web stack, here and not at the top: the worker command never loads it
    from dimmy_webhooks.devtools.demo import run_demo

    logs.configure("text", "WARNING")
    try:
        run_demo(**options)
    except KeyboardInterrupt:
        click.echo("demo interrupted", err=True)
        sys.exit(130)
    click.echo("demo stopped", err=True)
