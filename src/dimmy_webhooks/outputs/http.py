"""Hand-off to the warehouse system: signed HTTP forwards (the ``http:URL`` output).

Every forward is a ``POST`` of a JSON envelope (docs/forwarding.md has its schema)::

    {"type": "item.created" | "item.updated", "schema_version": 1,
     "timestamp": "<when this attempt was made, ISO-8601 UTC>",
     "data": <the item as GET /api/items/{id} returns it: id, version, revision, the
              normalised fields and raw exactly as fetched>}

signed with the Standard Webhooks scheme under ``DIMMY_FORWARD_SECRET`` (or the destination's own
``secret``): ``webhook-id`` (the delivery's idempotency key: the same for every attempt of one
item revision to one destination, across retries, replays, restarts and killed workers; also sent
as ``Idempotency-Key``), ``webhook-timestamp`` and ``webhook-signature``.

Destinations are ``http:URL`` entries of ``DIMMY_OUTPUTS`` and the ``[[destination]]`` tables of
``DIMMY_DESTINATIONS_FILE`` (TOML: extra headers or basic auth, timeout, concurrency, a rate
limit, attempts, filters, field selection and renaming; :func:`load_destinations` checks it at
start-up and names what is wrong).

What an answer means (:meth:`HttpOutput.deliver`): a 2xx is delivered (its status, latency, an
excerpt and the record id the WMS returned go into the ledger). A 400, 413, 415 or 422 is the
WMS refusing this item: dead at once with the answer's excerpt (replayable). Anything else, a
3xx included (redirects are never followed: a forward never goes anywhere but the configured
URL), a timeout or a reset, is retried with backoff, never sooner than a ``Retry-After``. After
several failures in a row the destination is paused for a while (growing, at most 5 minutes):
its deliveries wait without using up attempts, so a WMS outage of hours loses nothing, and only
its own deliveries wait: every destination has its own connections, concurrency and rate.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import math
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from dimmy_webhooks.errors import ConfigError, OutputError
from dimmy_webhooks.items import api_fields, format_timestamp
from dimmy_webhooks.models import Receipt, StoredItem
from dimmy_webhooks.signatures import parse_secrets, signed_headers
from dimmy_webhooks.upstream.client import parse_retry_after

ENVELOPE_SCHEMA_VERSION = 1
EXCERPT_LIMIT = 500
"""Characters of a WMS answer kept in the ledger."""

_PERMANENT = frozenset({400, 413, 415, 422})
_FAILURES_BEFORE_PAUSE = 5
_MAX_PAUSE = 300.0
_RATE_MARGIN = 0.05
_MAX_QUEUE_WAIT = 2.0
"""Seconds a delivery may wait here for a connection slot or its turn of the rate limit; a
longer wait is a pause of the job (uncounted), so other destinations keep the worker's places."""
_MAX_QUEUED = 1024  # deliveries waiting here at most, however fast the destination answers
_FIRST_LATENCY = 0.25  # seconds per request assumed until the destination has answered
_FIELD_NAMES = frozenset(
    [
        "id",
        "created_at",
        "updated_at",
        "started_at",
        "ended_at",
        "owner_id",
        "scanner_account_id",
        "flow_id",
        "width",
        "height",
        "depth",
        "dimension_unit",
        "volume",
        "volume_unit",
        "weight",
        "weight_unit",
        "dim_weight",
        "billable_weight",
        "barcode",
        "barcodes",
        "photo_urls",
        "version",
        "revision",
        "fetched_at",
        "raw",
    ]
)


class DestinationPaused(OutputError):
    """The destination failed several times in a row: wait until ``until`` (Unix time)
    without counting an attempt."""

    def __init__(self, reason: str, until: float) -> None:
        super().__init__(reason)
        self.until = until


