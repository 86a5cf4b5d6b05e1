"""Shared fixtures: real SQLite files, real HTTP servers on 127.0.0.1, the real CLI.

The helpers they are built on (and that test modules import) are in :mod:`tests.support`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy, FakeDimmyConfig, create_app
from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.store import Store, schema
from dimmy_webhooks.web import create_app as create_web_app

from .support.builders import make_settings
from .support.constants import ADMIN_TOKEN, API_KEY, STORE_BACKENDS
from .support.databases import (
    admin_pg_url,
    migrated_sqlite_url,
    pg_database,
    pg_database_url,
    pg_execute,
)
from .support.processes import ServiceProcess, clean_env


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite file (for tests about SQLite itself)."""
    return migrated_sqlite_url(tmp_path / "dimmy.sqlite3")


@pytest.fixture(params=STORE_BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty database of each backend: the receiver, worker and API tests run on
    both."""
    url: str = request.getfixturevalue("pg_url" if request.param == "postgres" else "sqlite_url")
    return url


@pytest.fixture
def fake() -> FakeDimmy:
    return FakeDimmy(FakeDimmyConfig(api_key=API_KEY, seed=7))


@pytest.fixture
def fake_url(fake: FakeDimmy) -> Iterator[str]:
    with serve_in_thread(create_app(fake)) as url:
        yield url


@pytest.fixture
def service_url(db_url: str, fake_url: str, tmp_path: Path) -> Iterator[str]:
    """The whole service in a thread (receiver, worker, JSON API with ``ADMIN_TOKEN``) on each
    backend, fetching from ``fake``, delivering to ``tmp_path / "out.jsonl"``, a fetch retried
    quickly and dead after its second attempt."""
    settings = make_settings(
        db_url,
        api_key=API_KEY,
        api_url=fake_url,
        admin_token=ADMIN_TOKEN,
        outputs=f"jsonl:{tmp_path / 'out.jsonl'}",
        retry_base_seconds=0.05,
        max_attempts=2,
    )
    with serve_in_thread(create_web_app(settings)) as url:
        yield url


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[ServiceProcess] = []

    def factory(args: list[str], *, nofile: int | None = None, **env: str) -> ServiceProcess:
        service = ServiceProcess(tmp_path, clean_env(**env), args, nofile=nofile)
        started.append(service)
        return service

    yield factory
    for service in started:
        service.kill()


# PostgreSQL: a server for the tests, one migrated template per session, one database per test


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A reachable PostgreSQL server (skips, or fails under DIMMY_TEST_REQUIRE_POSTGRES=1)."""
    import psycopg

    from dimmy_webhooks.store.postgres import describe

    url = admin_pg_url()
    try:
        pg_execute(url, "SELECT 1")
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
    with pg_database(pg_admin_url, tag="tpl") as name:
        schema.upgrade(pg_database_url(pg_admin_url, name))
        yield name


@pytest.fixture
def pg_empty_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no schema at all."""
    with pg_database(pg_admin_url) as name:
        yield pg_database_url(pg_admin_url, name)


@pytest.fixture
def pg_url(pg_admin_url: str, pg_template: str) -> Iterator[str]:
    """A fresh, migrated database of its own for this test, dropped afterwards."""
    with pg_database(pg_admin_url, template=pg_template) as name:
        yield pg_database_url(pg_admin_url, name)


@pytest.fixture
async def sqlite_store(sqlite_url: str) -> AsyncIterator[Store]:
    """An opened, empty store on this test's own migrated SQLite file (``sqlite_url``), closed
    afterwards: for tests of what runs on a store, not of the store's backends."""
    from dimmy_webhooks.store import create_store

    opened = create_store(sqlite_url, max_attempts=8)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture(params=STORE_BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """An opened, empty store of each backend (max_attempts=8)."""
    from dimmy_webhooks.store import SQLiteStore

    backend: Any
    if request.param == "postgres":
        from dimmy_webhooks.store.postgres import PostgresStore

        backend = PostgresStore(request.getfixturevalue("pg_url"), max_attempts=8, pool_size=4)
    else:
        url = migrated_sqlite_url(tmp_path / "contract.sqlite3")
        backend = SQLiteStore(url.removeprefix("sqlite:///"), max_attempts=8)
    await backend.open()
    yield backend
    await backend.close()
