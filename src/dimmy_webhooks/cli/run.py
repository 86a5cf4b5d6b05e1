"""Running the service: ``serve``, ``worker``, ``migrate``, ``config`` and ``token``.

``serve`` imports the web stack (FastAPI, uvicorn) when it runs, not when this module is
imported: ``worker`` shares the module and must start without them.
"""

from __future__ import annotations

import base64
import secrets
import sys

import click

from dimmy_webhooks import __version__
from dimmy_webhooks.cli.common import (
    command_settings,
    describe_db,
    friendly_errors,
    prepare_database,
    run_until_signalled,
)
from dimmy_webhooks.config import (
    SECRET_SETTINGS,
    env_example,
    load_settings,
    require_loopback_or_token,
)
from dimmy_webhooks.observe import logs
from dimmy_webhooks.services import Services
from dimmy_webhooks.signatures import parse_secrets
from dimmy_webhooks.store import schema


@click.command()
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
    # the web stack, here and not at the top: the worker command never loads it
    from dimmy_webhooks.intake.httpserver import HttpLimits
    from dimmy_webhooks.intake.serving import run_server, server_config
    from dimmy_webhooks.web import create_app

    settings = command_settings(host=host, port=port)
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
        + f", database {describe_db(settings)}",
        err=True,
    )
    run_server(server_config(app, host=settings.host, port=settings.port, limits=limits))


@click.command()
@click.option("--concurrency", type=int, help="Jobs in flight (default 2 x DIMMY_API_CONCURRENCY).")
@friendly_errors
def worker(concurrency: int | None) -> None:
    """Run workers only (no HTTP): fetch items and deliver them to the outputs."""
    settings = command_settings()
    prepare_database(settings)
    run_until_signalled(Services.from_settings(settings, concurrency=concurrency))


@click.command()
@friendly_errors
def migrate() -> None:
    """Apply database migrations (needed once per upgrade on PostgreSQL)."""
    settings = command_settings()
    state = schema.upgrade(settings.database_url)
    click.echo(f"schema at {state.current} (latest {state.head}): {describe_db(settings)}")


@click.command("config")
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


@click.command()
@click.option(
    "--whsec",
    is_flag=True,
    help="A signing secret (whsec_...) instead, e.g. for DIMMY_FORWARD_SECRET.",
)
def token(whsec: bool) -> None:
    """Print a new random admin token (for DIMMY_ADMIN_TOKEN): 43 URL-safe characters."""
    if whsec:
        click.echo("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    else:
        click.echo(secrets.token_urlsafe(32))
