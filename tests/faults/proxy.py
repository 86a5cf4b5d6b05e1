"""A small TCP fault proxy for the network fault tests (no toxiproxy or netem on these machines).

:class:`FaultProxy` listens on 127.0.0.1 (a random port) and forwards every connection to one
upstream ``host:port``; an asyncio loop in a daemon thread does the work. The faults can be
switched at any time from the test thread with :meth:`FaultProxy.set`:

- ``latency``: every chunk, in either direction, is held that many seconds before it is
  forwarded (order is kept); ``connect_latency``: each new connection waits that long before
  the proxy connects upstream.
- ``reset_rate``: probability of resetting a connection (``SO_LINGER`` 0, then close: the client
  sees ``ECONNRESET``). The draw is made when client data arrives and the reset happens *before*
  that data is forwarded, so the upstream never sees the request that was cut. With
  ``reset_scope="connection"`` the draw is made once per connection (on its first data); with
  ``"request"`` it is made for every chunk the client sends, which for HTTP/1.1 without
  pipelining is one request (keep-alive connections then see resets too).
- ``always_reset``: a chunk whose first line contains this text is reset whatever the draw (and
  takes no draw): a fault a test can count on for every seed, e.g. one item id whose every
  request is cut.
- ``blackhole``: data from the client is read and dropped, nothing is forwarded, nothing is
  answered; the connection stays open until the client gives up. A connection that lost data
  stays blackholed even after the mode is switched off (its byte stream is broken).

Counters (``connections``, ``resets``, ``blackholed``, ``chunks_up``/``chunks_down``,
``bytes_up``/``bytes_down``) and :attr:`FaultProxy.log` (one :class:`ChunkRecord` per client chunk,
with the first line of it, e.g. ``GET /items/... HTTP/1.1``) let a test account for every request
that reached the proxy. Fault draws use ``random.Random(seed)``; they happen in the loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

ResetScope = Literal["connection", "request"]
Action = Literal["forwarded", "reset", "blackholed"]
_READ_SIZE = 65536
_HEAD_LIMIT = 200


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One chunk the client sent: when (``time.monotonic()``), its first line, what happened."""

    at: float
    conn: int
    head: str
    action: Action


