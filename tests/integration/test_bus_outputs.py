"""The message-bus outputs against real brokers (tests/support/brokers.py): a consumer reading
from the broker gets every item version of a run, signed (checked with the ``standardwebhooks``
package) under a stable id, through a SIGKILL of our worker and of the broker mid-run (a SIGTERM
for Mosquitto, which acknowledges before it writes: ``brokers.ACKS_BEFORE_DISK``).

Each kind's run: 150 items fetched from the fake Dimmy API at 50/s by ``dimmy-webhooks
worker`` processes; the first worker is SIGKILLed after 10 deliveries, the broker after 30
(and started again on its port); then everything must arrive, repeats only under the same id.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from dimmy_webhooks.devtools.sender import items_scanned_body
from dimmy_webhooks.outputs import idempotency_key

from ..support.brokers import Broker, broker  # noqa: F401 - the fixture
from ..support.constants import API_KEY, FORWARD_SECRET
from ..support.databases import insert_events, rows, unfinished_jobs
from ..support.processes import wait_until

ITEMS = 150
NAME = "bus"  # NAME=kind:URL: the output's name, part of every id
QUEUE = "dimmy-items"  # the AMQP queue, the Redis stream
SUBJECT = "dimmy.items"  # the NATS subject (stream DIMMY), the MQTT topic's root


@dataclass
class Received:
    """One message as a consumer read it."""

    headers: dict[str, str]
    body: bytes
    broker_id: str | None  # AMQP message_id, NATS Nats-Msg-Id (None where there is none)


# consumers, one per broker -----------------------------------------------------------------


class Consumer:
    """Reads what the output sent: ``prepare`` before the run, ``collect`` after it."""

    def __init__(self, server: Broker) -> None:
        self.broker = server

    def spec(self) -> str:
        raise NotImplementedError

    def prepare(self) -> None:
        return None

    def collect(self) -> list[Received]:
        raise NotImplementedError

    def close(self) -> None:
        return None


class AmqpConsumer(Consumer):
    """A durable queue bound to the default exchange, drained after the run."""

    def spec(self) -> str:
        return f"{self.broker.url}/?routing_key={QUEUE}"

    def prepare(self) -> None:
        asyncio.run(self._amqp(drain=False))

    def collect(self) -> list[Received]:
        return asyncio.run(self._amqp(drain=True))

    async def _amqp(self, *, drain: bool) -> list[Received]:
        import aio_pika

        connection = await aio_pika.connect(self.broker.url + "/", timeout=10)
        got: list[Received] = []
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(QUEUE, durable=True)
            while drain:
                message = await queue.get(no_ack=True, fail=False, timeout=5)
                if message is None:
                    break
                headers = {k: _text(v) for k, v in (message.headers or {}).items()}
                got.append(Received(headers, message.body, message.message_id))
        return got


class RedisConsumer(Consumer):
    """The stream, read whole after the run."""

    def spec(self) -> str:
        return f"{self.broker.url}/0?stream={QUEUE}"

    def collect(self) -> list[Received]:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.broker.port, socket_timeout=10)
        try:
            entries = client.xrange(QUEUE)
        finally:
            client.close()
        got = []
        for _, entry in entries:
            fields = {_text(k): v for k, v in entry.items()}
            body = fields.pop("body")
            got.append(Received({k: _text(v) for k, v in fields.items()}, body, None))
        return got


class NatsConsumer(Consumer):
    """A JetStream stream with file storage taking the subject, read whole after the run."""

    def spec(self) -> str:
        return f"{self.broker.url}?subject={SUBJECT}"

    def prepare(self) -> None:
        async def create() -> None:
            import nats
            from nats.js.api import StorageType

            client = await nats.connect(self.broker.url, connect_timeout=5)
            try:
                await client.jetstream().add_stream(
                    name="DIMMY", subjects=[SUBJECT], storage=StorageType.FILE
                )
            finally:
                await client.close()

        asyncio.run(create())

    def collect(self) -> list[Received]:
        async def read() -> list[Received]:
            import nats

            client = await nats.connect(self.broker.url, connect_timeout=5)
            got = []
            try:
                js = client.jetstream()
                last = (await js.stream_info("DIMMY")).state.last_seq
                for seq in range(1, last + 1):
                    message = await js.get_msg("DIMMY", seq)
                    headers = dict(message.headers or {})
                    got.append(Received(headers, message.data or b"", headers.get("Nats-Msg-Id")))
            finally:
                await client.close()
            return got

        return asyncio.run(read())


class MqttConsumer(Consumer):
    """A subscriber with a persistent session (QoS 1) connected through the whole run, in a
    thread; it reconnects by itself when the broker comes back."""

    def spec(self) -> str:
        return f"{self.broker.url}?topic={SUBJECT.replace('.', '/')}&qos=1"

    def prepare(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.properties import Properties

        self.got: list[Received] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="dimmy-test-consumer", protocol=mqtt.MQTTv5
        )
        client.reconnect_delay_set(0.05, 0.5)
        topic = SUBJECT.replace(".", "/")

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            client.subscribe(topic, qos=1)

        def on_subscribe(*args: Any) -> None:
            self.subscribed.set()

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            props = getattr(message.properties, "UserProperty", None) or []
            with self.lock:
                self.got.append(Received(dict(props), message.payload, None))

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        session = Properties(mqtt.PacketTypes.CONNECT)
        session.SessionExpiryInterval = 600  # kept (and saved) while the broker restarts
        client.connect("127.0.0.1", self.broker.port, clean_start=False, properties=session)
        client.loop_start()
        self.client = client
        assert self.subscribed.wait(10), "the MQTT consumer did not subscribe"

    def collect(self) -> list[Received]:
        time.sleep(0.5)  # what the broker acknowledged last is on its way to us
        with self.lock:
            return list(self.got)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


CONSUMERS: dict[str, type[Consumer]] = {
    "amqp": AmqpConsumer,
    "redis": RedisConsumer,
    "nats": NatsConsumer,
    "mqtt": MqttConsumer,
}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# the run --------------------------------------------------------------------------------------


def delivered(db: str) -> int:
    return int(
        rows(db, f"SELECT count(*) FROM delivery_attempts WHERE outcome = 'delivered' "
             f"AND output = '{NAME}'")[0][0]
    )  # fmt: skip


@pytest.mark.parametrize("broker", list(CONSUMERS), indirect=True)
def test_every_item_version_arrives_signed_through_kills_of_worker_and_broker(
    broker: Broker,  # noqa: F811 - the fixture
    tmp_path: Path,
    sqlite_url: str,
    fake: Any,
    fake_url: str,
    service_factory: Any,
) -> None:
    consumer = CONSUMERS[broker.kind](broker)
    consumer.prepare()
    try:
        ids = fake.generate_items(ITEMS)
        batches = [ids[i : i + 50] for i in range(0, ITEMS, 50)]
        insert_events(
            sqlite_url, [(f"msg_{n}", items_scanned_body(batch)) for n, batch in enumerate(batches)]
        )
        # options of ours: bounded waits, a short pause, so the run takes seconds
        spec = consumer.spec() + "&timeout=2&pause_seconds=0.5"
        env = {
            "DIMMY_DATABASE_URL": sqlite_url,
            "DIMMY_API_KEY": API_KEY,
            "DIMMY_API_URL": fake_url,
            "DIMMY_OUTPUTS": f"{NAME}={broker.kind}:{spec}",
            "DIMMY_FORWARD_SECRET": FORWARD_SECRET,
            "DIMMY_LEASE_SECONDS": "1",
            "DIMMY_RETRY_BASE_SECONDS": "0.05",
            "DIMMY_RETRY_MAX_SECONDS": "0.5",
            "DIMMY_API_RATE_LIMIT": "50",
            "DIMMY_API_CONCURRENCY": "4",
            "DIMMY_MAX_ATTEMPTS": "50",
        }
        first = service_factory(["worker"], **env).start()
        assert wait_until(lambda: delivered(sqlite_url) >= 10, timeout=30), first.log()
        first.kill(signal.SIGKILL)
        second = service_factory(["worker"], **env).start()
        assert wait_until(lambda: delivered(sqlite_url) >= 30, timeout=30), second.log()
        broker.restart()
        assert wait_until(lambda: unfinished_jobs(sqlite_url) == 0, timeout=60), second.log()[
            -4000:
        ]
        assert second.stop() == 0  # SIGTERM: the connection closed cleanly
        assert "Traceback" not in second.log()
        assert ":guest@" not in first.log() + second.log()  # the URL's password
        received = consumer.collect()
    finally:
        consumer.close()

    stored = rows(sqlite_url, "SELECT id, version, revision FROM items")
    assert len(stored) == ITEMS
    expected = {idempotency_key(i, v, NAME, r) for i, v, r in stored}
    verify = Webhook(FORWARD_SECRET)
    seen: Counter[str] = Counter()
    for message in received:
        envelope = verify.verify(message.body, message.headers)  # raises unless signed by us
        message_id = message.headers["webhook-id"]
        assert message.broker_id in (None, message_id)
        assert envelope["data"]["id"] in ids
        seen[message_id] += 1
    assert set(seen) == expected  # every version, under its one stable id, nothing else
    repeats = sum(seen.values()) - len(seen)
    print(f"{broker.kind}: {len(received)} messages, {repeats} repeats of an id")
