"""Group commit: threads that take every operation waiting and commit them in one transaction.

One commit (one fsync, one WAL flush) then answers many concurrent callers, and nobody is
answered before the commit that holds their write has returned. The SQLite writer (one thread,
a savepoint per operation) and PostgreSQL's webhook lane (two threads, all or nothing) are both
this loop with their own ``commit``.

The loop never dies: a caller that stops waiting (its task was cancelled) has its operation
skipped if it had not started, or finished and discarded if it had; whatever a commit raises
fails that batch only. :attr:`GroupCommit.alive` says whether every thread still runs, for
``/readyz``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

Op = TypeVar("Op")
Outcome = tuple[Any, BaseException | None]
"""``(value, None)`` for an operation that succeeded, ``(None, error)`` for one that failed."""

_STOP = object()


class GroupCommit(Generic[Op]):
    """``threads`` threads running ``commit`` over batches of up to ``max_batch`` operations.

    ``commit(ops)`` runs one batch and returns one :data:`Outcome` per operation, in order (an
    operation's own failure fails only it); if it raises, every operation of the batch fails
    with that exception.
    """

    def __init__(
        self,
        commit: Callable[[Sequence[Op]], Sequence[Outcome]],
        *,
        threads: int = 1,
        max_batch: int = 256,
        name: str = "group-commit",
    ) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{n}", daemon=True)
            for n in range(threads)
        ]
        self.name = name
        for thread in self._threads:
            thread.start()

    @property
    def alive(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    def submit(self, op: Op) -> Future[Any]:
        """Queue ``op`` for the next batch; the future gets its value or its error."""
        future: Future[Any] = Future()
        self._queue.put((op, future))
        return future

    def stop(self, timeout: float = 30) -> None:
        """Let the threads finish what is queued, then end them."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=timeout)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._queue.put(_STOP)  # for this thread's next turn
                    break
                batch.append(nxt)
            try:
                self._run(batch)
            except BaseException:  # never let the thread die: every later write would hang
                log.exception("%s: unexpected error in a batch", self.name)

    def _run(self, batch: list[tuple[Op, Future[Any]]]) -> None:
        # a future cancelled while queued is skipped; once running it can no longer be
        # cancelled, so setting its outcome below cannot fail
        live = [(op, future) for op, future in batch if future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            outcomes: Sequence[Outcome] = self._commit([op for op, _ in live])
        except BaseException as exc:
            outcomes = [(None, exc)] * len(live)
        for (_, future), (value, error) in zip(live, outcomes, strict=True):
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)
