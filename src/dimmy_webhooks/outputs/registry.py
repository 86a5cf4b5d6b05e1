"""The ``DIMMY_OUTPUTS`` syntax: which kinds of output exist and how each is built.

``DIMMY_OUTPUTS`` lists outputs, comma separated (:func:`parse_outputs`)::

    console                  print each item (id, then its JSON), like Dimmy's original example
    jsonl:PATH               append one JSON object per line to PATH
    python:module:function   call a function of yours with (item dict, idempotency key)
    http:URL                 a signed POST to a warehouse system (:mod:`.http`)
    NAME=http:URL            the same, named NAME whatever the URL (its backlog stays when the
                             URL changes: a token in its query, its host or port)
    amqp:URL, redis:URL,     the same signed envelope onto a message bus (:mod:`.bus`);
    nats:URL, mqtt:URL       NAME=KIND:URL names them too
    SCHEME:...               a kind an installed plug-in adds (:mod:`.plugins`)

A kind is an :class:`OutputKind`: the built-in ones are :data:`.builtin.BUILTIN_KINDS`, and
installed packages add more under the entry-point group ``dimmy_webhooks.outputs``;
:data:`OUTPUT_KINDS` is every kind installed, by scheme. An output a plug-in builds that does
not pause itself is wrapped in a :class:`PausingOutput`: it is paused after repeated failure
like an ``http:`` one.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from dimmy_webhooks.errors import ConfigError, OutputError
from dimmy_webhooks.models import Receipt, StoredItem
from dimmy_webhooks.outputs import plugins
from dimmy_webhooks.outputs.base import DeliveryFailed, DestinationPaused, Output
from dimmy_webhooks.outputs.bus import MessageOutput
from dimmy_webhooks.outputs.http import HttpOutput
from dimmy_webhooks.outputs.http.limits import PAUSE_SECONDS, Breaker
from dimmy_webhooks.outputs.kind import OutputContext, OutputKind
from dimmy_webhooks.outputs.plugins import InstalledKinds

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
"""The NAME of ``NAME=http:URL``."""


OUTPUT_KINDS: Mapping[str, OutputKind] = InstalledKinds()
"""Every kind ``DIMMY_OUTPUTS`` knows, by the word before the first ``:``: the built-in ones
and those of installed plug-ins (:mod:`.plugins`)."""


class PausingOutput:
    """A plug-in's output that does not pause itself, with the pause of an ``http:`` output:
    after :data:`~dimmy_webhooks.outputs.http.limits.FAILURES_BEFORE_PAUSE` failed deliveries
    in a row (anything raised, or no answer within the worker's time limit) its deliveries wait
    (:class:`DestinationPaused`: no attempt spent, the plug-in not called) for
    :data:`~dimmy_webhooks.outputs.http.limits.PAUSE_SECONDS`, then one delivery tries it:
    its success ends the pause, its failure doubles it (the
    :class:`~dimmy_webhooks.outputs.http.limits.Breaker` of ``http:``). ``problems`` says so,
    as ``http:`` does, for the overview and ``/readyz``."""

    def __init__(self, output: Output, clock: Callable[[], float] = time.time) -> None:
        self.output = output
        self.name = output.name
        self.max_attempts = output.max_attempts
        self.delivery_timeout = output.delivery_timeout
        self._clock = clock
        self._breaker = Breaker(output.name, PAUSE_SECONDS, clock)

    async def deliver(self, item: StoredItem, idempotency_key: str) -> Receipt | None:
        with self._breaker.admit(self._clock()) as probe:
            try:
                receipt = await self.output.deliver(item, idempotency_key)
            except DestinationPaused:
                raise  # the plug-in's own pause: not a failure
            except DeliveryFailed as exc:
                if exc.permanent:  # it answered about the item: it is up
                    self._breaker.succeeded()
                else:
                    self._breaker.failed(str(exc)[:300], probe)
                raise
            except asyncio.CancelledError:  # the worker's time limit (or a shutdown)
                self._breaker.failed(f"{self.name}: no answer in time", probe)
                raise
            except BaseException as exc:  # deliver_within makes any of them a failure
                why = str(exc) if isinstance(exc, OutputError) else f"{type(exc).__name__}: {exc}"
                self._breaker.failed(why[:300], probe)
                raise
            self._breaker.succeeded()
            return receipt

    async def aclose(self) -> None:
        await self.output.aclose()

    def problems(self) -> list[str]:
        return self._breaker.problems() + self.output.problems()


def _pauses_itself(output: Output) -> bool:
    """Whether ``output`` has the pause after repeated failure already (a :class:`Breaker`)."""
    if isinstance(output, HttpOutput | MessageOutput | PausingOutput):
        return True
    return any(isinstance(value, Breaker) for value in getattr(output, "__dict__", {}).values())


def _plugin(word: str, entry: str) -> plugins.Plugin:
    """The plug-in of kind ``word``: :class:`ConfigError` listing the valid ones when none is."""
    plugin = plugins.usable().get(word)
    if plugin is None:
        valid = ", ".join(p.usage for p in plugins.usable().values())
        raise ConfigError(f"unknown output kind {word!r} in {entry!r}; valid: {valid}")
    return plugin


def _named(plugin: plugins.Plugin) -> bool:
    return plugin.problem is None and plugin.load().named


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
        label, equals, rest = entry.partition("=")
        named = bool(equals and _LABEL.fullmatch(label.strip()))  # NAME=kind:argument
        word, colon, argument = (rest.strip() if named else entry).partition(":")
        plugin = _plugin(word.strip().lower(), entry)
        kind = plugin.load()
        if named and not kind.named:
            others = [p.scheme + ":" for p in plugins.usable().values() if _named(p)]
            also = f"; so do {', '.join(s for s in others if s != 'http:')}" if others else ""
            raise ConfigError(f"{entry!r}: only http:URL takes a name (NAME=http:URL){also}")
        built = replace(context, label=label.strip()) if named else context
        output = kind.build(argument.strip() if colon else None, built)
        if not plugin.builtin and not _pauses_itself(output):
            output = PausingOutput(output)
        if output.name in seen:
            raise ConfigError(f"output {output.name!r} is listed twice in DIMMY_OUTPUTS")
        seen.add(output.name)
        outputs.append(output)
    taken = {output.destination.url for output in outputs if isinstance(output, HttpOutput)}
    for destination in context.destinations:
        if destination.name not in seen and destination.url not in taken:
            seen.add(destination.name)
            outputs.append(HttpOutput(destination, forward_secret=context.forward_secret))
    return outputs
