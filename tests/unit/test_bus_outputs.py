"""The message-bus outputs without a broker: their URLs, what a refused, hanging or lost
connection does (a failed delivery, then a pause the overview shows, then a reconnection), and
the password kept out of every name and reason."""

from __future__ import annotations

import asyncio
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.models import StoredItem
from dimmy_webhooks.observe.health import public_label
from dimmy_webhooks.outputs import (
    BrokerRefused,
    DeliveryFailed,
    DestinationPaused,
    Message,
    MessageOutput,
    OutputContext,
    deliver_within,
    parse_outputs,
)
from dimmy_webhooks.outputs.bus import BusAddress

from ..support.builders import stored_item
from ..support.constants import FORWARD_SECRET

CONTEXT = OutputContext(forward_secret=FORWARD_SECRET)
PASSWORD = "s3cret-Pa55"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word (a hanging broker)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    server.close()


def urls(port: int) -> dict[str, str]:
    auth = f"user:{PASSWORD}@127.0.0.1:{port}"
    return {
        "amqp": f"amqp:amqp://{auth}/?routing_key=q&timeout=0.5&pause_seconds=0.2",
        "redis": f"redis:redis://{auth}/0?stream=s&timeout=0.5&pause_seconds=0.2",
        "nats": f"nats:nats://{auth}?subject=a.b&timeout=0.5&pause_seconds=0.2",
        "mqtt": f"mqtt:mqtt://{auth}?topic=a/b&timeout=0.5&pause_seconds=0.2",
    }


KINDS = ["amqp", "redis", "nats", "mqtt"]


def item() -> StoredItem:
    return stored_item("item-1")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_refused_connection_fails_then_pauses_and_never_shows_the_password(
    kind: str,
) -> None:
    [output] = parse_outputs(urls(closed_port())[kind], CONTEXT)
    assert PASSWORD not in output.name
    assert output.name.startswith(f"{kind}:{kind}://127.0.0.1:")
    try:
        with pytest.raises(DeliveryFailed) as failed:
            await deliver_within(output, item(), "dmy_1", 5)
        assert "cannot connect" in str(failed.value)
        assert PASSWORD not in str(failed.value)
        # the next delivery waits for the reconnection, uncounted, and the overview says so
        with pytest.raises(DestinationPaused):
            await deliver_within(output, item(), "dmy_2", 5)
        [problem] = output.problems()
        assert PASSWORD not in problem
        assert public_label(problem) == "an output is failing: its deliveries are paused"
    finally:
        await output.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_hanging_broker_fails_the_delivery_within_the_timeout(
    kind: str, silent_port: int
) -> None:
    [output] = parse_outputs(urls(silent_port)[kind], CONTEXT)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(DeliveryFailed) as failed:
            await deliver_within(output, item(), "dmy_1", 10)
        assert loop.time() - started < 3
        assert PASSWORD not in str(failed.value)
    finally:
        await output.aclose()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("amqp:amqp://h/", "name an exchange (exchange=X) or"),
        ("amqp:http://h/?routing_key=q", "is not a amqp or amqps URL"),
        ("amqp", "output 'amqp' needs a URL"),
        ("redis:redis://h/0", "name the stream (stream=S)"),
        ("redis:redis://h/0?stream=s&password=x", "unknown option 'password'"),
        ("redis:redis://h/0?stream=s&maxlen=0", "maxlen='0' must be from 1"),
        ("nats:nats://h", "name one subject"),
        ("nats:nats://h?subject=a.*", "no wildcard"),
        ("mqtt:mqtt://h?topic=t&qos=0", "QoS 0 is never acknowledged"),
        ("mqtt:mqtt://h?topic=t/%23", "no wildcard"),
        ("mqtt:mqtt://h?topic=t&version=4", "must be 5 or 3.1.1"),
        ("redis:redis://h/0?stream=s&timeout=x", "timeout='x' must be from"),
    ],
)
def test_a_bad_bus_url_is_a_config_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_outputs(spec, CONTEXT)
    assert message in str(caught.value)


def test_a_bus_output_needs_the_forward_secret() -> None:
    with pytest.raises(ConfigError, match="set DIMMY_FORWARD_SECRET"):
        parse_outputs("redis:redis://h/0?stream=s")


@pytest.mark.parametrize(
    ("kind", "module"),
    [("amqp", "aio_pika"), ("redis", "redis"), ("nats", "nats"), ("mqtt", "paho")],
)
def test_a_missing_client_library_names_the_extra(
    kind: str, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=rf"pip install 'dimmy-webhooks\[{kind}\]'"):
        parse_outputs(urls(9)[kind], CONTEXT)


