"""``mqtt:mqtt://user:pass@host:1883?topic=T&qos=1``: MQTT through paho-mqtt
(``pip install 'dimmy-webhooks[mqtt]'``).

MQTT 5 by default: the payload is the envelope JSON, ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` travel as user properties, and the content type is set. A delivery counts
once the broker acknowledged it (``PUBACK`` for QoS 1, ``PUBCOMP`` for QoS 2; QoS 0 has no
acknowledgement and is refused); an acknowledgement with a failure reason code is a refused
delivery. ``version=3.1.1`` talks to a broker without MQTT 5: the payload alone (no user
properties, so no signature). ``mqtts://`` uses TLS.

paho's network loop runs in a thread of its own; acknowledgements and a lost connection are
handed to the event loop, never awaited in that thread. paho never reconnects by itself: the
output does, with its backoff.

Options: ``topic`` (required), ``qos`` (1 or 2; 1), ``version`` (5 or 3.1.1; 5), ``client_id``.
"""

from __future__ import annotations

import asyncio
import ssl
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


class _MqttConnection:
    """One paho client, connected, its network loop in its own thread."""

    def __init__(self, client: Any, topic: str, qos: int, v5: bool) -> None:
        self._client = client
        self._topic = topic
        self._qos = qos
        self._v5 = v5
        self._loop = asyncio.get_running_loop()
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._gone: str | None = None
        self.connected: asyncio.Future[None] = self._loop.create_future()
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect

    # paho's thread: hand everything to the event loop
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._loop.call_soon_threadsafe(self._connack, reason)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._loop.call_soon_threadsafe(self._acknowledged, mid, reason)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, p: Any) -> None:
        self._loop.call_soon_threadsafe(self._lost, f"disconnected: {reason}")

    # the event loop
    def _connack(self, reason: Any) -> None:
        if not self.connected.done():
            if getattr(reason, "is_failure", False):
                self.connected.set_exception(ConnectionError(f"refused: {reason}"))
            else:
                self.connected.set_result(None)

    def _acknowledged(self, mid: int, reason: Any) -> None:
        future = self._pending.pop(mid, None)
        if future is None or future.done():
            return
        if getattr(reason, "is_failure", False):
            future.set_exception(BrokerRefused(f"the broker answered {reason}"))
        else:
            future.set_result(None)

    def _lost(self, why: str) -> None:
        self._gone = why
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(why))
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionError(why))

    async def publish(self, message: Message) -> str | None:
        import paho.mqtt.client as mqtt

        if self._gone is not None:
            raise ConnectionError(self._gone)
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
        acknowledged: asyncio.Future[None] = self._loop.create_future()
        info = self._client.publish(self._topic, message.body, self._qos, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(mqtt.error_string(info.rc))
        # registered before the event loop can run the acknowledgement paho hands over
        self._pending[info.mid] = acknowledged
        try:
            await acknowledged
        finally:
            self._pending.pop(info.mid, None)
        return None

    async def close(self) -> None:
        self._gone = self._gone or "closed"
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def is_closed(self) -> bool:
        return self._gone is not None


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
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError as exc:
        raise missing_extra("mqtt", "paho-mqtt", exc) from None
    tls = address.scheme == "mqtts"
    port = address.port or (8883 if tls else 1883)

    async def connect(timeout: float) -> Connection:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=address.text("client_id", "") or "",
            protocol=mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311,
            reconnect_on_failure=False,  # the output reconnects, with its backoff
        )
        client.connect_timeout = timeout
        if address.username is not None:
            client.username_pw_set(address.username, address.password)
        if tls:
            client.tls_set_context(ssl.create_default_context())
        connection = _MqttConnection(client, topic, int(qos), version == "5")
        try:
            await asyncio.to_thread(client.connect, address.host, port, 30)
            client.loop_start()
            await connection.connected  # the CONNACK
        except BaseException:
            await asyncio.to_thread(connection._shutdown)
            raise
        return connection

    return MessageOutput(address, connect, context.forward_secret)
