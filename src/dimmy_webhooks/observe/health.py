"""Health: what ``/readyz`` answers, from a round trip to the store and the process's status.

Takes the store and a :class:`~dimmy_webhooks.observe.overview.Status` snapshot, never the
service object (the composition root calls :func:`check_readiness`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dimmy_webhooks.errors import StoreError
from dimmy_webhooks.observe.logs import redact_urls
from dimmy_webhooks.observe.overview import Status
from dimmy_webhooks.store import Store


@dataclass(frozen=True, slots=True)
class Readiness:
    """What ``/readyz`` answers: ``ready``, ``degraded`` (working, with problems an operator
    should see) or ``unavailable`` (the store does not answer: take this process out of a load
    balancer)."""

    status: str
    problems: list[str]


async def check_readiness(store: Store, status: Status) -> Readiness:
    """Ask the store for a round trip, then weigh the status's failures (``unavailable``)
    and problems (``degraded``)."""
    failures = list(status.failures)
    try:
        await store.ping()
    except StoreError as exc:
        failures.insert(0, f"store unreachable: {exc}")
    # unauthenticated: a problem quoting a URL never shows its credentials
    problems = [redact_urls(p) for p in status.problems]
    if failures:
        return Readiness("unavailable", [redact_urls(f) for f in failures] + problems)
    return Readiness("degraded" if problems else "ready", problems)
