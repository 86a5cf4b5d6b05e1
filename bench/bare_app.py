"""The baseline for ``ack.py``: a bare ASGI app that answers 204 to everything, doing no work.

Served by the same uvicorn (same loop and HTTP parser) with the options ``dimmy-webhooks serve``
uses, it shows what the server alone costs; our service's figures are read as a ratio to it.
It still reads the request body, as any endpoint must before answering.
"""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})
