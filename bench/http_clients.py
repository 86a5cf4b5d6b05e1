"""HTTP clients side by side: the Dimmy fetch (``GET /items/{id}``) and the WMS hand-off (signed
``POST``), CPU time of the client process per request and requests per second.

``python bench/http_clients.py [--quick] [--concurrency 16,64,128] [--rounds 5]
[--requests 1000] [--round-seconds 5] [--json out.json]``

The servers run in processes of their own on 127.0.0.1: ``dimmy-webhooks fake-api`` (latency 0)
for the GETs, and a minimal keep-alive HTTP/1.1 server (``--serve-post PORT``, this file, on
uvloop) that reads each request and answers ``200 {"id": ...}`` for the POSTs. The clients run
in this process on uvloop, as the workers do; ``concurrency`` tasks share ``requests`` calls,
none started after ``--round-seconds`` (the figures are per request made).

Candidates, for the fetch:

* ``current``: ``DimmyClient.get_item`` exactly as the workers use it now (one aiohttp session,
  the concurrency cap, the rate limit lifted to 100,000/s, the JSON and ``_id`` checks).
* ``previous: httpx, pools of 4``: the same client given a transport (its own seam) that sends
  through httpx as the client did before it moved to aiohttp: many pools of at most 4
  connections, used in turn (the encode/httpcore#1035 workaround).
* ``httpx, 1 pool``, ``aiohttp``: the bare libraries (send, read the body, check the status),
  the floor of each.

And for the hand-off: ``current`` is ``HttpOutput.deliver`` (envelope, signature, its gate, one
aiohttp session), ``previous: httpx`` the same output with its session swapped for one httpx
pool behind a small adapter (what it was before), and the bare libraries posting one
pre-signed envelope of a real fake item.

Every candidate's client is opened once per concurrency and warmed up; then rounds go in turn
(A B C ... A B C ..., the order rotated each round), each round preceded by an untimed burst of
``concurrency`` requests that re-opens any connection the server closed while the others ran.
The figure that stands on a shared machine is ``client CPU us/req`` (``time.process_time`` of
this process over the round, i.e. only the client's work); ``req/s`` depends on the server and
on whatever else the machine does (``other cpu``). Medians over the rounds; ``vs current`` is
each median over the ``current`` row's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import ssl
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import certifi
import httpcore
import httpx
import uvloop

from benchlib import (
    API_KEY,
    HOST,
    Procs,
    fake_item_ids,
    free_port,
    http_get,
    machine_busy_seconds,
    machine_lines,
    pids_cpu_seconds,
    run_context,
    start_fake_api,
    table,
    wait_ready,
)
from dimmy_webhooks import outbound
from dimmy_webhooks.items import to_stored_item
from dimmy_webhooks.outputs.http import Destination, HttpOutput
from dimmy_webhooks.signatures import parse_secrets, signed_headers
from dimmy_webhooks.upstream.client import DimmyClient

FORWARD_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="
PRESETS = {
    "quick": {"rounds": 3, "requests": 500, "concurrency": "64"},
    "default": {"rounds": 5, "requests": 1000, "concurrency": "16,64,128"},
}
ITEMS = 1000


# -- the POST endpoint: a minimal HTTP/1.1 server ---------------------------------------------

_ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 18\r\n\r\n"
    b'{"id":"rec_00001"}'
)


class _Sink(asyncio.Protocol):
    """Reads keep-alive requests (head, then ``content-length`` bytes) and answers each 200."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(_ANSWER)


async def serve_post(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Sink, HOST, port, backlog=1024)
    async with server:
        await server.serve_forever()


class _ResetSecond(asyncio.Protocol):
    """Answers the first request of a connection, resets the connection on the second."""

    seen = 0

    def connection_made(self, transport: Any) -> None:
        self.transport, self.requests = transport, 0

    def data_received(self, data: bytes) -> None:
        for _ in range(data.count(b"\r\n\r\n")):
            _ResetSecond.seen += 1
            self.requests += 1
            if self.requests == 1:
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            else:
                self.transport.abort()


async def requests_per_reset_get() -> dict[str, int]:
    """How many requests the server sees for two GETs on one keep-alive connection whose
    second is reset unanswered, per library (2: the library does not retry by itself); ``ours``
    is the session the service uses (:func:`dimmy_webhooks.outbound.session`)."""
    seen = {}
    for name in ("httpx", "aiohttp", "ours"):
        _ResetSecond.seen = 0
        server = await asyncio.get_running_loop().create_server(_ResetSecond, HOST, 0)
        url = f"http://{HOST}:{server.sockets[0].getsockname()[1]}/items/x"
        with contextlib.suppress(Exception):
            if name == "httpx":
                async with httpx.AsyncClient() as http:
                    await http.get(url)
                    await http.get(url)
            else:
                session = (
                    aiohttp.ClientSession()
                    if name == "aiohttp"
                    else outbound.session(url=url, concurrency=1, timeout=10)
                )
                async with session:
                    for _ in range(2):
                        async with session.get(url) as response:
                            await response.read()
        server.close()
        await server.wait_closed()
        seen[name] = _ResetSecond.seen
    return seen


