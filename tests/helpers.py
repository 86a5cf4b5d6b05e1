"""What the tests share besides fixtures: credentials, signing, waiting, the service as a child
process, reading the database behind the store's back, events and a retrying webhook sender.

The fixtures built on these live in ``conftest.py``; test modules import from here. Everything
is bounded (waits take a timeout, the sender a deadline and an attempt cap) and all traffic goes
to 127.0.0.1. Nothing here asserts: the tests decide what is a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from dimmy_webhooks.config import Settings, load_settings
from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy, FakeDimmyConfig
from dimmy_webhooks.devtools.runner import free_port
from dimmy_webhooks.devtools.sender import items_scanned_body
from dimmy_webhooks.signatures import parse_secrets, signed_headers
from dimmy_webhooks.store import schema

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY = parse_secrets(SECRET)[0]
API_KEY = "test-api-key-123"
ADMIN_TOKEN = "test-admin-token-456"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # the JSON API's admin credentials
CLI = str(Path(sys.executable).with_name("dimmy-webhooks"))

# the two store backends, as fixture parameters (PostgreSQL ones carry the ``postgres`` mark)
STORE_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

FULL = os.environ.get("DIMMY_FAULTS_FULL") == "1"


def scaled(n: int) -> int:
    """``n`` for a normal run, ``10 * n`` for a full run (``DIMMY_FAULTS_FULL=1``)."""
    return n * 10 if FULL else n


def signed(body: bytes, msg_id: str, **kwargs: Any) -> dict[str, str]:
    headers = signed_headers(KEY, msg_id, body, **kwargs)
    headers["content-type"] = "application/json"
    return headers


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true (``True``) or ``timeout`` seconds passed (``False``)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def make_settings(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_secret": SECRET,
        "database_url": db_url,
        "outputs": "",
        "log_level": "INFO",
    }
    values.update(overrides)
    return load_settings(None, **values)


class FakeTime:
    """A monotonic clock that only moves when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def reset_fake(fake: FakeDimmy, config: FakeDimmyConfig) -> FakeDimmy:
    """``fake`` as new under ``config``: no items, no failing ids, no counts (for a fake served
    once per module and shared by its tests)."""
    fake.config = config
    fake.items.clear()
    fake.fail_ids.clear()
    fake.reset_stats()
    return fake


# the service as a user starts it -------------------------------------------------------------