def _first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0][:_HEAD_LIMIT].decode("latin-1")


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """TCP proxy 127.0.0.1:<random> -> ``upstream_host:upstream_port`` with switchable faults."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        seed: int | None = None,
        latency: float = 0.0,
        connect_latency: float = 0.0,
        reset_rate: float = 0.0,
        reset_scope: ResetScope = "connection",
        blackhole: bool = False,
        always_reset: str | None = None,
        log_size: int = 100_000,
    ) -> None:
        if upstream_host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fault proxy only forwards to loopback")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.rng = random.Random(seed)
        self.always_reset = always_reset
        self.latency = 0.0
        self.connect_latency = 0.0
        self.reset_rate = 0.0
        self.reset_scope: ResetScope = "connection"
        self.blackhole = False
        self.set(
            latency=latency,
            connect_latency=connect_latency,
            reset_rate=reset_rate,
            reset_scope=reset_scope,
            blackhole=blackhole,
        )
        self.connections = 0
        self.resets = 0
        self.blackholed = 0
        self.chunks_up = 0
        self.chunks_down = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.upstream_failures = 0
        self.log: deque[ChunkRecord] = deque(maxlen=log_size)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def to_url(cls, url: str, **options: object) -> FaultProxy:
        """A proxy in front of ``http://host:port`` (the scheme and path are ignored)."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"{url!r} has no host:port")
        return cls(parts.hostname, parts.port, **options)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (valid once started)."""
        return f"http://127.0.0.1:{self.port}"

    def set(
        self,
        *,
        latency: float | None = None,
        connect_latency: float | None = None,
        reset_rate: float | None = None,
        reset_scope: ResetScope | None = None,
        blackhole: bool | None = None,
    ) -> None:
        """Change the faults; ``None`` leaves a setting as it is. Takes effect at the next chunk
        (or connection)."""
        if latency is not None:
            if latency < 0:
                raise ValueError("latency must be >= 0")
            self.latency = latency
        if connect_latency is not None:
            if connect_latency < 0:
                raise ValueError("connect_latency must be >= 0")
            self.connect_latency = connect_latency
        if reset_rate is not None:
            if not 0.0 <= reset_rate <= 1.0:
                raise ValueError("reset_rate must be in [0, 1]")
            self.reset_rate = reset_rate
        if reset_scope is not None:
            if reset_scope not in ("connection", "request"):
                raise ValueError("reset_scope must be 'connection' or 'request'")
            self.reset_scope = reset_scope
        if blackhole is not None:
            self.blackhole = blackhole

    def records(self) -> list[ChunkRecord]:
        """A copy of :attr:`log` (safe while the proxy runs)."""
        return list(self.log)

    def counters(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "resets": self.resets,
            "blackholed": self.blackholed,
            "chunks_up": self.chunks_up,
            "chunks_down": self.chunks_down,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "upstream_failures": self.upstream_failures,
        }

    # lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)
                )
                self.port = int(self._server.sockets[0].getsockname()[1])
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("fault proxy did not start")
        if failure:
            raise RuntimeError("fault proxy did not start") from failure[0]
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop listening and cut every open connection."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    # the work ------------------------------------------------------------------------------

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_w)
        self.connections += 1
        conn = self.connections
        upstream_w: asyncio.StreamWriter | None = None
        try:
            if self.blackhole:
                self.blackholed += 1
                await self._swallow(conn, client_r)
                return
            if self.connect_latency:
                await asyncio.sleep(self.connect_latency)
            try:
                upstream_r, upstream_w = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
            except OSError:
                self.upstream_failures += 1
                _reset(client_w)
                return
            self._writers.add(upstream_w)
            holed = asyncio.Event()  # set once this connection has been blackholed
            await asyncio.gather(
                self._pump_up(conn, client_r, client_w, upstream_w, holed),
                self._pump_down(upstream_r, client_w, holed),
            )
        except asyncio.CancelledError:
            pass
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    self._writers.discard(writer)
                    if not writer.transport.is_closing():
                        writer.close()
            self._tasks.discard(task)

    def _hole(self, holed: asyncio.Event) -> None:
        if not holed.is_set():
            holed.set()
            self.blackholed += 1

    async def _swallow(self, conn: int, reader: asyncio.StreamReader) -> None:
        """Blackhole: read and drop until the client leaves (or the proxy closes)."""
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(_READ_SIZE):
                self.chunks_up += 1
                self.log.append(
                    ChunkRecord(time.monotonic(), conn, _first_line(data), "blackholed")
                )

    async def _pump_up(
        self,
        conn: int,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        upstream_w: asyncio.StreamWriter,
        holed: asyncio.Event,
    ) -> None:
        """Client -> upstream, applying the faults; a client EOF is passed on as a half-close."""
        first = True
        try:
            while data := await client_r.read(_READ_SIZE):
                at = time.monotonic()
                if self.blackhole or holed.is_set():
                    # from now on this connection is broken: drop everything, answer nothing
                    self._hole(holed)
                    self.chunks_up += 1
                    self.log.append(ChunkRecord(at, conn, _first_line(data), "blackholed"))
                    await self._swallow(conn, client_r)
                    upstream_w.transport.abort()
                    return
                self.chunks_up += 1
                head = _first_line(data)
                draw = first or self.reset_scope == "request"
                first = False
                forced = self.always_reset is not None and self.always_reset in head
                if forced or (draw and self.reset_rate and self.rng.random() < self.reset_rate):
                    self.resets += 1
                    self.log.append(ChunkRecord(at, conn, head, "reset"))
                    _reset(client_w)
                    upstream_w.transport.abort()
                    return
                self.log.append(ChunkRecord(at, conn, head, "forwarded"))
                if self.latency:
                    await asyncio.sleep(self.latency)
                self.bytes_up += len(data)
                upstream_w.write(data)
                await upstream_w.drain()
            if not upstream_w.transport.is_closing() and upstream_w.can_write_eof():
                upstream_w.write_eof()
        except (ConnectionError, OSError):
            upstream_w.transport.abort()

    async def _pump_down(
        self, upstream_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, holed: asyncio.Event
    ) -> None:
        """Upstream -> client; when the upstream closes, the client connection is closed (unless
        it was blackholed: then the client is left waiting)."""
        try:
            while data := await upstream_r.read(_READ_SIZE):
                self.chunks_down += 1
                if self.blackhole or holed.is_set():
                    self._hole(holed)
                    continue  # the answer is lost too
                if self.latency:
                    await asyncio.sleep(self.latency)
                self.bytes_down += len(data)
                client_w.write(data)
                await client_w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not holed.is_set() and not client_w.transport.is_closing():
                client_w.close()
