"""The HTTP server: uvicorn's httptools protocol plus the limits uvicorn leaves out.

Why this exists: uvicorn (0.54, with the httptools parser that ``uvicorn[standard]`` selects)
reads a request's headers with no size cap and no time limit, and accepts every connection the
kernel hands it (``limit_concurrency`` answers 503 but still accepts). A 64 MB header is read in
full; a client that never finishes its headers keeps its connection, and a file descriptor,
forever; about a thousand of them exhaust the open-file limit (1,024 under systemd's default), and
from then on every webhook and ``/healthz`` fails with nothing logged. ``serve``, the demo and
the tests all run :func:`protocol` (through :mod:`dimmy_webhooks.intake.serving`, the one place
uvicorn is configured), which keeps everything of uvicorn's (keep-alive, pipelining,
flow control, the ASGI cycle) and adds, as :class:`HttpLimits` sets them:

* **Head size**: the request line and headers may take ``max_header_bytes`` and
  :data:`MAX_HEADER_COUNT` header lines. Bytes are counted before the parser sees them, so no
  more than the cap is ever buffered (after a pipelined request, at most one socket read more);
  a larger head is answered 431 and the connection closed.
* **Head time**: a request's head must be complete ``header_timeout`` seconds after the
  connection opened or, on a keep-alive connection, after the first byte following the previous
  response; otherwise the connection is closed. Between requests uvicorn's keep-alive timeout
  applies as before.
* **Connections**: at most ``max_connections`` are open. At the cap, the connection that has
  been waiting longest (for a head, or idle between requests) is closed to make room for the new
  one; when every connection is busy with a request, the new one is refused (closed at once). The
  default cap stays below the open-file limit (:func:`connection_cap`), so ``accept`` never runs
  out of descriptors and the database, outputs and API client always have theirs.

Each of these is logged (logger ``dimmy_webhooks.http``), the first of a kind at once and then at
most one line per :data:`LOG_EVERY_SECONDS` with how many happened meanwhile, since a client can
repeat them at will. Bodies are not this module's business: the receiver caps, times and
budgets them (:mod:`dimmy_webhooks.intake.receiver`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from dimmy_webhooks.config import Settings
from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.intake.receiver import SECURITY_HEADERS

__all__ = [
    "CONNECTION_CEILING",
    "FD_RESERVE",
    "MAX_HEADER_COUNT",
    "GuardedHttpToolsProtocol",
    "HttpLimits",
    "connection_cap",
    "default_limits",
    "protocol",
]

log = logging.getLogger("dimmy_webhooks.http")

#: Header lines per request at most (Apache's LimitRequestFields default): a head of tiny
#: headers would otherwise cost the server ~30 times its size in Python objects.
MAX_HEADER_COUNT = 100
#: The default connection cap when the open-file limit allows more. Each waiting connection may
#: hold up to ``max_header_bytes`` of head: 2,048 x 16 KiB bounds that at 32 MiB. A webhook
#: sender needs a handful of connections; raise it with DIMMY_MAX_CONNECTIONS if a proxy needs
#: more.
CONNECTION_CEILING = 2048
#: Descriptors kept for everything but client connections (the SQLite files or the PostgreSQL
#: pool, outputs, logs, the event loop's own), on top of one per Dimmy API connection.
FD_RESERVE = 256
#: The smallest cap that still serves anything beside a few stuck clients.
MIN_CONNECTIONS = 16
LOG_EVERY_SECONDS = 10.0

_HEAD, _BUSY, _IDLE = 0, 1, 2  # a connection owes a request head / runs one / waits for one


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What the server enforces per connection and in total (see the module docstring)."""

    max_header_bytes: int
    header_timeout: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        """The limits of ``settings``; raises :class:`ConfigError` naming the setting when
        the connection cap does not fit the open-file limit."""
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout_seconds,
            max_connections=connection_cap(settings),
        )


def default_limits() -> HttpLimits:
    """The limits of the default settings (the environment is not read)."""
    return HttpLimits.from_settings(Settings.model_construct())


