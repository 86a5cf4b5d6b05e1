"""A local fake of the Dimmy REST API, for tests, benchmarks and the offline demo.

:class:`FakeDimmy` keeps items in memory and records what was asked of it; :func:`create_app`
serves it as a FastAPI app with the documented endpoints the service calls (``GET /items/{id}``,
``GET /items`` with ``skip``, ``limit``, ``start_date`` and ``end_date``), so validation errors are
real FastAPI 422 bodies, and the items' photos (``GET /photos/{id}/{n}.png``, a generated picture
of the box: :mod:`.fake_photos`; open to anyone, as a photo host is to a browser, when
``photo_base`` is the fake's own address). Every request first checks ``X-API-KEY`` (401
``{"message": "Unauthorized"}``), then goes through the faults of :class:`FakeDimmyConfig`
(a hidden rate limit, hang, latency, 429 every Nth request, random 503). The config is read on
every request: assign ``fake.config`` or change its fields at run time and the next request
follows it. The items it generates are :mod:`.fake_items`'.

The fake is driven from two threads (the test thread mutates items and config, the server thread
answers); items are replaced, never mutated in place, so a reader always sees a whole document.

Several Dimmy accounts on one fake: :attr:`FakeDimmyConfig.keys` names more API keys, each an
account of its own that sees only its own items (``owner=`` of :meth:`FakeDimmy.add_item` and
:meth:`FakeDimmy.generate_items`): another account's item answers 404 as one that does not
exist, and ``GET /items`` lists only the caller's. ``fetched_by`` and ``requests_by`` count
per account, so a test can tell whose key each fetch used.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
import re
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dimmy_webhooks.devtools.fake_items import (
    DEFAULT_START,
    PHOTO_HOST,
    ItemFactory,
    as_utc,
    created_at,
    iso,
    parse_time,
)
from dimmy_webhooks.devtools.fake_photos import dimensions_of, photo_png

OBJECT_ID_PATTERN = "^[0-9a-fA-F]{24}$"
_ITEM_PATH = re.compile(r"^/items/([0-9a-fA-F]{24})$")

_Skip = Annotated[int, Query(ge=0)]
_Limit = Annotated[int, Query(ge=0)]
_SECOND = timedelta(seconds=1)
MAIN_OWNER = "default"
"""The account of ``FakeDimmyConfig.api_key``: it owns every item added without an owner."""


@dataclass
class FakeDimmyConfig:
    """Keys and injected faults. Probabilities are per request, durations in seconds."""

    api_key: str = "demo-key"  # the account MAIN_OWNER's key
    # more keys, each another account: key -> the account's name (its items' ``owner``)
    keys: dict[str, str] | None = None
    # accounts whose key is refused with 401, as a revoked key is (by account name)
    revoked: frozenset[str] = frozenset()
    latency_seconds: float = 0.0
    latency_jitter: float = 0.0  # latency varies uniformly by +/- this much (never below 0)
    # more latency for one account's requests (by account name), as for a key Dimmy slows down
    owner_latency: dict[str, float] = field(default_factory=dict)
    error_rate: float = 0.0  # probability of a 503
    hang_rate: float = 0.0  # probability of waiting hang_seconds (or until the client leaves)
    hang_seconds: float = 30.0
    rate_limit_every: int | None = None  # every Nth authorised request answers 429
    # authorised requests per second over which the fake answers 429 at once (before any
    # latency), as an undocumented limit on the key would: a token bucket holding one second's
    # worth; the requests refused take no token
    hidden_rate_limit: float | None = None
    retry_after_seconds: int = 1  # Retry-After of those 429s (both kinds)
    seed: int | None = None  # reproducible items and fault draws (read when FakeDimmy is built)
    # where the items' photo URLs point (read when items are generated): the fake's own
    # address to have it serve them, as the demo does
    photo_base: str = PHOTO_HOST


@dataclass(frozen=True, slots=True)
class FakeRequest:
    """One request as the fake saw it; ``status`` 0 means the client left before an answer."""

    at: float  # time.monotonic() on arrival (same clock in every thread of the process)
    method: str
    path: str
    status: int
    owner: str | None = None  # the account whose key was given (None: no valid key)


class FakeDimmy:
    """In-memory Dimmy: ``items`` (id -> item document) plus what was asked of it.

    ``counts`` counts ``GET /items/{id}`` answered 200 per id (an item "fetched"), ``attempts``
    every authorised ``GET /items/{id}`` including injected failures; ``throttled`` counts the
    429s of the hidden rate limit; ``requests`` logs every request (newest 100 000);
    ``max_in_flight`` is the most requests being answered at once. Ids in ``fail_ids`` always
    answer 500. ``list_hook``, when set, is called with ``skip`` before every ``GET /items``
    page is answered (to create items while a poller pages).

    Per account (the owner of the key given): ``owners`` maps an item id to the account that
    owns it (absent: :data:`MAIN_OWNER`); ``fetched_by[account]`` counts the ``GET
    /items/{id}`` answered 200 per id, ``requests_by[account]`` every request with that key
    (refused ones included, as a revoked key's are).
    """

    def __init__(self, config: FakeDimmyConfig | None = None) -> None:
        self.config = config or FakeDimmyConfig()
        self.items: dict[str, dict[str, Any]] = {}
        self.owners: dict[str, str] = {}
        self.fail_ids: set[str] = set()
        self.list_hook: Callable[[int], None] | None = None
        self.counts: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.fetched_by: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.requests_by: Counter[str] = Counter()
        self.requests: deque[FakeRequest] = deque(maxlen=100_000)
        self.requests_total = 0
        self.throttled = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._tokens: float | None = None  # the hidden limit's bucket (None: full)
        self._tokens_at = 0.0
        seed = self.config.seed
        self._rng = random.Random(seed)
        self.fault_rng = random.Random(None if seed is None else seed + 1)
        self._lock = threading.Lock()
        self._authorised = 0
        self._last_created: datetime | None = None
        self._factory = ItemFactory(self._rng, taken=lambda item_id: item_id in self.items)

    # -- items -----------------------------------------------------------------------------

    def generate_items(
        self, n: int, *, start: datetime | None = None, owner: str = MAIN_OWNER
    ) -> list[str]:
        """Create ``n`` varied items of account ``owner``, created a few seconds apart from
        ``start`` (by default right after the last generated one); returns their ids in
        creation order."""
        if start is not None:
            created = as_utc(start)
        elif self._last_created is not None:
            created = self._last_created + timedelta(seconds=self._rng.uniform(3, 90))
        else:
            created = DEFAULT_START
        ids = []
        self._factory.photo_base = self.config.photo_base.rstrip("/")
        for index in range(n):
            if index:
                created += timedelta(seconds=self._rng.uniform(3, 90))
            item = self._factory.new_item(created)
            self.add_item(item, owner=owner)
            ids.append(item["_id"])
        self._last_created = max(created, self._last_created or created)
        return ids

    def add_item(self, doc: dict[str, Any], *, owner: str = MAIN_OWNER) -> str:
        """Store a copy of ``doc`` (it needs a string ``_id``) as an item of account ``owner``;
        returns the id."""
        item_id = doc.get("_id")
        if not isinstance(item_id, str):
            raise ValueError("an item needs a string _id")
        with self._lock:
            if owner == MAIN_OWNER:
                self.owners.pop(item_id, None)
            else:
                self.owners[item_id] = owner
            self.items[item_id] = dict(doc)
        return item_id

    def owner_of(self, item_id: str) -> str:
        """The account that owns ``item_id`` (:data:`MAIN_OWNER` unless added with another)."""
        return self.owners.get(item_id, MAIN_OWNER)

    def ids_of(self, owner: str) -> list[str]:
        """The ids of ``owner``'s items, in the order they were added."""
        with self._lock:
            return [item_id for item_id in self.items if self.owner_of(item_id) == owner]

    def update_item(self, item_id: str, **changes: Any) -> dict[str, Any]:
        """Replace top-level fields; ``updated_at`` moves one second later unless given."""
        with self._lock:
            old = self.items[item_id]
            new = {**old, **changes}
            if "updated_at" not in changes:
                previous = old.get("updated_at") or old.get("created_at") or iso(DEFAULT_START)
                new["updated_at"] = iso(parse_time(previous) + timedelta(seconds=1))
            self.items[item_id] = new
        return new

    def remove_item(self, item_id: str) -> None:
        """Forget an item; fetching it then answers 404."""
        with self._lock:
            self.items.pop(item_id, None)
            self.owners.pop(item_id, None)

    def reset_stats(self) -> None:
        """Zero the counters and the request log (the 429 cadence restarts too)."""
        self.counts.clear()
        self.attempts.clear()
        self.fetched_by.clear()
        self.requests_by.clear()
        self.requests.clear()
        self.requests_total = 0
        self.throttled = 0
        self.max_in_flight = self.in_flight
        self._authorised = 0
        self._tokens = None

    def snapshot(self, owner: str | None = None) -> list[dict[str, Any]]:
        """All items (``owner``'s only, when given) sorted by ``created_at`` then ``_id``."""
        with self._lock:
            items = [
                item
                for item_id, item in self.items.items()
                if owner is None or self.owner_of(item_id) == owner
            ]
        return sorted(items, key=lambda item: (created_at(item) or DEFAULT_START, item["_id"]))

    # -- request bookkeeping (called by the app) -------------------------------------------

    def _over_hidden_limit(self, now: float) -> bool:
        """Take a token of the hidden rate limit; ``True`` when there was none (answer 429)."""
        limit = self.config.hidden_rate_limit
        if not limit:
            return False
        with self._lock:
            tokens = limit if self._tokens is None else self._tokens
            tokens = min(limit, tokens + (now - self._tokens_at) * limit)
            self._tokens_at = now
            if tokens < 1:
                self._tokens = tokens
                self.throttled += 1
                return True
            self._tokens = tokens - 1
            return False

    def _arrive(self) -> None:
        self.requests_total += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(
        self, at: float, method: str, path: str, status: int, owner: str | None = None
    ) -> None:
        self.in_flight -= 1
        self.requests.append(FakeRequest(at, method, path, status, owner))

    def _owner_of_key(self, given: bytes) -> str | None:
        """The account whose key ``given`` is (compared in constant time), or ``None``."""
        config = self.config
        keys = {config.api_key: MAIN_OWNER, **(config.keys or {})}
        found = None
        for key, owner in keys.items():
            if hmac.compare_digest(given, key.encode()):
                found = owner
        return found


def _page(items: list[dict[str, Any]], skip: int, limit: int) -> list[dict[str, Any]]:
    # MongoDB semantics (inferred for Dimmy): limit=0 means no limit
    return items[skip : skip + limit] if limit else items[skip:]


_OWNER = "fake_dimmy_owner"  # the key's account, in the request's scope state


def _owner(request: Request) -> str:
    return str(request.scope.get("state", {}).get(_OWNER, MAIN_OWNER))


class _Gate:
    """ASGI middleware: API key check, request bookkeeping and injected faults."""

    def __init__(self, app: ASGIApp, fake: FakeDimmy) -> None:
        self.app = app
        self.fake = fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fake = self.fake
        arrived = time.monotonic()
        status = 0

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        fake._arrive()
        owner = None
        if not scope["path"].startswith("/photos/"):
            owner = fake._owner_of_key(Headers(scope=scope).get("x-api-key", "").encode())
            if owner is not None:
                fake.requests_by[owner] += 1
        try:
            await self._answer(scope, receive, send_recording, owner)
        finally:
            fake._leave(arrived, scope["method"], scope["path"], status, owner)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, owner: str | None) -> None:
        fake, config = self.fake, self.fake.config
        if scope["path"].startswith("/photos/"):
            # a photo host answers a browser's <img>: no API key, no injected faults
            await self.app(scope, receive, send)
            return
        if owner is None or owner in config.revoked:
            await JSONResponse({"message": "Unauthorized"}, 401)(scope, receive, send)
            return
        scope.setdefault("state", {})[_OWNER] = owner
        item_path = _ITEM_PATH.match(scope["path"])
        if item_path and scope["method"] == "GET":
            fake.attempts[item_path[1]] += 1
        body = await _read_body(receive)
        if body is None:
            return  # the client left
        if fake._over_hidden_limit(time.monotonic()):
            headers = {"Retry-After": str(config.retry_after_seconds)}
            await JSONResponse({"detail": "Too Many Requests"}, 429, headers)(scope, receive, send)
            return
        rng = fake.fault_rng
        hang = config.hang_rate and rng.random() < config.hang_rate
        if hang and not await _wait_unless_disconnected(config.hang_seconds, receive):
            return
        slow = config.owner_latency.get(owner, 0.0)
        if slow and not await _wait_unless_disconnected(slow, receive):
            return
        delay = config.latency_seconds
        if config.latency_jitter:
            delay += rng.uniform(-config.latency_jitter, config.latency_jitter)
        if delay > 0:
            await asyncio.sleep(delay)
        fake._authorised += 1
        if config.rate_limit_every and fake._authorised % config.rate_limit_every == 0:
            headers = {"Retry-After": str(config.retry_after_seconds)}
            await JSONResponse({"detail": "Too Many Requests"}, 429, headers)(scope, receive, send)
            return
        if config.error_rate and rng.random() < config.error_rate:
            await JSONResponse({"detail": "Service Unavailable"}, 503)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _wait_unless_disconnected(seconds: float, receive: Receive) -> bool:
    """Sleep ``seconds``; ``False`` as soon as the client disconnects (so shutdown is quick)."""
    watcher = asyncio.ensure_future(receive())  # after the body, the next message is disconnect
    try:
        done, _ = await asyncio.wait({watcher}, timeout=seconds)
    finally:
        if not watcher.done():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    return not done


