"""The databases the tests run on: migrated SQLite files, throwaway PostgreSQL databases, and
reading or changing rows behind the store's back (so a test checks what is really stored)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dimmy_webhooks.store import schema

from .builders import scanned_event


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


def insert_events(db_url: str, messages: Sequence[tuple[str, bytes]]) -> None:
    """Put ``items.scanned`` events straight into the inbox, as the receiver would (for tests
    that are not about the receiver)."""
    from dimmy_webhooks.store import create_store

    async def go() -> None:
        store = create_store(db_url)
        await store.open()
        try:
            for msg_id, body in messages:
                ids = json.loads(body)["item_ids"]
                await store.insert_event(scanned_event(msg_id, ids, headers={}))
        finally:
            await store.close()

    asyncio.run(go())


def hold_item(db_url: str, item_id: str, reason: str = "side over 100 cm") -> None:
    """Put a stored item in quarantine behind the store's back (as a validation rule would)."""
    sql = (
        "UPDATE items SET hold_state = 'held', hold_reason = '{reason}', held_at = {now} "
        "WHERE id = '{item}'"
    ).format(reason=reason.replace("'", "''"), now=time.time(), item=_literal(item_id))
    execute(db_url, sql)


def execute(db_url: str, sql: str) -> None:
    """Run one statement straight on either backend (bypassing the store), committed."""
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
