"""Health: what ``/readyz`` answers, from a round trip to the store and the process's status.

Takes the store and a :class:`~dimmy_webhooks.observe.overview.Status` snapshot, never the
service object (the composition root calls :func:`check_readiness`).

``/readyz`` answers anyone, so it names each problem with a fixed label (:func:`public_label`)
and never repeats a problem's detail: that can carry text from outside (the Dimmy API's reason
for refusing the key, a WMS's error, a database's message) or an output's URL. The detail stays
in the log and in the authenticated ``GET /api/overview`` and dashboard.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dimmy_webhooks.errors import StoreError
from dimmy_webhooks.observe.overview import Status
from dimmy_webhooks.store import Store

UNKNOWN_PROBLEM = "a problem that needs an operator: see the log or GET /api/overview"
"""The label of a problem :func:`public_label` does not know."""

_REFUSED = "Dimmy API refused the key (DIMMY_API_KEY)"

# (how the detailed text starts, its public label); the first match wins
_LABELS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), label)
    for pattern, label in (
        (r"store unreachable\b", "store unreachable"),
        (r"sqlite writer thread stopped\b", "sqlite writer thread stopped: writes cannot commit"),
        (r"Dimmy API refused the key\b", _REFUSED),
        (r"(GET|POST|PUT|PATCH|DELETE) \S+: HTTP 40[13]\b", _REFUSED),  # a paused worker's reason
        (r"DIMMY_API_KEY is not set\b", "DIMMY_API_KEY is not set: items cannot be fetched"),
        (r"destination .* is failing\b", "an output is failing: its deliveries are paused"),
        (r".* threads stuck in calls that timed out\b", "an output's calls are timing out"),
        (r"poller: ", "the poller's last pass failed"),
        (
            r"\d+ deliveries wait for output ",
            "deliveries wait for an output that is not configured: see `move-deliveries`",
        ),
        (
            r"reconciliation found items that never arrived by webhook\b",
            "reconciliation found items that never arrived by webhook (webhooks are being lost)",
        ),
        (r"\S+ stopped: ", "a background part of the service stopped"),
    )
)


def public_label(problem: str) -> str:
    """The fixed text ``/readyz`` shows for ``problem``: never a part of ``problem`` itself."""
    for pattern, label in _LABELS:
        if pattern.match(problem):
            return label
    return UNKNOWN_PROBLEM


@dataclass(frozen=True, slots=True)
class Readiness:
    """What ``/readyz`` answers: ``ready``, ``degraded`` (working, with problems an operator
    should see) or ``unavailable`` (the store does not answer: take this process out of a load
    balancer). ``problems`` are fixed labels (:func:`public_label`), one per distinct label;
    ``details`` the problems as found, for the log and authenticated callers only."""

    status: str
    problems: list[str]
    details: tuple[str, ...] = ()


async def check_readiness(store: Store, status: Status) -> Readiness:
    """Ask the store for a round trip, then weigh the status's failures (``unavailable``)
    and problems (``degraded``)."""
    failures = list(status.failures)
    try:
        await store.ping()
    except StoreError as exc:
        failures.insert(0, f"store unreachable: {exc}")
    details = failures + list(status.problems)
    labels = list(dict.fromkeys(public_label(problem) for problem in details))
    if failures:
        return Readiness("unavailable", labels, tuple(details))
    return Readiness("degraded" if status.problems else "ready", labels, tuple(details))
