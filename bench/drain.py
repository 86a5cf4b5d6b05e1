"""Items fetched, stored and delivered per second, draining a backlog of ``items.scanned`` events.

``python bench/drain.py [--quick|--full] [--json out.json] [--latencies 0,0.05]``

For each fake-API latency (0 ms, then 50 ms by default):

* ``ours``: a local ``dimmy-webhooks fake-api`` with exactly the items needed; their ids come from
  ``GET /items?limit=N``. N signed events of 50 ids each go in through ``serve --no-worker`` (not
  timed); then ``dimmy-webhooks worker`` starts with ``DIMMY_OUTPUTS=jsonl:<tmp>/out.jsonl`` and
  ``DIMMY_API_RATE_LIMIT=100000``, and the clock runs from its spawn until every item is a row
  of ``items`` and no job is pending or running (the SQLite file is polled). The JSONL output
  must then hold exactly one line per item. ``theory`` is ``DIMMY_API_CONCURRENCY / latency``.
  ``--api-concurrency 16,64`` adds one row per value.
* ``seed example``: Dimmy's original Flask example under gunicorn (2 sync workers), fed the
  same items as events of 10 ids over 16 connections; its rate is the items it fetched and
  printed per second during ``--seed-duration`` seconds (it goes over the items again when it
  runs out; it stores nothing, so that costs it nothing); ``theory`` is ``2 workers / latency``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from ack import start_seed
from benchlib import (
    API_KEY,
    HOST,
    SECRET,
    Proc,
    Procs,
    count_lines,
    fake_item_ids,
    free_port,
    group_cpu_seconds,
    machine_busy_seconds,
    machine_lines,
    run_context,
    run_loadgen,
    service_env,
    start_fake_api,
    table,
    tool,
    wait_ready,
)

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"events": 20, "timeout": 90.0, "seed_duration": 8.0},
    "default": {"events": 40, "timeout": 120.0, "seed_duration": 15.0},
    "full": {"events": 200, "timeout": 240.0, "seed_duration": 30.0},
}
IDS_PER_EVENT = 50
SEED_IDS_PER_EVENT = 10
SEED_WORKERS = 2
POLL_SECONDS = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller (make bench)")
    size.add_argument("--full", action="store_true", help="larger")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--latencies", default="0,0.05", help="fake API latencies in seconds")
    parser.add_argument("--events", type=int, help=f"events of {IDS_PER_EVENT} ids (preset)")
    parser.add_argument(
        "--api-concurrency",
        default="64",
        help="DIMMY_API_CONCURRENCY for our worker (shipped: 64); several, comma separated, "
        "give one row each",
    )
    parser.add_argument("--timeout", type=float, help="give up on a drain after this (s)")
    parser.add_argument("--seed-duration", type=float, help="seconds of load on the seed example")
    parser.add_argument("--targets", default="ours,seed", help="subset of ours,seed")
    args = parser.parse_args(argv)
    args.preset = "quick" if args.quick else "full" if args.full else "default"
    preset = PRESETS[args.preset]
    args.events = args.events or preset["events"]
    args.timeout = args.timeout or preset["timeout"]
    args.seed_duration = args.seed_duration or preset["seed_duration"]
    args.latencies = [float(x) for x in args.latencies.split(",") if x]
    args.api_concurrency = [int(x) for x in str(args.api_concurrency).split(",") if x]
    args.targets = [x.strip() for x in args.targets.split(",") if x.strip()]
    return args


def _counts(db: Path) -> tuple[int, int, int]:
    """(items stored, jobs pending or running, jobs dead)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        items = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        rows = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    finally:
        conn.close()
    return items, rows.get("pending", 0) + rows.get("running", 0), rows.get("dead", 0)


def fill_inbox(
    procs: Procs, workdir: Path, db: Path, ids: list[str], events: int, tag: str
) -> None:
    """Post the events through ``serve --no-worker`` (not timed) and check they are stored."""
    port = free_port()
    proc = procs.start(
        f"inbox-{tag}",
        [tool("dimmy-webhooks"), "serve", "--no-worker", "--host", HOST, "--port", str(port)],
        service_env(db),
        cwd=db.parent,
    )
    try:
        wait_ready(proc, port, "/healthz")
        spec = {
            "host": HOST,
            "port": port,
            "path": "/webhook",
            "secret": SECRET,
            "ids": ids,
            "ids_per_body": IDS_PER_EVENT,
            "count": events,
            "warmup": 0,
            "connections": 4,
            "duration": 60.0,
            "grace": 15.0,
            "msg_prefix": f"drain{tag}",
        }
        result = run_loadgen(workdir, spec, f"inbox-{tag}")["measured"]
    finally:
        procs.stop(proc)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        conn.close()
    if result["ok"] != events or stored != events:
        raise RuntimeError(f"inbox: {result['statuses']} answers, {stored} rows, {events} sent")


