"""Lean closed-loop HTTP/1.1 load generator for signed webhooks (run as its own process).

``python bench/loadgen.py SPEC.json RESULT.json``

Every request is built and Svix-signed before the clock starts (fresh message ids, one timestamp
taken at build time, well inside the 300 s window). Then ``connections`` coroutines each send
requests one after another on a keep-alive connection (``asyncio.open_connection``, uvloop when
installed), reading each answer by its status line and Content-Length (chunked and
close-delimited bodies too). A server that answers ``Connection: close`` (gunicorn's sync worker)
gets a new connection per request; the connect time is then part of the latency, as it is for a
real sender.

Bounds: at most ``count`` requests, none started after ``duration`` seconds, and every request
still unanswered ``grace`` seconds after that is abandoned and counted as ``unanswered``. An
optional warm-up phase (``warmup`` requests, same bounds) runs first and is reported apart.

SPEC keys: host, port, path, secret, ids (pool), ids_per_body, count, connections, duration,
grace, msg_prefix; optional: warmup (requests), warmup_duration, warmup_ids_per_body, watch
(name -> process group id, or a list of them): the CPU seconds those groups use during the
measured phase, watch_db ({"url", "name"} of a PostgreSQL database): the CPU seconds of the
backends serving it, reported as ``cpu["db"]``, and ports: a list of ports to spread the
connections over (connection i goes to ``ports[i % len(ports)]``; ``port`` alone means
``[port]``; the Host header names ``port``, or the first of ``ports``, which no server here
looks at).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchlib import BenchDB, cpu_delta, group_cpu_seconds, machine_busy_seconds
from dimmy_webhooks.signatures import parse_secrets, signed_headers

SVIX_TIMEOUT = 15.0  # the sender counts a slower answer as a failure


def build_requests(
    spec: dict[str, Any], phase: str, count: int, offset: int, k: int
) -> list[bytes]:
    """``count`` signed requests whose bodies hold ``k`` ids each, taken in turn from the pool."""
    key = parse_secrets(spec["secret"])[0]
    pool: list[str] = spec["ids"]
    host, path = spec["host"], spec["path"]
    port = spec.get("port") or spec["ports"][0]
    timestamp = int(time.time())
    out = []
    for n in range(count):
        start = ((offset + n) * k) % len(pool)
        ids = [pool[(start + j) % len(pool)] for j in range(k)]
        body = json.dumps({"item_ids": ids}, separators=(",", ":")).encode()
        msg_id = f"msg_{spec['msg_prefix']}_{phase}_{n}"
        headers = signed_headers(key, msg_id, body, timestamp=timestamp)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nUser-Agent: Svix-Webhooks/1.0 (bench)\r\n"
            f"Content-Length: {len(body)}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            + "\r\n"
        )
        out.append(head.encode("latin-1") + body)
    return out


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return (status, connection must be closed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    version, status_text = lines[0].split(b" ", 2)[:2]
    status = int(status_text)
    close = version == b"HTTP/1.0"
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value == b"close" or (close and value != b"keep-alive")
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
    if status in (204, 304) or 100 <= status < 200:
        return status, close
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()
        close = True
    return status, close


class Phase:
    def __init__(self, requests: list[bytes], duration: float, grace: float) -> None:
        self.requests = requests
        self.next = 0
        self.statuses: Counter[str] = Counter()
        self.ok_latencies: list[float] = []
        self.ok_msg_ids: list[int] = []
        self.ok_starts: list[float] = []
        self.ok_by_port: Counter[str] = Counter()
        self.duration = duration
        self.grace = grace
        self.started = 0.0
        self.last_done = 0.0

    async def connection(self, host: str, port: int) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        stop_sending = self.started + self.duration
        hard_end = stop_sending + self.grace
        try:
            while True:
                now = time.perf_counter()
                if self.next >= len(self.requests) or now >= stop_sending:
                    return
                index = self.next
                self.next += 1
                try:
                    async with asyncio.timeout(max(0.001, hard_end - now)):
                        if writer is None:
                            reader, writer = await asyncio.open_connection(host, port)
                        assert reader is not None
                        writer.write(self.requests[index])
                        await writer.drain()
                        status, close = await read_response(reader)
                except TimeoutError:
                    self.statuses["unanswered"] += 1
                    return
                except (
                    OSError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    ValueError,
                ):
                    self.statuses["conn-error"] += 1
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                    continue
                done = time.perf_counter()
                self.last_done = max(self.last_done, done)
                self.statuses[str(status)] += 1
                if 200 <= status < 300:
                    self.ok_latencies.append(done - now)
                    self.ok_msg_ids.append(index)
                    self.ok_starts.append(now - self.started)
                    self.ok_by_port[str(port)] += 1
                if close:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    async def run(
        self,
        host: str,
        ports: list[int],
        connections: int,
        watch: dict[str, list[int]],
        db: BenchDB | None = None,
    ) -> dict[str, Any]:
        watched = {name: group_cpu_seconds(pgids) for name, pgids in watch.items()}
        db_cpu = db.backend_cpu() if db is not None else {}
        busy = machine_busy_seconds()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.started = time.perf_counter()
        await asyncio.gather(
            *(self.connection(host, ports[i % len(ports)]) for i in range(connections))
        )
        ended = time.perf_counter()
        after = resource.getrusage(resource.RUSAGE_SELF)
        db_after = db.backend_cpu() if db is not None else {}
        busy = machine_busy_seconds() - busy
        watched = {name: group_cpu_seconds(pgids) - watched[name] for name, pgids in watch.items()}
        if db is not None:
            watched["db"] = cpu_delta(db_cpu, db_after)
        elapsed = (self.last_done or ended) - self.started
        cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
        return {
            "sent": self.next,
            "statuses": dict(self.statuses),
            "ok": len(self.ok_latencies),
            "elapsed": elapsed,
            "wall": ended - self.started,
            "client_cpu": cpu,
            "cpu": watched,
            # everything else that ran on the machine meanwhile (other people's tests, ...)
            "other_cpu": max(0.0, busy - cpu - sum(watched.values())),
            "latencies": self.ok_latencies,
            "over_svix_timeout": sum(1 for x in self.ok_latencies if x > SVIX_TIMEOUT),
            "ok_indexes": self.ok_msg_ids,
            "ok_starts": self.ok_starts,
            "ok_by_port": dict(self.ok_by_port),
        }


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    host, conns = spec["host"], int(spec["connections"])
    ports = [int(p) for p in spec.get("ports") or [spec["port"]]]
    result: dict[str, Any] = {"msg_prefix": spec["msg_prefix"]}
    watch = {
        str(k): [int(x) for x in (v if isinstance(v, list) else [v])]
        for k, v in spec.get("watch", {}).items()
    }
    watch_db = spec.get("watch_db")
    db = BenchDB("postgres", watch_db["url"], name=watch_db["name"]) if watch_db else None
    warmup = int(spec.get("warmup", 0))
    if warmup:
        k = int(spec.get("warmup_ids_per_body", spec["ids_per_body"]))
        requests = build_requests(spec, "w", warmup, 0, k)
        duration = float(spec.get("warmup_duration", spec["duration"]))
        phase = Phase(requests, duration, float(spec["grace"]))
        result["warmup"] = await phase.run(host, ports, conns, {})
        result["warmup"].pop("latencies")
    requests = build_requests(spec, "m", int(spec["count"]), warmup, int(spec["ids_per_body"]))
    phase = Phase(requests, float(spec["duration"]), float(spec["grace"]))
    try:
        result["measured"] = await phase.run(host, ports, conns, watch, db)
    finally:
        if db is not None:
            db.close()
    return result


if __name__ == "__main__":
    spec_file, result_file = sys.argv[1], sys.argv[2]
    loaded = json.loads(Path(spec_file).read_text())
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    Path(result_file).write_text(json.dumps(runner(main(loaded))))
