"""The adaptive client's learned rate, kept in the database so that the next start begins there.

Dimmy's rate limit is undocumented; in ``DIMMY_API_RATE_MODE=adaptive`` the client learns it
from the answers (:mod:`dimmy_webhooks.upstream.pacing`). :class:`LearnedRate` reads what a
previous run learned against the same API URL when the service starts, and writes the rate
every :data:`SAVE_SECONDS` when it changed, and once more at stop. One per API client: each key
has its own limit, so each account's client keeps its own (``default``'s under the key it always
had, so an upgraded installation starts where it was).

May import: the store and the upstream client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from dimmy_webhooks.errors import StoreError
from dimmy_webhooks.store import Store
from dimmy_webhooks.upstream.pacing import AdaptiveRate

log = logging.getLogger("dimmy_webhooks.services")

STATE = "api.rate"
"""``sync_state`` key of the learned rate: ``{"rate": ..., "api_url": ...}`` (``default``'s
client; another account's adds ``:NAME``)."""
SAVE_SECONDS = 30.0


@dataclass
class LearnedRate:
    """One adaptive client's rate, recalled at start and kept while it runs."""

    store: Store
    adaptive: AdaptiveRate
    api_url: str
    account: str = "default"
    clock: Callable[[], float] = time.time

    @property
    def key(self) -> str:
        return STATE if self.account == "default" else f"{STATE}:{self.account}"

    async def recall(self) -> None:
        """Start at the rate a previous run learned against the same API URL."""
        try:
            saved = await self.store.get_state(self.key)
        except StoreError as exc:
            log.warning("learned API rate not read", extra={"fields": {"reason": str(exc)}})
            return
        try:
            state = json.loads(saved) if saved else {}
            rate = float(state["rate"]) if state.get("api_url") == self.api_url else None
        except (ValueError, TypeError, KeyError, AttributeError):
            rate = None
        if rate is not None and rate > 0:
            self.adaptive.restore(rate)
            fields: dict[str, object] = {
                "rate": round(self.adaptive.rate, 1),
                "learned": round(rate, 1),
            }
            if self.account != "default":
                fields["account"] = self.account
            log.info("Dimmy API rate restored", extra={"fields": fields})

    async def keep(self, stop: asyncio.Event) -> None:
        """Write the rate every :data:`SAVE_SECONDS` when it changed, and once at stop."""
        saved = None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAVE_SECONDS)
            rate = round(self.adaptive.rate, 1)
            if rate != saved:
                value = json.dumps({"rate": rate, "api_url": self.api_url})
                try:
                    await self.store.set_state(self.key, value, self.clock())
                    saved = rate
                except StoreError as exc:
                    log.warning(
                        "learned API rate not saved", extra={"fields": {"reason": str(exc)}}
                    )
            if stop.is_set():
                return