def clean_env(**values: str) -> dict[str, str]:
    """The environment for a child process: ours without any DIMMY_* the developer set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIMMY_")}
    env.update(values)
    return env


def run(
    args: Sequence[str], cwd: Path, *, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end as a user would (text output captured, ``env`` added to a
    :func:`clean_env`); never raises for a non-zero exit."""
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ServiceProcess:
    """``dimmy-webhooks <command>`` as a user starts it, in its own process group; ``nofile``
    sets its open-file limit (``LimitNOFILE=`` of a systemd unit)."""

    def __init__(
        self, tmp_path: Path, env: dict[str, str], args: list[str], *, nofile: int | None = None
    ) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.args = args
        self.nofile = nofile
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp_path / f"service-{self.port}.log"

    def start(self, *, wait: bool = True) -> ServiceProcess:
        args = [CLI, *self.args]
        if self.args and self.args[0] == "serve":
            args += ["--port", str(self.port)]
        limit = self.nofile

        def set_nofile() -> None:  # in the child, before exec
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                args,
                cwd=self.tmp_path,
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=set_nofile if limit is not None else None,  # noqa: PLW1509
            )
        if wait and self.args[0] == "serve":
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited: {self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"service not ready: {self.log()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_kb(self) -> int:
        """The process's resident memory now (``VmRSS``, kB)."""
        assert self.proc is not None
        return proc_status_kb(self.proc.pid)["VmRSS"]


def proc_status_kb(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``, ...)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            out[name] = int(value.split()[0])
    return out


def logs_tail(services: Sequence[ServiceProcess], tail: int = 4000) -> str:
    """The end of every service's log, for an assertion message."""
    return "\n".join(
        f"--- {' '.join(s.args)} pid={s.proc.pid if s.proc else '-'} ({s.log_path.name}) ---\n"
        f"{s.log()[-tail:]}"
        for s in services
    )


# raw HTTP/1.1 on a socket, for what an HTTP client library will not send -----------------------


def raw_connection(url: str, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to ``url``'s host and port (``http://127.0.0.1:PORT``)."""
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def raw_request(url: str, head: str) -> socket.socket:
    """A connection to ``url`` on which ``head`` (request line and headers) was sent."""
    sock = raw_connection(url)
    sock.sendall(head.encode())
    return sock


def read_status(sock: socket.socket) -> int:
    """The status of the next response on ``sock`` (raises ``ValueError`` or ``IndexError``
    when the connection closed without one)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed ``sock``, without waiting (what was sent to it is read and
    dropped)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True
    finally:
        sock.settimeout(timeout)


def webhook_head(body: bytes, headers: dict[str, str], *, length: int | None = None) -> str:
    """The head of ``POST /webhook`` with ``headers`` and a ``Content-Length`` of ``length``
    (default: ``len(body)``)."""
    return (
        f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: "
        f"{len(body) if length is None else length}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    )


# the database, read straight (bypassing the store) -------------------------------------------


def backend(db_url: str) -> str:
    return "sqlite" if db_url.startswith("sqlite:") else "postgres"


def migrated_sqlite_url(path: Path) -> str:
    """The URL of a SQLite file at ``path``, migrated to the current schema."""
    url = f"sqlite:///{path}"
    schema.upgrade(url)
    return url


def query(db_url: str, sql: str) -> list[dict[str, Any]]:
    """Rows of ``sql`` as dicts, read straight from either backend (bypassing the store)."""
    if db_url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in conn.execute(sql).fetchall()]
        finally:
            conn.close()
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(db_url, row_factory=dict_row, connect_timeout=5) as pg:
        return [
            {k: bytes(v) if isinstance(v, memoryview) else v for k, v in row.items()}
            for row in pg.execute(sql).fetchall()  # type: ignore[call-overload,unused-ignore]
        ]


def rows(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` as tuples (see :func:`query`)."""
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


def unfinished_jobs(db_url: str) -> int:
    """Jobs pending or running (events not yet turned into jobs are not counted)."""
    return int(scalar(db_url, "SELECT count(*) FROM jobs WHERE status IN ('pending', 'running')"))


def work_left(db_url: str) -> int:
    """Jobs pending or running plus events not yet finished: 0 once everything drained."""
    return int(
        scalar(
            db_url,
            "SELECT (SELECT count(*) FROM jobs WHERE status IN ('pending', 'running'))"
            " + (SELECT count(*) FROM events WHERE status IN ('pending', 'processing'))",
        )
    )


def job_counts(db_url: str) -> dict[tuple[str, str], int]:
    """``{(kind, status): n}`` over every job."""
    found = rows(db_url, "SELECT kind, status, count(*) FROM jobs GROUP BY kind, status")
    return {(kind, status): int(n) for kind, status, n in sorted(found)}


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


# PostgreSQL: the test server and throwaway databases on it -----------------------------------

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_pg_url() -> str:
    return os.environ.get("DIMMY_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def pg_database_url(admin_url: str, dbname: str) -> str:
    """``admin_url`` pointing at another database of the same server."""
    from urllib.parse import urlsplit

    return urlsplit(admin_url)._replace(path="/" + dbname).geturl()


def pg_execute(admin_url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        for statement in statements:
            conn.execute(statement)  # names are generated here, never input


@contextmanager
def pg_database(admin_url: str, *, template: str | None = None, tag: str = "test") -> Iterator[str]:
    """A new database on ``admin_url``'s server (a copy of ``template`` when given), dropped
    with its connections afterwards; yields its name."""
    import uuid  # unique across pytest-xdist workers and concurrent runs

    name = f"dimmy_{tag}_{uuid.uuid4().hex[:16]}"
    copy = "" if template is None else f' TEMPLATE "{template}"'
    pg_execute(admin_url, f'CREATE DATABASE "{name}"{copy}')
    try:
        yield name
    finally:
        pg_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# events --------------------------------------------------------------------------------------


def make_events(
    rng: random.Random,
    ids: Sequence[str],
    n: int,
    per_event: int | tuple[int, int],
    prefix: str = "msg",
) -> list[tuple[str, bytes]]:
    """``n`` (message id, ``items.scanned`` body) pairs, each naming ``per_event`` distinct ids
    (a number, or a ``(low, high)`` range drawn per event) drawn from ``ids`` (so ids repeat
    across events)."""

    def size() -> int:
        return per_event if isinstance(per_event, int) else rng.randint(*per_event)

    return [
        (f"{prefix}_{index:06d}", items_scanned_body(rng.sample(list(ids), size())))
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
    """Put ``items.scanned`` events straight into the inbox, as the receiver would (for tests
    that are not about the receiver)."""
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


# a retrying webhook sender -------------------------------------------------------------------


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


# a warehouse system on 127.0.0.1 ------------------------------------------------------------


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


# the dashboard, as a browser uses it -----------------------------------------------------------


def dashboard_login(client: httpx.Client, token: str = ADMIN_TOKEN) -> str:
    """Log ``client`` in to the dashboard as its login page's script does (the login form's
    double-submit token, then a JSON post); returns the session's CSRF token."""
    client.get("/ui/login")
    nonce = client.cookies.get("dimmy_login", path="/ui/login") or ""
    answer = client.post("/ui/login", json={"token": token}, headers={"x-csrf-token": nonce})
    if answer.status_code != 200:
        raise AssertionError(f"login refused: {answer.status_code} {answer.text}")
    return csrf_of(client.get("/").text)


def csrf_of(page: str) -> str:
    """The CSRF token a dashboard page carries for its script."""
    found = re.search(r'<meta name="csrf-token" content="([^"]*)">', page)
    return found.group(1) if found else ""


def hold_item(db_url: str, item_id: str, reason: str = "side over 100 cm") -> None:
    """Put a stored item in quarantine behind the store's back (as a validation rule would)."""
    sql = (
        "UPDATE items SET hold_state = 'held', hold_reason = '{reason}', held_at = {now} "
        "WHERE id = '{item}'"
    ).format(reason=reason.replace("'", "''"), now=time.time(), item=_literal(item_id))
    if db_url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=10)
        try:
            with conn:
                conn.execute(sql)
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(db_url, autocommit=True, connect_timeout=5) as pg:
        pg.execute(sql)  # type: ignore[call-overload,unused-ignore]
