"""Crash points for fault tests: make a process die at an exact place, as a power cut would.

``DIMMY_FAILPOINT=after_fetch:3`` makes the process SIGKILL itself the 3rd time it passes the point
``after_fetch`` (``name`` alone means the 1st time; several are separated by commas). Unset in
production, where :meth:`Failpoints.hit` is a dictionary lookup that finds nothing.

Points: ``after_claim`` (work leased, nothing done), ``after_fetch`` (item fetched, not stored),
``after_commit`` (result committed, not yet acknowledged to the queue's caller), ``after_insert``
(webhook committed, 204 not yet sent).
"""

from __future__ import annotations

import os
import signal

from dimmy_webhooks.errors import ConfigError

POINTS = frozenset({"after_claim", "after_fetch", "after_commit", "after_insert"})


class Failpoints:
    def __init__(self, spec: str | None = None) -> None:
        self._remaining: dict[str, int] = {}
        for part in (spec or "").split(","):
            if not part.strip():
                continue
            name, _, count = part.strip().partition(":")
            if name not in POINTS or (count and not count.isdigit()):
                raise ConfigError(
                    f"DIMMY_FAILPOINT: {part.strip()!r} is not one of {sorted(POINTS)}[:N]"
                )
            self._remaining[name] = int(count or 1)

    def hit(self, name: str) -> None:
        """Die here if this is the armed pass of ``name``."""
        if name not in self._remaining:
            return
        self._remaining[name] -= 1
        if self._remaining[name] <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


NONE = Failpoints()
