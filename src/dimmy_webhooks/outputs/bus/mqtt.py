"""``mqtt:mqtt://user:pass@host:1883?topic=T&qos=1``: MQTT through aiomqtt
(``pip install 'dimmy-webhooks[mqtt]'``).

MQTT 5 by default: the payload is the envelope JSON, ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` travel as user properties, and the content type is set. A delivery counts
once the broker acknowledged it (``PUBACK`` for QoS 1, ``PUBCOMP`` for QoS 2; QoS 0 has no
acknowledgement and is refused). ``version=3.1.1`` talks to a broker without MQTT 5: the payload
alone (no user properties, so no signature). ``mqtts://`` uses TLS.

Options: ``topic`` (required), ``qos`` (1 or 2; 1), ``version`` (5 or 3.1.1; 5), ``client_id``.
"""

from __future__ import annotations

import ssl
from typing import Any

from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.outputs.bus.base import (
    BusAddress,
    Connection,
    Message,
    MessageOutput,
    missing_extra,
)
from dimmy_webhooks.outputs.kind import OutputContext


class _MqttConnection:
    def __init__(self, client: Any, topic: str, qos: int, v5: bool, timeout: float) -> None:
        self._client = client
        self._topic = topic
        self._qos = qos
        self._v5 = v5
        self._timeout = timeout

    async def publish(self, message: Message) -> str | None:
        properties = None
        if self._v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ContentType = "application/json"
            properties.UserProperty = [
                (name, message.headers[name])
                for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
            ]
        await self._client.publish(
            self._topic,
            message.body,
            qos=self._qos,
            properties=properties,
            timeout=self._timeout,
        )
        return None

    async def close(self) -> None:
        await self._client.__aexit__(None, None, None)

    def is_closed(self) -> bool:
        disconnected = getattr(self._client, "_disconnected", None)
        return bool(disconnected is not None and disconnected.done())


def build(argument: str | None, context: OutputContext) -> MessageOutput:
    """An ``mqtt:`` output (:class:`ConfigError` naming what is wrong)."""
    address = BusAddress.parse(
        "mqtt",
        argument,
        url_schemes=("mqtt", "mqtts"),
        options=("topic", "qos", "version", "client_id"),
        label=context.label,
    )
    topic = address.text("topic")
    if not topic or any(c in topic for c in "+#"):
        raise ConfigError(f"output {address.name}: name one topic, no wildcard (topic=T)")
    qos = address.text("qos", "1")
    if qos not in ("1", "2"):
        raise ConfigError(
            f"output {address.name}: qos={qos} must be 1 or 2 (QoS 0 is never acknowledged)"
        )
    version = address.text("version", "5")
    if version not in ("5", "3.1.1"):
        raise ConfigError(f"output {address.name}: version={version} must be 5 or 3.1.1")
    try:
        import aiomqtt
    except ImportError as exc:
        raise missing_extra("mqtt", "aiomqtt", exc) from None
    tls = address.scheme == "mqtts"
    port = address.port or (8883 if tls else 1883)

    async def connect(timeout: float) -> Connection:
        client = aiomqtt.Client(
            address.host,
            port,
            username=address.username,
            password=address.password,
            identifier=address.text("client_id"),
            protocol=aiomqtt.ProtocolVersion.V5 if version == "5" else aiomqtt.ProtocolVersion.V311,
            timeout=timeout,
            tls_context=ssl.create_default_context() if tls else None,
        )
        await client.__aenter__()
        return _MqttConnection(client, topic, int(qos), version == "5", timeout)

    return MessageOutput(address, connect, context.forward_secret)
