"""PostgreSQL backend: a connection pool, group commits for hot writes, SKIP LOCKED claims.

Many receivers and workers on many machines share one database. Every operation of the
store's seams runs unchanged on a pooled connection, in the dialect of :mod:`.postgres_sql`:
most as one transaction each in a thread of the store's own pool; webhook inserts, and a
worker's writes about its jobs, in lanes of their own where the operations waiting share one
transaction (:class:`.GroupCommit`). The commit (``synchronous_commit = on``) has returned
before the caller is answered, and a caller cancelled during a write hears of it only once the
write ended (:func:`.settled`). Claims lock the rows they take with ``FOR UPDATE SKIP
LOCKED``, so concurrent workers never wait for each other and never take the same job.

``LISTEN/NOTIFY`` is a wake-up hint only: a transaction that made work due sends
``NOTIFY dimmy_jobs`` (delivered on commit), and :meth:`PostgresStore.wait_for_work` returns
early when one arrives (the listener thread: :mod:`.postgres_conn`). Workers poll anyway, so a
lost notification costs one poll interval.

Driver exceptions never leave this module: connection trouble, timeouts and aborted
transactions become :class:`StoreUnavailable` (retry later), anything else :class:`StoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from dimmy_webhooks.errors import ConfigError, LeaseLost, StoreError, StoreUnavailable
from dimmy_webhooks.models import UNKNOWN, IncomingEvent, InsertOutcome
from dimmy_webhooks.store import inbox, ops
from dimmy_webhooks.store.base import Due, Store, settled
from dimmy_webhooks.store.batching import GroupCommit, Outcome
from dimmy_webhooks.store.postgres_conn import (
    APPLICATION_NAME,
    CHANNEL,
    RETRYABLE,
    UNAVAILABLE,
    Listener,
    describe,
    reason,
)
from dimmy_webhooks.store.postgres_sql import SQL, PostgresTx, to_pyformat, write_events

T = TypeVar("T")
log = logging.getLogger(__name__)

_MIN_SERVER_VERSION = 120000  # AS MATERIALIZED (12+)
_DEADLOCK_RETRIES = 3

_BATCH_FAILS: tuple[type[Exception], ...] = (*RETRYABLE, *UNAVAILABLE)
"""What fails a whole batch of job writes, not only the operation it came from."""


class _Isolate(Exception):
    """A job write of a batch run without savepoints failed: run the batch again with them."""


def _notify(result: tuple[Any, bool]) -> bool:
    return result[1]


_INBOX_LANE = 2
_MAX_BATCH = 256
_JOB_LANE = 2
_MAX_JOB_BATCH = 128

JobWrite = tuple[Callable[[ops.Tx], Any], Due[Any] | None, str]
"""A job write, what to wake when it commits, and the item whose row it may lock ("" none)."""


class PostgresStore(Store):
    """The :class:`~dimmy_webhooks.store.base.Store` on a PostgreSQL database.

    ``database_url`` is a libpq URL (``postgresql://user:password@host:port/dbname``).
    ``pool_size`` bounds this process's connections (plus one for ``LISTEN``).
    """

    def __init__(
        self,
        database_url: str,
        *,
        max_attempts: int = 8,
        pool_size: int = 10,
        connect_timeout: float = 10.0,
        pool_timeout: float = 5.0,
        statement_timeout: float = 30.0,
        job_threads: int = _JOB_LANE,
    ) -> None:
        self.database_url = database_url
        self.location, self._password = describe(database_url)
        self.max_attempts = max_attempts
        self.pool_size = max(1, pool_size)
        self.connect_timeout = connect_timeout
        self.pool_timeout = pool_timeout
        self.statement_timeout = statement_timeout
        self._kwargs: dict[str, Any] = {
            "application_name": APPLICATION_NAME,
            "connect_timeout": max(2, round(connect_timeout)),
            # notice a silently dead peer (a pulled cable does not reset the connection)
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._listener: Listener | None = None
        self._inbox: GroupCommit[Callable[[ops.Tx], Any]] | None = None
        self._jobs: GroupCommit[JobWrite] | None = None
        self.job_threads = max(1, job_threads)
        self._lane: ThreadPoolExecutor | None = None
        self._wait_lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._pending = False

    # connections -------------------------------------------------------------------------

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Run on every new pooled connection (autocommit: nothing left open)."""
        conn.execute("SET synchronous_commit = on")
        conn.execute(f"SET statement_timeout = {int(self.statement_timeout * 1000)}")
        conn.execute(f"SET application_name = '{APPLICATION_NAME}'")

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"cannot connect to PostgreSQL at {self.location}: {reason(exc, self._password)}"
        )

    def _open_sync(self) -> None:
        # one direct connection first: its error says why (the pool would only time out)
        try:
            with psycopg.connect(self.database_url, autocommit=True, **self._kwargs) as probe:
                version = probe.info.server_version
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc
        if version < _MIN_SERVER_VERSION:
            raise ConfigError(
                f"PostgreSQL at {self.location} is version {version // 10000}: 12 or newer "
                "is needed"
            )
        pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self.database_url,
            kwargs={**self._kwargs, "autocommit": True},
            min_size=min(2, self.pool_size),
            max_size=self.pool_size + _INBOX_LANE + self.job_threads,
            open=False,
            configure=self._configure,
            check=ConnectionPool.check_connection,  # a connection broken meanwhile is replaced
            name=APPLICATION_NAME,
            timeout=self.pool_timeout,
            reconnect_timeout=max(60.0, self.connect_timeout),
        )
        try:
            pool.open(wait=True, timeout=self.connect_timeout)
        except psycopg.Error as exc:
            pool.close()
            raise self._unavailable(exc) from exc
        listener = Listener(self.database_url, self._kwargs, self._notified, self.connect_timeout)
        listener.start()
        # not fatal: without the listener workers still poll; it keeps trying by itself
        if not listener.ready.wait(self.connect_timeout):
            log.warning("LISTEN %s not established yet; workers poll meanwhile", CHANNEL)
        self._pool, self._listener = pool, listener

    def _close_sync(self, pool: ConnectionPool[Any] | None, listener: Listener | None) -> None:
        if listener is not None:

            def poke(channel: str) -> None:
                if pool is not None:
                    with pool.connection(timeout=1.0) as conn:
                        conn.execute(f"NOTIFY {channel}")

            listener.stop(poke)
        if pool is not None:
            pool.close()

    async def open(self) -> None:
        if self._pool is None:
            await asyncio.to_thread(self._open_sync)
            self._inbox = GroupCommit(
                self._run_inbox_batch, threads=_INBOX_LANE, max_batch=_MAX_BATCH, name="pg-inbox"
            )
            self._jobs = GroupCommit(
                self._run_job_batch,
                threads=self.job_threads,
                max_batch=_MAX_JOB_BATCH,
                name="pg-jobs",
            )
            self._lane = ThreadPoolExecutor(self.pool_size, thread_name_prefix="pg")

    async def close(self) -> None:
        if self._jobs is not None:  # the job writes queued still commit
            await asyncio.to_thread(self._jobs.stop)
            self._jobs = None
        pool, listener = self._pool, self._listener
        self._pool, self._listener = None, None
        await asyncio.to_thread(self._close_sync, pool, listener)
        if self._inbox is not None:
            await asyncio.to_thread(self._inbox.stop)
        if self._lane is not None:
            self._lane.shutdown(wait=False)
        self._inbox, self._lane = None, None
        self._wake_all()

    # transactions ------------------------------------------------------------------------

    def _run_sync(self, op: Callable[[ops.Tx], T], notify: Callable[[T], bool] | None = None) -> T:
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("store is closed")
        for attempt in range(1, _DEADLOCK_RETRIES + 1):
            try:
                with pool.connection() as conn, conn.transaction():
                    result = op(PostgresTx(conn))
                    if notify is not None and notify(result):
                        conn.execute(f"NOTIFY {CHANNEL}")  # delivered on commit
                return result
            except RETRYABLE as exc:  # rolled back entirely: safe to run again
                if attempt == _DEADLOCK_RETRIES:
                    raise StoreUnavailable(f"postgresql: {reason(exc, self._password)}") from exc
                log.debug("postgresql: %s; retrying", exc.__class__.__name__)
                time.sleep(random.uniform(0.01, 0.05) * attempt)
            except UNAVAILABLE as exc:
                raise StoreUnavailable(f"postgresql: {reason(exc, self._password)}") from exc
            except psycopg.Error as exc:
                raise StoreError(f"postgresql: {reason(exc, self._password)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _write(self, op: Callable[[ops.Tx], T], due: Due[T] | None = None) -> T:
        """One transaction on a pooled connection; announce on commit when ``due(result)``."""
        if self._lane is None:
            raise StoreUnavailable("store is closed")
        return await settled(self._lane.submit(self._run_sync, op, due))

    async def _read(self, op: Callable[[ops.Tx], T]) -> T:
        if self._lane is None:
            raise StoreUnavailable("store is closed")
        # nothing to wait for when a read's caller goes away
        call = functools.partial(self._run_sync, op, None)
        return await asyncio.get_running_loop().run_in_executor(self._lane, call)

    def _run_inbox_batch(self, inserts: Sequence[Callable[[ops.Tx], Any]]) -> list[Outcome]:
        """All the waiting webhook inserts in one transaction (all or nothing); each answers
        (outcome, whether it queued work): announce on commit if any did."""

        def run_all(tx: ops.Tx) -> list[Any]:
            return [insert(tx) for insert in inserts]

        results = self._run_sync(run_all, lambda results: any(queued for _, queued in results))
        return [(result, None) for result in results]

    async def _commit_job(
        self, op: Callable[[ops.Tx], T], due: Due[T] | None = None, *, item: str | None = None
    ) -> T:
        """A worker's job write, committed with the others waiting (:meth:`_run_job_batch`)."""
        if self._jobs is None:
            raise StoreUnavailable("store is closed")
        result: T = await settled(self._jobs.submit((op, due, item or "")))
        return result

    def _run_job_batch(self, batch: Sequence[JobWrite]) -> list[Outcome]:
        """The waiting job writes in one transaction: one that fails (its lease was taken over,
        the database refused its data) fails alone, the others commit.

        They run in the order of the item each one stores or finishes, and their event-row
        writes come last, in event id order (:class:`ops.Deferred`), so concurrent batches, here
        and in other processes, never lock item rows or event rows in different orders (one
        item named by two events drained at once is stored by two batches). A deadlock or a
        lost connection fails the whole batch: it runs again from the start
        (:meth:`_run_sync`), or every write of it gets :class:`StoreUnavailable`.

        A write whose lease was taken over has changed nothing (the lease check is the first
        statement of every job write, see :mod:`.ops`), so the batch runs first without a
        savepoint per write, two round trips fewer each. If a write fails any other way, the
        transaction may hold half of it: it is rolled back and the batch runs again with a
        savepoint per write, so that write alone is undone.
        """
        try:
            return self._run_sync(functools.partial(self._job_batch, batch, False), _notify)[0]
        except _Isolate:
            return self._run_sync(functools.partial(self._job_batch, batch, True), _notify)[0]

    def _job_batch(
        self, batch: Sequence[JobWrite], savepoints: bool, tx: ops.Tx
    ) -> tuple[list[Outcome], bool]:
        assert isinstance(tx, PostgresTx)
        conn = tx.cursor.connection
        outcomes: list[Outcome | None] = [None] * len(batch)
        deferred = ops.Deferred()
        notify = False
        for index in sorted(range(len(batch)), key=lambda n: batch[n][2]):
            op, due, _ = batch[index]
            tx.deferred = ops.Deferred()
            try:
                if savepoints:
                    with conn.transaction():
                        value = op(tx)
                else:
                    value = op(tx)
            except _BATCH_FAILS:
                raise  # the transaction is in trouble, not this operation
            except LeaseLost as exc:  # refused before it wrote anything
                outcomes[index] = (None, exc)
            except Exception as exc:
                if not savepoints:
                    raise _Isolate from exc
                error = exc
                if isinstance(exc, psycopg.Error):
                    error = StoreError(f"postgresql: {reason(exc, self._password)}")
                outcomes[index] = (None, error)
            else:
                deferred.merge(tx.deferred)
                outcomes[index] = (value, None)
                notify = notify or (due is not None and bool(due(value)))
        tx.deferred = None
        write_events(tx, deferred)
        return [outcome for outcome in outcomes if outcome is not None], notify

    def failures(self) -> list[str]:
        problems = []
        if self._inbox is not None and not self._inbox.alive:
            problems.append("postgresql webhook lane stopped: webhooks cannot commit")
        if self._jobs is not None and not self._jobs.alive:
            problems.append("postgresql job lane stopped: workers cannot record their work")
        return problems

    # wake-up hint ------------------------------------------------------------------------

    def _notified(self) -> None:
        """From the listener thread: wake every waiter, or the next one if none waits."""
        self._wake_all(remember=True)

    def _wake_all(self, *, remember: bool = False) -> None:
        with self._wait_lock:
            waiters = list(self._waiters)
            if remember and not waiters:
                self._pending = True
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed; its waiter is gone
                loop.call_soon_threadsafe(event.set)

    async def wait_for_work(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds; return early when work was announced.

        Returns at once if an announcement (``NOTIFY dimmy_jobs`` from any process on this
        database) arrived since the previous call returned and nobody was waiting; returns as
        soon as one arrives otherwise. Never raises (cancellation aside): without a listener
        connection it simply sleeps, so callers must poll after it returns either way.
        """
        if timeout <= 0:
            return
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._wait_lock:
            if self._pending:
                self._pending = False
                return
            self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            with self._wait_lock:
                self._waiters.remove(entry)

    # introspection -------------------------------------------------------------------------

    async def server_settings(self) -> dict[str, str]:
        """Effective settings of a pooled connection (for start-up checks and /readyz)."""
        names = ("synchronous_commit", "application_name", "statement_timeout", "server_version")
        rows = await self._write(
            lambda tx: tx.all(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%(names)s)",
                {"names": list(names)},
            )
        )
        return {str(row["name"]): str(row["setting"]) for row in rows}

    # Store ---------------------------------------------------------------------------------

    async def insert_event(self, event: IncomingEvent) -> InsertOutcome:
        # Webhook inserts have a lane of their own (threads and 2 extra connections), so an
        # acknowledgement never queues behind a burst of worker writes, and concurrent inserts
        # share one transaction and one commit.
        if self._inbox is None:
            raise StoreUnavailable("store is closed")

        def insert(tx: ops.Tx) -> tuple[InsertOutcome, bool]:
            outcome = inbox.insert_event(tx, event, self.max_attempts)
            if outcome is InsertOutcome.ACCEPTED:
                return outcome, event.event_type != UNKNOWN
            return outcome, outcome is InsertOutcome.REQUEUED

        with self.intake_first.inserting():
            result: tuple[InsertOutcome, bool] = await settled(self._inbox.submit(insert))
        return result[0]


__all__ = [
    "APPLICATION_NAME",
    "CHANNEL",
    "SQL",
    "PostgresStore",
    "PostgresTx",
    "describe",
    "reason",
    "to_pyformat",
]
