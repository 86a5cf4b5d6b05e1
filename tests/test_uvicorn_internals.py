"""The uvicorn internals :mod:`dimmy_webhooks.intake.httpserver` relies on, checked one by one.

The HTTP server subclasses uvicorn's private ``HttpToolsProtocol`` (no public API gives the
head-size, head-time and connection limits) and reads attributes uvicorn does not document.
``pyproject.toml`` pins uvicorn to the minor versions this file has passed on; before raising
that bound, run this file against the new version: each failure names the internal that moved
(class, method, attribute or log line) and what the server does with it.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http import httptools_impl
from uvicorn.server import ServerState

from dimmy_webhooks.intake.httpserver import GuardedHttpToolsProtocol, default_limits
from dimmy_webhooks.intake.serving import server_config

VERSION = uvicorn.__version__


def need(condition: object, internal: str, use: str) -> None:
    """Fail naming the uvicorn internal that changed and what the server uses it for."""
    assert condition, (
        f"uvicorn {VERSION}: {internal} is gone or changed; intake/httpserver.py uses it {use}. "
        "Adapt GuardedHttpToolsProtocol before allowing this uvicorn version in pyproject.toml."
    )


#: Methods of HttpToolsProtocol the server overrides or calls, with the parameters it passes.
METHODS = {
    "__init__": (
        ["self", "config", "server_state", "app_state", "_loop"],
        "to build each connection",
    ),
    "connection_made": (["self", "transport"], "to admit a connection under the cap"),
    "connection_lost": (["self", "exc"], "to forget a closed connection"),
    "data_received": (["self", "data"], "to count head bytes before the parser sees them"),
    "on_headers_complete": (["self"], "to end a head's clock and count its header lines"),
    "on_message_complete": (["self"], "to tell the next bytes belong to a new head"),
    "on_response_complete": (["self"], "to mark a keep-alive connection idle"),
    "send_400_response": (["self", "msg"], "to answer 431 instead of 400 for a head too large"),
}


def test_the_names_the_server_imports_are_there() -> None:
    protocol = getattr(httptools_impl, "HttpToolsProtocol", None)
    need(
        inspect.isclass(protocol) and issubclass(protocol, asyncio.Protocol),
        "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol (an asyncio.Protocol class)",
        "as the base class of GuardedHttpToolsProtocol",
    )
    status_line = getattr(httptools_impl, "STATUS_LINE", {})
    for status in (400, 431):
        need(
            isinstance(status_line.get(status), bytes)
            and status_line[status].startswith(b"HTTP/1.1 %d " % status),
            f"httptools_impl.STATUS_LINE[{status}] (the status line as bytes)",
            "to write its own 400 and 431 answers",
        )
    state = ServerState()
    need(
        isinstance(getattr(state, "default_headers", None), list),
        "uvicorn.server.ServerState.default_headers (a list of byte pairs)",
        "for the headers of its own answers, and ServerState as the key of a server's table",
    )
    need(
        isinstance(getattr(state, "connections", None), set),
        "uvicorn.server.ServerState.connections (a set of protocols)",
        "to count open connections against DIMMY_MAX_CONNECTIONS",
    )


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_methods_the_server_overrides_keep_their_signatures(name: str) -> None:
    params, use = METHODS[name]
    method = getattr(httptools_impl.HttpToolsProtocol, name, None)
    need(callable(method), f"HttpToolsProtocol.{name}", use)
    found = list(inspect.signature(method).parameters)  # type: ignore[arg-type]
    need(found == params, f"HttpToolsProtocol.{name}{tuple(params)} (now {tuple(found)})", use)


def test_the_request_cycle_still_says_when_its_response_is_complete() -> None:
    source = inspect.getsource(httptools_impl.RequestResponseCycle)
    need(
        "self.response_complete" in source,
        "RequestResponseCycle.response_complete",
        "to close rather than answer 431 in the middle of a response",
    )


def test_config_takes_a_protocol_class_and_the_serve_options() -> None:
    config = server_config(_app, host="127.0.0.1", port=0, limits=default_limits())
    config.load()
    need(
        inspect.isclass(config.http_protocol_class)
        and issubclass(config.http_protocol_class, GuardedHttpToolsProtocol),
        "uvicorn.Config(http=<protocol class>) and Config.http_protocol_class",
        "to run the guarded protocol in place of uvicorn's own",
    )


class _Transport(asyncio.Transport):
    """Enough of a socket transport for uvicorn's protocol: records what is written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 5000), "peername": ("192.0.2.7", 40000)}.get(
            name, default
        )

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Recording(httptools_impl.HttpToolsProtocol):
    """uvicorn's protocol as it is, noting the 400 answers it decides to send."""

    refused: list[str]
    stop_at_headers = False

    def send_400_response(self, msg: str) -> None:
        self.refused.append(msg)
        super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        if self.stop_at_headers:
            raise RuntimeError("stop")
        super().on_headers_complete()


