"""What every output is and how the worker hands items to one.

:class:`Output` is the protocol; the worker hands an item over through :func:`deliver_within`,
which bounds a delivery in time and turns whatever the output raises into a failed delivery
(:class:`~dimmy_webhooks.errors.OutputError`, or the two richer kinds :class:`DeliveryFailed` and
:class:`DestinationPaused`). Blocking calls of an output run in threads of its own
(:class:`OutputThreads`), never in the event loop's default executor. :func:`idempotency_key` names
one delivery across retries, replays and restarts.

May import: the shared root modules only.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from dimmy_webhooks.errors import OutputError
from dimmy_webhooks.models import Receipt, StoredItem

T = TypeVar("T")


class Output(Protocol):
    """Something that takes stored items.

    ``deliver`` hands over one version of one item. It returns once the output holds it
    durably, and raises when it could not: :class:`OutputError` for expected failures, though the
    worker treats anything raised (``BaseException`` included) or no answer in time as a failed
    delivery (:func:`deliver_within`) and retries it later with the same ``idempotency_key``.
    It may therefore see one key more than once and must not act twice. ``aclose`` releases
    what the output holds (files, connections); it is called once, at shutdown.
    ``problems`` lists what an operator should know while it runs (threads stuck in calls that
    timed out), for ``/readyz``; empty when all is well.
    """

    name: str
    """Stable identifier, e.g. ``console``, ``jsonl:/abs/path``, ``python:mod:func``."""

    max_attempts: int | None
    """Failed attempts before a delivery is dead; ``None``: ``DIMMY_MAX_ATTEMPTS``."""

    delivery_timeout: float | None
    """Seconds one delivery may take; ``None``: ``DIMMY_OUTPUT_TIMEOUT_SECONDS``."""

    async def deliver(self, item: StoredItem, idempotency_key: str) -> Receipt | None:
        """``None`` or what the receiving side answered (:class:`Receipt`, for the ledger)."""

    async def aclose(self) -> None: ...

    def problems(self) -> list[str]: ...


class DestinationPaused(OutputError):
    """The output cannot take anything now (it failed several times in a row, or it is at its
    concurrency or rate limit): wait until ``until`` (Unix time) without counting an attempt."""

    def __init__(self, reason: str, until: float) -> None:
        super().__init__(reason)
        self.until = until


class DeliveryFailed(OutputError):
    """An attempt that failed, with what the receiving side answered (``receipt``);
    ``permanent`` when retrying cannot help; ``retry_after`` seconds when it asked for a pause."""

    def __init__(
        self,
        reason: str,
        receipt: Receipt,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.receipt = receipt
        self.permanent = permanent
        self.retry_after = retry_after


async def deliver_within(
    output: Output, item: StoredItem, idempotency_key: str, timeout: float
) -> Receipt | None:
    """Hand one item version to ``output``, taking at most ``timeout`` seconds.

    Returns once the output took it. Every other outcome is an :class:`OutputError` (a failed
    delivery, retried later with the same key): the output raising anything, ``BaseException``
    included (``SystemExit``, ``KeyboardInterrupt``, a ``CancelledError`` of its own), or not
    answering within ``timeout`` (it is cancelled there, and a blocking call it made in one of
    its threads is left to that thread). Only the cancellation of the calling task itself
    propagates, as ``CancelledError``.
    """
    task = asyncio.current_task()
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await output.deliver(item, idempotency_key)
    except OutputError:
        raise
    except asyncio.CancelledError as exc:
        if task is not None and task.cancelling():
            raise  # our own task is being cancelled (shutdown): not the output's failure
        raise OutputError(f"{output.name} raised CancelledError: {exc}") from exc
    except TimeoutError as exc:
        if deadline.expired():
            raise OutputError(f"{output.name}: no answer within {timeout:g}s") from None
        raise OutputError(f"{output.name} raised TimeoutError: {exc}") from exc
    except BaseException as exc:
        # SystemExit or KeyboardInterrupt raised by the output's code ends this delivery, not
        # the process: let through, it would stop the service and the job would go back to the
        # queue uncounted, so every restart would die on it again
        raise OutputError(f"{output.name} raised {type(exc).__name__}: {exc}") from exc


class _Raised(Exception):
    """Carries what a call raised that is not an :class:`Exception` (``SystemExit``,
    ``GeneratorExit``, ``CancelledError``...) from its thread back to the caller, where it is
    raised again. Set on the future as it is, the task machinery would throw it into the
    awaiting coroutines, and a thrown ``GeneratorExit`` closes every coroutine on the way."""

    def __init__(self, raised: BaseException) -> None:
        super().__init__(repr(raised))
        self.raised = raised


class _Call(Generic[T]):
    __slots__ = ("abandoned", "args", "func", "future", "returned")

    def __init__(self, func: Callable[..., T], args: tuple[Any, ...]) -> None:
        self.func = func
        self.args = args
        self.future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.abandoned = False  # its caller stopped waiting while it ran
        self.returned = False


class OutputThreads:
    """A small pool of daemon threads for one output's blocking calls (a write, a fsync, a
    function of yours).

    At most ``size`` threads, started when needed. A call waits for a free thread; a call whose
    caller stops waiting (cancelled, or its delivery timed out) before it started never runs.
    One that is already running cannot be stopped: its thread is left to it and counted in
    :attr:`stuck` until the call returns, after which the thread serves again. While every
    thread is stuck that way, :meth:`run` fails at once with :class:`OutputError` rather than
    queueing behind them. The threads are daemons, so one blocked for ever never holds up the
    process's exit.
    """

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = max(1, size)
        self._cond = threading.Condition()
        self._queue: collections.deque[_Call[Any]] = collections.deque()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._stuck = 0

    @property
    def stuck(self) -> int:
        """Threads busy with a call whose caller gave up on it."""
        return self._stuck

    def problems(self) -> list[str]:
        if not self._stuck:
            return []
        return [
            f"{self.name}: {self._stuck} of {self.size} threads stuck in calls that timed out"
            + (" (deliveries fail until one returns)" if self._stuck >= self.size else "")
        ]

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` in one of the threads; its result, or what it raised (whatever it
        is: the caller decides)."""
        call: _Call[T] = _Call(func, args)
        with self._cond:
            if self._stuck >= self.size:
                raise OutputError(
                    f"{self.name}: all {self.size} threads are stuck in calls that timed out"
                )
            self._queue.append(call)
            if len(self._queue) > self._idle and len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._serve,
                    name=f"output-{len(self._threads)}-{self.name}"[:60],
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()
            self._cond.notify()
        try:
            return await asyncio.wrap_future(call.future)
        except _Raised as carrier:
            raise carrier.raised from None
        except asyncio.CancelledError:
            if not call.future.cancel():  # running (or just ended): left to its thread
                with self._cond:
                    if not call.returned and not call.abandoned:
                        call.abandoned = True
                        self._stuck += 1
            raise

    def _serve(self) -> None:
        while True:
            with self._cond:
                self._idle += 1
                while not self._queue:
                    self._cond.wait()
                call = self._queue.popleft()
                self._idle -= 1
            if not call.future.set_running_or_notify_cancel():
                continue  # its caller gave up before it started
            try:
                result = call.func(*call.args)
            except Exception as exc:
                self._returned(call)
                call.future.set_exception(exc)
            except BaseException as exc:  # SystemExit too: the thread lives on, the caller decides
                self._returned(call)
                call.future.set_exception(_Raised(exc))
            else:
                self._returned(call)
                call.future.set_result(result)

    def _returned(self, call: _Call[Any]) -> None:
        with self._cond:
            call.returned = True
            if call.abandoned:
                self._stuck -= 1


def idempotency_key(item_id: str, version: str, output_name: str, revision: int = 0) -> str:
    """``"dmy_"`` + 32 hex digits of SHA-256 over (item id, version, output name, revision).

    The same revision of an item sent to the same output always has the same key, across
    retries, replays, processes and restarts; any other item, revision or output gets another.
    A content that comes back (A, B, then A again) is a new revision, hence a new key: the
    receiving side must take it, since it is newer than B.
    """
    material = json.dumps([item_id, version, output_name, revision], ensure_ascii=False)
    return "dmy_" + hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]
