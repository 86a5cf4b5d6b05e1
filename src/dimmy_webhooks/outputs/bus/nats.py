"""``nats:nats://user:pass@host:4222?subject=S``: NATS JetStream through nats-py
(``pip install 'dimmy-webhooks[nats]'``).

A JetStream publish that waits for the stream's acknowledgement (the stream and its sequence
number go into the ledger as the record id). The headers are ``webhook-id``,
``webhook-timestamp``, ``webhook-signature`` and ``Nats-Msg-Id`` (the id), so JetStream drops a
repeat within the stream's duplicate window. The stream that takes the subject must exist (no
stream answering is a refused delivery, retried later).

Options: ``subject`` (required).
"""

from __future__ import annotations

import contextlib
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


class _NatsConnection:
    def __init__(self, client: Any, subject: str, timeout: float) -> None:
        self._client = client
        self._jetstream = client.jetstream(timeout=timeout)
        self._subject = subject
        self._timeout = timeout

    async def publish(self, message: Message) -> str | None:
        from nats.js.errors import APIError, NoStreamResponseError

        headers = {**message.headers, "Nats-Msg-Id": message.id}
        try:
            ack = await self._jetstream.publish(
                self._subject, message.body, timeout=self._timeout, headers=headers
            )
        except NoStreamResponseError:
            raise BrokerRefused(f"no JetStream stream takes subject {self._subject}") from None
        except APIError as exc:
            raise BrokerRefused(f"JetStream: {exc}") from None
        return f"{ack.stream} {ack.seq}" + (" (duplicate)" if ack.duplicate else "")

    async def close(self) -> None:
        await self._client.close()

    def is_closed(self) -> bool:
        return bool(self._client.is_closed)


def build(argument: str | None, context: OutputContext) -> MessageOutput:
    """A ``nats:`` output (:class:`ConfigError` naming what is wrong)."""
    address = BusAddress.parse(
        "nats",
        argument,
        url_schemes=("nats", "tls"),
        options=("subject",),
        label=context.label,
    )
    subject = address.text("subject")
    if not subject or any(c in subject for c in " \t*>"):
        raise ConfigError(f"output {address.name}: name one subject, no wildcard (subject=S)")
    try:
        from nats.aio.client import Client as NatsClient
    except ImportError as exc:
        raise missing_extra("nats", "nats-py", exc) from None

    async def quiet(*args: Any) -> None:
        return None  # failures show on publish; the client's own reports stay out of the log

    async def connect(timeout: float) -> Connection:
        client = NatsClient()
        try:
            await client.connect(
                servers=[address.url],
                name="dimmy-webhooks",
                # within ours, so the client gives up first and closes what it opened
                connect_timeout=timeout / 2,  # type: ignore[arg-type]
                allow_reconnect=False,  # we reconnect, with backoff, and count it
                max_reconnect_attempts=0,
                error_cb=quiet,
                disconnected_cb=quiet,
                closed_cb=quiet,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await client.close()
            raise
        return _NatsConnection(client, subject, timeout)

    return MessageOutput(address, connect, context.forward_secret)
