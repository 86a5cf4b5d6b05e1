"""uvicorn, configured in one place: ``serve``, ``fake-api``, the demo and the tests all start
their HTTP server through :func:`server_config` (and ``serve`` through :func:`run_server`), so
the server the tests exercise is the one that runs in production.

May import: uvicorn and :mod:`.httpserver` (the protocol with the head and connection limits).
Importing this module loads uvicorn: the ``worker`` command never does.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import uvicorn

from dimmy_webhooks.intake import httpserver
from dimmy_webhooks.intake.httpserver import HttpLimits

#: The exit code of ``uvicorn.run`` when the server never started (a port in use, a failed
#: lifespan start-up).
STARTUP_FAILURE = 3


def server_config(
    app: Any, *, host: str, port: int, limits: HttpLimits, **options: Any
) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` on ``host:port``: httptools with the limits of
    :func:`~.httpserver.protocol`, our own logging (no access log, no logging config of
    uvicorn's), no ``server`` header, 15 s keep-alive and 30 s graceful shutdown; ``options``
    (``log_level``, ``interface``...) are added to these."""
    defaults: dict[str, Any] = {
        # looked up at each call (bench/plain_serve.py swaps it for uvicorn's own protocol)
        "http": httpserver.protocol(limits),
        "log_config": None,
        "access_log": False,
        "timeout_keep_alive": 15,
        "timeout_graceful_shutdown": 30,
        "server_header": False,
        "lifespan": "on",
    }
    return uvicorn.Config(app, host=host, port=port, **(defaults | options))


def run_server(config: uvicorn.Config) -> None:
    """Serve until SIGTERM or SIGINT, as ``uvicorn.run`` does: the signal is re-raised after
    the graceful shutdown, and a server that never started exits with :data:`STARTUP_FAILURE`."""
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