def test_the_name_is_where_messages_go_without_credentials_or_tuning() -> None:
    [output] = parse_outputs(
        f"amqp:amqps://u:{PASSWORD}@mq.example:5671/prod?exchange=dimmy&routing_key=items"
        "&timeout=3&max_attempts=7",
        CONTEXT,
    )
    assert output.name == "amqp:amqps://mq.example:5671/prod?exchange=dimmy&routing_key=items"
    assert output.max_attempts == 7


# the shared base, over a fake connection -----------------------------------------------------


class FakeConnection:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.closed = False
        self.refuse = False
        self.hang = False

    async def publish(self, message: Message) -> str | None:
        if self.hang:
            await asyncio.sleep(60)
        if self.refuse:
            raise BrokerRefused("NO_ROUTE")
        self.log.append(message.id)
        return f"seq {len(self.log)}"

    async def close(self) -> None:
        self.closed = True

    def is_closed(self) -> bool:
        return self.closed


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def fake_output(connects: list[Any], clock: Clock) -> tuple[MessageOutput, list[str]]:
    """An output whose n-th connection attempt is ``connects[n]`` (an exception to raise, or
    ``None`` for a working connection)."""
    log: list[str] = []
    made: list[FakeConnection] = []

    async def connect(timeout: float) -> FakeConnection:
        outcome = connects.pop(0)
        if outcome is not None:
            raise outcome
        made.append(FakeConnection(log))
        return made[-1]

    address = BusAddress.parse(
        "fake", "fake://h?pause_seconds=5&timeout=0.2", url_schemes=("fake",), options=()
    )
    output = MessageOutput(address, connect, FORWARD_SECRET, clock=clock, rng=random.Random(7))
    output.made = made  # type: ignore[attr-defined]
    return output, log


async def test_reconnection_waits_a_doubling_delay_and_then_delivers() -> None:
    clock = Clock()
    output, log = fake_output([OSError("refused"), OSError("refused"), None], clock)
    with pytest.raises(DeliveryFailed):
        await output.deliver(item(), "dmy_1")
    with pytest.raises(DestinationPaused) as paused:
        await output.deliver(item(), "dmy_1")
    first_wait = paused.value.until - clock.now
    assert 0 < first_wait <= 0.1
    clock.now = paused.value.until
    with pytest.raises(DeliveryFailed):
        await output.deliver(item(), "dmy_1")
    with pytest.raises(DestinationPaused) as paused:
        await output.deliver(item(), "dmy_1")
    assert 0.1 <= paused.value.until - clock.now <= 0.2  # doubled (jittered)
    clock.now = paused.value.until
    receipt = await output.deliver(item(), "dmy_1")
    assert receipt.record_id == "seq 1"
    assert log == ["dmy_1"]
    assert output.problems() == []


async def test_a_refusal_keeps_the_connection_and_a_hang_drops_it() -> None:
    clock = Clock()
    output, log = fake_output([None, None], clock)
    await output.deliver(item(), "dmy_1")
    [connection] = output.made  # type: ignore[attr-defined]
    connection.refuse = True
    with pytest.raises(DeliveryFailed, match="refused: NO_ROUTE"):
        await output.deliver(item(), "dmy_2")
    assert not connection.closed
    connection.refuse, connection.hang = False, True
    with pytest.raises(DeliveryFailed, match=r"no confirmation within 0\.2s"):
        await output.deliver(item(), "dmy_2")
    await asyncio.sleep(0)
    assert connection.closed  # dropped, closed in the background
    await output.deliver(item(), "dmy_2")  # on a new connection
    assert len(output.made) == 2  # type: ignore[attr-defined]
    assert log == ["dmy_1", "dmy_2"]
    await output.aclose()
    assert output.made[1].closed  # type: ignore[attr-defined]


async def test_five_failures_in_a_row_pause_the_destination() -> None:
    clock = Clock()
    output, _ = fake_output([None], clock)
    await output.deliver(item(), "dmy_0")
    output.made[0].refuse = True  # type: ignore[attr-defined]
    for n in range(5):
        with pytest.raises(DeliveryFailed):
            await output.deliver(item(), f"dmy_{n}")
    with pytest.raises(DestinationPaused) as paused:
        await output.deliver(item(), "dmy_9")
    assert paused.value.until == clock.now + 5
    assert "paused" in output.problems()[0]


def test_the_message_is_the_http_envelope_signed_under_the_delivery_id() -> None:
    from standardwebhooks import Webhook

    output, _ = fake_output([], Clock())
    message = output.message(item(), "dmy_abc", time.time())
    assert message.headers["webhook-id"] == message.id == "dmy_abc"
    envelope = Webhook(FORWARD_SECRET).verify(message.body, dict(message.headers))
    assert envelope["type"] == "item.created"
    assert envelope["data"]["id"] == "item-1"
