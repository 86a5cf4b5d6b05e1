"""What every message-bus output shares: the signed message, one long-lived connection
reconnected with backoff, the pause after repeated failure, bounded waits, hidden credentials.

A bus output is a :class:`MessageOutput` over a *connector*: an ``async`` callable that opens
(within the seconds it is given) one connection to the broker and returns a
:class:`Connection` (``publish`` one message, returning once the broker confirmed it;
``close``; ``is_closed``). Everything else is here:

- the message (:class:`Message`): the ``http:`` output's envelope as the body, and
  ``webhook-id`` (the delivery's idempotency key, the same for every attempt of one item
  revision to one destination), ``webhook-timestamp`` and ``webhook-signature`` (Standard
  Webhooks under ``DIMMY_FORWARD_SECRET``) as its headers;
- one connection for every delivery, opened when first needed, with at most one attempt to
  open it at a time; after a failed attempt the next waits a jittered, doubling delay (at most
  ``pause_seconds``) and deliveries meanwhile wait without using up an attempt
  (:class:`~dimmy_webhooks.outputs.base.DestinationPaused`);
- a publish the broker did not confirm within ``timeout`` seconds, or that failed on the way,
  drops the connection (closed in the background, bounded) and is a failed delivery, retried
  later; one the broker refused (:class:`BrokerRefused`: nothing routed it, a negative
  acknowledgement) keeps the connection;
- after several failures in a row the destination is paused like an ``http:`` one
  (:class:`~dimmy_webhooks.outputs.http.limits.Breaker`), which the overview and ``/readyz``
  show;
- the URL's password never appears in the output's name nor in any reason it gives
  (:class:`BusAddress`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dimmy_webhooks.errors import ConfigError, OutputError
from dimmy_webhooks.models import Receipt, StoredItem
from dimmy_webhooks.outputs.base import DeliveryFailed, DestinationPaused
from dimmy_webhooks.outputs.http.envelope import envelope
from dimmy_webhooks.outputs.http.limits import Breaker
from dimmy_webhooks.signatures import parse_secrets, signed_headers

log = logging.getLogger("dimmy_webhooks.outputs.bus")

FIRST_RECONNECT = 0.1
"""Seconds before the first new attempt to connect after a failed one; it doubles each time,
up to the output's ``pause_seconds``."""
CLOSE_TIMEOUT = 5.0
"""Seconds a connection may take to close before it is left to itself."""


class BrokerRefused(OutputError):
    """The broker answered and did not take the message (unroutable, negatively acknowledged,
    no stream for the subject): a failed delivery, retried later; the connection stays."""


@dataclass(frozen=True, slots=True)
class Message:
    """One item revision as a broker message: ``body`` is the envelope JSON an ``http:``
    output posts, ``headers`` are ``webhook-id`` (= ``id``), ``webhook-timestamp`` and
    ``webhook-signature`` (and ``content-type``)."""

    id: str
    timestamp: int
    body: bytes
    headers: Mapping[str, str]


class Connection(Protocol):
    """One open connection to a broker (what a connector returns)."""

    async def publish(self, message: Message) -> str | None:
        """Returns once the broker confirmed it holds ``message`` (what it said, e.g. the
        stream entry id, for the ledger: ``None`` when nothing). Raises
        :class:`BrokerRefused` when the broker refused it; anything else raised (or no answer
        in time) drops this connection."""

    async def close(self) -> None:
        """Close the connection (bounded by the caller)."""

    def is_closed(self) -> bool:
        """Whether the connection is known to be gone (then it is replaced before use)."""


Connector = Callable[[float], Awaitable[Connection]]
"""Opens one connection, given the seconds it may take (what it may pass to its client)."""


