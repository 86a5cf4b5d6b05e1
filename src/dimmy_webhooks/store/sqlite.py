"""SQLite backend: one file, WAL, ``synchronous=FULL``, one writer thread with group commit.

Every write of this process goes through a single writer thread. It takes everything that is
waiting, runs each operation in its own savepoint inside one ``BEGIN IMMEDIATE`` transaction and
commits once: one fsync for many concurrent webhooks, and nobody is answered before the commit
that holds their row has returned. An operation that fails rolls back only its savepoint; a
commit that fails fails every operation of the batch (:class:`StoreUnavailable`).

Reads use a small pool of connections in threads of their own (WAL readers never block the
writer): whatever else this process runs in threads (the event loop's default executor) cannot
starve ``/readyz`` or the JSON API.
Other processes (``dimmy-webhooks worker``) may write the same file; ``busy_timeout`` and
``BEGIN IMMEDIATE`` serialise them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from dimmy_webhooks.errors import ConfigError, StoreUnavailable
from dimmy_webhooks.models import IncomingEvent, InsertOutcome
from dimmy_webhooks.store import inbox, ops, sql
from dimmy_webhooks.store.base import Due, Store, settled
from dimmy_webhooks.store.batching import GroupCommit, Outcome

T = TypeVar("T")
log = logging.getLogger(__name__)

_BUSY_TIMEOUT_MS = 5000
_MAX_BATCH = 512
_READ_THREADS = 8


def connect(path: Path, *, busy_timeout_ms: int = _BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """A connection with the settings durability depends on (checked by the tests)."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise StoreUnavailable(f"{path}: cannot switch to WAL journal mode (got {mode})")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


class SQLiteTx:
    """:class:`ops.Tx` over a sqlite3 connection already inside a transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def sql(self, name: str) -> str:
        return sql.SQL[name]

    def all(self, sql: str, params: Mapping[str, Any] | None = None) -> list[ops.Row]:
        return self.conn.execute(sql, params or {}).fetchall()

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        return self.conn.execute(sql, params or {}).rowcount

    def many(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None:
        self.conn.executemany(sql, params)


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        return StoreUnavailable(f"sqlite: {exc}")
    return exc


def connect_writer(path: Path) -> sqlite3.Connection:
    """:func:`connect`, for the single writer: its savepoints journal in memory.

    Each operation of a group commit runs in a savepoint, and SQLite keeps the first copy of
    every page an operation changes in a sub-journal, to undo it if the operation fails. With
    the default ``temp_store`` that sub-journal is a temporary file: a 4 KB write (and a 4-byte
    one) per page changed, about eight times the writes the WAL itself gets while a worker
    drains. In memory it holds one operation's pages at a time (it is emptied when the
    savepoint is released) and costs no system call. Durability is the WAL's and is unchanged;
    only this connection's temporary storage moves (the readers' sorts may still spill to disk).
    """
    conn = connect(path)
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


class _Writer:
    """The single writer: one connection, one :class:`GroupCommit` thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = connect_writer(path)
        self.commits = GroupCommit(self._commit_batch, max_batch=_MAX_BATCH, name="sqlite-writer")

    def submit(self, op: Callable[[ops.Tx], Any], *, savepoint: bool = True) -> Future[Any]:
        """Queue ``op`` for the next group commit. ``savepoint=False`` is for operations that
        never fail half-way except with a database error (the webhook insert, the hot path):
        if one does fail, the whole batch is rolled back and every operation in it fails."""
        return self.commits.submit((op, savepoint))

    def stop(self) -> None:
        self.commits.stop()
        if self.conn is not None:
            self.conn.close()

    def _commit_batch(self, batch: Sequence[tuple[Callable[[ops.Tx], Any], bool]]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        try:
            if self.conn is None:  # the last one broke: start afresh
                self.conn = connect_writer(self.path)
            conn, tx = self.conn, SQLiteTx(self.conn)
            conn.execute("BEGIN IMMEDIATE")
            for op, savepoint in batch:
                if not savepoint:
                    outcomes.append((op(tx), None))
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    value = op(tx)
                except Exception as exc:  # the op's own failure: undo only its savepoint
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((None, _translate(exc)))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((value, None))
            conn.execute("COMMIT")
        except BaseException as exc:
            log.warning("sqlite commit failed: %s", exc)
            self._rollback()
            raise StoreUnavailable(f"sqlite: {exc}") from exc
        return outcomes

    def _rollback(self) -> None:
        if self.conn is None:
            return
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            # the connection is unusable (I/O error): the next batch opens another
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None


class SQLiteStore(Store):
    """The :class:`~dimmy_webhooks.store.base.Store` on one SQLite file."""

    def __init__(self, path: Path | str, *, max_attempts: int = 8) -> None:
        self.path = Path(path)
        self.max_attempts = max_attempts
        self._writer: _Writer | None = None
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all_readers: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._reads: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        if sqlite3.sqlite_version_info < (3, 35, 0):
            raise ConfigError(
                f"SQLite {sqlite3.sqlite_version} is too old: 3.35 or newer is needed "
                "(RETURNING); use a newer Python build or PostgreSQL"
            )
        try:
            self._writer = await asyncio.to_thread(_Writer, self.path)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        self._reads = ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="sqlite-read")

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.to_thread(self._writer.stop)
            self._writer = None
        if self._reads is not None:
            reads, self._reads = self._reads, None
            await asyncio.to_thread(reads.shutdown)  # reads are short: let them end
        with self._lock:
            for conn in self._all_readers:
                conn.close()
            self._all_readers.clear()

    async def _write(self, op: Callable[[ops.Tx], T], due: Due[T] | None = None) -> T:
        # one process: its own workers are woken by the receiver, others poll
        return await self._submit(op)

    async def _submit(self, op: Callable[[ops.Tx], T], *, savepoint: bool = True) -> T:
        if self._writer is None:
            raise StoreUnavailable("store is closed")
        result: T = await settled(self._writer.submit(op, savepoint=savepoint))
        return result

    def _read_sync(self, op: Callable[[ops.Tx], T]) -> T:
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = connect(self.path)
            with self._lock:
                self._all_readers.append(conn)
        try:
            conn.execute("BEGIN")
            try:
                return op(SQLiteTx(conn))
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from exc
        finally:
            self._readers.put(conn)

    async def _read(self, op: Callable[[ops.Tx], T]) -> T:
        if self._reads is None:
            raise StoreUnavailable("store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._reads, self._read_sync, op)

    # what the backend provides ------------------------------------------------------------

    def failures(self) -> list[str]:
        if self._writer is not None and not self._writer.commits.alive:
            return ["sqlite writer thread stopped: writes cannot commit"]
        return []

    async def wait_for_work(self, timeout: float) -> None:
        # no cross-process signal on SQLite: other processes' work is found by polling
        await asyncio.sleep(timeout)

    async def insert_event(self, event: IncomingEvent) -> InsertOutcome:
        with self.intake_first.inserting():
            return await self._submit(
                lambda tx: inbox.insert_event(tx, event, self.max_attempts), savepoint=False
            )
