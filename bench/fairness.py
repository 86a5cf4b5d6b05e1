"""How long a live scan waits behind a big upload, and what the upload itself drains at.

``python bench/fairness.py [--quick|--full] [--backend sqlite,postgres] [--backlogs 3000,100000]
[--live N] [--baseline-rev REV] [--json out.json]``

For each backend and backlog size N, with the service's **default settings** (the client's
rate limit of 100 requests/s, 128 jobs in flight): a local ``fake-api`` (10 ms per request)
holding N + ``--live`` items; ``dimmy-webhooks serve`` (receiver and workers in one process)
on a fresh database; one signed ``items.scanned`` of the N ids (the device back after a shift
offline); once its items are being stored, one-id ``items.scanned`` events (the parcel on the
dock), one after the other, ``--live`` of them within the window. Measured:

* ``live wait``: from a one-id event's ``204`` until its item is a row of ``items`` (the
  database polled every 20 ms), the median and the slowest of the live scans; ``>`` a figure
  when one was not stored within the window. One scan's wait depends on where in the worker's
  claim cycle it lands (0.3 to 1.3 s on 2 cores for the same code), so one scan alone cannot
  tell two codes apart; after each stored scan the next waits a fixed pause that differs from
  scan to scan (:data:`PAUSES`), so the scans land at different points of the cycle;
* ``backlog items/s``: the upload's items stored per second over the window (from the first
  100 stored to ``--window`` seconds after the live event, or until the upload is done), next
  to the rate limit it cannot beat.

Baseline, same run: the same measurement on the code of ``--baseline-rev`` (default: the
last release, ``benchlib.RELEASE_REV``), checked out with ``git worktree`` into a temporary
directory and run with ``PYTHONPATH`` pointing at its ``src``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchlib import (
    API_KEY,
    HOST,
    RELEASE_REV,
    SECRET,
    BenchDB,
    Procs,
    baseline_tree,
    bench_database,
    free_port,
    machine_lines,
    pg_problem,
    run_context,
    service_env,
    start_fake_api,
    table,
    tool,
    wait_ready,
)
from dimmy_webhooks.signatures import parse_secrets, signed_headers

BASELINE_REV = RELEASE_REV
"""The last release: a regression against it is a defect. (The code before fair claims,
``993ec50``, needs a package the venv no longer has; its figures are in docs/performance.md.)"""
RATE = 100.0  # DIMMY_API_RATE_LIMIT's default

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"backlogs": [3000, 100_000], "window": 12.0, "live": 5},
    "default": {"backlogs": [3000, 100_000], "window": 20.0, "live": 9},
    "full": {"backlogs": [3000, 100_000], "window": 40.0, "live": 17},
}
PAUSES = (0.13, 0.41, 0.27, 0.55, 0.07, 0.34)
"""Seconds between one live scan stored and the next sent, in turn: fixed, so every run and
both codes get the same schedule, and uneven, so the scans do not keep one phase of the
worker's claim cycle (its poll and refill wait are 0.5 s)."""


