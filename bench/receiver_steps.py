"""Where the receiver's CPU goes per webhook, step by step, for the bodies bench/ack.py sends.

``python bench/receiver_steps.py [--ids 10,500] [--rounds 15] [--loops 2000] [--requests 2000]``

No sockets, no load generator: each step of ``receiver.Receiver`` is timed in this process on the
bodies ``loadgen.py`` builds (compact ``{"item_ids": [...]}`` of 24-hex ids, signed as Svix
does), with ``time.process_time`` (CPU of this process, all threads), so that other processes on
the machine disturb the figures little. Steps measured alone (``loops`` calls per round):

* ``check_headers``: rules 1-3 of the signature check (id, timestamp window);
* ``check_signature``: the HMAC-SHA256 over the body and the comparison;
* ``parse``: the receiver's parse, depth bound and event classification
  (``receiver.parse_event`` when the tree has it, else what ``Receiver._store`` did before it:
  ``json.loads``, ``nested_deeper_than``, ``classify_event``, the id count), then each part on
  its own: ``json.loads``, ``nested_deeper_than``, ``classify + count``;
* candidates beside them: ``orjson.loads``, ``msgspec.json.decode`` (when installed), the
  ``[``/``{`` count of ``models.nesting_bound``, and a regular expression that checks and counts
  the ``{"item_ids":[...]}`` shape without parsing (the "cheap validity check" a receiver that
  left the parse to the worker would need);
* ``log line``: the ``webhook accepted`` line through the service's text formatter to /dev/null.

Then two steps that need the event loop and the SQLite writer thread (``requests`` per round,
16 at a time as the benchmark's 16 connections send them, on a fresh WAL file with
``synchronous=FULL``; CPU per request includes the writer thread):

* ``insert``: ``store.insert_event`` of an event already built;
* ``whole receiver``: ``Receiver.__call__`` as uvicorn calls it (headers, body, verify, parse,
  insert, log, answer), without the HTTP protocol.

Rounds alternate between the body sizes; the median and the best round are printed in µs per
call. Run it with ``PYTHONPATH`` pointing at another tree's ``src`` to measure that tree.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dimmy_webhooks.intake.receiver as receiver_module
from benchlib import SECRET, machine_lines
from dimmy_webhooks.intake.receiver import Receiver
from dimmy_webhooks.models import (
    ITEMS_SCANNED,
    IncomingEvent,
    classify_event,
    nested_deeper_than,
)
from dimmy_webhooks.observe.logs import KeyValueFormatter
from dimmy_webhooks.signatures import Verifier, parse_secrets, signed_headers
from dimmy_webhooks.store import SQLiteStore
from dimmy_webhooks.store.schema import upgrade

CONCURRENCY = 16
ID_LIST = re.compile(
    rb'\s*\{\s*"item_ids"\s*:\s*\[\s*(?:"[A-Za-z0-9_-]{1,128}"\s*,\s*)*"[A-Za-z0-9_-]{1,128}"\s*\]\s*\}\s*'
)


def body_of(n: int) -> bytes:
    ids = [f"{0x6592008029C8C3E4DC760000 + i:024x}" for i in range(n)]
    return json.dumps({"item_ids": ids}, separators=(",", ":")).encode()


def old_parse(body: bytes, depth: int) -> tuple[str, int | None]:
    payload = json.loads(body)
    if nested_deeper_than(payload, depth):
        raise ValueError("too deep")
    kind = classify_event(payload)
    return kind, len(payload["item_ids"]) if kind == ITEMS_SCANNED else None


def per_call_us(fn: Callable[[], object], loops: int) -> float:
    start = time.process_time()
    for _ in range(loops):
        fn()
    return (time.process_time() - start) / loops * 1e6


def sync_steps(body: bytes, key: bytes, verifier: Verifier) -> dict[str, Callable[[], object]]:
    headers = signed_headers(key, "msg_2ZsVQ4Xxw9rGdS8pT1ufYbKcLmN", body)
    signed = verifier.check_headers(headers)
    payload = json.loads(body)
    parse_event = getattr(receiver_module, "parse_event", None)
    steps: dict[str, Callable[[], object]] = {
        "check_headers": lambda: verifier.check_headers(headers),
        "check_signature (HMAC)": lambda: verifier.check_signature(signed, body),
        "parse (the receiver's)": (
            (lambda: parse_event(body, 64)) if parse_event else (lambda: old_parse(body, 64))
        ),
        "  json.loads": lambda: json.loads(body),
        "  nested_deeper_than": lambda: nested_deeper_than(payload, 64),
        "  classify + count": lambda: (classify_event(payload), len(payload["item_ids"])),
    }
    try:
        import orjson

        steps["  cand: orjson.loads"] = lambda: orjson.loads(body)
    except ImportError:
        pass
    try:
        import msgspec

        decoder = msgspec.json.Decoder()
        steps["  cand: msgspec decode"] = lambda: decoder.decode(body)
    except ImportError:
        pass
    steps["  cand: bracket count"] = lambda: body.count(b"[") + body.count(b"{")
    steps["  cand: shape regex + count"] = lambda: (
        ID_LIST.fullmatch(body) is not None and body.count(b",") + 1
    )
    logger = logging.getLogger("bench.receiver_steps")
    logger.propagate = False
    handler = logging.FileHandler(os.devnull)
    handler.setFormatter(KeyValueFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    fields = {
        "msg_id": signed.msg_id,
        "type": ITEMS_SCANNED,
        "outcome": "accepted",
        "items": len(payload["item_ids"]),
    }
    steps["log line"] = lambda: logger.info("webhook accepted", extra={"fields": fields})
    return steps


class Run:
    """The store and receiver of one body size, on a fresh SQLite file."""

    def __init__(self, body: bytes, key: bytes, verifier: Verifier, path: Path) -> None:
        self.body = body
        self.key = key
        self.store = SQLiteStore(str(path))
        self.receiver = Receiver(
            self.store,
            verifier,
            max_body_bytes=1 << 20,
            body_timeout=10.0,
            unverified_body_bytes=64 << 20,
        )
        self.serial = 0

    def _next_id(self) -> str:
        self.serial += 1
        return f"msg_{os.getpid()}_{self.serial}"

    async def inserts(self, count: int) -> float:
        events = [
            IncomingEvent(self._next_id(), ITEMS_SCANNED, self.body, {}, time.time(), 1)
            for _ in range(count)
        ]
        start = time.process_time()
        await _sixteen_at_a_time([self.store.insert_event(e) for e in events])
        return (time.process_time() - start) / count * 1e6

    async def requests(self, count: int) -> float:
        calls = []
        for _ in range(count):
            headers = signed_headers(self.key, self._next_id(), self.body)
            scope = {
                "type": "http",
                "method": "POST",
                "path": "/webhook",
                "client": ("127.0.0.1", 40000),
                "headers": [
                    (b"host", b"127.0.0.1"),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self.body)).encode()),
                    *((k.encode(), v.encode()) for k, v in headers.items()),
                ],
            }
            calls.append(self._call(scope))
        start = time.process_time()
        await _sixteen_at_a_time(calls)
        return (time.process_time() - start) / count * 1e6

    async def _call(self, scope: dict[str, Any]) -> None:
        body = self.body
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await self.receiver(scope, receive, send)
        assert status == [204], status


async def _sixteen_at_a_time(coros: list[Any]) -> None:
    queue = list(reversed(coros))

    async def lane() -> None:
        while queue:
            await queue.pop()

    await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):9.1f} {min(values):9.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", default="10,500", help="ids per body, comma separated")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--loops", type=int, default=2000, help="calls per round (sync steps)")
    parser.add_argument("--requests", type=int, default=2000, help="per round (insert, whole)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.ids.split(",")]
    logging.getLogger("dimmy_webhooks").handlers[:] = [logging.NullHandler()]
    logging.getLogger("dimmy_webhooks").propagate = False
    (key,) = parse_secrets(SECRET)
    verifier = Verifier([key])
    print("\n".join(machine_lines()))
    print("command:", " ".join(sys.argv), "| receiver from", receiver_module.__file__)
    bodies = {n: body_of(n) for n in sizes}
    steps = {n: sync_steps(bodies[n], key, verifier) for n in sizes}
    results: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for n in sizes:
            for name, fn in steps[n].items():
                results.setdefault((n, name), []).append(per_call_us(fn, args.loops))

    async def loop_steps(tmp: Path) -> None:
        for n in sizes:
            upgrade(f"sqlite:///{tmp / f'{n}.db'}")
        runs = {n: Run(bodies[n], key, verifier, tmp / f"{n}.db") for n in sizes}
        for run in runs.values():
            await run.store.open()
        try:
            for run in runs.values():  # warm-up: pages, caches, the writer thread
                await run.inserts(200)
                await run.requests(200)
            for _ in range(args.rounds):
                for n, run in runs.items():
                    insert = await run.inserts(args.requests)
                    results.setdefault((n, "insert (16 at a time)"), []).append(insert)
                    whole = await run.requests(args.requests)
                    results.setdefault((n, "whole receiver (16 at a time)"), []).append(whole)
        finally:
            for run in runs.values():
                await run.store.close()

    with tempfile.TemporaryDirectory(prefix="dimmy-steps-") as tmp:
        import uvloop

        uvloop.run(loop_steps(Path(tmp)))
    names = list(dict.fromkeys(name for _, name in results))
    head = f"{'step, µs per call (median best)':34}" + "".join(
        f"{f'{n} ids ({len(bodies[n]):,} B)':>22}" for n in sizes
    )
    print(head)
    for name in names:
        print(f"{name:34}" + "".join(f"{summary(results[(n, name)]):>22}" for n in sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
