"""``amqp:amqp://user:pass@host:5672/vhost?exchange=X&routing_key=Y``: RabbitMQ (AMQP 0-9-1)
through aio-pika (``pip install 'dimmy-webhooks[amqp]'``).

Messages are persistent (delivery mode 2), published with ``mandatory`` on a channel in
publisher-confirm mode: a delivery counts once the broker acknowledged it (for a durable queue,
once it is on disk); a message no queue takes comes back (``NO_ROUTE``) and a negative
acknowledgement are refused deliveries, retried later, never silent losses. The headers are
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``; ``message_id`` is the id.

Options: ``exchange`` (default: the default exchange, where ``routing_key`` is a queue's
name; a named exchange must exist), ``routing_key``.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.outputs.bus.base import (
    BrokerRefused,
    BusAddress,
    Connection,
    Message,
    MessageOutput,
    missing_extra,
)
from dimmy_webhooks.outputs.kind import OutputContext


class _AmqpConnection:
    def __init__(self, connection: Any, channel: Any, exchange: Any, routing_key: str) -> None:
        self._connection = connection
        self._channel = channel
        self._exchange = exchange
        self._routing_key = routing_key

    async def publish(self, message: Message) -> str | None:
        import aio_pika
        from aiormq.exceptions import DeliveryError
        from pamqp.commands import Basic

        amqp_message = aio_pika.Message(
            message.body,
            headers=dict(message.headers),
            message_id=message.id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            timestamp=datetime.fromtimestamp(message.timestamp, UTC),
        )
        try:
            answer = await self._exchange.publish(
                amqp_message, self._routing_key, mandatory=True, timeout=None
            )
        except DeliveryError as exc:  # returned (no queue took it) or negatively acknowledged
            raise BrokerRefused(_returned(exc)) from None
        if not isinstance(answer, Basic.Ack):
            raise BrokerRefused(f"not acknowledged ({type(answer).__name__})")
        return None

    async def close(self) -> None:
        await self._connection.close()

    def is_closed(self) -> bool:
        return bool(self._connection.is_closed or self._channel.is_closed)


def _returned(exc: Exception) -> str:
    returned = getattr(exc, "message", None)
    frame = getattr(returned, "delivery", None) if returned is not None else None
    text = getattr(frame, "reply_text", None)
    return f"the broker returned it: {text}" if text else f"{type(exc).__name__}: {exc}"


def build(argument: str | None, context: OutputContext) -> MessageOutput:
    """An ``amqp:`` output (:class:`ConfigError` naming what is wrong)."""
    address = BusAddress.parse(
        "amqp",
        argument,
        url_schemes=("amqp", "amqps"),
        options=("exchange", "routing_key"),
        label=context.label,
    )
    exchange_name = address.text("exchange", "") or ""
    routing_key = address.text("routing_key", "") or ""
    if not exchange_name and not routing_key:
        raise ConfigError(
            f"output {address.name}: name an exchange (exchange=X) or, for the default "
            "exchange, a queue (routing_key=QUEUE)"
        )
    try:
        import aio_pika
        from aio_pika.connection import make_url
    except ImportError as exc:
        raise missing_extra("amqp", "aio-pika", exc) from None

    # the library's own lines about a lost or refused connection repeat ours, with tracebacks
    for logger in ("aiormq", "aio_pika"):
        logging.getLogger(logger).setLevel(logging.CRITICAL)

    async def connect(timeout: float) -> Connection:
        connection = aio_pika.Connection(make_url(address.url))
        try:
            await connection.connect(timeout=timeout)
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = (
                await channel.get_exchange(exchange_name, ensure=True)
                if exchange_name
                else channel.default_exchange
            )
        except BaseException:
            with contextlib.suppress(Exception):  # closed, so nothing is left to the collector
                await connection.close()
            raise
        return _AmqpConnection(connection, channel, exchange, routing_key)

    return MessageOutput(address, connect, context.forward_secret)
