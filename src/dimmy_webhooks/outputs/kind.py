"""What a kind of output is: :class:`OutputKind` (the object a plug-in registers) and
:class:`OutputContext` (what building one may use).

May import: the shared root modules and :mod:`dimmy_webhooks.outputs.base` and ``.http``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dimmy_webhooks.outputs.base import Output
from dimmy_webhooks.outputs.http import Destination


@dataclass(frozen=True, slots=True)
class OutputContext:
    """What building an output may need beyond its argument: our signing secret for forwards
    (``DIMMY_FORWARD_SECRET``), the destinations of ``DIMMY_DESTINATIONS_FILE``, and the
    ``NAME`` of a ``NAME=kind:argument`` entry (``label``; only for kinds that are ``named``)."""

    forward_secret: str | None = None
    destinations: Sequence[Destination] = ()
    label: str | None = None


@dataclass(frozen=True, slots=True)
class OutputKind:
    """One kind of ``DIMMY_OUTPUTS`` entry: ``kind`` or ``kind:argument`` (the public face of
    a plug-in: docs/plugins.md).

    ``usage`` shows how an entry is written (``kafka:URL``); ``build`` makes the output of one
    entry; ``named`` says the kind takes ``NAME=kind:argument``, its output then named
    ``context.label``; ``requires`` names the modules it imports when it builds an output
    (its client library), which ``dimmy-webhooks outputs`` checks.
    """

    usage: str
    build: Callable[[str | None, OutputContext], Output]
    """Gets the text after ``kind:`` (``None`` when absent); raises ConfigError when unusable."""
    named: bool = False
    requires: tuple[str, ...] = ()
