"""Answering the Dimmy client without a server: :class:`FakeTransport` (the client's transport
seam, in-process), and :func:`raw_server`, a bare HTTP/1.1 server on 127.0.0.1 that answers
with the exact bytes a test gives (plain or TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy


@dataclass
class Sent:
    """A request as the client handed it to the transport (header names in lower case)."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass
class Canned:
    """What the fake answers: a status, headers and a body (bytes, or chunks streamed)."""

    status: int = 200
    body: bytes | AsyncIterable[bytes] = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, document: Any, headers: Mapping[str, str] | None = None) -> Canned:
        return cls(status, json.dumps(document).encode(), dict(headers or {}))


Handler = Callable[[Sent], Canned]


class _Reply:
    def __init__(self, canned: Canned) -> None:
        self.status = canned.status
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(canned.headers))
        self._body = canned.body

    async def chunks(self) -> AsyncIterator[bytes]:
        if isinstance(self._body, bytes):
            if self._body:
                yield self._body
            return
        async for chunk in self._body:
            yield chunk


class FakeTransport:
    """``handler`` answers each request (or raises, as a transport would); ``sent`` lists them."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sent: list[Sent] = []
        self.closed = False

    @contextlib.asynccontextmanager
    async def send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str],
    ) -> AsyncIterator[_Reply]:
        request = Sent(
            method,
            path,
            {k: str(v) for k, v in (params or {}).items()},
            {k.lower(): v for k, v in headers.items()},
        )
        self.sent.append(request)
        yield _Reply(self.handler(request))

    async def aclose(self) -> None:
        self.closed = True


# -- a real server, bytes in and out ------------------------------------------------------------


@dataclass
class RawServer:
    url: str
    heads: list[bytes]  # the request heads received, in order
    connections: int = 0


Answerer = Callable[[int, bytes], bytes | None]
"""``(number, head) -> bytes`` to write back (``None``: close the connection unanswered);
``number`` counts requests from 1 across connections."""


@contextlib.asynccontextmanager
async def raw_server(
    answer: Answerer, *, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[RawServer]:
    """An HTTP/1.1 server on ``host`` (keep-alive) whose answers ``answer`` writes; request
    bodies (by ``Content-Length``) are read and dropped."""
    state = RawServer("", [])
    writers: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                state.heads.append(head)
                out = answer(len(state.heads), head)
                if out is None:
                    break
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(serve, host, 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    state.url = f"{'https' if tls else 'http'}://{host}:{port}"
    try:
        async with server:
            yield state
    finally:
        server.close()
        for writer in list(writers):  # connections still open: closed before the loop ends
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        await asyncio.sleep(0)  # their handlers see the end


def http_answer(status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> bytes:
    """The bytes of one HTTP/1.1 answer with a ``Content-Length``."""
    lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
