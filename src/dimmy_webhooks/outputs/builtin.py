"""The kinds of output this package brings: ``console``, ``jsonl:``, ``python:``, ``http:`` and
the message buses, each an :class:`~.kind.OutputKind` declared as an entry point of the group
``dimmy_webhooks.outputs`` like any plug-in's (:data:`BUILTIN_KINDS`).

May import: the output kinds themselves (:mod:`.local`, :mod:`.http`, :mod:`.bus`).
"""

from __future__ import annotations

from dataclasses import replace

from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.outputs.base import Output
from dimmy_webhooks.outputs.bus import AMQP, MQTT, NATS, REDIS
from dimmy_webhooks.outputs.http import Destination, HttpOutput, check_url
from dimmy_webhooks.outputs.kind import OutputContext, OutputKind
from dimmy_webhooks.outputs.local import ConsoleOutput, JsonlOutput, PythonOutput


def _http(argument: str | None, context: OutputContext) -> Output:
    label = context.label
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


CONSOLE = OutputKind("console", _console)
JSONL = OutputKind("jsonl:PATH", _jsonl)
PYTHON = OutputKind("python:module:function", _python)
HTTP = OutputKind("http:URL", _http, named=True)

BUILTIN_KINDS: dict[str, tuple[str, OutputKind]] = {
    "console": ("dimmy_webhooks.outputs.builtin:CONSOLE", CONSOLE),
    "jsonl": ("dimmy_webhooks.outputs.builtin:JSONL", JSONL),
    "python": ("dimmy_webhooks.outputs.builtin:PYTHON", PYTHON),
    "http": ("dimmy_webhooks.outputs.builtin:HTTP", HTTP),
    "amqp": ("dimmy_webhooks.outputs.bus:AMQP", AMQP),
    "redis": ("dimmy_webhooks.outputs.bus:REDIS", REDIS),
    "nats": ("dimmy_webhooks.outputs.bus:NATS", NATS),
    "mqtt": ("dimmy_webhooks.outputs.bus:MQTT", MQTT),
}
"""The kinds this package brings, by scheme: the entry point each is declared under in
``pyproject.toml`` (``[project.entry-points."dimmy_webhooks.outputs"]``) and the kind."""
