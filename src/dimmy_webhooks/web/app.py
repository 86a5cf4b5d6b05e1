"""The ASGI app: receiver, JSON API, dashboard, health checks, ``/metrics``.

:func:`create_app` builds the service's parts (:class:`~dimmy_webhooks.services.Services`) and
serves them: the app's lifespan is :meth:`Services.running`, so the store is open and (unless told
otherwise) the workers run in the same process while the app serves. Every response carries
``nosniff``, a strict Content-Security-Policy and ``no-referrer``; the dashboard's pages a
policy that also lets item photos load from https hosts (:data:`.dashboard.PAGE_CSP`).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dimmy_webhooks import __version__
from dimmy_webhooks.config import Settings
from dimmy_webhooks.errors import ConfigError, StoreError
from dimmy_webhooks.intake.receiver import PULL_MODE, SECURITY_HEADERS, Receiver, WebhookRoute
from dimmy_webhooks.observe.metrics import CONTENT_TYPE
from dimmy_webhooks.services import Services
from dimmy_webhooks.signatures import Verifier, parse_secrets
from dimmy_webhooks.store import Store
from dimmy_webhooks.web import dashboard
from dimmy_webhooks.web.api import require_admin
from dimmy_webhooks.web.api import router as api_router
from dimmy_webhooks.web.auth import AccessGuard, TokenCheck, allowed_hosts, retry_after_header
from dimmy_webhooks.web.reports import router as reports_router

log = logging.getLogger("dimmy_webhooks.web")


_PAGE_HEADERS = [
    (name, dashboard.PAGE_CSP.encode() if name == b"content-security-policy" else value)
    for name, value in SECURITY_HEADERS
]


class SecurityHeaders:
    """Pure ASGI middleware (cheap on the webhook hot path) adding the headers above."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added = _PAGE_HEADERS if dashboard.is_page(scope["path"]) else SECURITY_HEADERS

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
    if settings.webhook_secret is None and not run_poller:
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
    app.state.tokens = TokenCheck(settings.admin_token_value())
    receiver: ASGIApp = PULL_MODE
    if settings.webhook_secret is not None:
        verifier = Verifier(
            parse_secrets(settings.webhook_secret.get_secret_value()),
            tolerance_seconds=settings.timestamp_tolerance_seconds,
            clock=clock,
        )
        receiver = Receiver(
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
        )
    # the webhook bypasses the framework (see WebhookRoute, added outermost below)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up (no dependency checked)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> Response:
        """503 when the store does not answer or a background part stopped; 200 otherwise,
        ``degraded`` with the problems found (a refused API key stops fetching but must not take
        the receiver out of a load balancer: webhooks are still stored)."""
        ready = await services.readiness()
        status = 503 if ready.status == "unavailable" else 200
        return JSONResponse({"status": ready.status, "problems": ready.problems}, status)

    @app.exception_handler(StoreError)
    async def store_unavailable(request: object, exc: StoreError) -> Response:
        log.warning("store error in API", extra={"fields": {"reason": str(exc)}})
        return JSONResponse({"detail": "store unavailable, retry later"}, status_code=503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus text format; the admin token (or ``DIMMY_METRICS_TOKEN``) when set."""
        refusal = _metrics_refusal(request, settings)
        if refusal is not None:
            return refusal
        overview = await services.overview()
        deliveries = await services.metrics.ledger.counts(services.store)
        body = services.metrics.render(overview, deliveries)
        return Response(body, media_type=CONTENT_TYPE, headers={"cache-control": "no-store"})

    app.include_router(api_router)
    app.include_router(reports_router)
    dashboard.install(app, settings)
    # outermost last: the webhook goes straight to the receiver (its signature is its access
    # control); everything else passes the Host and cross-site checks, under the headers
    app.add_middleware(TokenFirst)
    app.add_middleware(
        AccessGuard,
        allowed_hosts=allowed_hosts(
            settings.allowed_host_names, token_set=settings.admin_token_value() is not None
        ),
    )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(WebhookRoute, receiver=receiver, path=settings.webhook_path)
    return app


class TokenFirst:
    """ASGI middleware asking ``/api/*`` for the admin token (or a dashboard session) before
    the app reads anything: a caller without it learns nothing, not even that its body or
    parameters are invalid (the routes' own dependency runs after FastAPI has parsed the
    body)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        credentials = None
        if scheme.lower() == "bearer" and given.strip():
            credentials = HTTPAuthorizationCredentials(scheme=scheme, credentials=given.strip())
        try:
            await require_admin(request, credentials)
        except HTTPException as exc:
            refusal = JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _metrics_refusal(request: Request, settings: Settings) -> Response | None:
    """``None`` when ``/metrics`` may answer: no token configured, or the bearer is
    ``DIMMY_METRICS_TOKEN`` or the admin token (wrong ones count against the same per-address
    throttle as the API's)."""
    accepted = [t for t in (settings.metrics_token_value(), settings.admin_token_value()) if t]
    if not accepted:
        return None
    throttle = request.app.state.tokens.throttle
    client = request.client.host if request.client else "-"
    wait = throttle.retry_after(client)
    if wait is not None:
        return JSONResponse(
            {"detail": "too many wrong tokens from this address: retry later"},
            429,
            headers={"Retry-After": retry_after_header(wait)},
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and any(
        hmac.compare_digest(given.strip().encode(), token.encode()) for token in accepted
    ):
        throttle.succeeded(client)
        return None
    throttle.failed(client)
    log.warning("metrics request refused", extra={"fields": {"client": client}})
    return JSONResponse(
        {"detail": "missing or wrong token"}, 401, headers={"WWW-Authenticate": "Bearer"}
    )