class DeliveryFailed(OutputError):
    """An attempt that failed, with what the WMS answered (``receipt``); ``permanent`` when
    retrying cannot help; ``retry_after`` seconds when the WMS asked for a pause."""

    def __init__(
        self,
        reason: str,
        receipt: Receipt,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.receipt = receipt
        self.permanent = permanent
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Filter:
    """Which items a destination takes (all of them by default)."""

    require_dimensions: bool = False
    require_weight: bool = False
    require_barcode: bool = False
    scanner_accounts: frozenset[str] | None = None
    owners: frozenset[str] | None = None

    def refuses(self, item: StoredItem) -> str | None:
        fields = item.item
        if self.require_dimensions and fields.width is None:
            return "filtered out: no dimensions"
        if self.require_weight and fields.weight is None:
            return "filtered out: no weight"
        if self.require_barcode and fields.barcode is None:
            return "filtered out: no barcode"
        if (
            self.scanner_accounts is not None
            and fields.scanner_account_id not in self.scanner_accounts
        ):
            return "filtered out: another scanner account"
        if self.owners is not None and fields.owner_id not in self.owners:
            return "filtered out: another owner"
        return None


@dataclass(frozen=True, slots=True)
class Destination:
    """One WMS endpoint and how to talk to it (see the module docstring)."""

    url: str
    secret: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 10.0
    concurrency: int = 4
    rate: float | None = None
    max_attempts: int = 100
    pause_seconds: float = 10.0
    record_id_field: str = "id"
    include: tuple[str, ...] | None = None
    rename: Mapping[str, str] = field(default_factory=dict)
    filter: Filter = field(default_factory=Filter)

    @property
    def name(self) -> str:
        """``http:`` + the URL without its user-info: the output's stable name (ledger, logs)."""
        parts = urlsplit(self.url)
        host = parts.netloc.rpartition("@")[2]
        return "http:" + urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


def check_url(url: str, where: str) -> str:
    """``url`` if it is an absolute http(s) URL, else :class:`ConfigError` naming ``where``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: {url!r} is not an http:// or https:// URL")
    if parts.fragment:
        raise ConfigError(f"{where}: a destination URL has no #fragment")
    return url.strip()


_DESTINATION_KEYS = frozenset(
    {
        "url",
        "secret",
        "headers",
        "basic_auth",
        "timeout_seconds",
        "concurrency",
        "rate_per_second",
        "max_attempts",
        "pause_seconds",
        "record_id_field",
        "filter",
        "fields",
    }
)
_FILTER_KEYS = frozenset(
    {"require_dimensions", "require_weight", "require_barcode", "scanner_accounts", "owners"}
)


def load_destinations(path: Path) -> list[Destination]:
    """The ``[[destination]]`` tables of a TOML file, checked: every mistake is a
    :class:`ConfigError` naming the file, the destination and the key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"DIMMY_DESTINATIONS_FILE: cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"DIMMY_DESTINATIONS_FILE: {path} is not TOML: {exc}") from None
    unknown = set(data) - {"destination"}
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {sorted(unknown)}; use [[destination]]")
    tables = data.get("destination", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{path}: write each destination as a [[destination]] table")
    return [_destination(table, f"{path}: destination #{n}") for n, table in enumerate(tables, 1)]


def _destination(table: Any, where: str) -> Destination:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: not a table")
    unknown = set(table) - _DESTINATION_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {sorted(unknown)}; valid: {sorted(_DESTINATION_KEYS)}"
        )
    if "url" not in table:
        raise ConfigError(f"{where}: url is missing")
    url = check_url(_text(table["url"], where, "url"), f"{where}: url")
    where = f"{where} ({Destination(url).name})"
    headers = {
        _text(k, where, "headers"): _text(v, where, f"headers.{k}")
        for k, v in _table(table.get("headers", {}), where, "headers").items()
    }
    for name in headers:
        if name.lower() in ("content-type", "host", "content-length") or name.lower().startswith(
            "webhook-"
        ):
            raise ConfigError(f"{where}: headers.{name} is set by the service itself")
    if "basic_auth" in table:
        credentials = _text(table["basic_auth"], where, "basic_auth")
        if ":" not in credentials:
            raise ConfigError(f"{where}: basic_auth is 'user:password'")
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    secret = table.get("secret")
    if secret is not None:
        parse_secrets(_text(secret, where, "secret"))  # a bad secret stops here, named
    fields = _table(table.get("fields", {}), where, "fields")
    if set(fields) - {"include", "rename"}:
        raise ConfigError(f"{where}: fields takes include and rename only")
    include = fields.get("include")
    if include is not None:
        if not isinstance(include, list) or not include:
            raise ConfigError(f"{where}: fields.include is a non-empty list of field names")
        include = tuple(_field(name, where, "fields.include") for name in include)
    rename = {
        _field(k, where, "fields.rename"): _text(v, where, f"fields.rename.{k}")
        for k, v in _table(fields.get("rename", {}), where, "fields.rename").items()
    }
    return Destination(
        url=url,
        secret=secret,
        headers=headers,
        timeout=_number(table.get("timeout_seconds", 10.0), where, "timeout_seconds", 0.1, 300),
        concurrency=int(_number(table.get("concurrency", 4), where, "concurrency", 1, 256)),
        rate=(
            None
            if "rate_per_second" not in table
            else _number(table["rate_per_second"], where, "rate_per_second", 0.01, 10_000)
        ),
        max_attempts=int(_number(table.get("max_attempts", 100), where, "max_attempts", 1, 10_000)),
        pause_seconds=_number(table.get("pause_seconds", 10.0), where, "pause_seconds", 0.1, 300),
        record_id_field=_text(table.get("record_id_field", "id"), where, "record_id_field"),
        include=include,
        rename=rename,
        filter=_filter(_table(table.get("filter", {}), where, "filter"), where),
    )


def _filter(table: dict[str, Any], where: str) -> Filter:
    unknown = set(table) - _FILTER_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown filter key(s) {sorted(unknown)}; valid: {sorted(_FILTER_KEYS)}"
        )

    def ids(key: str) -> frozenset[str] | None:
        if key not in table:
            return None
        value = table[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: filter.{key} is a list of ids")
        return frozenset(value)

    def flag(key: str) -> bool:
        value = table.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: filter.{key} is true or false")
        return value

    return Filter(
        require_dimensions=flag("require_dimensions"),
        require_weight=flag("require_weight"),
        require_barcode=flag("require_barcode"),
        scanner_accounts=ids("scanner_accounts"),
        owners=ids("owners"),
    )


def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 4096:
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    if any(c in value for c in "\r\n\x00"):
        raise ConfigError(f"{where}: {key} must be one line")
    return value


def _table(value: Any, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key} must be a table")
    return value


def _number(value: Any, where: str, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"{where}: {key} must be a number from {low:g} to {high:g}")
    return float(value)


def _field(name: Any, where: str, key: str) -> str:
    if name not in _FIELD_NAMES:
        raise ConfigError(
            f"{where}: {key}: {name!r} is not an item field; fields: {sorted(_FIELD_NAMES)}"
        )
    return str(name)


class _Sent:
    """One request's place in a destination's rate window: when its body went out to the
    connection (until then, when it was let go), and whether it has."""

    __slots__ = ("at", "done")

    def __init__(self, at: float) -> None:
        self.at = at
        self.done = asyncio.Event()

    async def trace(self, name: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: the body is on its way once it has been written."""
        if name == "http11.send_request_body.complete":
            self.finish()

    def finish(self) -> None:
        if not self.done.is_set():
            self.at = time.monotonic()
            self.done.set()


class HttpOutput:
    """One destination as an output: signed POSTs with their own connections, concurrency,
    rate limit and pause (see the module docstring)."""

    def __init__(
        self,
        destination: Destination,
        *,
        forward_secret: str | None,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        secret = destination.secret or forward_secret
        if secret is None:
            raise ConfigError(
                f"output {destination.name}: set DIMMY_FORWARD_SECRET (a whsec_... secret your "
                "WMS verifies our signatures with; `dimmy-webhooks token --whsec` makes one) or "
                "the destination's own secret"
            )
        self._key = parse_secrets(secret)[0]
        self.destination = destination
        self.name = destination.name
        self.max_attempts = destination.max_attempts
        self._clock = clock
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(destination.timeout),
            limits=httpx.Limits(
                max_connections=destination.concurrency,
                max_keepalive_connections=destination.concurrency,
            ),
            follow_redirects=False,
            transport=transport,
            headers={"user-agent": "dimmy-webhooks", **destination.headers},
        )
        self._slots = asyncio.Semaphore(destination.concurrency)
        self._queued = 0  # deliveries waiting for a slot or their turn
        self._latency = _FIRST_LATENCY  # a moving average of the seconds per request
        # a sliding window: at most `capacity` requests within any `window` seconds (a little
        # longer than the rate asks, so jitter on the way cannot put one more in the WMS's
        # second); a token bucket the size of the rate would allow twice that at a burst's edge
        rate = destination.rate
        self._window = (max(1.0, 1 / rate) if rate else 1.0) + _RATE_MARGIN
        self._capacity = max(1, math.floor(rate * (self._window - _RATE_MARGIN))) if rate else 0
        self._sent: collections.deque[_Sent] = collections.deque(maxlen=self._capacity or 1)
        self.delivery_timeout = destination.timeout * 3 + _MAX_QUEUE_WAIT + 5
        self._failures = 0  # in a row
        self._paused_until = 0.0
        self._pause = 0.0  # the last pause's length (0: not paused since the last success)
        self._probing = False  # the one delivery let through after a pause is in flight
        self.last_error: str | None = None

    async def deliver(self, item: StoredItem, idempotency_key: str) -> Receipt:
        """POST the signed envelope of ``item``; the receipt of a 2xx. Raises
        :class:`DeliveryFailed` (with what the WMS answered) or :class:`DestinationPaused`."""
        refused = self.destination.filter.refuses(item)
        if refused is not None:
            return Receipt(note=refused)
        now = self._clock()
        probe = self._admit(now)
        try:
            return await self._send(item, idempotency_key, now, probe)
        finally:
            if probe:
                self._probing = False

    def _admit(self, now: float) -> bool:
        """Whether this delivery may go (:class:`DestinationPaused` if not); ``True`` when it
        is the one probe after a pause: its outcome ends the pause or lengthens it."""
        if now < self._paused_until:
            raise DestinationPaused(f"{self.name} paused: {self.last_error}", self._paused_until)
        if not self._pause:
            return False
        if self._probing:
            raise DestinationPaused(f"{self.name} paused: trying one delivery first", now + 1.0)
        self._probing = True
        return True

    async def _send(
        self, item: StoredItem, idempotency_key: str, now: float, probe: bool
    ) -> Receipt:
        body = self.envelope(item, now)
        headers = signed_headers(
            self._key, idempotency_key, body, timestamp=int(now), family="webhook"
        )
        headers["idempotency-key"] = idempotency_key
        headers["content-type"] = "application/json"
        self._make_room()
        self._queued += 1
        try:
            # however many were let in, none waits here longer than it was let in for (a
            # destination that turned slow): the rest go back to the queue, uncounted
            async with asyncio.timeout(_MAX_QUEUE_WAIT):
                await self._slots.acquire()
        except TimeoutError:
            until = self._clock() + 0.5
            raise DestinationPaused(f"{self.name} is at its concurrency limit", until) from None
        finally:
            self._queued -= 1  # got a slot, gave up, or cancelled (a shutdown)
        try:
            sent = await self._wait_turn()
            return await self._post(body, headers, probe, sent)
        finally:
            self._slots.release()

    def _make_room(self) -> None:
        """Refuse (as a pause: no attempt counted) a delivery that would wait long for a slot
        or its turn of the rate: it would hold a worker's place meanwhile, which the deliveries
        to other destinations need. How many may wait is what the destination, at the latency
        it has shown, answers within :data:`_MAX_QUEUE_WAIT` (at least twice its
        concurrency) and its rate limit lets go in that time: a WMS that answers in 5 ms takes a
        worker's whole backlog, one that takes a second a few at a time."""
        concurrency = self.destination.concurrency
        turns = max(2, int(_MAX_QUEUE_WAIT / max(self._latency, 0.001)))
        room = min(_MAX_QUEUED, concurrency * turns)
        if self.destination.rate:  # nor more than its rate lets go within that time
            room = min(room, max(concurrency, int(self.destination.rate * _MAX_QUEUE_WAIT)))
        busy = self._queued >= room
        wait = 0.0
        if self._capacity and len(self._sent) == self._capacity:
            turns_ahead = self._queued // self._capacity
            wait = self._sent[0].at + self._window * (1 + turns_ahead) - time.monotonic()
        if busy or wait > _MAX_QUEUE_WAIT:
            until = self._clock() + max(wait, 0.5)
            raise DestinationPaused(f"{self.name} is at its concurrency or rate limit", until)

    async def _wait_turn(self) -> _Sent | None:
        """Wait until one more request keeps within the rate: the one ``capacity`` requests
        back was written to its connection a window ago. Timed from when a request's body
        has gone out, not from when it was handed to the HTTP client: opening a connection
        can take longer than the margin, and the WMS counts what arrives."""
        if not self._capacity:
            return None
        while len(self._sent) == self._capacity:
            oldest = self._sent[0]
            await oldest.done.wait()
            wait = oldest.at + self._window - time.monotonic()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        sent = _Sent(time.monotonic())
        self._sent.append(sent)
        return sent

    async def _post(
        self, body: bytes, headers: dict[str, str], probe: bool, sent: _Sent | None
    ) -> Receipt:
        started = time.monotonic()
        extensions = {} if sent is None else {"trace": sent.trace}
        try:
            async with asyncio.timeout(self.destination.timeout * 3):
                response = await self._http.post(
                    self.destination.url, content=body, headers=headers, extensions=extensions
                )
                content = response.content
        except (httpx.HTTPError, TimeoutError) as exc:
            self._took(time.monotonic() - started)
            latency = (time.monotonic() - started) * 1000
            reason = f"{self.name}: {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
            self._failed(reason, probe)
            raise DeliveryFailed(reason[:300], Receipt(latency_ms=latency)) from exc
        finally:
            if sent is not None:  # not written (refused, cancelled): counted from now
                sent.finish()
        self._took(time.monotonic() - started)
        latency = (time.monotonic() - started) * 1000
        receipt = Receipt(
            status_code=response.status_code,
            latency_ms=latency,
            excerpt=_excerpt(content),
            record_id=_record_id(content, response.headers, self.destination.record_id_field),
        )
        status = response.status_code
        if 200 <= status < 300 or status in _PERMANENT:  # it answered about the item: it is up
            self._failures, self._pause, self.last_error = 0, 0.0, None
        if 200 <= status < 300:
            return receipt
        reason = f"{self.name}: HTTP {status}"
        if 300 <= status < 400:
            reason += " (a redirect: not followed)"
        if status in _PERMANENT:
            raise DeliveryFailed(reason, receipt, permanent=True)
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=self._clock())
        self._failed(reason, probe)
        raise DeliveryFailed(reason, receipt, retry_after=retry_after)

    def _took(self, seconds: float) -> None:
        self._latency += 0.2 * (seconds - self._latency)

    def envelope(self, item: StoredItem, now: float) -> bytes:
        """The JSON body of one forward (``raw`` written as stored, never re-serialised)."""
        data = api_fields(item)
        include = self.destination.include
        if include is not None:
            data = {k: v for k, v in data.items() if k in include}
        renamed = {self.destination.rename.get(k, k): v for k, v in data.items()}
        head = {
            "type": "item.created" if item.revision <= 1 else "item.updated",
            "schema_version": ENVELOPE_SCHEMA_VERSION,
            "timestamp": format_timestamp(now),
        }
        fields = json.dumps(renamed, ensure_ascii=False, separators=(",", ":"))
        if include is None or "raw" in include:
            raw_key = json.dumps(self.destination.rename.get("raw", "raw"))
            fields = f"{fields[:-1]}{',' if renamed else ''}{raw_key}:{item.raw}}}"
        text = json.dumps(head, separators=(",", ":"))
        return f'{text[:-1]},"data":{fields}}}'.encode()

    def _failed(self, reason: str, probe: bool) -> None:
        self.last_error = reason
        self._failures += 1
        if probe:  # the one try after a pause failed too: a longer pause
            self._pause = min(_MAX_PAUSE, self._pause * 2)
        elif self._failures >= _FAILURES_BEFORE_PAUSE:
            self._pause = self.destination.pause_seconds
        else:
            return
        self._failures = 0
        self._paused_until = self._clock() + self._pause

    async def aclose(self) -> None:
        await self._http.aclose()

    def problems(self) -> list[str]:
        if self._clock() < self._paused_until:
            return [f"destination {self.name} is failing ({self.last_error}): paused"]
        return []


def _excerpt(content: bytes) -> str | None:
    if not content:
        return None
    text = content[: EXCERPT_LIMIT * 4].decode("utf-8", errors="replace")
    return text[:EXCERPT_LIMIT]


def _record_id(content: bytes, headers: httpx.Headers, key: str) -> str | None:
    """The record id the WMS gave: ``key`` of a JSON object answer, else ``Location``."""
    if content and len(content) <= 65_536:
        try:
            value = json.loads(content)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict) and isinstance(value.get(key), str | int):
            return str(value[key])[:200]
    location = headers.get("location")
    return location[:200] if location else None
