"""Outputs: where stored items go once they are new or changed.

Every output has a stable :attr:`Output.name` (the key of its rows in the delivery tracking
table) and takes one item version at a time. Delivery is at least once: the worker retries a
failed delivery on its own, and a crash between a delivery and its bookkeeping repeats it, with
the same idempotency key (:func:`idempotency_key`). Outputs, and the programs behind them, use that
key to drop repeats.

The ``DIMMY_OUTPUTS`` setting lists them, comma separated (:func:`parse_outputs`)::

    console                  print each item (id, then its JSON), like Dimmy's original example
    jsonl:PATH               append one JSON object per line to PATH
    python:module:function   call a function of yours with (item dict, idempotency key)

New kinds (an HTTP forward to the WMS signed with Standard Webhooks, ``http:URL``) are one more
row in :data:`OUTPUT_KINDS`.

An output never holds up the rest of the service: its blocking calls run in threads of its own
(:class:`OutputThreads`, never the event loop's default executor, which the store and the HTTP
client also use), and the worker hands items over through :func:`deliver_within`, which bounds a
delivery in time and turns whatever the output raises into a failed delivery.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import importlib
import inspect
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TextIO, TypeVar

from dimmy_webhooks.errors import ConfigError, OutputError
from dimmy_webhooks.items import format_timestamp, to_api_dict
from dimmy_webhooks.models import Receipt, StoredItem
from dimmy_webhooks.outputs.http import Destination, HttpOutput, check_url

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

    async def deliver(self, item: StoredItem, idempotency_key: str) -> Receipt | None:
        """``None`` or what the receiving side answered (:class:`Receipt`, for the ledger)."""

    async def aclose(self) -> None: ...

    def problems(self) -> list[str]: ...


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


class ConsoleOutput:
    """Prints ``item <id> (<idempotency key>)`` then the item's raw JSON on one line.

    ``stream`` defaults to whatever ``sys.stdout`` is at delivery time. The JSON is the raw
    document re-serialised on one line with non-ASCII escaped, so any terminal can show it.
    """

    name = "console"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = asyncio.Lock()
        self._threads = OutputThreads(self.name, 2)

    async def deliver(self, item: StoredItem, idempotency_key: str) -> None:
        text = f"item {item.id} ({idempotency_key})\n{json.dumps(item.raw_json())}\n"
        async with self._lock:
            try:
                # a full pipe blocks; keep that off the event loop
                await self._threads.run(self._write, text)
            except (OSError, ValueError) as exc:
                raise OutputError(f"console: {exc}") from exc

    def _write(self, text: str) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write(text)
        stream.flush()

    async def aclose(self) -> None:
        return None

    def problems(self) -> list[str]:
        return self._threads.problems()


class JsonlOutput:
    """Appends one JSON object per line to a file (JSON Lines), durably.

    Each line is ``{"idempotency_key", "item_id", "version", "delivered_at", "item"}`` where
    ``item`` is :func:`~dimmy_webhooks.items.to_api_dict`. Lines go out in one ``write`` on a file
    opened for appending, followed by ``fsync``; concurrent deliveries share one write and one
    fsync (group commit), and none is answered before its line is on disk. A crash can still leave a
    partial last line; when the file does not end with a newline on opening, one is written first,
    so the torn line never swallows the next record (:meth:`read` skips it). Repeats of one
    delivery are possible (at least once): readers drop lines whose key they have seen.
    Parent directories are created. Safe to share between tasks and threads.
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time):
        self.path = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        self.name = f"jsonl:{self.path}"
        self._clock = clock
        self._fd: int | None = None
        self._async_lock = asyncio.Lock()
        self._thread_lock = threading.Lock()
        self._waiting: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._threads = OutputThreads(self.name, 2)

    async def deliver(self, item: StoredItem, idempotency_key: str) -> None:
        record = {
            "idempotency_key": idempotency_key,
            "item_id": item.id,
            "version": item.version,
            "delivered_at": format_timestamp(self._clock()),
            "item": to_api_dict(item),
        }
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((line.encode("utf-8"), done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        """Group commit: every line waiting when a write starts goes out in it, with one fsync;
        each delivery is answered only after the fsync that holds its line."""
        async with self._async_lock:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                error: OutputError | None = None
                try:
                    await self._threads.run(self._append, b"".join(line for line, _ in batch))
                except OutputError as exc:
                    error = exc
                except asyncio.CancelledError:  # the loop is closing: answer, then stop
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(OutputError(f"{self.name}: write interrupted"))
                    raise
                except BaseException as exc:  # OSError, or anything else: this batch failed
                    error = OutputError(f"{self.name}: {exc}")
                for _, done in batch:
                    if done.done():
                        continue
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)

    def _append(self, data: bytes) -> None:
        with self._thread_lock:
            if self._fd is None:
                self._fd, torn = self._open()
                if torn:
                    data = b"\n" + data
            try:
                written = os.write(self._fd, data)
                if written != len(data):
                    raise OSError(f"short write ({written} of {len(data)} bytes)")
                os.fsync(self._fd)
            except OSError:
                # reopen next time, which checks again for a torn last line
                self._close_fd()
                raise

    def _open(self) -> tuple[int, bool]:
        """Open for appending; also say whether the file ends mid-line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            torn = False
            if size:
                with self.path.open("rb") as reader:
                    reader.seek(size - 1)
                    torn = reader.read(1) != b"\n"
            if created:
                _fsync_dir(self.path.parent)
        except OSError:
            os.close(fd)
            raise
        return fd, torn

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    async def aclose(self) -> None:
        async with self._async_lock:
            await self._threads.run(self._close_locked)

    def problems(self) -> list[str]:
        return self._threads.problems()

    def _close_locked(self) -> None:
        with self._thread_lock:
            self._close_fd()

    @staticmethod
    def read(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """Every record of a JSON Lines file written by this output, in file order.

        Blank lines and lines that are not a JSON object (a line torn by a crash) are skipped.
        A missing file reads as no records.
        """
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        records = []
        for line in text.splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                records.append(value)
        return records


def _fsync_dir(directory: Path) -> None:
    """Make a new directory entry durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PythonOutput:
    """Calls a function of yours, named ``module:function`` (``module:Class.attr`` also works).

    The callable is imported when the output is built (a bad target refuses to start, with a
    :class:`ConfigError`) and called as ``func(item, idempotency_key)``: ``item`` is a fresh
    :func:`~dimmy_webhooks.items.to_api_dict` dict. A plain function runs in one of ``threads``
    threads of this output's own (:class:`OutputThreads`), an ``async def`` one is awaited on the
    event loop (so it must not block). Returning means delivered; raising means failed, and the
    same item version comes again later with the same key. Delivery is at least once, so the
    function must be idempotent on the key.
    """

    def __init__(self, target: str, *, threads: int = 8) -> None:
        self.target = target.strip()
        self.name = f"python:{self.target}"
        self._func = _import_callable(self.target)
        self._is_async = _is_async_callable(self._func)
        self._threads = OutputThreads(self.name, threads)

    async def deliver(self, item: StoredItem, idempotency_key: str) -> None:
        payload = to_api_dict(item)
        try:
            if self._is_async:
                await self._func(payload, idempotency_key)
                return
            result = await self._threads.run(self._func, payload, idempotency_key)
            if inspect.isawaitable(result):
                await result
        except OutputError:
            raise
        except Exception as exc:
            raise OutputError(f"{self.name} raised {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        return None

    def problems(self) -> list[str]:
        return self._threads.problems()


def _import_callable(target: str) -> Callable[..., Any]:
    module_name, _, attr_path = target.partition(":")
    module_name, attr_path = module_name.strip(), attr_path.strip()
    if not module_name or not attr_path:
        raise ConfigError(f"python output {target!r}: expected module:function")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"python output {target!r}: cannot import {module_name}: {exc}") from exc
    except Exception as exc:  # the user's module failed while importing
        raise ConfigError(
            f"python output {target!r}: importing {module_name} raised {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"python output {target!r}: {module_name} has no attribute {attr_path}"
            ) from None
    if not callable(obj):
        raise ConfigError(f"python output {target!r}: {attr_path} is not callable")
    func: Callable[..., Any] = obj
    return func


def _is_async_callable(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - objects with an async __call__
    return inspect.iscoroutinefunction(call)


@dataclass(frozen=True, slots=True)
class OutputContext:
    """What building an output may need beyond its argument: our signing secret for forwards
    and the destinations of ``DIMMY_DESTINATIONS_FILE``."""

    forward_secret: str | None = None
    destinations: Sequence[Destination] = ()


@dataclass(frozen=True, slots=True)
class OutputKind:
    """One row of the ``DIMMY_OUTPUTS`` syntax: ``kind`` or ``kind:argument``."""

    usage: str
    build: Callable[[str | None, OutputContext], Output]
    """Gets the text after ``kind:`` (``None`` when absent); raises ConfigError when unusable."""


def _http(argument: str | None, context: OutputContext) -> Output:
    if not argument:
        raise ConfigError("output 'http' needs a URL: http:https://wms.example.com/path")
    url = check_url(argument, "DIMMY_OUTPUTS: http:URL")
    listed = {destination.name: destination for destination in context.destinations}
    destination = listed.get(Destination(url=url).name, Destination(url=url))
    return HttpOutput(destination, forward_secret=context.forward_secret)


def _console(argument: str | None, context: OutputContext) -> Output:
    if argument:
        raise ConfigError(f"output 'console' takes no argument (got {argument!r})")
    return ConsoleOutput()


def _jsonl(argument: str | None, context: OutputContext) -> Output:
    if not argument:
        raise ConfigError("output 'jsonl' needs a file: jsonl:PATH")
    return JsonlOutput(argument)


def _python(argument: str | None, context: OutputContext) -> Output:
    if not argument:
        raise ConfigError("output 'python' needs a target: python:module:function")
    return PythonOutput(argument)


OUTPUT_KINDS: dict[str, OutputKind] = {
    "console": OutputKind("console", _console),
    "jsonl": OutputKind("jsonl:PATH", _jsonl),
    "python": OutputKind("python:module:function", _python),
    "http": OutputKind("http:URL", _http),
}
"""Every kind ``DIMMY_OUTPUTS`` knows, by the word before the first ``:``."""


def parse_outputs(spec: str, context: OutputContext | None = None) -> list[Output]:
    """Build the outputs a ``DIMMY_OUTPUTS`` value lists, in order, then one for each of
    ``context.destinations`` it did not list.

    Entries are separated by commas (so paths and URLs cannot contain one: such a URL goes in
    the destinations file); blank entries are ignored, so an empty or blank ``spec`` means no
    outputs. Raises :class:`ConfigError` for an unknown kind (naming the valid ones), a missing
    or unusable argument, or two entries with the same name.
    """
    context = context or OutputContext()
    outputs: list[Output] = []
    seen: set[str] = set()
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            continue
        word, colon, argument = entry.partition(":")
        kind = OUTPUT_KINDS.get(word.strip().lower())
        if kind is None:
            valid = ", ".join(k.usage for k in OUTPUT_KINDS.values())
            raise ConfigError(f"unknown output kind {word.strip()!r} in {entry!r}; valid: {valid}")
        output = kind.build(argument.strip() if colon else None, context)
        if output.name in seen:
            raise ConfigError(f"output {output.name!r} is listed twice in DIMMY_OUTPUTS")
        seen.add(output.name)
        outputs.append(output)
    for destination in context.destinations:
        if destination.name not in seen:
            seen.add(destination.name)
            outputs.append(HttpOutput(destination, forward_secret=context.forward_secret))
    return outputs
