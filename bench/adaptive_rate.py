"""Fixed against adaptive API rate, draining a backlog from a fake API with a hidden rate limit.

``python bench/adaptive_rate.py [--quick|--full] [--limits 300,60] [--start 100] [--seconds N]
[--json out.json]``

For each hidden limit (``dimmy-webhooks fake-api --hidden-rate-limit L``: above ``L`` requests
per second it answers 429 with ``Retry-After: 1``; the client is not told ``L``), three rows, each
the service's workers (in this process, SQLite, no outputs) draining the same backlog of
``items.scanned`` events for ``--seconds``:

* ``fixed``: the shipped ``DIMMY_API_RATE_LIMIT`` (``--start``, 100), a fresh database;
* ``adaptive, first start``: ``DIMMY_API_RATE_MODE=adaptive`` from ``--start`` (ceiling 1000),
  a fresh database: what a new installation gets, slow start included;
* ``adaptive, restarted``: the same database again, so the workers start at the rate the first
  run learned and kept (its leftover backlog is drained).

Columns: ``items/s`` is items newly stored per second of the run; ``429s`` the answers 429 the
workers got (``dimmy_api_requests_total``); ``dead`` jobs that ran out of attempts; ``rate`` the
client's rate at the start, its lowest and highest sampled every 0.5 s, and at the end;
``vs fixed`` is ``items/s`` over the fixed row's; ``cpu`` CPU seconds per second of this process
(the service), the fake API and everything else on the machine (``other`` above about 0.2:
someone else is using the machine, the row is disturbed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import (
    API_KEY,
    HOST,
    SECRET,
    fake_item_ids,
    group_cpu_seconds,
    machine_busy_seconds,
    machine_lines,
    run_context,
    start_fake_api,
    table,
)
from dimmy_webhooks.config import load_settings
from dimmy_webhooks.models import ITEMS_SCANNED, IncomingEvent
from dimmy_webhooks.services import Services
from dimmy_webhooks.store import create_store, schema

PRESETS = {"quick": 10.0, "default": 20.0, "full": 40.0}  # seconds per row
IDS_PER_EVENT = 50
SAMPLE_SECONDS = 0.5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"{PRESETS['quick']:.0f} s per row")
    size.add_argument("--full", action="store_true", help=f"{PRESETS['full']:.0f} s per row")
    parser.add_argument("--limits", default="300,60", help="hidden limits, requests per second")
    parser.add_argument("--start", type=float, default=100.0, help="DIMMY_API_RATE_LIMIT")
    parser.add_argument("--max", type=float, default=1000.0, help="DIMMY_API_RATE_MAX")
    parser.add_argument("--seconds", type=float, help="seconds per row (preset)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    preset = "quick" if args.quick else "full" if args.full else "default"
    args.seconds = args.seconds or PRESETS[preset]
    args.limits = [float(x) for x in args.limits.split(",") if x]
    return args


def items_stored(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])


async def fill_inbox(url: str, ids: list[str]) -> None:
    """The backlog: events of :data:`IDS_PER_EVENT` ids, straight into the inbox (not timed)."""
    store = create_store(url)
    await store.open()
    try:
        for start in range(0, len(ids), IDS_PER_EVENT):
            chunk = ids[start : start + IDS_PER_EVENT]
            body = json.dumps({"item_ids": chunk}).encode()
            msg = f"msg_bench_{start}"
            await store.insert_event(
                IncomingEvent(msg, ITEMS_SCANNED, body, {}, time.time(), len(chunk))
            )
    finally:
        await store.close()


def throttled(services: Services) -> int:
    total = 0.0
    for metric in services.metrics.api_requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("status") == "429":
                total += sample.value
    return int(total)


async def drain(
    db: Path, api_url: str, api_pgid: int, mode: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Run the workers on ``db`` for ``args.seconds``; what they did."""
    settings = load_settings(
        None,
        webhook_secret=SECRET,
        database_url=f"sqlite:///{db}",
        api_key=API_KEY,
        api_url=api_url,
        outputs="",
        api_rate_mode=mode,
        api_rate_limit=args.start,
        api_rate_max=max(args.max, args.start),
        shutdown_grace_seconds=2.0,
        log_level="WARNING",
    )
    before = items_stored(db)
    services = Services.from_settings(settings)
    rates: list[float] = []
    async with services.running():
        assert services.client is not None
        started = time.monotonic()
        cpu = (time.process_time(), group_cpu_seconds(api_pgid), machine_busy_seconds())
        first = services.client.rate_limit
        while (left := started + args.seconds - time.monotonic()) > 0:
            await asyncio.sleep(min(SAMPLE_SECONDS, left))
            rates.append(services.client.rate_limit)
        seconds = time.monotonic() - started
        stored = items_stored(db) - before
        refused = throttled(services)
        own = time.process_time() - cpu[0]
        api = group_cpu_seconds(api_pgid) - cpu[1]
        other = machine_busy_seconds() - cpu[2] - own - api
    dead = sqlite3.connect(db).execute("SELECT count(*) FROM jobs WHERE status = 'dead'")
    return {
        "items": stored,
        "seconds": round(seconds, 2),
        "items_s": round(stored / seconds, 1),
        "throttled": refused,
        "dead_jobs": int(dead.fetchone()[0]),
        "rate_first": round(first, 1),
        "rate_min": round(min(rates), 1),
        "rate_max": round(max(rates), 1),
        "rate_last": round(rates[-1], 1),
        "cpu": {
            k: round(v / seconds, 2) for k, v in (("svc", own), ("api", api), ("other", other))
        },
    }


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.ERROR)  # the 429 warnings are counted, not printed
    print("\n".join(machine_lines()))
    print(
        f"{args.seconds:.0f} s per row; DIMMY_API_RATE_LIMIT={args.start:g}, "
        f"adaptive ceiling {max(args.max, args.start):g}; fake API Retry-After: 1",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    with run_context("bench-rate-") as (workdir, procs):
        for limit in args.limits:
            # enough for two adaptive runs on one database at the hidden limit, and some
            backlog = int(2.5 * limit * args.seconds / IDS_PER_EVENT + 1) * IDS_PER_EVENT
            proc, port = start_fake_api(
                procs,
                items=backlog,
                latency=0.0,
                name=f"fake-{limit:g}",
                extra=["--hidden-rate-limit", str(limit)],
            )
            api_url = f"http://{HOST}:{port}"
            ids = fake_item_ids(port, backlog)
            for label, mode, fresh in (
                ("fixed", "fixed", True),
                ("adaptive, first start", "adaptive", True),
                ("adaptive, restarted", "adaptive", False),
            ):
                db = workdir / f"{limit:g}-{mode}.sqlite3"
                if fresh:
                    schema.upgrade(f"sqlite:///{db}")
                    asyncio.run(fill_inbox(f"sqlite:///{db}", ids))
                time.sleep(1.5)  # the fake's bucket refills: every row starts alike
                result = asyncio.run(drain(db, api_url, proc.pid, mode, args))
                rows.append({"limit": limit, "row": label, **result})
                print(f"  {limit:g}/s {label}: {result}", flush=True)
            procs.stop(proc)
    print()
    print(render(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"seconds": args.seconds, "rows": rows}, indent=2))
    return 0


def render(rows: list[dict[str, Any]]) -> str:
    fixed = {r["limit"]: r["items_s"] for r in rows if r["row"] == "fixed"}
    out = []
    for r in rows:
        base = fixed.get(r["limit"])
        out.append(
            [
                f"{r['limit']:g}/s",
                r["row"],
                r["items_s"],
                r["throttled"],
                r["dead_jobs"],
                f"{r['rate_first']:g} / {r['rate_min']:g}-{r['rate_max']:g} / {r['rate_last']:g}",
                f"{r['items_s'] / base:.2f}x" if base else "-",
                r["cpu"]["svc"],
                r["cpu"]["api"],
                r["cpu"]["other"],
            ]
        )
    headers = ["hidden limit", "client", "items/s", "429s", "dead", "rate start/min-max/end"]
    return table([*headers, "vs fixed", "svc cpu", "api cpu", "other cpu"], out)


if __name__ == "__main__":
    sys.exit(main())