async def _app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    raise AssertionError


@pytest.fixture
def connection() -> Iterator[tuple[_Recording, ServerState, _Transport]]:
    config = uvicorn.Config(_app, http=_Recording, log_config=None, lifespan="off")
    config.load()
    state = ServerState()
    loop = asyncio.new_event_loop()
    try:
        protocol = _Recording(config=config, server_state=state, app_state={}, _loop=loop)
        protocol.refused = []
        transport = _Transport()
        protocol.connection_made(transport)
        yield protocol, state, transport
    finally:
        loop.close()


def test_a_connection_has_the_attributes_the_server_reads(
    connection: tuple[_Recording, ServerState, _Transport],
) -> None:
    protocol, state, transport = connection
    use = "in GuardedHttpToolsProtocol's per-connection bookkeeping"
    need(getattr(protocol, "server_state", None) is state, "HttpToolsProtocol.server_state", use)
    need(
        getattr(protocol, "connections", None) is state.connections,
        "HttpToolsProtocol.connections (the server's set)",
        use,
    )
    need(protocol in state.connections, "connection_made adding the protocol to connections", use)
    need(
        isinstance(getattr(protocol, "loop", None), asyncio.AbstractEventLoop),
        "HttpToolsProtocol.loop",
        use,
    )
    need(getattr(protocol, "transport", None) is transport, "HttpToolsProtocol.transport", use)
    need(
        getattr(protocol, "client", None) == ("192.0.2.7", 40000),
        "HttpToolsProtocol.client (host, port)",
        "to log a refused client's address",
    )
    need(
        isinstance(getattr(protocol, "pipeline", None), collections.deque),
        "HttpToolsProtocol.pipeline (a deque)",
        "to tell a pipelined request from an idle connection",
    )
    need(
        hasattr(protocol, "cycle"),
        "HttpToolsProtocol.cycle",
        "to tell whether a response is being written",
    )
    need(hasattr(protocol, "headers"), "HttpToolsProtocol.headers", "to count header lines")


def test_header_lines_are_collected_as_they_arrive(
    connection: tuple[_Recording, ServerState, _Transport],
) -> None:
    protocol, _, _ = connection
    protocol.data_received(b"POST /webhook HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n")
    # llhttp hands a header over when the next line starts: all but the last line so far
    need(
        len(protocol.headers or ()) >= 2,
        "HttpToolsProtocol.headers filled by on_header before the head is complete",
        "to refuse a head with too many header lines while it still arrives",
    )


def test_an_exception_in_a_parser_callback_becomes_a_400_answer(
    connection: tuple[_Recording, ServerState, _Transport],
    caplog: pytest.LogCaptureFixture,
) -> None:
    protocol, _, transport = connection
    protocol.stop_at_headers = True
    uvicorn_error = logging.getLogger("uvicorn.error")
    filters = list(uvicorn_error.filters)  # the server's own filter drops that very line
    for each in filters:
        uvicorn_error.removeFilter(each)
    try:
        with caplog.at_level(logging.WARNING, logger="uvicorn.error"):
            protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        for each in filters:
            uvicorn_error.addFilter(each)
    need(
        protocol.refused == ["Invalid HTTP request received."],
        "data_received calling send_400_response('Invalid HTTP request received.') when a parser "
        "callback raises",
        "to answer 431 for a head over the header-line cap (raised in on_headers_complete)",
    )
    need(
        "Invalid HTTP request received." in caplog.messages,
        "the uvicorn.error warning 'Invalid HTTP request received.'",
        "to filter that line out (the server logs refusals itself, rate-limited)",
    )
    need(
        transport.written.startswith(b"HTTP/1.1 400 ") and transport.closed,
        "send_400_response writing a 400 and closing",
        "as the fallback it replaces",
    )
