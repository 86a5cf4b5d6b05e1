"""CPU per request of the HTTP protocol alone: uvicorn's httptools protocol against
dimmy_webhooks.intake.httpserver's (the same, plus the head and connection limits).

``python bench/http_protocol.py [--rounds 40] [--requests 4000]``

No sockets and no load generator, whose noise on a shared machine is larger than what is
measured here: one connection's protocol gets a signed-webhook-sized keep-alive request
(head and body in one chunk, as a sender's TCP segment brings them) through ``data_received``,
a bare ASGI app answers 204, and the event loop (uvloop) runs the app task; ``requests`` of
those make a round. Rounds alternate between the two protocols; the figure is the process CPU
time per request (``time.process_time``), so other processes on the machine disturb it little.
The median and the best round of each are printed, and their difference is what the limits
cost per request.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from dimmy_webhooks.intake.httpserver import default_limits, protocol

BODY = b'{"item_ids":["6592008029c8c3e4dc76256c","6592008029c8c3e4dc76256d"]}'
REQUEST = (
    b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1:5000\r\nContent-Type: application/json\r\n"
    b"User-Agent: Svix-Webhooks/1.0\r\nContent-Length: %d\r\n"
    b"svix-id: msg_2ZsVQ4Xxw9rGdS8pT1ufYbKcLmN\r\nsvix-timestamp: 1735689600\r\n"
    b"svix-signature: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=\r\n\r\n" % len(BODY)
) + BODY


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


class Transport(asyncio.Transport):
    """Counts the answers written; everything else a no-op."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 5000), "peername": ("127.0.0.1", 40000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def one_round(cls: type[asyncio.Protocol], requests: int) -> float:
    """CPU microseconds per request over ``requests`` on one keep-alive connection."""
    config = Config(app, lifespan="off", log_level="warning")
    config.load()
    conn: Any = cls(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
    transport = Transport()
    conn.connection_made(transport)
    started = time.process_time()
    for _ in range(requests):
        conn.data_received(REQUEST)
        await asyncio.sleep(0)  # the app task reads the body
        await asyncio.sleep(0)  # ... and answers
    elapsed = time.process_time() - started
    if transport.writes < requests:
        raise SystemExit(f"{cls.__name__}: {transport.writes} answers for {requests} requests")
    return elapsed / requests * 1e6


async def main(rounds: int, requests: int) -> None:
    protocols: dict[str, type[asyncio.Protocol]] = {
        "uvicorn's httptools protocol": HttpToolsProtocol,
        "dimmy_webhooks.intake.httpserver": protocol(default_limits()),
    }
    results: dict[str, list[float]] = {name: [] for name in protocols}
    for _ in range(rounds):
        for name, cls in protocols.items():
            results[name].append(await one_round(cls, requests))
    print(f"{rounds} rounds of {requests} keep-alive requests each, CPU us per request:")
    medians = {}
    for name, values in results.items():
        medians[name] = statistics.median(values)
        print(f"  {name:<30} median {medians[name]:6.2f}  best {min(values):6.2f}")
    plain, ours = medians.values()
    print(f"the limits cost {ours - plain:.2f} us per request ({ours / plain:.2f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    print(sys.version.split()[0], "uvloop", uvloop.__version__)
    uvloop.run(main(args.rounds, args.requests))
