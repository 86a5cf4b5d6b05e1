"""The ASGI app: receiver, JSON API, health checks.

:func:`create_app` builds the service's parts (:class:`~dimmy_webhooks.services.Services`) and
serves them: the app's lifespan is :meth:`Services.running`, so the store is open and (unless told
otherwise) the workers run in the same process while the app serves. Every response carries
``nosniff``, a strict Content-Security-Policy and ``no-referrer``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .access import AccessGuard, TokenCheck, allowed_hosts
from .api import router as api_router
from .config import Settings
from .errors import ConfigError, StoreError
from .receiver import PULL_MODE, SECURITY_HEADERS, Receiver, WebhookRoute
from .services import Services
from .signatures import Verifier, parse_secrets
from .store import Store

log = logging.getLogger("dimmy_webhooks.web")


class SecurityHeaders:
    """Pure ASGI middleware (cheap on the webhook hot path) adding the headers above."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
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
        settings, run_workers=run_worker, run_poller=run_poller, store=store, clock=clock
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

    app.include_router(api_router)
    # outermost last: the webhook goes straight to the receiver (its signature is its access
    # control); everything else passes the Host and cross-site checks, under the headers
    app.add_middleware(
        AccessGuard,
        allowed_hosts=allowed_hosts(
            settings.allowed_host_names, token_set=settings.admin_token_value() is not None
        ),
    )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(WebhookRoute, receiver=receiver, path=settings.webhook_path)
    return app
