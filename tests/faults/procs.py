"""Helpers of the fault tests: worker processes and their lease owners, what the outputs hold,
summary lines (the queue state and the retrying sender are in :mod:`tests.support`).

Everything here is bounded: waits take a timeout. Nothing here asserts: the tests decide what is
a failure.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dimmy_webhooks.outputs import JsonlOutput

from ..support.processes import ServiceProcess

# processes -----------------------------------------------------------------------------------

_OWNER = re.compile(r"worker started owner=(\S+)")


def log_size(service: ServiceProcess) -> int:
    """Bytes in the service's log now: pass to :func:`wait_owner` before a (re)start, since a
    restarted :class:`ServiceProcess` appends to the same log."""
    return service.log_path.stat().st_size if service.log_path.exists() else 0


def log_since(service: ServiceProcess, offset: int) -> str:
    if not service.log_path.exists():
        return ""
    with service.log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def wait_owner(service: ServiceProcess, offset: int, timeout: float = 30) -> str | None:
    """The lease owner of the worker started after log ``offset`` (``None``: it did not start
    in time or exited)."""
    deadline = time.monotonic() + timeout
    while True:
        match = _OWNER.search(log_since(service, offset))
        if match:
            return match[1]
        if service.proc is None or service.proc.poll() is not None:
            return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def exit_code(service: ServiceProcess, timeout: float = 30) -> int:
    """Wait for the service's process to exit (it must have been started)."""
    assert service.proc is not None
    return service.proc.wait(timeout=timeout)


def stop_all(services: Sequence[ServiceProcess], timeout: float = 30) -> list[int | None]:
    """SIGTERM every running service, then wait for each; their exit codes (``None``: never
    started)."""
    for service in services:
        if service.proc is not None and service.proc.poll() is None:
            os.killpg(service.proc.pid, signal.SIGTERM)
    return [
        None if service.proc is None else service.proc.wait(timeout=timeout) for service in services
    ]


@dataclass
class WorkerSlot:
    """One ``dimmy-webhooks worker`` position, restarted in place after each kill: the
    :class:`ServiceProcess` object (and its log file) is reused; ``owner`` is the lease owner of
    the current incarnation, read from its log."""

    service: ServiceProcess
    offset: int = 0
    owner: str | None = None
    starts: int = 0

    def start(self) -> WorkerSlot:
        self.offset = log_size(self.service)
        self.owner = None
        self.starts += 1
        self.service.start()
        return self

    def current_owner(self, timeout: float = 30) -> str | None:
        if self.owner is None:
            self.owner = wait_owner(self.service, self.offset, timeout)
        return self.owner

    @property
    def pid(self) -> int | None:
        return None if self.service.proc is None else self.service.proc.pid


# deliveries ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deliveries:
    """What JSONL outputs hold: ``versions`` the (item id, version) pairs delivered, ``lines``
    in all, ``repeats`` lines beyond the first per idempotency key, ``conflicts`` item versions
    seen under more than one key or keys seen with more than one item version (both must be
    empty: a repeat carries the key of the first delivery)."""

    versions: set[tuple[str, str]]
    lines: int
    repeats: int
    conflicts: list[str]


def read_deliveries(paths: Sequence[Path]) -> Deliveries:
    lines = [line for path in paths for line in JsonlOutput.read(path)]
    by_key: dict[str, set[tuple[str, str]]] = {}
    by_version: dict[tuple[str, str], set[str]] = {}
    for line in lines:
        version = (line["item_id"], line["version"])
        by_key.setdefault(line["idempotency_key"], set()).add(version)
        by_version.setdefault(version, set()).add(line["idempotency_key"])
    conflicts = [key for key, seen in by_key.items() if len(seen) > 1]
    conflicts += [f"{item}@{ver}" for (item, ver), keys in by_version.items() if len(keys) > 1]
    return Deliveries(
        versions=set(by_version),
        lines=len(lines),
        repeats=len(lines) - len(by_key),
        conflicts=conflicts,
    )


# reporting -----------------------------------------------------------------------------------


def summary(tag: str, **numbers: object) -> str:
    """``tag: key=value, ...`` printed on one line (copied into docs/guarantees.md)."""
    line = f"{tag}: " + ", ".join(
        f"{key.replace('_', ' ')}={value}" for key, value in numbers.items()
    )
    print(f"SUMMARY {line}")
    return line