# -- the previous httpx client, behind the seams of the current code ---------------------------


class _HttpxReply:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = response.headers

    def chunks(self) -> Any:
        return self._response.aiter_bytes()


class _HttpxTransport:
    """:class:`~dimmy_webhooks.upstream.transport.Transport` on httpx as ``DimmyClient`` used it
    before aiohttp: pools of at most 4 connections, used in turn."""

    def __init__(self, base_url: str, concurrency: int, per_pool: int = 4) -> None:
        shards = -(-concurrency // per_pool)
        size = -(-concurrency // shards)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        tls = _tls()
        self._pools = [
            httpx.AsyncClient(
                base_url=base_url, timeout=httpx.Timeout(10), limits=limits, verify=tls
            )
            for _ in range(shards)
        ]
        self._next = itertools.cycle(self._pools)

    @contextlib.asynccontextmanager
    async def send(self, method: str, path: str, params: Any, headers: Any) -> Any:
        http = next(self._next)
        request = http.build_request(method, path, params=params, headers=headers)
        response = await http.send(request, stream=True)
        try:
            yield _HttpxReply(response)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class _HttpxContent:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    def iter_any(self) -> Any:
        return self._response.aiter_raw()

    def at_eof(self) -> bool:
        return self._response.is_stream_consumed


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = response.headers
        self.content = _HttpxContent(response)

    def close(self) -> None:
        pass  # the stream's own close drops the connection


class _HttpxAsSession:
    """The one call ``HttpOutput`` makes of its aiohttp session (``post``), on one httpx pool
    as the output used before aiohttp (happy path: errors are not mapped)."""

    def __init__(self, concurrency: int, headers: dict[str, str]) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(10),
            limits=limits,
            follow_redirects=False,
            headers=headers,
            verify=_tls(),
        )

    @contextlib.asynccontextmanager
    async def post(self, url: str, *, data: bytes, headers: dict[str, str], **_: Any) -> Any:
        async with self._http.stream("POST", url, content=data, headers=headers) as response:
            yield _HttpxResponse(response)

    async def close(self) -> None:
        await self._http.aclose()


def _session(concurrency: int, headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    tls = ssl.create_default_context(cafile=certifi.where())
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, ssl=tls),
        timeout=aiohttp.ClientTimeout(total=30, sock_connect=10, sock_read=10),
        headers=headers,
        auto_decompress=False,
    )


def _tls() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certifi.where())


# -- candidates ------------------------------------------------------------------------------

Call = Callable[[int], Awaitable[None]]


@dataclass
class Candidate:
    """``open(concurrency)`` gives the call for request ``i`` and the closer."""

    name: str
    open: Callable[[int], tuple[Call, Callable[[], Awaitable[None]]]]
    rounds: list[tuple[float, float, int]] = field(default_factory=list)  # cpu s, wall s, made
    errors: int = 0


def fetch_candidates(base_url: str, ids: list[str]) -> list[Candidate]:
    headers = {"X-API-KEY": API_KEY, "Accept": "application/json"}

    def dimmy(concurrency: int, **options: Any) -> DimmyClient:
        return DimmyClient(
            base_url, API_KEY, concurrency=concurrency, rate_limit=100_000, **options
        )

    def current(concurrency: int) -> tuple[Call, Any]:
        client = dimmy(concurrency)

        async def call(i: int) -> None:
            await client.get_item(ids[i % len(ids)])

        return call, client.aclose

    def previous(concurrency: int) -> tuple[Call, Any]:
        client = dimmy(concurrency, transport=_HttpxTransport(base_url, concurrency))

        async def call(i: int) -> None:
            await client.get_item(ids[i % len(ids)])

        return call, client.aclose

    def bare_httpx(concurrency: int) -> tuple[Call, Any]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        http = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(10),
            limits=limits,
            verify=_tls(),
        )

        async def call(i: int) -> None:
            response = await http.get(f"/items/{ids[i % len(ids)]}")
            if response.status_code != 200 or not response.content:
                raise RuntimeError(f"HTTP {response.status_code}")

        return call, http.aclose

    def bare_aiohttp(concurrency: int) -> tuple[Call, Any]:
        session = _session(concurrency, headers)

        async def call(i: int) -> None:
            async with session.get(f"{base_url}/items/{ids[i % len(ids)]}") as response:
                body = await response.read()
                if response.status != 200 or not body:
                    raise RuntimeError(f"HTTP {response.status}")

        return call, session.close

    return [
        Candidate("current (DimmyClient.get_item, aiohttp)", current),
        Candidate("previous: httpx, pools of 4", previous),
        Candidate("httpx, 1 pool (bare)", bare_httpx),
        Candidate("aiohttp (bare)", bare_aiohttp),
    ]