def drain_ours(
    args: argparse.Namespace,
    procs: Procs,
    workdir: Path,
    api: tuple[Proc, int],
    ids: list[str],
    latency: float,
    concurrency: int,
) -> dict[str, Any]:
    tag = f"{latency * 1000:.0f}ms-c{concurrency}"
    run_dir = workdir / f"ours-{tag}"
    run_dir.mkdir()
    db = run_dir / "service.sqlite3"
    out = run_dir / "out.jsonl"
    fill_inbox(procs, workdir, db, ids, args.events, tag)
    env = service_env(
        db,
        DIMMY_API_KEY=API_KEY,
        DIMMY_API_URL=f"http://{HOST}:{api[1]}",
        DIMMY_OUTPUTS=f"jsonl:{out}",
        DIMMY_API_RATE_LIMIT="100000",
        DIMMY_API_CONCURRENCY=str(concurrency),
    )
    api_cpu0 = group_cpu_seconds(api[0].pid)
    busy0 = machine_busy_seconds()
    started = time.monotonic()
    worker = procs.start(f"worker-{tag}", [tool("dimmy-webhooks"), "worker"], env, cwd=run_dir)
    first = None
    items = open_jobs = dead = 0
    timed_out = False
    worker_cpu = 0.0
    try:
        while True:
            time.sleep(POLL_SECONDS)
            if worker.popen.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{worker.log_tail()}")
            items, open_jobs, dead = _counts(db)
            now = time.monotonic()
            if items and first is None:
                first = now
            if items >= len(ids) and open_jobs == 0:
                break
            if dead and open_jobs == 0:
                break
            if now - started > args.timeout:
                timed_out = True
                break
        finished = time.monotonic()
        worker_cpu = group_cpu_seconds(worker.pid)
        busy = machine_busy_seconds() - busy0
    finally:
        procs.stop(worker)
    api_cpu = group_cpu_seconds(api[0].pid) - api_cpu0
    elapsed = finished - started
    lines = out.read_bytes().splitlines() if out.exists() else []
    delivered = [json.loads(line)["item_id"] for line in lines if line.strip()]
    one_each = len(delivered) == len(ids) and set(delivered) == set(ids)
    theory = concurrency / latency if latency else None
    rate = items / elapsed
    return {
        "target": "ours",
        "latency_ms": latency * 1000,
        "concurrency": concurrency,
        "items": len(ids),
        "stored": items,
        "dead_jobs": dead,
        "timed_out": timed_out,
        "seconds": elapsed,
        "startup_s": None if first is None else first - started,
        "items_s": rate,
        "items_s_after_first": (
            (items - 1) / (finished - first) if first and finished > first else None
        ),
        "theory": theory,
        "of_theory": rate / theory if theory else None,
        "jsonl_lines": len(delivered),
        "jsonl_ok": one_each,
        "cpu": {"worker": worker_cpu / elapsed, "api": api_cpu / elapsed},
        "other_cpu": max(0.0, busy - worker_cpu - api_cpu) / elapsed,
    }


