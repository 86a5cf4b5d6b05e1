"""Shared helpers of the fault tests: waiting, process bookkeeping, queue state, a retrying sender.

Everything here is bounded: waits take a timeout, the sender a deadline and an attempt cap; all
traffic goes to 127.0.0.1. Nothing here asserts: the tests decide what is a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dimmy_webhooks.devtools.sender import items_scanned_body
from dimmy_webhooks.outputs import JsonlOutput

from ..conftest import ServiceProcess, query, signed

# waiting -------------------------------------------------------------------------------------


# processes -----------------------------------------------------------------------------------

_OWNER = re.compile(r"worker started owner=(\S+)")


def log_size(service: ServiceProcess) -> int:
    """Bytes in the service's log now: pass to :func:`wait_owner` before a (re)start, since a
    restarted :class:`ServiceProcess` appends to the same log."""
    return service.log_path.stat().st_size if service.log_path.exists() else 0


def log_since(service: ServiceProcess, offset: int) -> str:
    if not service.log_path.exists():
        return ""
    with service.log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def wait_owner(service: ServiceProcess, offset: int, timeout: float = 30) -> str | None:
    """The lease owner of the worker started after log ``offset`` (``None``: it did not start
    in time or exited)."""
    deadline = time.monotonic() + timeout
    while True:
        match = _OWNER.search(log_since(service, offset))
        if match:
            return match[1]
        if service.proc is None or service.proc.poll() is not None:
            return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def exit_code(service: ServiceProcess, timeout: float = 30) -> int:
    """Wait for the service's process to exit (it must have been started)."""
    assert service.proc is not None
    return service.proc.wait(timeout=timeout)


def stop_all(services: Sequence[ServiceProcess], timeout: float = 30) -> list[int | None]:
    """SIGTERM every running service, then wait for each; their exit codes (``None``: never
    started)."""
    for service in services:
        if service.proc is not None and service.proc.poll() is None:
            os.killpg(service.proc.pid, signal.SIGTERM)
    return [
        None if service.proc is None else service.proc.wait(timeout=timeout) for service in services
    ]


def logs_tail(services: Sequence[ServiceProcess], tail: int = 4000) -> str:
    """The end of every service's log, for an assertion message."""
    return "\n".join(
        f"--- {' '.join(s.args)} ({s.log_path.name}) ---\n{s.log()[-tail:]}" for s in services
    )


# database state ------------------------------------------------------------------------------


def rows(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row.values()) for row in query(db_url, sql)]


def scalar(db_url: str, sql: str) -> Any:
    return rows(db_url, sql)[0][0]


def running_jobs(db_url: str, owner: str | None = None) -> int:
    """Jobs claimed right now (by ``owner`` when given)."""
    where = "" if owner is None else f" AND lease_owner = '{_literal(owner)}'"
    return int(scalar(db_url, f"SELECT count(*) FROM jobs WHERE status = 'running'{where}"))


def running_by_owner(db_url: str) -> dict[str, int]:
    """Claimed jobs per lease owner, right now."""
    found = rows(
        db_url,
        "SELECT lease_owner, count(*) FROM jobs WHERE status = 'running' GROUP BY lease_owner",
    )
    return {str(owner): int(n) for owner, n in found}


def work_left(db_url: str) -> int:
    """Jobs pending or running plus events not yet finished: 0 once everything drained."""
    return int(
        scalar(
            db_url,
            "SELECT (SELECT count(*) FROM jobs WHERE status IN ('pending', 'running'))"
            " + (SELECT count(*) FROM events WHERE status IN ('pending', 'processing'))",
        )
    )


def job_counts(db_url: str) -> dict[str, int]:
    """``{"kind:status": n}`` over every job."""
    found = rows(db_url, "SELECT kind, status, count(*) FROM jobs GROUP BY kind, status")
    return {f"{kind}:{status}": int(n) for kind, status, n in sorted(found)}


def event_counts(db_url: str) -> dict[str, int]:
    found = rows(db_url, "SELECT status, count(*) FROM events GROUP BY status")
    return {status: int(n) for status, n in sorted(found)}


def db_state(db_url: str) -> str:
    """A one-paragraph picture of the queue, for assertion messages."""
    stuck = rows(
        db_url,
        "SELECT id, kind, status, item_id, attempts, lease_owner, last_error FROM jobs"
        " WHERE status != 'done' ORDER BY id LIMIT 10",
    )
    return f"jobs={job_counts(db_url)} events={event_counts(db_url)} not done (first 10)={stuck}"


def integrity_check(db_url: str) -> str | None:
    """``PRAGMA integrity_check`` on SQLite (``"ok"`` when sound); ``None`` on PostgreSQL."""
    if not db_url.startswith("sqlite:///"):
        return None
    return "; ".join(str(row[0]) for row in rows(db_url, "PRAGMA integrity_check"))