def forward_candidates(url: str, raw: bytes) -> list[Candidate]:
    item = to_stored_item(
        json.loads(raw), raw.decode(), fetched_at=time.time(), dim_weight_divisor=5000
    )
    key = parse_secrets(FORWARD_SECRET)[0]

    def output(concurrency: int, **options: Any) -> HttpOutput:
        destination = Destination(url=url, concurrency=concurrency)
        return HttpOutput(destination, forward_secret=FORWARD_SECRET, **options)

    def deliver_with(out: HttpOutput) -> Call:
        async def call(i: int) -> None:
            receipt = await out.deliver(item, f"dmy_bench_{i}")
            if receipt.status_code != 200:
                raise RuntimeError(f"HTTP {receipt.status_code}")

        return call

    def current(concurrency: int) -> tuple[Call, Any]:
        out = output(concurrency)
        return deliver_with(out), out.aclose

    def previous(concurrency: int) -> tuple[Call, Any]:
        out = output(concurrency)
        http = _HttpxAsSession(concurrency, {"user-agent": "dimmy-webhooks"})
        out._http = http  # type: ignore[assignment]
        return deliver_with(out), http.close

    now = time.time()
    body = output(1).envelope(item, now)
    signed = signed_headers(key, "dmy_bench", body, timestamp=int(now), family="webhook")
    signed |= {"idempotency-key": "dmy_bench", "content-type": "application/json"}

    def bare_httpx(concurrency: int) -> tuple[Call, Any]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(10),
            limits=limits,
            verify=_tls(),
            follow_redirects=False,
        )

        async def call(i: int) -> None:
            response = await http.post(url, content=body, headers=signed)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}")

        return call, http.aclose

    def bare_aiohttp(concurrency: int) -> tuple[Call, Any]:
        session = _session(concurrency)

        async def call(i: int) -> None:
            async with session.post(url, data=body, headers=signed) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

        return call, session.close

    return [
        Candidate("current (HttpOutput.deliver, aiohttp)", current),
        Candidate("previous: httpx, 1 pool", previous),
        Candidate("httpx, 1 pool (bare)", bare_httpx),
        Candidate("aiohttp (bare)", bare_aiohttp),
    ]


# -- measuring -------------------------------------------------------------------------------


async def burst(
    call: Call, start: int, count: int, concurrency: int, seconds: float = 60.0
) -> tuple[int, int]:
    """``count`` calls over ``concurrency`` tasks, none started after ``seconds``; the number
    made and the number that raised."""
    numbers = iter(range(start, start + count))
    deadline = time.monotonic() + seconds
    made = errors = 0

    async def task() -> None:
        nonlocal made, errors
        for i in numbers:
            if time.monotonic() > deadline:
                return
            made += 1
            try:
                await call(i)
            except Exception:
                errors += 1

    await asyncio.gather(*(task() for _ in range(concurrency)))
    return made, errors


async def measure(
    candidates: list[Candidate],
    concurrency: int,
    rounds: int,
    requests: int,
    seconds: float,
    server_pid: int,
) -> dict[str, Any]:
    opened = [(c, *c.open(concurrency)) for c in candidates]
    counter = itertools.count(step=requests + concurrency)
    server_cpu: list[float] = []
    other: list[float] = []
    try:
        for candidate, call, _ in opened:  # connections up, code paths warm
            candidate.errors += (await burst(call, next(counter), 2 * concurrency, concurrency))[1]
        for r in range(rounds):
            shift = r % len(opened)
            for candidate, call, _ in opened[shift:] + opened[:shift]:
                await burst(call, next(counter), concurrency, concurrency)
                busy = machine_busy_seconds()
                srv = pids_cpu_seconds([server_pid]).get(server_pid, 0.0)
                cpu, wall = time.process_time(), time.perf_counter()
                made, errors = await burst(call, next(counter), requests, concurrency, seconds)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                srv = pids_cpu_seconds([server_pid]).get(server_pid, 0.0) - srv
                candidate.errors += errors
                candidate.rounds.append((cpu, wall, made))
                server_cpu.append(srv / wall)
                other.append(max(0.0, (machine_busy_seconds() - busy - srv - cpu) / wall))
    finally:
        for _, _, close in opened:
            with contextlib.suppress(Exception):
                await close()
    return {"server_cpu": statistics.median(server_cpu), "other_cpu": statistics.median(other)}


