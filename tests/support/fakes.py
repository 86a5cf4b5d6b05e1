"""Stand-ins: the one fake clock, a random source with forced first draws, a reset for a shared
fake Dimmy API, and a fake warehouse system on 127.0.0.1 that records what it is sent."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy, FakeDimmyConfig


class FakeTime:
    """A monotonic clock that only moves when told: by a test setting ``now``, or by code under
    test sleeping through :meth:`sleep` (each sleep recorded). Call it, or pass :meth:`clock`,
    where a clock function is wanted."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class ScriptedRandom(random.Random):
    """``random.Random(seed)`` whose first :meth:`random` calls return ``first`` in order: a
    seeded fault schedule that is sure to contain the faults a test asserts on (e.g. ``[0.0]``
    as the fake Dimmy API's ``fault_rng`` makes its first request hang when ``hang_rate`` > 0,
    since the hang is drawn first)."""

    def __init__(self, seed: int, first: list[float]) -> None:
        super().__init__(seed)
        self._first = list(first)

    def random(self) -> float:
        if self._first:
            return self._first.pop(0)
        return super().random()


def reset_fake(fake: FakeDimmy, config: FakeDimmyConfig) -> FakeDimmy:
    """``fake`` as new under ``config``: no items, no failing ids, no counts (for a fake served
    once per module and shared by its tests)."""
    fake.config = config
    fake.items.clear()
    fake.owners.clear()
    fake.fail_ids.clear()
    fake.reset_stats()
    return fake


@dataclass(frozen=True, slots=True)
class WmsRequest:
    """One request the fake WMS received (``at``: time.monotonic() on arrival)."""

    at: float
    path: str
    headers: dict[str, str]
    body: bytes


WmsAnswer = Callable[[WmsRequest], tuple[Any, ...]]
"""``(status, JSON body, headers)``, or with a fourth element: seconds to wait first."""


class FakeWms:
    """A WMS endpoint (``POST /hook``) on 127.0.0.1 that records every request.

    By default it answers ``200 {"id": "wms-<n>"}``; set ``answer`` to a function of the request
    giving a :data:`WmsAnswer` (``None`` goes back to the default), ``delay`` to
    hold every answer that many seconds, ``reset`` to drop connections without an answer.
    """

    def __init__(self) -> None:
        self.requests: list[WmsRequest] = []
        self.answer: WmsAnswer | None = None
        self.delay = 0.0
        self.reset = False
        self._lock = threading.Lock()
        self._stack: Any = None
        self.url = ""

    def __enter__(self) -> FakeWms:
        from contextlib import ExitStack

        from dimmy_webhooks.devtools.runner import serve_in_thread

        self._stack = ExitStack()
        base = self._stack.enter_context(serve_in_thread(self._app, interface="asgi3"))
        self.url = base + "/hook"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def delivered_ids(self) -> Counter[str]:
        """``webhook-id`` of every request answered 2xx, counted (each must be 1)."""
        return Counter(r.headers["webhook-id"] for r in self.ok)

    @property
    def ok(self) -> list[WmsRequest]:
        return [r for r in self.requests if r.headers.get("x-test-answered") == "2xx"]

    async def _app(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request = WmsRequest(time.monotonic(), scope["path"], headers, body)
        with self._lock:
            self.requests.append(request)
            number = len(self.requests)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.reset:
            raise ConnectionResetError("the fake WMS drops this connection")
        status, payload, extra, *slow = (
            self.answer(request) if self.answer is not None else (200, {"id": f"wms-{number}"}, {})
        )
        if slow:
            await asyncio.sleep(slow[0])
        headers["x-test-status"] = str(status)
        if 200 <= status < 300:
            headers["x-test-answered"] = "2xx"
        content = json.dumps(payload).encode()
        out = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
        ]
        out += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": content})


def frozen(at: float) -> Callable[[], float]:
    """A wall clock stopped at ``at``."""
    return lambda: at


def ticking_clock() -> Callable[[], float]:
    """A wall clock that moves one second per call (starting 30 s ago), so every attempt gets
    another timestamp."""
    ticks = itertools.count(int(time.time()) - 30)
    return lambda: float(next(ticks))
