"""The baseline for ``ack.py``: a bare ASGI app that answers 204 to everything, doing no work.

Served by the same uvicorn (same loop and HTTP parser) with the options ``dimmy-webhooks serve``
uses, it shows what the server alone costs; our service's figures are read as a ratio to it.
It still reads the request body, as any endpoint must before answering.

``python bench/bare_app.py PORT`` serves it on the intake.httpserver protocol (the head and
connection limits ``serve`` runs with) and otherwise the same options: the ``bare uvicorn (our
protocol)`` row of ``ack.py --http-baseline``, i.e. what those limits cost a request that does
nothing else.
"""

from __future__ import annotations

import sys
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


if __name__ == "__main__":
    import uvicorn

    from dimmy_webhooks.intake.httpserver import default_limits, protocol

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
        timeout_keep_alive=15,
        server_header=False,
        http=protocol(default_limits()),
    )
