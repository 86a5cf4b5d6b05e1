"""Move a site from its SQLite file to PostgreSQL: copy events, jobs and items, ids kept.

``dimmy-webhooks export-sqlite-to-postgres SQLITE_PATH [--to postgresql://...]`` reads the file
in one read transaction (a consistent snapshot, even while a service still writes it) and writes
everything into an empty PostgreSQL database in one transaction: either all of it arrives, or
nothing does. Rows go in batches through ``COPY``; ids are kept, so event ids shown in logs and
the dashboard stay valid, and the id sequences are moved past the copied ids afterwards.

Jobs that were ``running`` in the file become ``pending``: their leases belong to processes that
no longer exist (the next worker runs them again, as after a crash). A target that already
holds events, jobs or items is refused: exporting twice must not mix two histories.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from dimmy_webhooks.errors import ConfigError, StoreError, StoreUnavailable
from dimmy_webhooks.store import schema
from dimmy_webhooks.store.postgres import describe, reason

TABLES = ("events", "jobs", "items")
"""Copied in this order; ``events`` and ``jobs`` have id sequences to move on."""

_SEQUENCED = ("events", "jobs")
BATCH_ROWS = 1000


@dataclass(frozen=True, slots=True)
class ExportResult:
    """Rows copied per table, jobs released from a dead lease, next id per sequence."""

    copied: dict[str, int]
    released_jobs: int
    next_ids: dict[str, int]


def export_sqlite_to_postgres(
    sqlite_path: Path,
    target_url: str,
    *,
    batch_rows: int = BATCH_ROWS,
    echo: Callable[[str], None] = lambda line: None,
) -> ExportResult:
    """Copy ``sqlite_path`` into the empty PostgreSQL database at ``target_url``.

    Raises :class:`ConfigError` for a missing or foreign file, a schema that is not current on
    either side, or a target that is not empty; :class:`StoreUnavailable` when PostgreSQL
    cannot be reached; :class:`StoreError` when it refuses the data (nothing is kept then).
    """
    if not target_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "the export target must be a postgresql:// URL (pass --to or set DIMMY_DATABASE_URL)"
        )
    if batch_rows < 1:
        raise ConfigError("batch size must be at least 1")
    where, password = describe(target_url)
    source = _check_source(Path(sqlite_path))
    try:
        pg = psycopg.connect(target_url, connect_timeout=10)
    except psycopg.Error as exc:
        raise StoreUnavailable(
            f"cannot connect to PostgreSQL at {where}: {reason(exc, password)}"
        ) from exc
    try:
        with pg, closing(_open_sqlite(source)) as lite:
            _prepare_target(target_url, where, echo)
            lite.execute("BEGIN")  # one snapshot of the whole file
            with pg.transaction():
                return _copy_all(lite, pg, batch_rows, echo)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot read {source}: {exc}") from exc
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(
            f"export into PostgreSQL at {where} failed, nothing was kept: {reason(exc, password)}"
        ) from exc
    except psycopg.Error as exc:
        raise StoreError(
            f"PostgreSQL at {where} refused the data, nothing was kept: {reason(exc, password)}"
        ) from exc


# the two ends ----------------------------------------------------------------------------------


def _check_source(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(f"{path}: no such SQLite file")
    with path.open("rb") as handle:
        if handle.read(16) != b"SQLite format 3\x00":
            raise ConfigError(f"{path}: not a SQLite database")
    state = schema.status(f"sqlite:///{path.resolve()}")
    if state.current is None:
        raise ConfigError(f"{path}: not a dimmy-webhooks database (no schema version)")
    if not state.up_to_date:
        raise ConfigError(
            f"{path}: schema at {state.current}, this version needs {state.head}: run "
            f"`DIMMY_DATABASE_URL=sqlite:///{path.resolve()} dimmy-webhooks migrate` first"
        )
    return path


def _prepare_target(url: str, where: str, echo: Callable[[str], None]) -> None:
    state = schema.status(url)
    if state.current is None:
        state = schema.upgrade(url)
        echo(f"migrated {where} to schema {state.current}")
    if not state.up_to_date:
        raise ConfigError(
            f"PostgreSQL at {where} has schema {state.current}, this version needs {state.head}: "
            "export with the dimmy-webhooks version that matches it, or migrate it first"
        )


def _open_sqlite(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    conn.execute("PRAGMA query_only = 1")  # this command never writes the source
    return conn


# copying ---------------------------------------------------------------------------------------


def _copy_all(
    lite: sqlite3.Connection,
    pg: psycopg.Connection[Any],
    batch_rows: int,
    echo: Callable[[str], None],
) -> ExportResult:
    # nobody else writes these tables until we commit; a second export waits, then finds data
    pg.execute(
        sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in TABLES)
        )
    )
    _refuse_non_empty(pg)
    copied: dict[str, int] = {}
    for table in TABLES:
        columns = _columns(lite, pg, table)
        transform = _released_job(columns) if table == "jobs" else None
        copied[table] = _write(
            pg, table, columns, _read(lite, table, columns, batch_rows), echo, transform
        )
        echo(f"{table}: {copied[table]} rows copied")
    released = int(lite.execute("SELECT count(*) FROM jobs WHERE status = 'running'").fetchone()[0])
    if released:
        echo(f"jobs: {released} running in the SQLite file are pending now (their leases died)")
    next_ids = {table: _reset_sequence(pg, table) for table in _SEQUENCED}
    echo("next ids: " + ", ".join(f"{table} {n}" for table, n in next_ids.items()))
    return ExportResult(copied=copied, released_jobs=released, next_ids=next_ids)


def _refuse_non_empty(pg: psycopg.Connection[Any]) -> None:
    found = []
    for table in TABLES:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        row = pg.execute(query).fetchone()
        if row and row[0]:
            found.append(f"{row[0]} {table}")
    if found:
        raise ConfigError(
            f"the target already holds {', '.join(found)}: export only into an empty database "
            "(create a new one and point --to at it)"
        )


def _columns(lite: sqlite3.Connection, pg: psycopg.Connection[Any], table: str) -> list[str]:
    """The target's columns in order; the source must have exactly the same ones."""
    rows = pg.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    target = [str(row[0]) for row in rows]
    source = {str(row[1]) for row in lite.execute(f'PRAGMA table_info("{table}")')}
    if set(target) != source:
        raise ConfigError(
            f"table {table} differs between the SQLite file and PostgreSQL "
            f"(only in SQLite: {sorted(source - set(target))}, "
            f"only in PostgreSQL: {sorted(set(target) - source)})"
        )
    return target