def drain_seed(
    args: argparse.Namespace,
    procs: Procs,
    workdir: Path,
    api: tuple[Proc, int],
    ids: list[str],
    latency: float,
) -> dict[str, Any]:
    tag = f"{latency * 1000:.0f}ms"
    proc, port, stdout = start_seed(procs, workdir, f"seed-drain-{tag}", api[1])
    try:
        spec = {
            "host": HOST,
            "port": port,
            "path": "/webhook",
            "secret": SECRET,
            "ids": ids,
            "ids_per_body": SEED_IDS_PER_EVENT,
            # up to 10 passes over the items: the duration, not the count, ends the run
            "count": len(ids),
            "warmup": 0,
            "connections": 16,
            "duration": args.seed_duration,
            "grace": 15.0,
            "msg_prefix": f"seeddrain{tag}",
            "watch": {"server": proc.pid, "api": api[0].pid},
        }
        measured = run_loadgen(workdir, spec, f"seed-drain-{tag}")["measured"]
        printed = count_lines(stdout)
    finally:
        procs.stop(proc)
    elapsed = measured["elapsed"] or 1e-9
    fetched = measured["ok"] * SEED_IDS_PER_EVENT
    theory = SEED_WORKERS / latency if latency else None
    rate = fetched / elapsed
    non2xx = {k: v for k, v in measured["statuses"].items() if not k.startswith("2")}
    return {
        "target": "seed example",
        "latency_ms": latency * 1000,
        "concurrency": SEED_WORKERS,
        "items": len(ids),
        "stored": fetched,
        "events_ok": measured["ok"],
        "non_2xx": non2xx,
        "seconds": elapsed,
        "items_s": rate,
        "theory": theory,
        "of_theory": rate / theory if theory else None,
        "printed_lines": printed,
        "over_15s": measured["over_svix_timeout"],
        "cpu": {name: secs / elapsed for name, secs in measured["cpu"].items()},
        "other_cpu": measured["other_cpu"] / (measured["wall"] or 1e-9),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    header = machine_lines()
    print("\n".join(header), flush=True)
    n_items = args.events * IDS_PER_EVENT
    print(
        f"preset {args.preset}: {args.events} events x {IDS_PER_EVENT} ids = {n_items} items; "
        f"DIMMY_API_CONCURRENCY={','.join(map(str, args.api_concurrency))}; "
        "conc = API requests in flight at most (seed: gunicorn workers);\n"
        f"seed example fed events of {SEED_IDS_PER_EVENT} ids for <= {args.seed_duration:.0f} s",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    with run_context("dimmy-bench-drain-") as (workdir, procs):
        for latency in args.latencies:
            api = start_fake_api(procs, items=n_items, latency=latency, name=f"fake-{latency}")
            try:
                ids = fake_item_ids(api[1], n_items)
                for concurrency in args.api_concurrency if "ours" in args.targets else []:
                    rows.append(drain_ours(args, procs, workdir, api, ids, latency, concurrency))
                    print(f"  {_progress(rows[-1])}", flush=True)
                if "seed" in args.targets:
                    rows.append(drain_seed(args, procs, workdir, api, ids, latency))
                    print(f"  {_progress(rows[-1])}", flush=True)
            finally:
                procs.stop(api[0])
    print()
    print(render(rows))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": header, "preset": args.preset, "rows": rows}, indent=2)
        )
        print(f"results written to {args.json}")
    bad = [r for r in rows if r["target"] == "ours" and (not r["jsonl_ok"] or r["timed_out"])]
    return 1 if bad else 0


def _progress(row: dict[str, Any]) -> str:
    return (
        f"{row['target']:<13} api {row['latency_ms']:4.0f} ms, concurrency "
        f"{row['concurrency']:<3}: {row['items_s']:8.1f} items/s "
        f"({row['stored']} items in {row['seconds']:.1f} s)"
    )


def render(rows: list[dict[str, Any]]) -> str:
    headers = [
        "target",
        "api ms",
        "conc",
        "items",
        "seconds",
        "items/s",
        "theory/s",
        "of theory",
        "start-up s",
        "items/s after 1st",
        "svc cpu",
        "api cpu",
        "other cpu",
        "check",
    ]
    out = []
    for r in rows:
        if r["target"] == "ours":
            check = (
                f"jsonl {r['jsonl_lines']} lines, one per item: "
                + ("ok" if r["jsonl_ok"] else "FAIL")
                + (f", {r['dead_jobs']} dead" if r["dead_jobs"] else "")
                + (", TIMED OUT" if r["timed_out"] else "")
            )
            cpu = r["cpu"]["worker"]
        else:
            expected = r["stored"]
            check = f"printed {r['printed_lines']} lines for {expected} fetched"
            if r["non_2xx"]:
                check += f", non-2xx {r['non_2xx']}"
            if r["over_15s"]:
                check += f", {r['over_15s']} answers > 15 s"
            cpu = r["cpu"].get("server")
        out.append(
            [
                r["target"],
                r["latency_ms"],
                r["concurrency"],
                r["stored"],
                r["seconds"],
                r["items_s"],
                r["theory"],
                None if r["of_theory"] is None else f"{r['of_theory'] * 100:.0f}%",
                r.get("startup_s"),
                r.get("items_s_after_first"),
                cpu,
                r["cpu"].get("api"),
                r["other_cpu"],
                check,
            ]
        )
    return table(headers, out)


if __name__ == "__main__":
    sys.exit(main())