def report(
    title: str,
    candidates: list[Candidate],
    concurrency: int,
    requests: int,
    seconds: float,
    extra: dict[str, Any],
) -> tuple[str, list[dict[str, Any]]]:
    rows, out = [], []
    base_cpu = base_rate = None
    for c in candidates:
        cpu_us = statistics.median(cpu / made * 1e6 for cpu, _, made in c.rounds)
        best_us = min(cpu / made * 1e6 for cpu, _, made in c.rounds)
        rate = statistics.median(made / wall for _, wall, made in c.rounds)
        if base_cpu is None:
            base_cpu, base_rate = cpu_us, rate
        assert base_rate is not None
        rows.append(
            [
                c.name,
                round(rate),
                f"{rate / base_rate:.2f}x",
                cpu_us,
                best_us,
                f"{cpu_us / base_cpu:.2f}x",
                c.errors,
            ]
        )
        out.append(
            {
                "path": title,
                "candidate": c.name,
                "concurrency": concurrency,
                "req_per_s": rate,
                "cpu_us_per_req": cpu_us,
                "cpu_us_best": best_us,
                "cpu_vs_current": cpu_us / base_cpu,
                "errors": c.errors,
                "rounds": c.rounds,
            }
        )
    head = (
        f"{title}, concurrency {concurrency}: {len(candidates[0].rounds)} rounds of {requests} "
        f"requests (or {seconds:g} s) each; server cpu {extra['server_cpu']:.2f}, other cpu "
        f"{extra['other_cpu']:.2f} (CPU s per wall s, medians)"
    )
    headers = [
        "candidate",
        "req/s",
        "vs current",
        "client CPU us/req",
        "best",
        "vs current",
        "errors",
    ]
    return head + "\n" + table(headers, rows), out


async def run(args: argparse.Namespace, procs: Procs) -> list[dict[str, Any]]:
    fake, api_port = start_fake_api(procs, items=ITEMS, latency=0.0)
    ids = fake_item_ids(api_port, ITEMS)
    status, raw = http_get(api_port, f"/items/{ids[0]}", {"X-API-KEY": API_KEY})
    assert status == 200, status
    post_port = free_port()
    sink = procs.start(
        "post-sink",
        [sys.executable, os.path.abspath(__file__), "--serve-post", str(post_port)],
        os.environ,
    )
    wait_ready(sink, post_port)
    base_url = f"http://{HOST}:{api_port}"
    post_url = f"http://{HOST}:{post_port}/api/dimmy-items"
    seen = await requests_per_reset_get()
    print(
        "requests a server sees for 2 GETs, the second reset on a reused connection: "
        + ", ".join(f"{name} {n}" for name, n in seen.items())
        + " (more than 2: the library retried by itself)\n",
        flush=True,
    )
    results = []
    for path, server, make in (
        ("fetch GET /items/{id}", fake, lambda: fetch_candidates(base_url, ids)),
        ("hand-off POST to the WMS", sink, lambda: forward_candidates(post_url, raw)),
    ):
        for concurrency in args.concurrency:
            candidates = make()
            extra = await measure(
                candidates, concurrency, args.rounds, args.requests, args.round_seconds, server.pid
            )
            text, rows = report(
                path, candidates, concurrency, args.requests, args.round_seconds, extra
            )
            print(text + "\n", flush=True)
            results += rows
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (make bench)")
    parser.add_argument("--concurrency", help="comma separated (default 16,64,128)")
    parser.add_argument("--rounds", type=int, help="rounds per candidate (default 5)")
    parser.add_argument("--requests", type=int, help="requests per round (default 1000)")
    parser.add_argument(
        "--round-seconds",
        type=float,
        default=5.0,
        help="no request of a round starts after this (a slow candidate's round is shorter)",
    )
    parser.add_argument("--json", help="write every round here")
    parser.add_argument("--serve-post", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_post is not None:
        uvloop.run(serve_post(args.serve_post))
        return 0
    preset = PRESETS["quick" if args.quick else "default"]
    args.rounds = args.rounds or preset["rounds"]
    args.requests = args.requests or preset["requests"]
    args.concurrency = [int(c) for c in (args.concurrency or preset["concurrency"]).split(",")]
    print("\n".join(machine_lines()))
    print(
        f"httpx {httpx.__version__}, httpcore {httpcore.__version__}, "
        f"aiohttp {aiohttp.__version__}, uvloop {uvloop.__version__}\n",
        flush=True,
    )
    with run_context("dimmy-http-clients-") as (_tmp, procs):
        results = uvloop.run(run(args, procs))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