Row = tuple[Any, ...]


def _read(
    lite: sqlite3.Connection, table: str, columns: Sequence[str], batch_rows: int
) -> Iterator[list[Row]]:
    names = ", ".join(f'"{name}"' for name in columns)  # from the target's catalog
    cursor = lite.execute(f'SELECT {names} FROM "{table}" ORDER BY id')
    while batch := cursor.fetchmany(batch_rows):
        yield [tuple(row) for row in batch]


def _released_job(columns: Sequence[str]) -> Callable[[Row], Row]:
    """``running`` becomes ``pending`` without the lease: its owner no longer exists."""
    status = columns.index("status")
    lease = [columns.index(name) for name in ("lease_owner", "lease_token", "lease_expires_at")]

    def transform(row: Row) -> Row:
        if row[status] != "running":
            return row
        values = list(row)
        values[status] = "pending"
        for index in lease:
            values[index] = None
        return tuple(values)

    return transform


def _write(
    pg: psycopg.Connection[Any],
    table: str,
    columns: Sequence[str],
    batches: Iterator[list[Row]],
    echo: Callable[[str], None],
    transform: Callable[[Row], Row] | None = None,
) -> int:
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    blobs = [i for i, name in enumerate(columns) if name == "body"]
    total = 0
    with pg.cursor() as cursor, cursor.copy(copy_sql) as copy:
        for number, batch in enumerate(batches, start=1):
            for source_row in batch:
                row = source_row if transform is None else transform(source_row)
                copy.write_row(_as_bytes(row, blobs) if blobs else row)
            total += len(batch)
            if number % 10 == 0:
                echo(f"{table}: {total} rows so far")
    return total


def _as_bytes(row: Row, indexes: Sequence[int]) -> Row:
    """SQLite keeps whatever type was inserted; a body stored as text goes in as its bytes."""
    values = list(row)
    for index in indexes:
        if isinstance(values[index], str):
            values[index] = values[index].encode("utf-8")
    return tuple(values)


def _reset_sequence(pg: psycopg.Connection[Any], table: str) -> int:
    """Move ``table``'s id sequence past the copied ids; returns the next id it will give."""
    row = pg.execute(
        sql.SQL(
            "SELECT setval(pg_get_serial_sequence({name}, 'id'), COALESCE(max(id), 1), "
            "max(id) IS NOT NULL), max(id) FROM {table}"
        ).format(name=sql.Literal(table), table=sql.Identifier(table))
    ).fetchone()
    assert row is not None
    return 1 if row[1] is None else int(row[1]) + 1
