"""Alerts: one message when something needs a person, one when it clears.

The :class:`Notifier` (a long-running part, ``DIMMY_ALERT_URL``) looks at the overview every
``DIMMY_ALERT_INTERVAL_SECONDS`` and derives the conditions that are active now
(:func:`conditions`, pure):

==========================  ==================================================================
``dead_work``               jobs are dead (until they are replayed or none is left)
``api_key``                 the Dimmy API refuses the API key
``unavailable``             a part of the service stopped (the store's writer, a background part)
``signature_failures``      at least ``DIMMY_ALERT_SIGNATURE_FAILURES`` webhooks refused for their
                            signature in the last 5 minutes (this process)
``destination:<output>``    an output's attempts have all failed for
                            ``DIMMY_ALERT_DESTINATION_MINUTES``
``reconciliation_gap``      the poller found items whose webhooks never came, within the last
                            :data:`GAP_QUIET` seconds (the gap grew)
==========================  ==================================================================

A condition that becomes active is told once (``firing``); told again only when its summary
changed and ``DIMMY_ALERT_REPEAT_MINUTES`` passed since its last message; when it is no longer
active, ``resolved`` is told. A new ``firing`` of the same condition waits for the repeat
window after its last message, so a flapping condition sends at most a few messages per window.
A message that cannot be posted is tried again at the next check. The URL is a secret (an
incoming webhook's URL is its credential): it is never logged.

A summary can carry text from outside (the Dimmy API's reason for refusing the key, a WMS's
error): it is cut to :data:`SUMMARY_LIMIT` characters, control characters become spaces, and
in the ``slack`` format (Slack, Teams, Mattermost) ``&``, ``<`` and ``>`` are escaped as Slack
asks and a Markdown link ``[text](url)`` is broken, so no mention (``<!channel>``, ``<@U..>``),
link or HTML from outside reaches the channel as markup (:func:`escape_chat`). The ``json``
format carries the summary as a JSON string, for the receiver to escape for its own target.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from dimmy_webhooks import outbound
from dimmy_webhooks.config import Settings
from dimmy_webhooks.items import format_timestamp
from dimmy_webhooks.observe.logs import redact_urls
from dimmy_webhooks.observe.overview import Overview

log = logging.getLogger("dimmy_webhooks.observe.alerts")

GAP_QUIET = 900.0
"""Seconds without a new missed webhook after which ``reconciliation_gap`` is resolved."""

SUMMARY_LIMIT = 600
"""Characters of a summary that are sent (the rest is cut, marked with ``...``)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def bounded(summary: str) -> str:
    """``summary`` on one line (control characters as spaces), at most :data:`SUMMARY_LIMIT`
    characters."""
    text = _CONTROL.sub(" ", summary)
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 3] + "..."


