"""Run an ASGI app under uvicorn in a background thread (demo, simulators and tests), with the
same HTTP protocol and limits as ``serve`` (:mod:`dimmy_webhooks.intake.httpserver`)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from dimmy_webhooks.intake.httpserver import HttpLimits, default_limits
from dimmy_webhooks.intake.serving import server_config


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` on ``host`` can be bound now (as uvicorn binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def serve_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    limits: HttpLimits | None = None,
    **uvicorn_options: Any,
) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL (``http://host:port``).

    ``limits`` default to those of the default settings; the server is configured as
    ``serve``'s (:func:`~dimmy_webhooks.intake.httpserver.server_config`), with uvicorn's own
    lines at warning level and ``uvicorn_options`` added.
    """
    port = port or free_port(host)
    config = server_config(
        app,
        host=host,
        port=port,
        limits=limits or default_limits(),
        **({"log_level": "warning"} | uvicorn_options),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"server on {host}:{port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
