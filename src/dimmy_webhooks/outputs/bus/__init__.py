"""Hand-off onto a message bus: ``amqp:`` (RabbitMQ), ``redis:`` (Redis Streams), ``nats:``
(NATS JetStream) and ``mqtt:`` (MQTT), each an optional extra
(``pip install 'dimmy-webhooks[amqp]'``, ``[redis]``, ``[nats]``, ``[mqtt]``).

Every message is the envelope an ``http:`` output posts, signed the same way: ``webhook-id``
(the delivery's idempotency key, the same for every attempt of one item revision to one
destination), ``webhook-timestamp`` and ``webhook-signature`` travel under exactly those names
in the broker's headers (Redis: stream fields beside ``body``), so a consumer verifies with the
``standardwebhooks`` package as a WMS does. A delivery counts once the broker confirmed it. The
connection, its reconnection with backoff, the pause after repeated failure and the hidden
credentials are :mod:`.base`'s, which a plug-in for another broker reuses (docs/plugins.md).

Each module imports its client library only when an output of its kind is built, so the
service starts without any of them, and a missing one is one line naming the extra.

May import: the shared root modules and the rest of :mod:`dimmy_webhooks.outputs`.
"""

from __future__ import annotations

from dimmy_webhooks.outputs.base import Output
from dimmy_webhooks.outputs.bus.base import (
    BrokerRefused,
    BusAddress,
    Connection,
    Connector,
    Message,
    MessageOutput,
    missing_extra,
)
from dimmy_webhooks.outputs.kind import OutputContext, OutputKind


def _amqp(argument: str | None, context: OutputContext) -> Output:
    from dimmy_webhooks.outputs.bus import amqp

    return amqp.build(argument, context)


def _redis(argument: str | None, context: OutputContext) -> Output:
    from dimmy_webhooks.outputs.bus import redis

    return redis.build(argument, context)


def _nats(argument: str | None, context: OutputContext) -> Output:
    from dimmy_webhooks.outputs.bus import nats

    return nats.build(argument, context)


def _mqtt(argument: str | None, context: OutputContext) -> Output:
    from dimmy_webhooks.outputs.bus import mqtt

    return mqtt.build(argument, context)


AMQP = OutputKind(
    "amqp:amqp://HOST/VHOST?exchange=X&routing_key=Y", _amqp, named=True, requires=("aio_pika",)
)
REDIS = OutputKind("redis:redis://HOST/DB?stream=S", _redis, named=True, requires=("redis",))
NATS = OutputKind("nats:nats://HOST?subject=S", _nats, named=True, requires=("nats",))
MQTT = OutputKind("mqtt:mqtt://HOST?topic=T", _mqtt, named=True, requires=("paho",))

__all__ = [
    "AMQP",
    "MQTT",
    "NATS",
    "REDIS",
    "BrokerRefused",
    "BusAddress",
    "Connection",
    "Connector",
    "Message",
    "MessageOutput",
    "missing_extra",
]
