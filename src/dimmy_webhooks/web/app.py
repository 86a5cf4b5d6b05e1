"""The ASGI app: receiver, JSON API, dashboard, health checks, ``/metrics``.

:func:`create_app` is the web layer's composition root: it builds the service's parts
(:class:`~dimmy_webhooks.services.Services`), the receiver and its verifier, the admin token
check and the dashboard's sessions, once, and keeps them in ``app.state`` for the routes'
dependencies (:mod:`.deps`). The app's lifespan is :meth:`Services.running`, so the store is
open and (unless told otherwise) the workers run in the same process while the app serves.
Every response carries ``nosniff``, a strict Content-Security-Policy and ``no-referrer``; the
dashboard's pages a policy that also lets item photos load from https hosts
(:data:`.dashboard.PAGE_CSP`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dimmy_webhooks import __version__
from dimmy_webhooks.config import DEFAULT_ACCOUNT, Settings, load_accounts
from dimmy_webhooks.config.accounts import Accounts
from dimmy_webhooks.errors import ConfigError, StoreError
from dimmy_webhooks.intake.receiver import (
    PULL_MODE,
    SECURITY_HEADERS,
    Receiver,
    UnverifiedBodies,
    WebhookRoute,
)
from dimmy_webhooks.observe.metrics import CONTENT_TYPE, account_figures, account_label
from dimmy_webhooks.services import Services
from dimmy_webhooks.signatures import Verifier, parse_secrets
from dimmy_webhooks.store import Store
from dimmy_webhooks.web import dashboard, queries
from dimmy_webhooks.web.api import router as api_router
from dimmy_webhooks.web.auth import (
    AccessGuard,
    RemoteRule,
    TokenCheck,
    TokenFirst,
    allowed_hosts,
    metrics_guard,
)
from dimmy_webhooks.web.deps import ACCOUNT_NOT_FOUND, AccountName, AccountsDep, ServicesDep
from dimmy_webhooks.web.principal import AccountHidden, Viewer
from dimmy_webhooks.web.queries import QueryGuard
from dimmy_webhooks.web.sessions import Sessions

log = logging.getLogger("dimmy_webhooks.web")


def page_headers(csp: str = dashboard.PAGE_CSP) -> list[tuple[bytes, bytes]]:
    """The dashboard pages' headers: the service's, with the pages' policy ``csp``."""
    return [
        (name, csp.encode() if name == b"content-security-policy" else value)
        for name, value in SECURITY_HEADERS
    ]


