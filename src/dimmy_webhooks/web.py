"""The ASGI app: receiver, JSON API, health checks. One of the two composition roots (with cli).

:func:`create_app` wires the parts from the settings; the lifespan opens the store and, unless
told otherwise, runs the workers in the same process. Every response carries ``nosniff``, a strict
Content-Security-Policy and ``no-referrer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi import FastAPI
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .api import router as api_router
from .client import DimmyClient
from .config import Settings
from .errors import ConfigError, StoreError
from .failpoints import Failpoints
from .outputs import Output, parse_outputs
from .receiver import SECURITY_HEADERS, Receiver, WebhookRoute
from .signatures import Verifier, parse_secrets
from .store import Store, create_store
from .worker import Worker, WorkerPolicy

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


@dataclass
class Services:
    """What the routes need, built at start-up (``app.state.services``)."""

    settings: Settings
    store: Store
    outputs: list[Output]
    client: DimmyClient | None = None
    workers: list[Worker] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    def wake_workers(self) -> None:
        for worker in self.workers:
            worker.wake()

    def output_names(self) -> list[str]:
        return [output.name for output in self.outputs]

    def config_error(self) -> str | None:
        """A configuration problem found while running (refused API key), for /readyz."""
        if self.client is not None and self.client.auth_failed:
            return f"Dimmy API refused the key: {self.client.auth_failed}"
        for worker in self.workers:
            if worker.config_error:
                return worker.config_error
        return None


def worker_policy(settings: Settings) -> WorkerPolicy:
    return WorkerPolicy(
        concurrency=settings.api_concurrency * 2,
        lease_seconds=settings.lease_seconds,
        retry_base_seconds=settings.retry_base_seconds,
        retry_max_seconds=settings.retry_max_seconds,
        grace_seconds=settings.shutdown_grace_seconds,
        dimension_unit=settings.dimension_unit,
        weight_unit=settings.weight_unit,
    )


def create_client(settings: Settings) -> DimmyClient | None:
    """The Dimmy API client, or ``None`` when no API key is configured."""
    if settings.api_key is None or not settings.api_key.get_secret_value().strip():
        return None
    return DimmyClient(
        settings.api_url,
        settings.api_key.get_secret_value().strip(),
        timeout=settings.api_timeout_seconds,
        concurrency=settings.api_concurrency,
        rate_limit=settings.api_rate_limit,
    )


def _lifespan(
    services: Services,
    *,
    run_worker: bool,
    clock: Callable[[], float],
    crash: Failpoints,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Open the store (and start the workers) before serving; undo it all on shutdown."""
    settings, outputs = services.settings, services.outputs

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.store.open()
        # everything loaded so far lives as long as the process: keep it out of the cyclic
        # GC's full collections, which otherwise stall every request in flight for 50-100 ms
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(services.store.close)
            for output in outputs:
                stack.push_async_callback(output.aclose)
            if run_worker:
                services.client = create_client(settings)
                if services.client is not None:
                    await stack.enter_async_context(services.client)
                worker = Worker(
                    services.store,
                    services.client,
                    outputs,
                    worker_policy(settings),
                    clock=clock,
                    crash=crash,
                )
                services.workers.append(worker)
                tasks.append(asyncio.create_task(worker.run(stop)))
            try:
                yield
            finally:
                stop.set()
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)

    return lifespan


def create_app(
    settings: Settings,
    *,
    run_worker: bool = True,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The service as an ASGI app. Raises :class:`ConfigError` for unusable settings."""
    if settings.webhook_secret is None:
        raise ConfigError(
            "DIMMY_WEBHOOK_SECRET is not set: copy the endpoint's signing secret (whsec_...) "
            "from the Dimmy webhook dashboard into the environment or .env"
        )
    verifier = Verifier(
        parse_secrets(settings.webhook_secret.get_secret_value()),
        tolerance_seconds=settings.timestamp_tolerance_seconds,
        clock=clock,
    )
    outputs = parse_outputs(settings.outputs)
    crash = Failpoints(settings.failpoint)
    the_store = store or create_store(settings.database_url, max_attempts=settings.max_attempts)
    services = Services(settings=settings, store=the_store, outputs=outputs)

    app = FastAPI(
        title="dimmy-webhooks",
        version=__version__,
        description="Receives Dimmy webhooks durably and serves the stored items.",
        # Swagger UI and ReDoc load scripts from a CDN, which the service's CSP forbids (and a
        # warehouse network may not reach): the description stays at /openapi.json
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan(services, run_worker=run_worker, clock=clock, crash=crash),
    )
    app.state.services = services
    receiver = Receiver(
        the_store,
        verifier,
        max_body_bytes=settings.max_body_bytes,
        body_timeout=settings.body_timeout_seconds,
        on_accepted=services.wake_workers,
        clock=clock,
        crash=crash,
    )
    # the webhook bypasses the framework (see WebhookRoute, added outermost below)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up (no dependency checked)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> Response:
        """503 when the store does not answer; 200 otherwise, ``degraded`` with the problems
        found (a refused API key stops fetching but must not take the receiver out of a load
        balancer: webhooks are still stored)."""
        try:
            await services.store.ping()
        except StoreError as exc:
            return JSONResponse(
                {"status": "unavailable", "problems": [f"store unreachable: {exc}"]},
                status_code=503,
            )
        problems = []
        if (problem := services.config_error()) is not None:
            problems.append(problem)
        if run_worker and services.client is None:
            problems.append("DIMMY_API_KEY is not set: items cannot be fetched")
        return JSONResponse({"status": "degraded" if problems else "ready", "problems": problems})

    @app.exception_handler(StoreError)
    async def store_unavailable(request: object, exc: StoreError) -> Response:
        log.warning("store error in API", extra={"fields": {"reason": str(exc)}})
        return JSONResponse({"detail": "store unavailable, retry later"}, status_code=503)

    app.include_router(api_router)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(WebhookRoute, receiver=receiver, path=settings.webhook_path)
    return app