def post(port: int, ids: list[str], msg_id: str) -> None:
    body = json.dumps({"item_ids": ids}).encode()
    headers = {
        **signed_headers(parse_secrets(SECRET)[0], msg_id, body),
        "content-type": "application/json",
    }
    request = urllib.request.Request(
        f"http://{HOST}:{port}/webhook", data=body, headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 (loopback only)
        if answer.status != 204:
            raise RuntimeError(f"webhook answered {answer.status}")


def stored(db: BenchDB) -> int:
    return int(db.scalar("SELECT count(*) FROM items"))


def has_item(db: BenchDB, item_id: str) -> bool:
    return bool(db.scalar(f"SELECT count(*) FROM items WHERE id = '{item_id}'"))


def wait_for(predicate: Any, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def item_ids(port: int, n: int) -> list[str]:
    request = urllib.request.Request(
        f"http://{HOST}:{port}/items?skip=0&limit={n}", headers={"X-API-KEY": API_KEY}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 (loopback only)
        return [item["_id"] for item in json.loads(answer.read())]


def measure(
    procs: Procs,
    workdir: Path,
    backend: str,
    backlog: int,
    window: float,
    label: str,
    pythonpath: str | None,
    live_count: int,
) -> dict[str, Any]:
    fake, fake_port = start_fake_api(
        procs, items=backlog + live_count, latency=0.01, name=f"fake-{label}"
    )
    ids = item_ids(fake_port, backlog + live_count)
    upload, lives = ids[:backlog], ids[backlog:]
    # every child (migrate included) runs the code under test
    os.environ.pop("PYTHONPATH", None)
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    run_dir = workdir / f"{label}-{backend}-{backlog}"
    with bench_database(backend, run_dir, prepare=backend == "sqlite") as db:
        port = free_port()
        env = service_env(
            db,
            DIMMY_API_KEY=API_KEY,
            DIMMY_API_URL=f"http://{HOST}:{fake_port}",
            DIMMY_OUTPUTS=f"jsonl:{run_dir / 'out.jsonl'}",
        )
        serve = procs.start(
            f"serve-{label}-{backend}-{backlog}",
            [tool("dimmy-webhooks"), "serve", "--host", HOST, "--port", str(port)],
            env,
            cwd=run_dir,
        )
        try:
            wait_ready(serve, port, "/healthz")
            post(port, upload, "msg_upload")
            if not wait_for(lambda: stored(db) >= 100, 120, 0.05):
                raise RuntimeError(f"the upload did not start draining\n{serve.log_tail()}")
            started, first = time.monotonic(), stored(db)
            waits: list[float] = []
            found = True
            for n, live in enumerate(lives):
                post(port, [live], f"msg_live_{n}")
                sent = time.monotonic()
                found = wait_for(lambda live=live: has_item(db, live), window)
                waits.append(time.monotonic() - sent)
                if not found or n == len(lives) - 1:
                    break
                time.sleep(PAUSES[n % len(PAUSES)])
            rest = max(0.0, started + window - time.monotonic())
            wait_for(lambda: stored(db) >= backlog + len(waits), rest, 0.1)
            elapsed = time.monotonic() - started
            count = stored(db) - sum(has_item(db, live) for live in lives)
        finally:
            procs.stop(serve)
            procs.stop(fake)
            os.environ.pop("PYTHONPATH", None)
    return {
        "code": label,
        "backend": backend,
        "backlog": backlog,
        "live_stored": found,
        "live_waits_s": [round(w, 3) for w in waits],
        "live_wait_s": round(statistics.median(waits), 3),
        "live_max_s": round(max(waits), 3),
        "backlog_items_per_s": round((count - first) / elapsed, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--full", action="store_true")
    parser.add_argument("--backend", default="sqlite,postgres")
    parser.add_argument("--backlogs", help="comma separated sizes of the upload")
    parser.add_argument("--window", type=float, help="seconds measured from the first live event")
    parser.add_argument("--live", type=int, help="live scans per row (preset: 5, 9, 17)")
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    preset = PRESETS["quick" if args.quick else "full" if args.full else "default"]
    backlogs = [int(n) for n in args.backlogs.split(",")] if args.backlogs else preset["backlogs"]
    window = args.window or preset["window"]
    live_count = max(1, args.live or preset["live"])
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    if "postgres" in backends and (problem := pg_problem()) is not None:
        print(f"note: PostgreSQL left out ({problem})")
        backends.remove("postgres")
    results = []
    with contextlib.ExitStack() as stack:
        baseline = (
            None if args.no_baseline else stack.enter_context(baseline_tree(args.baseline_rev))
        )
        workdir, procs = stack.enter_context(run_context("fairness"))
        for backend in backends:
            for backlog in backlogs:
                runs = [("today", None)]
                if baseline is not None:
                    runs.insert(0, (f"release ({args.baseline_rev})", baseline))
                for label, path in runs:
                    tag = "before" if path else "ours"
                    result = measure(
                        procs, workdir, backend, backlog, window, tag, path, live_count
                    )
                    result["code"] = label
                    results.append(result)
                    print(json.dumps(result), file=sys.stderr, flush=True)
    print(
        "Live scan behind an upload (default settings: "
        f"{RATE:.0f} requests/s, fake API 10 ms; window {window:.0f} s; up to {live_count} "
        "live scans in turn a row)"
    )
    for line in machine_lines():
        print(line)
    rows = [
        [
            r["code"],
            r["backend"],
            f"{r['backlog']:,}",
            len(r["live_waits_s"]),
            f"{r['live_wait_s']:.2f} s",
            f"{r['live_max_s']:.2f} s" if r["live_stored"] else f"> {r['live_max_s']:.0f} s",
            r["backlog_items_per_s"],
            f"{r['backlog_items_per_s'] / RATE:.2f}",
        ]
        for r in results
    ]
    print(
        table(
            [
                "code",
                "backend",
                "upload ids",
                "live scans",
                "live wait, median",
                "slowest",
                "upload items/s",
                "of the rate limit",
            ],
            rows,
        )
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    ours = [r for r in results if r["code"] == "today"]
    return 0 if all(r["live_stored"] for r in ours) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