def _literal(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", text):
        raise ValueError(f"unexpected characters in {text!r}")
    return text


# events --------------------------------------------------------------------------------------


def make_events(
    rng: random.Random, ids: Sequence[str], n: int, per_event: int, prefix: str = "msg"
) -> list[tuple[str, bytes]]:
    """``n`` (message id, ``items.scanned`` body) pairs, each naming ``per_event`` distinct ids
    drawn from ``ids`` (so ids repeat across events)."""
    return [
        (f"{prefix}_{index:06d}", items_scanned_body(rng.sample(list(ids), per_event)))
        for index in range(n)
    ]


def fetch_pairs(messages: Sequence[tuple[str, bytes]]) -> Counter[str]:
    """Per item id, how many events name it: the fetch jobs the workers must run (one per event
    and id, the same id in two events is fetched twice)."""
    pairs: Counter[str] = Counter()
    for _, body in messages:
        pairs.update(set(json.loads(body)["item_ids"]))
    return pairs


def insert_events(db_url: str, messages: Sequence[tuple[str, bytes]]) -> None:
    """Put events straight into the inbox (for tests that are not about the receiver)."""
    from dimmy_webhooks.models import ITEMS_SCANNED, IncomingEvent
    from dimmy_webhooks.store import create_store

    async def go() -> None:
        store = create_store(db_url)
        await store.open()
        try:
            for msg_id, body in messages:
                count = len(json.loads(body)["item_ids"])
                event = IncomingEvent(msg_id, ITEMS_SCANNED, body, {}, time.time(), count)
                await store.insert_event(event)
        finally:
            await store.close()

    asyncio.run(go())


@dataclass(frozen=True, slots=True)
class Deliveries:
    """What JSONL outputs hold: ``versions`` the (item id, version) pairs delivered, ``lines``
    in all, ``repeats`` lines beyond the first per idempotency key, ``conflicts`` item versions
    seen under more than one key or keys seen with more than one item version (both must be
    empty: a repeat carries the key of the first delivery)."""

    versions: set[tuple[str, str]]
    lines: int
    repeats: int
    conflicts: list[str]


def read_deliveries(paths: Sequence[Path]) -> Deliveries:
    lines = [line for path in paths for line in JsonlOutput.read(path)]
    by_key: dict[str, set[tuple[str, str]]] = {}
    by_version: dict[tuple[str, str], set[str]] = {}
    for line in lines:
        version = (line["item_id"], line["version"])
        by_key.setdefault(line["idempotency_key"], set()).add(version)
        by_version.setdefault(version, set()).add(line["idempotency_key"])
    conflicts = [key for key, seen in by_key.items() if len(seen) > 1]
    conflicts += [f"{item}@{ver}" for (item, ver), keys in by_version.items() if len(keys) > 1]
    return Deliveries(
        versions=set(by_version),
        lines=len(lines),
        repeats=len(lines) - len(by_key),
        conflicts=conflicts,
    )


# a retrying webhook sender -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """One POST: ``status`` ``None`` when no HTTP answer came (``error`` says what)."""

    msg_id: str
    url: str
    started: float  # time.monotonic()
    ended: float
    status: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class RetryingSender:
    """Posts each signed message until a 2xx, retrying with the same message id after a short
    random delay, ``concurrency`` messages at a time, alternating ``urls`` between attempts.

    Bounded: no attempt starts after ``deadline_seconds`` from :meth:`run`, and no message is
    tried more than ``max_attempts`` times. Run it in a thread (:meth:`start`, :meth:`join`)
    while the test kills and restarts the receivers; read ``acked`` and ``attempts`` at any
    time (appends only).
    """

    urls: Sequence[str]
    messages: Sequence[tuple[str, bytes]]
    seed: int
    concurrency: int = 8
    retry_delay: tuple[float, float] = (0.05, 0.2)
    deadline_seconds: float = 60.0
    max_attempts: int = 1000
    timeout: float = 10.0
    path: str = "/webhook"
    acked: dict[str, float] = field(default_factory=dict)  # msg id -> time of its first 2xx
    attempts: list[Attempt] = field(default_factory=list)
    _thread: threading.Thread | None = None

    @property
    def failed_attempts(self) -> list[Attempt]:
        return [attempt for attempt in list(self.attempts) if not attempt.ok]

    def missing(self) -> list[str]:
        return [msg_id for msg_id, _ in self.messages if msg_id not in self.acked]

    def start(self) -> RetryingSender:
        self._thread = threading.Thread(
            target=asyncio.run, args=(self.run(),), name="retrying-sender", daemon=True
        )
        self._thread.start()
        return self

    def join(self, timeout: float) -> bool:
        """Wait for the sender to finish; ``False`` if it is still running after ``timeout``."""
        assert self._thread is not None
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def finished(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    async def run(self) -> None:
        rng = random.Random(self.seed)
        deadline = time.monotonic() + self.deadline_seconds
        pending = list(enumerate(self.messages))
        pending.reverse()  # pop() takes them in order
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits) as client:

            async def lane() -> None:
                while pending and time.monotonic() < deadline:
                    index, (msg_id, body) = pending.pop()
                    await self._deliver(client, rng, deadline, index, msg_id, body)

            await asyncio.gather(*(lane() for _ in range(self.concurrency)))

    async def _deliver(
        self,
        client: httpx.AsyncClient,
        rng: random.Random,
        deadline: float,
        index: int,
        msg_id: str,
        body: bytes,
    ) -> None:
        for attempt in range(self.max_attempts):
            if time.monotonic() >= deadline:
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


def summary(tag: str, **numbers: object) -> str:
    """``tag: key=value, ...`` printed on one line (copied into docs/guarantees.md)."""
    line = f"{tag}: " + ", ".join(
        f"{key.replace('_', ' ')}={value}" for key, value in numbers.items()
    )
    print(f"SUMMARY {line}")
    return line


@dataclass
class WorkerSlot:
    """One ``dimmy-webhooks worker`` position, restarted in place after each kill: the
    :class:`ServiceProcess` object (and its log file) is reused; ``owner`` is the lease owner of
    the current incarnation, read from its log."""

    service: ServiceProcess
    offset: int = 0
    owner: str | None = None
    starts: int = 0

    def start(self) -> WorkerSlot:
        self.offset = log_size(self.service)
        self.owner = None
        self.starts += 1
        self.service.start()
        return self

    def current_owner(self, timeout: float = 30) -> str | None:
        if self.owner is None:
            self.owner = wait_owner(self.service, self.offset, timeout)
        return self.owner

    @property
    def pid(self) -> int | None:
        return None if self.service.proc is None else self.service.proc.pid