@dataclass(frozen=True, slots=True)
class BusAddress:
    """A bus output's URL split into what the client library gets and what is ours.

    ``url`` is the URL without our options (for the client library; it may hold a password);
    ``options`` our query parameters (every query parameter is one of ours: a credential goes
    in the user-info); ``name`` the output's name (its ``label``, else ``kind:`` + the URL
    without its user-info and without the tuning options); ``secrets`` what must never be
    shown (the password).
    """

    scheme: str
    url: str
    options: dict[str, str]
    name: str
    secrets: tuple[str, ...] = ()
    username: str | None = None
    password: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    path: str = ""

    @classmethod
    def parse(
        cls,
        kind: str,
        argument: str | None,
        *,
        url_schemes: tuple[str, ...],
        options: tuple[str, ...],
        label: str | None = None,
    ) -> BusAddress:
        """Check ``argument`` (``SCHEME://...``, one of ``url_schemes``) and take the query
        parameters named in ``options`` (and ``timeout``, ``max_attempts``,
        ``pause_seconds``) out of it; :class:`ConfigError` for anything else unknown."""
        example = f"{kind}:{url_schemes[0]}://host/..."
        if not argument:
            raise ConfigError(f"output '{kind}' needs a URL: {example}")
        parts = urlsplit(argument.strip())
        if parts.scheme.lower() not in url_schemes or not parts.hostname:
            shown = _mask(argument, parts.password)
            raise ConfigError(
                f"DIMMY_OUTPUTS: {kind}:{shown} is not a {' or '.join(url_schemes)} URL ({example})"
            )
        ours: dict[str, str] = {}
        theirs: list[tuple[str, str]] = []
        known = (*options, *COMMON_OPTIONS)
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in known:
                ours[key] = value
            elif key in PASSED_ON:
                theirs.append((key, value))
            else:
                raise ConfigError(
                    f"DIMMY_OUTPUTS: {kind} output: unknown option {key!r}; "
                    f"valid: {', '.join(sorted(known))}"
                )
        secrets = (parts.password,) if parts.password else ()
        netloc = parts.netloc.rpartition("@")[2]
        # the name is where messages go: tuning (timeout, attempts, pause) may change freely
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in COMMON_OPTIONS])
        shown = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
        client_url = urlunsplit(
            (parts.scheme, parts.netloc, parts.path, urlencode(theirs), parts.fragment)
        )
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"DIMMY_OUTPUTS: {kind}:{shown}: the port is not a number") from None
        return cls(
            scheme=parts.scheme.lower(),
            url=client_url,
            options=ours,
            name=label or f"{kind}:{shown}",
            secrets=secrets,
            username=parts.username,
            password=parts.password,
            host=parts.hostname,
            port=port,
            path=parts.path,
        )

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self.options.get(key, default)
        return value if value else default

    def number(self, key: str, default: float, low: float, high: float) -> float:
        """Option ``key`` as a number within [low, high] (``default`` when absent)."""
        raw = self.options.get(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:
            raise ConfigError(f"output {self.name}: {key}={raw!r} must be from {low:g} to {high:g}")
        return value

    def hide(self, text: str) -> str:
        """``text`` with every secret of this URL written as ``***``."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


COMMON_OPTIONS = ("timeout", "max_attempts", "pause_seconds")
"""Query parameters every bus output takes (not passed to the client library)."""
PASSED_ON: tuple[str, ...] = ()
"""Query parameters given to the client library as they are (none: each kind lists its own)."""


def _mask(text: str, password: str | None) -> str:
    return text.replace(password, "***") if password else text


@dataclass
class MessageOutput:
    """A message-bus output (see the module's docstring): ``connect`` opens one connection;
    ``address`` names it and holds its options: ``timeout`` (seconds to connect, and for the
    broker to confirm one message: 10), ``max_attempts`` (100) and ``pause_seconds`` (after 5
    failures in a row: 10)."""

    address: BusAddress
    connect: Connector
    forward_secret: str | None
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.name = self.address.name
        if self.forward_secret is None:
            raise ConfigError(
                f"output {self.name}: set DIMMY_FORWARD_SECRET (a whsec_... secret your "
                "consumers verify our signatures with; `dimmy-webhooks token --whsec` makes one)"
            )
        self._key = parse_secrets(self.forward_secret)[0]
        self.timeout = self.address.number("timeout", 10.0, 0.1, 300)
        self.max_attempts: int | None = int(self.address.number("max_attempts", 100, 1, 10_000))
        self.pause_seconds = self.address.number("pause_seconds", 10.0, 0.1, 300)
        # connect, then publish; plus a margin: the worker's deadline only for a stuck output
        self.delivery_timeout: float | None = self.timeout * 2 + 5
        self._breaker = Breaker(self.name, self.pause_seconds, self.clock)
        self._connection: Connection | None = None
        self._lock = asyncio.Lock()
        self._failed_connects = 0
        self._reconnect_at = 0.0
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def message(self, item: StoredItem, idempotency_key: str, now: float) -> Message:
        """The signed message of one item revision (the ``http:`` output's envelope)."""
        body = envelope(item, now)
        headers = signed_headers(
            self._key, idempotency_key, body, timestamp=int(now), family="webhook"
        )
        headers["content-type"] = "application/json"
        return Message(id=idempotency_key, timestamp=int(now), body=body, headers=headers)

    async def deliver(self, item: StoredItem, idempotency_key: str) -> Receipt:
        """Publish the signed message of ``item`` and wait for the broker's confirmation.
        Raises :class:`DeliveryFailed` or :class:`DestinationPaused`."""
        now = self.clock()
        with self._breaker.admit(now) as probe:
            started = time.monotonic()
            connection = await self._connected(probe)
            message = self.message(item, idempotency_key, now)
            try:
                async with asyncio.timeout(self.timeout):
                    said = await connection.publish(message)
            except BrokerRefused as exc:
                raise self._failed(f"{self.name}: refused: {exc}", started, probe) from None
            except (Exception, TimeoutError) as exc:
                self._drop(connection)
                why = "no confirmation within " + f"{self.timeout:g}s"
                if not isinstance(exc, TimeoutError):
                    why = _describe(exc)
                raise self._failed(f"{self.name}: {why}", started, probe) from None
            self._breaker.succeeded()
            latency = (time.monotonic() - started) * 1000
            return Receipt(latency_ms=latency, record_id=said)

    def _failed(self, reason: str, started: float, probe: bool) -> DeliveryFailed:
        reason = self.address.hide(reason)[:300]
        self._breaker.failed(reason, probe)
        return DeliveryFailed(reason, Receipt(latency_ms=(time.monotonic() - started) * 1000))

    async def _connected(self, probe: bool) -> Connection:
        """The open connection, opening one when there is none (one attempt at a time)."""
        connection = self._connection
        if connection is not None and not connection.is_closed():
            return connection
        self._check_reconnect()
        async with self._lock:
            connection = self._connection
            if connection is not None and not connection.is_closed():
                return connection
            if connection is not None:
                self._drop(connection)
            self._check_reconnect()
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.timeout):
                    connection = await self.connect(self.timeout)
            except ConfigError:
                raise
            except (Exception, TimeoutError) as exc:
                self._failed_connects += 1
                delay = min(self.pause_seconds, FIRST_RECONNECT * 2 ** (self._failed_connects - 1))
                self._reconnect_at = self.clock() + delay * self.rng.uniform(0.5, 1.0)
                why = "no connection within " + f"{self.timeout:g}s"
                if not isinstance(exc, TimeoutError):
                    why = _describe(exc)
                reason = f"{self.name}: cannot connect: {why}"
                if self._failed_connects == 1:
                    log.warning("broker unreachable", extra={"fields": self._fields(reason)})
                raise self._failed(reason, started, probe) from None
            if self._closed:  # shut down meanwhile: this one is not kept
                self._drop(connection)
                raise OutputError(f"{self.name}: closed")
            if self._failed_connects:
                log.info("broker reachable again", extra={"fields": {"output": self.name}})
            self._failed_connects = 0
            self._connection = connection
            return connection

    def _check_reconnect(self) -> None:
        if self.clock() < self._reconnect_at:
            raise DestinationPaused(
                f"destination {self.name} is failing ({self._breaker.last_error}): "
                "paused until it reconnects",
                self._reconnect_at,
            )

    def _fields(self, reason: str) -> dict[str, object]:
        return {"output": self.name, "reason": reason}

    def _drop(self, connection: Connection) -> None:
        """Forget ``connection`` and close it in the background (bounded)."""
        if self._connection is connection:
            self._connection = None
        task = asyncio.get_running_loop().create_task(self._close(connection))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, connection: Connection) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await connection.close()
        except (Exception, TimeoutError) as exc:
            reason = self.address.hide(_describe(exc))
            log.info("connection not closed cleanly", extra={"fields": self._fields(reason)})

    async def aclose(self) -> None:
        """Close the connection (waiting at most :data:`CLOSE_TIMEOUT` seconds)."""
        self._closed = True
        if self._connection is not None:
            self._drop(self._connection)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=CLOSE_TIMEOUT + 1)

    def problems(self) -> list[str]:
        if self._connection is None and self.clock() < self._reconnect_at:
            return [f"destination {self.name} is failing ({self._breaker.last_error}): paused"]
        return self._breaker.problems()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def missing_extra(kind: str, library: str, exc: ImportError) -> ConfigError:
    """The error for a bus output whose client library is not installed."""
    return ConfigError(
        f"output '{kind}' needs {library}: pip install 'dimmy-webhooks[{kind}]' ({exc})"
    )
