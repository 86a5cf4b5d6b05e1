"""Callables for ``python:`` outputs in tests; each records its calls in :data:`calls`."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

calls: list[tuple[str, dict[str, Any], str]] = []
"""(handler name, item dict, idempotency key), in call order. Tests clear it."""

threads: list[str] = []
"""Name of the thread each sync handler ran in."""

NOT_CALLABLE = 42


def record_sync(item: dict[str, Any], idempotency_key: str) -> None:
    threads.append(threading.current_thread().name)
    calls.append(("sync", item, idempotency_key))


async def record_async(item: dict[str, Any], idempotency_key: str) -> None:
    await asyncio.sleep(0)
    calls.append(("async", item, idempotency_key))


def fail(item: dict[str, Any], idempotency_key: str) -> None:
    calls.append(("fail", item, idempotency_key))
    raise RuntimeError("the WMS is down")


class Handlers:
    """Reached as ``module:Handlers.method``."""

    @staticmethod
    def static(item: dict[str, Any], idempotency_key: str) -> None:
        calls.append(("static", item, idempotency_key))


class _AsyncCallable:
    async def __call__(self, item: dict[str, Any], idempotency_key: str) -> None:
        calls.append(("async_object", item, idempotency_key))


async_object = _AsyncCallable()


poison: set[str] = set()
"""Item ids :func:`explode_on_first` always fails on (the first item it ever saw)."""


def explode_on_first(item: dict[str, Any], idempotency_key: str) -> None:
    if not poison:
        poison.add(item["id"])
    if item["id"] in poison:
        raise RuntimeError("poison item")
    calls.append(("explode_on_first", item, idempotency_key))


release = threading.Event()
"""Lets the blocking handlers below return; tests clear it first and set it when done."""

BLOCK_SECONDS = 600.0  # "for ever" as far as a test is concerned, yet bounded


def block_forever(item: dict[str, Any], idempotency_key: str) -> None:
    """Blocks its thread until :data:`release` is set (a WMS call that never answers)."""
    calls.append(("block_forever", item, idempotency_key))
    release.wait(BLOCK_SECONDS)


async def async_block_forever(item: dict[str, Any], idempotency_key: str) -> None:
    """Does not return within any test (an ``async`` WMS call that never answers)."""
    calls.append(("async_block_forever", item, idempotency_key))
    await asyncio.sleep(BLOCK_SECONDS)


class Fatal(BaseException):
    """Not an ``Exception``: what a careless library may raise."""


RAISED: list[type[BaseException]] = [
    SystemExit,
    KeyboardInterrupt,
    Fatal,
    GeneratorExit,
    asyncio.CancelledError,
]
"""What :func:`raise_base_exception` raises, in turn, call after call."""

raised: list[str] = []
"""The name of each exception those handlers raised, in order. Tests clear it."""


def _next_base_exception() -> BaseException:
    kind = RAISED[len(raised) % len(RAISED)]
    raised.append(kind.__name__)
    return kind("raised by the output")


def raise_base_exception(item: dict[str, Any], idempotency_key: str) -> None:
    """Raises the next of :data:`RAISED` (from an output thread)."""
    calls.append(("raise_base_exception", item, idempotency_key))
    raise _next_base_exception()


async def async_raise_base_exception(item: dict[str, Any], idempotency_key: str) -> None:
    """Raises the next of :data:`RAISED` (on the event loop)."""
    await asyncio.sleep(0)
    calls.append(("async_raise_base_exception", item, idempotency_key))
    raise _next_base_exception()