class SecurityHeaders:
    """Pure ASGI middleware (cheap on the webhook hot path) adding the headers above (the
    pages' policy: ``page_csp``)."""

    def __init__(self, app: ASGIApp, page_csp: str = dashboard.PAGE_CSP) -> None:
        self.app = app
        self.page_headers = page_headers(page_csp)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added = self.page_headers if dashboard.is_page(scope["path"]) else SECURITY_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *added]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    settings: Settings,
    *,
    run_worker: bool = True,
    run_poller: bool = False,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The service as an ASGI app. Raises :class:`ConfigError` for unusable settings.

    With no ``DIMMY_WEBHOOK_SECRET``, ``run_poller`` is pull mode: items come only from the
    poller and ``POST /webhook`` answers 404 saying webhooks are off. ``app.state.services``
    holds the running parts; ``store`` and ``clock`` are for tests.
    """
    if not _any_secret(settings) and not run_poller:
        raise ConfigError(
            "DIMMY_WEBHOOK_SECRET is not set: copy the endpoint's signing secret (whsec_...) "
            "from the Dimmy webhook dashboard into the environment or .env, or run "
            "`dimmy-webhooks serve --poll` to read items from the Dimmy API instead (pull mode)"
        )
    services = Services.from_settings(
        settings,
        run_workers=run_worker,
        run_poller=run_poller,
        store=store,
        clock=clock,
        alerts=True,
        sample_backlog=True,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with services.running():
            yield

    app = FastAPI(
        title="dimmy-webhooks",
        version=__version__,
        description="Receives Dimmy webhooks durably and serves the stored items.",
        # Swagger UI and ReDoc load scripts from a CDN, which the service's CSP forbids (and a
        # warehouse network may not reach): the description stays at /openapi.json
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.services = services
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        return queries.document(build_openapi())  # the query rule of QueryGuard, written in

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.tokens = TokenCheck(settings.admin_token_value())

    app.state.accounts = services.accounts or load_accounts(settings)

    def operator_digest(name: str) -> str | None:
        accounts: Accounts = app.state.accounts  # the accounts now (a reload's)
        account = accounts.get(name)
        return None if account is None else account.operator_token_sha256

    app.state.sessions = Sessions(
        settings.admin_token_value(),
        services.store,
        hours=settings.session_hours,
        operator_digest=operator_digest,
    )
    receivers = _receivers(settings, services, clock)

    @app.exception_handler(StoreError)
    async def store_unavailable(request: object, exc: StoreError) -> Response:
        log.warning("store error in API", extra={"fields": {"reason": str(exc)}})
        return JSONResponse({"detail": "store unavailable, retry later"}, status_code=503)

    app.include_router(_operations_router(settings))
    app.include_router(api_router)
    dashboard.install(app)
    # outermost last: the webhook goes straight to the receiver (its signature is its access
    # control); everything else passes the Host and cross-site checks, under the headers, and
    # the admin token before its query string is looked at
    app.add_middleware(QueryGuard)
    app.add_middleware(TokenFirst)
    app.add_middleware(
        AccessGuard,
        allowed_hosts=allowed_hosts(
            settings.allowed_host_names, token_set=settings.admin_token_value() is not None
        ),
        remote=RemoteRule.of(settings, frozenset({"/healthz", "/readyz", *receivers})),
    )
    app.add_middleware(SecurityHeaders, page_csp=dashboard.page_csp(settings.api_url))
    app.add_middleware(WebhookRoute, path=settings.webhook_path, receivers=receivers)
    return app


def _any_secret(settings: Settings) -> bool:
    """Whether some account receives webhooks (``DIMMY_WEBHOOK_SECRET``, or an account of
    ``DIMMY_ACCOUNTS_FILE`` with a ``webhook_secret``)."""
    return any(a.settings.webhook_secret is not None for a in load_accounts(settings).values())


def _receivers(
    settings: Settings, services: Services, clock: Callable[[], float]
) -> dict[str, ASGIApp]:
    """Each account's receiver by path: ``/webhook/{name}``, and ``/webhook`` for the
    account ``default``. They share one budget of unverified bodies in memory."""
    accounts = services.accounts or load_accounts(settings)
    budget = UnverifiedBodies(settings.unverified_body_budget)
    receivers: dict[str, ASGIApp] = {}
    for name, account in accounts.items():
        receiver = _receiver(account.settings, services, clock, name, budget)
        receivers[account.webhook_path] = receiver
        if name == DEFAULT_ACCOUNT:
            receivers[settings.webhook_path] = receiver
    return receivers


def _receiver(
    settings: Settings,
    services: Services,
    clock: Callable[[], float],
    account: str,
    budget: UnverifiedBodies,
) -> ASGIApp:
    """One account's ``POST /webhook``: the signature-checking receiver, or the pull mode's
    404 when the account has no webhook secret."""
    if settings.webhook_secret is None:
        return PULL_MODE
    try:
        keys = parse_secrets(settings.webhook_secret.get_secret_value())
    except ConfigError as exc:
        if account == DEFAULT_ACCOUNT:
            raise
        raise ConfigError(f"account {account!r}: webhook_secret: {exc}") from None
    verifier = Verifier(keys, tolerance_seconds=settings.timestamp_tolerance_seconds, clock=clock)
    return Receiver(
        services.store,
        verifier,
        max_body_bytes=settings.max_body_bytes,
        body_timeout=settings.body_timeout_seconds,
        unverified_body_bytes=settings.unverified_body_budget,
        max_json_depth=settings.max_json_depth,
        on_accepted=services.wake_workers,
        clock=clock,
        crash=services.crash,
        observe=services.metrics.webhook,
        account=account,
        unverified=budget,
    )


def _operations_router(settings: Settings) -> APIRouter:
    """What a load balancer and Prometheus ask: ``/healthz``, ``/readyz``, ``/metrics``."""
    router = APIRouter()

    @router.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up (no dependency checked)."""
        return {"status": "ok"}

    @router.get("/readyz", tags=["health"])
    async def readyz(services: ServicesDep) -> Response:
        """503 when the store does not answer or a background part stopped; 200 otherwise,
        ``degraded`` with the problems found (a refused API key stops fetching but must not take
        the receiver out of a load balancer: webhooks are still stored)."""
        ready = await services.readiness()
        status = 503 if ready.status == "unavailable" else 200
        return JSONResponse({"status": ready.status, "problems": ready.problems}, status)

    # a local dependency: a default value, as an annotation naming it could not be resolved
    metrics_viewer = Depends(metrics_guard(settings))

    @router.get("/metrics", include_in_schema=False)
    async def metrics(
        services: ServicesDep,
        accounts: AccountsDep,
        viewer: Viewer = metrics_viewer,
        account: AccountName = None,
    ) -> Response:
        """Prometheus text format; the admin token (or ``DIMMY_METRICS_TOKEN``) when set, for
        every account's series (or ``?account=``'s); an account's operator token for that
        account's only."""
        try:
            chosen = viewer.filter(account)
        except AccountHidden:
            raise HTTPException(status_code=404, detail=ACCOUNT_NOT_FOUND) from None
        configured = accounts.names
        status = services.status()
        overview = await services.overview() if viewer.admin else None
        if chosen is None:
            shown = [*configured, *(await services.store.account_counts())]
        else:
            shown = [chosen]
        figures = await account_figures(
            services.store,
            shown,
            configured,
            now=status.at,
            seen_before=status.at - status.reconcile_grace,
        )
        deliveries: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for (of, output, outcome), count in (
            await services.metrics.ledger.counts(services.store)
        ).items():
            if chosen is None or of == chosen:
                deliveries[(account_label(of, configured), output, outcome)] += count
        # each configured account's outputs have a backlog, waiting or not
        served = {label: services.output_names(label) for label in figures if label in configured}
        body = services.metrics.render(overview, figures, deliveries, served)
        return Response(body, media_type=CONTENT_TYPE, headers={"cache-control": "no-store"})

    return router
