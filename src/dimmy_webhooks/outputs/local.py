"""The outputs that need nothing but this machine: ``console``, ``jsonl:PATH`` and
``python:module:function``.

Each keeps its blocking calls (a write to a full pipe, a fsync, a function of yours) in threads of
its own (:class:`~dimmy_webhooks.outputs.base.OutputThreads`) and uses the service's defaults for
attempts and delivery time.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from dimmy_webhooks.errors import ConfigError, OutputError
from dimmy_webhooks.items import format_timestamp, to_api_dict, to_api_json_line
from dimmy_webhooks.models import StoredItem
from dimmy_webhooks.outputs.base import OutputThreads


class _Defaults:
    """The service's own limits: ``DIMMY_MAX_ATTEMPTS`` and ``DIMMY_OUTPUT_TIMEOUT_SECONDS``."""

    max_attempts: int | None = None
    delivery_timeout: float | None = None


class ConsoleOutput(_Defaults):
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


class JsonlOutput(_Defaults):
    """Appends one JSON object per line to a file (JSON Lines), durably.

    Each line is ``{"idempotency_key", "item_id", "version", "delivered_at", "item"}`` where
    ``item`` is :func:`~dimmy_webhooks.items.to_api_json`. Lines go out in one ``write`` on a file
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
        }
        head = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        # the item as the JSON API writes it, its raw document spliced in as fetched (not
        # parsed and written again)
        body = to_api_json_line(item)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((head[:-1] + b',"item":' + body + b"}\n", done))
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


class PythonOutput(_Defaults):
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