def create_app(fake: FakeDimmy) -> FastAPI:
    """The fake's ASGI app; every answer reflects ``fake`` at the time of the request."""
    app = FastAPI(title="Fake Dimmy API", description=__doc__, version="0")
    app.add_middleware(_Gate, fake=fake)

    @app.get("/items/{item_id}")
    async def get_item(
        request: Request, item_id: Annotated[str, Path(pattern=OBJECT_ID_PATTERN)]
    ) -> Response:
        if item_id in fake.fail_ids:
            return JSONResponse({"detail": "Internal Server Error"}, 500)
        owner = _owner(request)
        item = fake.items.get(item_id)
        if item is None or fake.owner_of(item_id) != owner:
            # another account's item is as unknown to this key as a missing one
            return JSONResponse({"detail": "Item not found"}, 404)
        fake.counts[item_id] += 1
        fake.fetched_by[owner][item_id] += 1
        return JSONResponse(item)

    @app.get("/photos/{item_id}/{number}.png")
    async def get_photo(
        item_id: Annotated[str, Path(pattern=OBJECT_ID_PATTERN)],
        number: Annotated[int, Path(ge=1, le=9)],
    ) -> Response:
        item = fake.items.get(item_id)
        if item is None:
            return JSONResponse({"detail": "Photo not found"}, 404)
        png = photo_png(item_id, number, dimensions_of(item))
        return Response(png, media_type="image/png", headers={"cache-control": "max-age=3600"})

    @app.get("/items")
    async def list_items(
        request: Request,
        skip: _Skip = 0,
        limit: _Limit = 100,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        group_by: str | None = None,  # accepted and ignored
    ) -> Response:
        if fake.list_hook is not None:
            fake.list_hook(skip)  # tests: change the set between pages, as real uploads would
        items = fake.snapshot(_owner(request))
        if start_date is not None or end_date is not None:
            low = as_utc(start_date) if start_date else datetime.min.replace(tzinfo=UTC)
            high = as_utc(end_date) if end_date else datetime.max.replace(tzinfo=UTC)
            items = [item for item in items if low <= (created_at(item) or low - _SECOND) <= high]
        return JSONResponse(_page(items, skip, limit))

    return app
