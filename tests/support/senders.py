"""Signed webhooks as Dimmy's Svix sends them: the headers, the one poster, and a retrying
sender for load and fault runs."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from dimmy_webhooks.signatures import signed_headers

from .constants import KEY


def signed(body: bytes, msg_id: str, *, key: bytes = KEY, **kwargs: Any) -> dict[str, str]:
    """The headers of a webhook ``msg_id`` carrying ``body``, signed with ``key`` (by default
    our secret's)."""
    headers = signed_headers(key, msg_id, body, **kwargs)
    headers["content-type"] = "application/json"
    return headers


class Poster(Protocol):
    """What :func:`post_signed` can post with besides a URL: an ``httpx.Client`` with its
    ``base_url`` set, or a wrapper with the same ``request`` method."""

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response: ...


def post_signed(
    target: str | Poster,
    msg_id: str,
    body: bytes | Sequence[str],
    *,
    timeout: float = 5.0,
    headers: dict[str, str] | None = None,
    expect: int | None = None,
    path: str = "/webhook",
    key: bytes = KEY,
) -> httpx.Response:
    """POST a signed webhook to ``target``'s ``path`` (``/webhook``; an account's is
    ``/webhook/{name}``) on a base URL, or a :class:`Poster` whose own timeout then applies:
    ``body`` as given, or an ``items.scanned`` naming the ids ``body``, signed with ``key`` (by
    default our secret's); ``headers`` are added to (or replace) the signed ones. With
    ``expect``, an answer of another status raises ``AssertionError`` with the answer's text
    (for a test that only needs the webhook in)."""
    if not isinstance(body, bytes):
        body = json.dumps({"item_ids": list(body)}).encode()
    sent = signed(body, msg_id, key=key)
    sent.update(headers or {})
    if isinstance(target, str):
        answer = httpx.post(target + path, content=body, headers=sent, timeout=timeout)
    else:
        answer = target.request("POST", path, content=body, headers=sent)
    if expect is not None and answer.status_code != expect:
        raise AssertionError(f"webhook {msg_id}: {answer.status_code} {answer.text}")
    return answer


@dataclass(frozen=True, slots=True)
class Attempt:
    """One POST: ``status`` ``None`` when no HTTP answer came (``error`` says what)."""

    msg_id: str
    url: str
    started: float  # time.monotonic()
    ended: float  # ... when its answer (or error) came back
    status: int | None
    error: str | None = None  # "ExceptionType: message"

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def outcome(self) -> str:
        """The status, or the exception's type when no answer came (for counting)."""
        return str(self.status) if self.status is not None else str(self.error).split(":")[0]


@dataclass
class RetryingSender:
    """Posts each signed message until a 2xx, retrying with the same message id after a short
    random delay, ``concurrency`` messages at a time, alternating ``urls`` between attempts;
    with ``rate``, message ``n`` is not started before ``n / rate`` seconds.

    Bounded: no attempt starts after ``deadline_seconds`` from :meth:`start` (or after
    :meth:`stop`), and no message is tried more than ``max_attempts`` times. It runs in a thread
    (:meth:`start`, :meth:`join`) while the test kills and restarts the receivers; read
    ``acked`` and ``attempts`` at any time (appends only).
    """

    urls: Sequence[str]
    messages: Sequence[tuple[str, bytes]]
    seed: int
    concurrency: int = 8
    rate: float | None = None  # messages started per second at most
    retry_delay: tuple[float, float] = (0.05, 0.2)
    deadline_seconds: float = 60.0
    max_attempts: int = 1000
    timeout: float = 10.0
    path: str = "/webhook"
    acked: dict[str, float] = field(default_factory=dict)  # msg id -> time of its first 2xx
    attempts: list[Attempt] = field(default_factory=list)
    started_at: float = 0.0  # time.monotonic() at start()
    deadline: float = 0.0  # ... after which no attempt starts
    _thread: threading.Thread | None = None

    @property
    def failed_attempts(self) -> list[Attempt]:
        return [attempt for attempt in list(self.attempts) if not attempt.ok]

    def missing(self) -> list[str]:
        return [msg_id for msg_id, _ in self.messages if msg_id not in self.acked]

    def start(self) -> RetryingSender:
        self.started_at = time.monotonic()
        self.deadline = self.started_at + self.deadline_seconds
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._run(),), name="retrying-sender", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Start no new attempt (those in flight finish)."""
        self.deadline = 0.0

    def join(self, timeout: float) -> bool:
        """Wait for the sender to finish; ``False`` if it is still running after ``timeout``."""
        assert self._thread is not None
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def finished(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    async def _run(self) -> None:
        rng = random.Random(self.seed)
        pending = list(enumerate(self.messages))
        pending.reverse()  # pop() takes them in order
        # a lane may keep an idle connection to each URL while it uses another
        limits = httpx.Limits(max_connections=self.concurrency * len(self.urls))
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits) as client:

            async def lane() -> None:
                while pending and time.monotonic() < self.deadline:
                    index, (msg_id, body) = pending.pop()
                    if self.rate is not None:
                        due = self.started_at + index / self.rate
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                    await self._deliver(client, rng, index, msg_id, body)

            await asyncio.gather(*(lane() for _ in range(self.concurrency)))

    async def _deliver(
        self, client: httpx.AsyncClient, rng: random.Random, index: int, msg_id: str, body: bytes
    ) -> None:
        for attempt in range(self.max_attempts):
            if time.monotonic() >= self.deadline:
                return
            url = self.urls[(index + attempt) % len(self.urls)]
            started = time.monotonic()
            try:
                response = await client.post(
                    url + self.path, content=body, headers=signed(body, msg_id)
                )
                record = Attempt(msg_id, url, started, time.monotonic(), response.status_code)
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
                record = Attempt(msg_id, url, started, time.monotonic(), None, error)
            self.attempts.append(record)
            if record.ok:
                self.acked.setdefault(msg_id, record.ended)
                return
            await asyncio.sleep(rng.uniform(*self.retry_delay))