def escape_chat(text: str) -> str:
    """``text`` shown as written in Slack, Teams or Mattermost: ``&``, ``<``, ``>`` escaped
    (Slack's control characters: no ``<!channel>``, ``<@user>`` or ``<url|label>`` stays markup,
    nor HTML in Teams) and ``](`` split, so no Markdown link ``[label](url)`` is formed."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("](", "] (")


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """Thresholds and pacing of the alerts (seconds unless said otherwise)."""

    interval: float = 15.0
    repeat: float = 1800.0
    signature_failures: int = 20
    destination_failing: float = 600.0
    gap_quiet: float = GAP_QUIET

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertPolicy:
        """The ``DIMMY_ALERT_*`` thresholds and pacing."""
        return cls(
            interval=settings.alert_interval_seconds,
            repeat=settings.alert_repeat_minutes * 60,
            signature_failures=settings.alert_signature_failures,
            destination_failing=settings.alert_destination_minutes * 60,
        )


@dataclass(frozen=True, slots=True)
class Condition:
    """Something that needs a person: ``key`` names it, ``summary`` says it in one line."""

    key: str
    summary: str


@dataclass
class _State:
    notified: bool = False  # a firing message went out, its resolved one not yet
    last_sent: float = float("-inf")
    summary: str = ""


def conditions(
    overview: Overview,
    policy: AlertPolicy,
    *,
    signature_failures: int,
    gap_grew_at: float | None,
) -> list[Condition]:
    """The conditions active in ``overview`` (``gap_grew_at``: when the reconciliation gap
    last grew; ``signature_failures``: those of the last 5 minutes)."""
    found = []
    if overview.failures:
        found.append(
            Condition("unavailable", "service part stopped: " + "; ".join(overview.failures))
        )
    if overview.api_key_refused:
        refused = next((p for p in overview.problems if "refused the key" in p), "")
        found.append(Condition("api_key", refused or "the Dimmy API refuses DIMMY_API_KEY"))
    dead = {k: n for (k, s), n in overview.jobs_by_kind().items() if s == "dead" and n}
    if dead:
        detail = ", ".join(f"{n} {kind}" for kind, n in sorted(dead.items()))
        found.append(
            Condition("dead_work", f"work went dead: {sum(dead.values())} jobs ({detail})")
        )
    if signature_failures >= policy.signature_failures:
        found.append(
            Condition(
                "signature_failures",
                f"{signature_failures} webhooks refused for their signature in 5 minutes "
                "(wrong DIMMY_WEBHOOK_SECRET, a rotation, or someone probing)",
            )
        )
    for dest in overview.destinations:
        since = dest.failing_since
        if since is not None and overview.at - since >= policy.destination_failing:
            minutes = (overview.at - since) / 60
            found.append(
                Condition(
                    f"destination:{dest.output}",
                    f"output {redact_urls(dest.output)} failing for {minutes:.0f} min "
                    f"({dest.backlog} waiting)"
                    + (f": {redact_urls(dest.last_error)[:200]}" if dest.last_error else ""),
                )
            )
    if gap_grew_at is not None and overview.at - gap_grew_at < policy.gap_quiet:
        found.append(
            Condition(
                "reconciliation_gap",
                f"webhooks are being lost: {overview.reconciliation_gap} items reached the "
                "service only through polling",
            )
        )
    return found


Post = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


class Notifier:
    """Checks the conditions and posts the messages (see the module docstring).

    ``look`` returns the overview and the signature failures of the last 5 minutes; ``post``
    sends one JSON body (tests pass a recorder; :meth:`http_post` is the real one).
    """

    def __init__(
        self,
        look: Callable[[], Coroutine[Any, Any, tuple[Overview, int]]],
        post: Post,
        policy: AlertPolicy,
        *,
        fmt: str = "slack",
        link: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.look = look
        self.post = post
        self.policy = policy
        self.fmt = fmt
        self.link = link
        self.clock = clock
        self.states: dict[str, _State] = {}
        self.sent: int = 0
        self._gap: int | None = None
        self._gap_grew_at: float | None = None
        self._failing = False

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check()
            except Exception:
                log.exception("alert check failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.policy.interval)

    async def check(self) -> list[dict[str, Any]]:
        """One round: look, compare with what was told, post what changed; returns the
        bodies posted."""
        overview, signature_failures = await self.look()
        now = self.clock()
        if self._gap is not None and overview.reconciliation_gap > self._gap:
            self._gap_grew_at = now
        self._gap = overview.reconciliation_gap
        active = {
            c.key: c
            for c in conditions(
                overview,
                self.policy,
                signature_failures=signature_failures,
                gap_grew_at=self._gap_grew_at,
            )
        }
        posted = []
        for key in sorted(set(active) | set(self.states)):
            state = self.states.setdefault(key, _State())
            condition = active.get(key)
            if condition is not None:
                quiet = now - state.last_sent >= self.policy.repeat
                news = not state.notified or condition.summary != state.summary
                if quiet and news:
                    state_name = "firing" if not state.notified else "still firing"
                    if await self._send(key, state_name, condition.summary, now):
                        posted.append(self._body(key, state_name, condition.summary, now))
                        state.notified, state.last_sent = True, now
                        state.summary = condition.summary
            elif state.notified:
                summary = f"resolved: {state.summary}"
                if await self._send(key, "resolved", summary, now):
                    posted.append(self._body(key, "resolved", summary, now))
                    state.notified, state.last_sent = False, now
        return posted

    async def _send(self, key: str, state: str, summary: str, now: float) -> bool:
        try:
            await self.post(self._body(key, state, summary, now))
        except Exception as exc:
            if not self._failing:
                log.warning(
                    "alert not sent",
                    extra={"fields": {"condition": key, "reason": type(exc).__name__}},
                )
            self._failing = True
            return False
        self._failing = False
        self.sent += 1
        log.info("alert sent", extra={"fields": {"condition": key, "state": state}})
        return True

    def _body(self, key: str, state: str, summary: str, now: float) -> dict[str, Any]:
        # a condition names an output by its URL, and a summary quotes errors: mask credentials
        key, summary = redact_urls(key), bounded(redact_urls(summary))
        if self.fmt == "json":
            return {
                "source": "dimmy-webhooks",
                "condition": key,
                "state": "firing" if state == "still firing" else state,
                "summary": summary,
                "at": format_timestamp(now),
                "dashboard": self.link,
            }
        mark = "RESOLVED" if state == "resolved" else "ALERT"
        text = f"[dimmy-webhooks] {mark}: {escape_chat(summary)}"
        if self.link:
            text += f" <{self.link}|open the dashboard>"
        return {"text": text}


@dataclass
class HttpPoster:
    """Posts alert bodies to ``url`` with its own session (:func:`outbound.session`: 10 s per
    phase, TLS and proxy as the other outbound paths, no redirects)."""

    url: str
    timeout: float = 10.0
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)

    async def __call__(self, body: dict[str, Any]) -> None:
        if self._session is None:
            self._session = outbound.session(url=self.url, concurrency=2, timeout=self.timeout)
        async with self._session.post(self.url, json=body, allow_redirects=False) as response:
            if response.status >= 300:
                raise RuntimeError(f"alert URL answered HTTP {response.status}")

    def __repr__(self) -> str:
        return "HttpPoster(***)"  # the URL is a credential

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
