"""The ``DIMMY_OUTPUTS`` syntax: which kinds of output exist and how each is built.

``DIMMY_OUTPUTS`` lists outputs, comma separated (:func:`parse_outputs`)::

    console                  print each item (id, then its JSON), like Dimmy's original example
    jsonl:PATH               append one JSON object per line to PATH
    python:module:function   call a function of yours with (item dict, idempotency key)
    http:URL                 a signed POST to a warehouse system (:mod:`.http`)
    NAME=http:URL            the same, named NAME whatever the URL (its backlog stays when the
                             URL changes: a token in its query, its host or port)

A kind is one row of :data:`OUTPUT_KINDS`: the seam where more kinds plug in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.outputs.base import Output
from dimmy_webhooks.outputs.http import Destination, HttpOutput, check_url
from dimmy_webhooks.outputs.local import ConsoleOutput, JsonlOutput, PythonOutput


@dataclass(frozen=True, slots=True)
class OutputContext:
    """What building an output may need beyond its argument: our signing secret for forwards
    and the destinations of ``DIMMY_DESTINATIONS_FILE``."""

    forward_secret: str | None = None
    destinations: Sequence[Destination] = ()


@dataclass(frozen=True, slots=True)
class OutputKind:
    """One row of the ``DIMMY_OUTPUTS`` syntax: ``kind`` or ``kind:argument``."""

    usage: str
    build: Callable[[str | None, OutputContext], Output]
    """Gets the text after ``kind:`` (``None`` when absent); raises ConfigError when unusable."""


def _http(argument: str | None, context: OutputContext, label: str | None = None) -> Output:
    if not argument:
        raise ConfigError("output 'http' needs a URL: http:https://wms.example.com/path")
    url = check_url(argument, "DIMMY_OUTPUTS: http:URL")
    listed = {destination.url_name: destination for destination in context.destinations}
    destination = listed.get(Destination(url=url).url_name, Destination(url=url))
    if label is not None:
        if destination.label not in (None, label):
            raise ConfigError(
                f"DIMMY_OUTPUTS: {label}=http:{destination.url_name[5:]} is named "
                f"{destination.label!r} in the destinations file: use one name"
            )
        destination = replace(destination, label=label)
    return HttpOutput(destination, forward_secret=context.forward_secret)


_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
"""The NAME of ``NAME=http:URL``."""


def _console(argument: str | None, context: OutputContext) -> Output:
    if argument:
        raise ConfigError(f"output 'console' takes no argument (got {argument!r})")
    return ConsoleOutput()


def _jsonl(argument: str | None, context: OutputContext) -> Output:
    if not argument:
        raise ConfigError("output 'jsonl' needs a file: jsonl:PATH")
    return JsonlOutput(argument)


def _python(argument: str | None, context: OutputContext) -> Output:
    if not argument:
        raise ConfigError("output 'python' needs a target: python:module:function")
    return PythonOutput(argument)


OUTPUT_KINDS: dict[str, OutputKind] = {
    "console": OutputKind("console", _console),
    "jsonl": OutputKind("jsonl:PATH", _jsonl),
    "python": OutputKind("python:module:function", _python),
    "http": OutputKind("http:URL", _http),
}
"""Every kind ``DIMMY_OUTPUTS`` knows, by the word before the first ``:``."""


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
        if equals and _LABEL.fullmatch(label.strip()):  # NAME=http:URL
            word, _, argument = rest.strip().partition(":")
            if word.strip().lower() != "http":
                raise ConfigError(f"{entry!r}: only http:URL takes a name (NAME=http:URL)")
            output = _http(argument.strip(), context, label.strip())
        else:
            word, colon, argument = entry.partition(":")
            kind = OUTPUT_KINDS.get(word.strip().lower())
            if kind is None:
                valid = ", ".join(k.usage for k in OUTPUT_KINDS.values())
                raise ConfigError(
                    f"unknown output kind {word.strip()!r} in {entry!r}; valid: {valid}"
                )
            output = kind.build(argument.strip() if colon else None, context)
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
