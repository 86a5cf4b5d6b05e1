"""Shared fixtures: real SQLite files, real HTTP servers on 127.0.0.1, the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dimmy_webhooks import schema
from dimmy_webhooks.config import Settings, load_settings
from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy, FakeDimmyConfig, create_app
from dimmy_webhooks.devtools.runner import free_port, serve_in_thread
from dimmy_webhooks.signatures import parse_secrets, signed_headers

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY = parse_secrets(SECRET)[0]
API_KEY = "test-api-key-123"
ADMIN_TOKEN = "test-admin-token-456"
CLI = str(Path(sys.executable).with_name("dimmy-webhooks"))


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


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite file (for tests about SQLite itself)."""
    url = f"sqlite:///{tmp_path / 'dimmy.sqlite3'}"
    schema.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each backend: the receiver, worker and API tests run on
    both."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    url = f"sqlite:///{tmp_path / 'dimmy.sqlite3'}"
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

    with psycopg.connect(db_url, row_factory=dict_row) as pg:
        return [
            {k: bytes(v) if isinstance(v, memoryview) else v for k, v in row.items()}
            for row in pg.execute(sql).fetchall()  # type: ignore[call-overload,unused-ignore]
        ]


def make_settings(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_secret": SECRET,
        "database_url": db_url,
        "outputs": "",
        "log_level": "INFO",
    }
    values.update(overrides)
    return load_settings(None, **values)


@pytest.fixture
def fake() -> FakeDimmy:
    return FakeDimmy(FakeDimmyConfig(api_key=API_KEY, seed=7))


@pytest.fixture
def fake_url(fake: FakeDimmy) -> Iterator[str]:
    with serve_in_thread(create_app(fake)) as url:
        yield url


def clean_env(**values: str) -> dict[str, str]:
    """The environment for a child process: ours without any DIMMY_* the developer set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIMMY_")}
    env.update(values)
    return env


class ServiceProcess:
    """``dimmy-webhooks <command>`` as a user starts it, in its own process group."""

    def __init__(self, tmp_path: Path, env: dict[str, str], args: list[str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp_path / f"service-{self.port}.log"

    def start(self, *, wait: bool = True) -> ServiceProcess:
        args = [CLI, *self.args]
        if self.args and self.args[0] == "serve":
            args += ["--port", str(self.port)]
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                args,
                cwd=self.tmp_path,
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
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


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[ServiceProcess] = []

    def factory(args: list[str], **env: str) -> ServiceProcess:
        service = ServiceProcess(tmp_path, clean_env(**env), args)
        started.append(service)
        return service

    yield factory
    for service in started:
        service.kill()


# PostgreSQL: a server for the tests, one migrated template per session, one database per test

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _admin_pg_url() -> str:
    return os.environ.get("DIMMY_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def pg_database_url(admin_url: str, dbname: str) -> str:
    """``admin_url`` pointing at another database of the same server."""
    from urllib.parse import urlsplit

    return urlsplit(admin_url)._replace(path="/" + dbname).geturl()


def _new_pg_name() -> str:
    import uuid  # unique across pytest-xdist workers and concurrent runs

    return f"dimmy_test_{uuid.uuid4().hex[:16]}"


def _pg_execute(admin_url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        for statement in statements:
            conn.execute(statement)  # names are generated here, never input


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A reachable PostgreSQL server (skips, or fails under DIMMY_TEST_REQUIRE_POSTGRES=1)."""
    import psycopg

    from dimmy_webhooks.store.postgres import describe

    url = _admin_pg_url()
    try:
        _pg_execute(url, "SELECT 1")
    except psycopg.Error as exc:
        where, _ = describe(url)
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        reason = (
            f"PostgreSQL not reachable at {where} ({first}): "
            "start it or set DIMMY_TEST_POSTGRES_URL"
        )
        if os.environ.get("DIMMY_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return url


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> Iterator[str]:
    """A database migrated once per session (per xdist worker), copied for each test."""
    name = _new_pg_name().replace("_test_", "_tpl_")
    _pg_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    try:
        schema.upgrade(pg_database_url(pg_admin_url, name))
        yield name
    finally:
        _pg_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_empty_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = _new_pg_name()
    _pg_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    try:
        yield pg_database_url(pg_admin_url, name)
    finally:
        _pg_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_admin_url: str, pg_template: str) -> Iterator[str]:
    """A fresh, migrated database of its own for this test, dropped afterwards."""
    name = _new_pg_name()
    _pg_execute(pg_admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    try:
        yield pg_database_url(pg_admin_url, name)
    finally:
        _pg_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


STORE_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORE_BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """An opened, empty store of each backend (max_attempts=8)."""
    from dimmy_webhooks.store import SQLiteStore

    backend: Any
    if request.param == "postgres":
        from dimmy_webhooks.store.postgres import PostgresStore

        backend = PostgresStore(request.getfixturevalue("pg_url"), max_attempts=8, pool_size=4)
    else:
        url = f"sqlite:///{tmp_path / 'contract.sqlite3'}"
        schema.upgrade(url)
        backend = SQLiteStore(url.removeprefix("sqlite:///"), max_attempts=8)
    await backend.open()
    yield backend
    await backend.close()
