"""The store: the inbox, the work queue, the item store, the ledger and the operator's reads,
as five seams behind one :class:`Store`.

Each seam is declared once, in the module that owns its operations: :class:`~.inbox.Inbox`,
:class:`~.queue.Queue`, :class:`~.items.Items`, :class:`~.ledger.Ledger`,
:class:`~.reports.Reports`. Their methods are written once for every backend, on the two
transactions a backend provides (:class:`~.ops.Transactions`); a caller that needs only one
seam can be typed with it. :class:`Store` is their union plus what a backend adds: how it opens
and closes, how it inserts a webhook and how it waits for work. One contract test suite runs
on each backend (SQLite, PostgreSQL).

Callers never see driver exceptions: a failed commit is
:class:`~dimmy_webhooks.errors.StoreUnavailable`, a write about work whose lease was taken over is
:class:`~dimmy_webhooks.errors.LeaseLost`.

Times are Unix seconds (float). A write whose caller is cancelled has, by the time the
cancellation reaches the caller, either not happened (and never will) or finished (committed or
failed): see :func:`settled`.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
from typing import TypeVar

from dimmy_webhooks.store.inbox import Inbox
from dimmy_webhooks.store.items import Items
from dimmy_webhooks.store.ledger import Ledger
from dimmy_webhooks.store.ops import Due
from dimmy_webhooks.store.queue import Queue
from dimmy_webhooks.store.reports import Reports

T = TypeVar("T")


async def settled(future: concurrent.futures.Future[T]) -> T:
    """Await a write running in another thread, so that cancelling the caller never leaves the
    write in flight.

    If the caller is cancelled meanwhile, a write that has not started is cancelled (it never
    runs) and one that has started is waited for, however often the caller is cancelled again,
    before the :class:`asyncio.CancelledError` propagates. A thread cannot be interrupted: a
    transaction cancelled only on the caller's side would commit later, after whatever the
    canceller did next (a stopping worker cancels its jobs, then releases its claims; a
    ``save_item`` committing after that release would leave deliveries leased to a worker that
    is gone). The wait is bounded by the database's own limits (``busy_timeout``,
    ``statement_timeout``, the pool timeout).
    """
    # a waiter of our own, woken once the write has ended (cheaper than wrap_future + shield,
    # and paid on every write): only the write's thread sets ``future``, only we cancel it
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def ended(_: concurrent.futures.Future[T]) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(_wake, waiter)

    future.add_done_callback(ended)
    try:
        await waiter
    except asyncio.CancelledError:
        if future.cancel():
            raise  # had not started: it never will
        wrapped = asyncio.wrap_future(future)
        while not wrapped.done():
            try:
                await asyncio.wait([wrapped])
            except asyncio.CancelledError:
                continue  # the caller is already being cancelled: it hears once, below
        raise
    return future.result()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # cancelled meanwhile: the caller went on without it
        waiter.set_result(None)


class Store(Inbox, Queue, Items, Ledger, Reports):
    """What the receiver, the worker, the JSON API and the commands need from a database."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect; the schema must be current (see :mod:`dimmy_webhooks.store.schema`)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and disconnect."""

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless a query round-trips."""
        await self._read(lambda tx: tx.all("SELECT 1 AS ok"))

    def failures(self) -> list[str]:
        """Background parts of the backend that stopped (a writer thread), for ``/readyz``."""
        return []


__all__ = ["Due", "Inbox", "Items", "Ledger", "Queue", "Reports", "Store", "settled"]