def open_file_limit() -> int:
    """This process's soft RLIMIT_NOFILE (what ``accept`` runs into)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def connection_cap(settings: Settings, nofile: int | None = None) -> int:
    """``DIMMY_MAX_CONNECTIONS``, or by default :data:`CONNECTION_CEILING` or what the
    open-file limit leaves after :data:`FD_RESERVE` and the API connections, if that is less.

    Raises :class:`ConfigError` when the setting is above what the limit leaves (descriptors
    would run out before the cap is reached), or when the limit leaves fewer than
    :data:`MIN_CONNECTIONS`.
    """
    nofile = open_file_limit() if nofile is None else nofile
    reserve = FD_RESERVE + settings.api_concurrency
    room = nofile - reserve
    if settings.max_connections is not None:
        if settings.max_connections > room:
            raise ConfigError(
                f"DIMMY_MAX_CONNECTIONS={settings.max_connections} is more than the open-file "
                f"limit allows ({nofile} files, {reserve} of them kept for the database, outputs "
                f"and API connections): set it to at most {room}, or raise the limit "
                "(LimitNOFILE= in the systemd unit, ulimit -n)"
            )
        return settings.max_connections
    if room < MIN_CONNECTIONS:
        raise ConfigError(
            f"the open-file limit ({nofile}) leaves {max(room, 0)} HTTP connections after the "
            f"{reserve} kept for the database, outputs and API connections: raise it "
            "(LimitNOFILE= in the systemd unit, ulimit -n) or lower DIMMY_API_CONCURRENCY"
        )
    return min(CONNECTION_CEILING, room)


def protocol(limits: HttpLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to give uvicorn (``uvicorn.run(app, http=protocol(limits))``)."""
    logging.getLogger("uvicorn.error").addFilter(_UVICORN_400_LINE)  # the protocol logs those
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


class _Uvicorn400Line(logging.Filter):
    """uvicorn warns once per malformed request, which a client can repeat at will (and a head
    over the header count arrives the same way): the protocol logs those itself, rate-limited."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Invalid HTTP request received."


_UVICORN_400_LINE = _Uvicorn400Line()


class _Events:
    """Log lines for events a client can repeat at will: the first of a kind at once, then at
    most one line per :data:`LOG_EVERY_SECONDS` counting those that happened meanwhile."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.quiet_until: dict[str, float] = {}
        self.unlogged: dict[str, tuple[int, int, dict[str, Any]]] = {}  # count, level, fields

    def note(self, message: str, level: int, **fields: Any) -> None:
        now = self.loop.time()
        quiet_until = self.quiet_until.get(message, 0.0)
        if now >= quiet_until:
            self._write(message, level, 1, fields)
            return
        count, _, _ = self.unlogged.get(message, (0, level, fields))
        if count == 0:
            self.loop.call_at(quiet_until, self._flush, message)
        self.unlogged[message] = (count + 1, level, fields)

    def _flush(self, message: str) -> None:
        count, level, fields = self.unlogged.pop(message, (0, logging.INFO, {}))
        if count:
            self._write(message, level, count, fields)

    def _write(self, message: str, level: int, count: int, fields: dict[str, Any]) -> None:
        self.quiet_until[message] = self.loop.time() + LOG_EVERY_SECONDS
        log.log(level, message, extra={"fields": {**fields, "count": count}})


