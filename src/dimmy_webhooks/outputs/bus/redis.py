"""``redis:redis://user:pass@host:6379/0?stream=S&maxlen=N``: Redis Streams through redis-py
(``pip install 'dimmy-webhooks[redis]'``).

One ``XADD`` per message, with the fields ``body`` (the envelope JSON), ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature``; a delivery counts once Redis answered with the
entry's id (kept in the ledger as the record id). How much of that survives a crash of Redis
is its persistence setting (``appendonly yes`` with ``appendfsync always`` keeps every entry it
acknowledged). ``maxlen`` trims the stream to about that many entries (``MAXLEN ~``).

Options: ``stream`` (required), ``maxlen``.
"""

from __future__ import annotations

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


class _RedisConnection:
    def __init__(self, client: Any, stream: str, maxlen: int | None) -> None:
        self._client = client
        self._stream = stream
        self._maxlen = maxlen

    async def publish(self, message: Message) -> str | None:
        from redis.exceptions import ResponseError

        fields: dict[str | bytes, bytes | str] = {"body": message.body}
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
            fields[name] = message.headers[name]
        try:
            entry = await self._client.xadd(
                self._stream, fields, maxlen=self._maxlen, approximate=True
            )
        except ResponseError as exc:  # Redis answered: e.g. the key is not a stream, OOM
            raise BrokerRefused(str(exc)) from None
        return f"{self._stream} {entry.decode() if isinstance(entry, bytes) else entry}"

    async def close(self) -> None:
        await self._client.aclose()

    def is_closed(self) -> bool:
        return False  # a pool: a broken connection shows on use


def build(argument: str | None, context: OutputContext) -> MessageOutput:
    """A ``redis:`` output (:class:`ConfigError` naming what is wrong)."""
    address = BusAddress.parse(
        "redis",
        argument,
        url_schemes=("redis", "rediss"),
        options=("stream", "maxlen"),
        label=context.label,
    )
    stream = address.text("stream")
    if not stream:
        raise ConfigError(f"output {address.name}: name the stream (stream=S)")
    maxlen = None
    if address.text("maxlen") is not None:
        maxlen = int(address.number("maxlen", 0, 1, 10**12))
    try:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError as exc:
        raise missing_extra("redis", "redis", exc) from None

    async def connect(timeout: float) -> Connection:
        client = redis.asyncio.Redis.from_url(
            address.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # a retry is ours to decide (a new attempt, same id)
            client_name="dimmy-webhooks",
        )
        try:
            await client.ping()
        except BaseException:
            await client.aclose()
            raise
        return _RedisConnection(client, stream, maxlen)

    return MessageOutput(address, connect, context.forward_secret)
