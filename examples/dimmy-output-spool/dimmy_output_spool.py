"""``spool:DIR``: every item version as one file in ``DIR``, named by its ``webhook-id``.

An example of a dimmy-webhooks output plug-in (docs/plugins.md). The file is a JSON object
``{"headers": {"webhook-id": ..., "webhook-timestamp": ..., "webhook-signature": ...},
"body": <the envelope, as a string>}``: what a message-bus output would send. A repeat of one
delivery writes the same file again (same name), so a reader sees each id once. Built on
:class:`~dimmy_webhooks.outputs.MessageOutput`, it gets what the bus outputs get: the signed
envelope, a "connection" (here: the directory) opened again with backoff after a failure, the
pause after repeated failures, bounded waits; the worker adds retries, the ledger, quarantine,
one version in flight per item and the stable id.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.outputs import Message, MessageOutput, OutputContext, OutputKind
from dimmy_webhooks.outputs.bus import BusAddress


class SpoolDirectory:
    """A "connection" to a directory: ``publish`` returns once the file is on disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def publish(self, message: Message) -> str | None:
        await asyncio.to_thread(self._write, message)
        return f"{message.id}.json"

    def _write(self, message: Message) -> None:
        record = {"headers": dict(message.headers), "body": message.body.decode()}
        final = self.directory / f"{message.id}.json"
        partial = final.with_suffix(".part")
        with partial.open("w", encoding="utf-8") as file:
            json.dump(record, file)
            file.flush()
            os.fsync(file.fileno())
        partial.replace(final)  # a reader never sees half a file

    async def close(self) -> None:
        return None

    def is_closed(self) -> bool:
        return not self.directory.is_dir()


def build(argument: str | None, context: OutputContext) -> MessageOutput:
    if not argument:
        raise ConfigError("output 'spool' needs a directory: spool:/var/spool/dimmy")
    directory = Path(argument).expanduser().resolve()

    async def connect(timeout: float) -> SpoolDirectory:
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        return SpoolDirectory(directory)

    address = BusAddress(scheme="spool", url=str(directory), options={}, name=f"spool:{directory}")
    return MessageOutput(address, connect, context.forward_secret)


SPOOL = OutputKind("spool:DIR", build)
"""What the entry point names: ``spool = "dimmy_output_spool:SPOOL"``."""