class _Connections:
    """One server's connections that are waiting, oldest first (dicts keep insertion order):
    ``heading`` owe a request head by a deadline, ``idle`` wait for the next request. Busy ones
    (a request being handled) are in neither and are never closed from here."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: HttpLimits) -> None:
        self.loop = loop
        self.timeout = limits.header_timeout
        self.heading: dict[GuardedHttpToolsProtocol, float] = {}
        self.idle: dict[GuardedHttpToolsProtocol, float] = {}
        self.events = _Events(loop)
        self.timer: asyncio.TimerHandle | None = None

    def head_started(self, conn: GuardedHttpToolsProtocol) -> None:
        self.idle.pop(conn, None)
        self.heading[conn] = self.loop.time()
        if self.timer is None:
            self.arm()

    def arm(self) -> None:
        self.timer = self.loop.call_later(self.timeout, self._expire)

    def forget(self, conn: GuardedHttpToolsProtocol) -> None:
        self.heading.pop(conn, None)
        self.idle.pop(conn, None)

    def make_room(self) -> bool:
        """Close the connection that has waited longest; ``False`` when none is waiting."""
        oldest: tuple[float, GuardedHttpToolsProtocol] | None = None
        for table in (self.heading, self.idle):
            for conn, since in table.items():
                if oldest is None or since < oldest[0]:
                    oldest = (since, conn)
                break  # only the first of each table: it is that table's oldest
        if oldest is None:
            return False
        self.forget(oldest[1])
        oldest[1].close_to_make_room()
        return True

    def _expire(self) -> None:
        # One timer for the whole table, due when its oldest head is: O(1) per request.
        self.timer = None
        now = self.loop.time()
        while self.heading:
            conn, since = next(iter(self.heading.items()))
            due = since + self.timeout
            if due > now + 0.001:  # timers may fire a hair early on a millisecond clock
                self.timer = self.loop.call_at(due, self._expire)
                return
            del self.heading[conn]
            conn.close_for_header_timeout()


_TABLES: weakref.WeakKeyDictionary[ServerState, _Connections] = weakref.WeakKeyDictionary()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head size, head time and connection limits of
    :attr:`limits` (use :func:`protocol` to make one with limits set)."""

    limits: ClassVar[HttpLimits]
    # Slots, not instance attributes: uvicorn's protocol already keeps 28 attributes in its
    # __dict__; past CPython's limit for shared-key dicts (30) its attribute accesses, which
    # its per-request code makes by the dozen, lose their fast path.
    __slots__ = ("_awaiting_head", "_head_bytes", "_head_refused", "_phase", "_table")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        table = _TABLES.get(self.server_state)
        if table is None:
            table = _TABLES[self.server_state] = _Connections(self.loop, self.limits)
        self._table = table
        self._phase = _BUSY  # until connection_made admits it
        self._awaiting_head = True  # the bytes now arriving belong to a request head
        self._head_bytes = 0
        self._head_refused = False

    # the connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        full = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        if full and not self._table.make_room():
            self._table.events.note(
                "connection refused: every connection is busy",
                logging.WARNING,
                limit=self.limits.max_connections,
                client=self._client(),
            )
            transport.abort()
            return
        if full:
            self._table.events.note(
                "connection cap reached: closed the longest-waiting connection",
                logging.WARNING,
                limit=self.limits.max_connections,
            )
        self._phase = _HEAD
        self._table.head_started(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._table.forget(self)
        super().connection_lost(exc)

    # The four methods below run for every request: they call uvicorn's methods directly
    # (cheaper than super()) and keep the tables' bookkeeping inline.

    def data_received(self, data: bytes) -> None:
        if self._phase == _IDLE:  # the first byte after a response starts the head's clock
            self._phase = _HEAD
            table = self._table
            table.idle.pop(self, None)
            table.heading[self] = self.loop.time()
            if table.timer is None:
                table.arm()
        if not self._awaiting_head:  # body bytes: the receiver and flow control bound them
            _feed(self, data)
            return
        room = self.limits.max_header_bytes - self._head_bytes
        if len(data) > room:
            self._feed_up_to_the_cap(data, room)
            return
        self._head_bytes += len(data)
        _feed(self, data)
        # a head still arriving may not hold more header lines than the cap (each takes 4 bytes
        # at least, so a short head cannot)
        if (
            self._awaiting_head
            and self._head_bytes > 4 * MAX_HEADER_COUNT
            and len(self.headers or ()) > MAX_HEADER_COUNT
            and not self.transport.is_closing()
        ):
            self._refuse_head()

    def _feed_up_to_the_cap(self, data: bytes, room: int) -> None:
        """Feed no more than the cap: if the head has not ended by then, it is too large."""
        self._head_bytes += room
        view = memoryview(data)
        _feed(self, view[:room])  # type: ignore[arg-type]
        if self.transport.is_closing():
            return
        if self._awaiting_head:
            self._refuse_head()
            return
        self.data_received(view[room:])  # type: ignore[arg-type]

    # parser callbacks ------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        if len(self.headers) > MAX_HEADER_COUNT:
            self._head_refused = True
            # stops the parser; uvicorn then calls send_400_response, which answers 431
            raise _HeadTooLarge
        self._awaiting_head = False
        self._head_bytes = 0
        if self._phase == _HEAD:
            self._phase = _BUSY
            self._table.heading.pop(self, None)
        _headers_complete(self)

    def on_message_complete(self) -> None:
        self._awaiting_head = True
        _message_complete(self)

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        _response_complete(self)
        if pipelined or self.transport.is_closing():
            return  # the next request already runs, or closing (connection_lost cleans up)
        self._phase = _IDLE
        self._table.idle[self] = self.loop.time()

    # refusals --------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        if self._head_refused:
            self._refuse_head()
            return
        self._table.events.note(
            "request refused: invalid HTTP", logging.INFO, status=400, client=self._client()
        )
        self._answer_and_close(400, msg)

    def _refuse_head(self) -> None:
        self._head_refused = True
        self._table.forget(self)
        self._table.events.note(
            "request refused: headers too large",
            logging.INFO,
            status=431,
            limit=self.limits.max_header_bytes,
            client=self._client(),
        )
        if self.cycle is not None and not self.cycle.response_complete:
            # a response is being written: nothing can be put in front of it
            self.transport.close()
            return
        self._answer_and_close(431, "Request header fields too large")

    def _answer_and_close(self, status: int, message: str) -> None:
        body = message.encode("ascii")
        content = [STATUS_LINE[status]]
        for name, value in [*self.server_state.default_headers, *SECURITY_HEADERS]:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(content))
        self.transport.close()

    def close_for_header_timeout(self) -> None:
        self._table.events.note(
            "connection closed: headers not received in time",
            logging.INFO,
            timeout=self.limits.header_timeout,
            client=self._client(),
        )
        self.transport.close()

    def close_to_make_room(self) -> None:
        self.transport.close()

    def _client(self) -> str:
        return self.client[0] if self.client else "-"


_feed = HttpToolsProtocol.data_received
_headers_complete = HttpToolsProtocol.on_headers_complete
_message_complete = HttpToolsProtocol.on_message_complete
_response_complete = HttpToolsProtocol.on_response_complete


class _HeadTooLarge(Exception):
    """Raised inside the parser to stop it (httptools wraps it in ``HttpParserCallbackError``)."""
