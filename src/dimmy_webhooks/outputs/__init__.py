"""Outputs: where stored items go once they are new or changed.

Delivery is at least once, each with a stable idempotency key. The protocol, the delivery errors
and the worker's way in are in :mod:`.base`; ``console``, ``jsonl`` and ``python`` in :mod:`.local`;
the ``DIMMY_OUTPUTS`` syntax in :mod:`.registry`; signed HTTP forwards to a WMS in :mod:`.http`;
the same signed envelope onto a message bus (AMQP, Redis Streams, NATS JetStream, MQTT) in
:mod:`.bus`; kinds that installed packages add (entry points) in :mod:`.plugins`.
Import from here: this module is the stage's public face.

May import: the shared root modules and :mod:`dimmy_webhooks.config`; never store, pipeline, web.
"""

from dimmy_webhooks.outputs.base import (
    DeliveryFailed,
    DestinationPaused,
    Output,
    OutputThreads,
    deliver_within,
    idempotency_key,
)
from dimmy_webhooks.outputs.bus import BrokerRefused, Connection, Message, MessageOutput
from dimmy_webhooks.outputs.http import Destination, HttpOutput, load_destinations
from dimmy_webhooks.outputs.kind import OutputContext, OutputKind
from dimmy_webhooks.outputs.local import ConsoleOutput, JsonlOutput, PythonOutput
from dimmy_webhooks.outputs.plugins import Plugin, discover
from dimmy_webhooks.outputs.registry import OUTPUT_KINDS, parse_outputs

__all__ = [
    "OUTPUT_KINDS",
    "BrokerRefused",
    "Connection",
    "ConsoleOutput",
    "DeliveryFailed",
    "Destination",
    "DestinationPaused",
    "HttpOutput",
    "JsonlOutput",
    "Message",
    "MessageOutput",
    "Output",
    "OutputContext",
    "OutputKind",
    "OutputThreads",
    "Plugin",
    "PythonOutput",
    "deliver_within",
    "discover",
    "idempotency_key",
    "load_destinations",
    "parse_outputs",
]
