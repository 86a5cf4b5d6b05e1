"""Acknowledged, durably committed webhooks per second, and acknowledgement latency.

``python bench/ack.py [--quick|--full] [--json out.json] [--api-latency 0.05] [--diag]``

For signed ``items.scanned`` bodies of 1, 10 and 500 ids (24-hex ids from the fake API), with 16
keep-alive connections each sending one request after another (closed loop), it measures:

* ``bare uvicorn``: bench/bare_app.py, a 204 without work, under the same uvicorn and options as
  ``serve``: the ceiling the server and this load generator allow on this machine;
* ``ours``: ``dimmy-webhooks serve --no-worker``, SQLite in a fresh temp dir (WAL,
  synchronous=FULL as shipped); after the run every message id answered 204 must be a row of
  ``events`` (the durability check);
* ``seed example``: Dimmy's original Flask example (bench/seed_example.py) under gunicorn with 2
  sync workers, which fetches every id inline from a local ``dimmy-webhooks fake-api``
  (``--api-latency`` seconds per call, 0 by default).

Each measurement is bounded by a request count and a duration; requests still unanswered
``--grace`` seconds after the duration are abandoned and counted as non-2xx (``unanswered``).
A short warm-up (not counted) precedes each. Servers and the load generator run in separate
processes; ``cpu`` columns are CPU seconds per wall second (2.0 = both cores busy): srv = the
server's process group, api = the fake API (seed example only), gen = the load generator,
other = everything else on the machine meanwhile (high means the figures are disturbed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import (
    HOST,
    SECRET,
    Procs,
    base_env,
    count_lines,
    fake_item_ids,
    free_port,
    machine_lines,
    percentile,
    run_context,
    run_loadgen,
    service_env,
    start_fake_api,
    table,
    tool,
    wait_ready,
)

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"count": 3000, "duration": 8.0, "warmup": 200},
    "default": {"count": 10000, "duration": 20.0, "warmup": 500},
    "full": {"count": 30000, "duration": 30.0, "warmup": 1000},
}
#: bare uvicorn answers ~10x faster than anything else: give it more requests, so that its
#: measurement lasts long enough to be stable (it is still bounded by the duration).
BARE_COUNT_FACTOR = 5
#: The seed example is slow: warm each gunicorn worker up with a few 1-id bodies, no more.
SEED_WARMUP = 4
WARMUP_SECONDS = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller and shorter (make bench)")
    size.add_argument("--full", action="store_true", help="larger and longer")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--sizes", default="1,10,500", help="ids per body (comma separated)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--count",
        type=int,
        help=f"requests per measurement (default: preset; bare uvicorn gets {BARE_COUNT_FACTOR}x)",
    )
    parser.add_argument("--duration", type=float, help="seconds per measurement (preset)")
    parser.add_argument(
        "--grace",
        type=float,
        default=15.0,
        help="seconds to wait for answers after the duration (default: Svix's 15 s timeout)",
    )
    parser.add_argument(
        "--api-latency", type=float, default=0.0, help="fake API latency for the seed example (s)"
    )
    parser.add_argument(
        "--targets", default="bare,ours,seed", help="subset of bare,ours,seed (comma separated)"
    )
    parser.add_argument(
        "--diag",
        action="store_true",
        help="extra rows to explain our figures: DB on tmpfs (no real fsync), 1 connection",
    )
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full" if args.full else "default"]
    args.preset = "quick" if args.quick else "full" if args.full else "default"
    args.count = args.count or preset["count"]
    args.duration = args.duration or preset["duration"]
    args.warmup = preset["warmup"]
    args.sizes = [int(x) for x in args.sizes.split(",") if x]
    args.targets = [x.strip() for x in args.targets.split(",") if x.strip()]
    return args


def start_ours(procs: Procs, workdir: Path, name: str, db_dir: Path) -> tuple[Any, int, Path]:
    port = free_port()
    db_dir.mkdir(parents=True, exist_ok=True)
    db = db_dir / "inbox.sqlite3"
    proc = procs.start(
        name,
        [tool("dimmy-webhooks"), "serve", "--no-worker", "--host", HOST, "--port", str(port)],
        service_env(db),
        cwd=db_dir,
    )
    wait_ready(proc, port, "/healthz")
    return proc, port, db


def start_bare(procs: Procs, name: str) -> tuple[Any, int]:
    port = free_port()
    argv = [
        tool("uvicorn"),
        "bare_app:app",
        "--app-dir",
        str(Path(__file__).resolve().parent),
        "--host",
        HOST,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--timeout-keep-alive",
        "15",
        "--no-server-header",
    ]
    proc = procs.start(name, argv, base_env())
    wait_ready(proc, port, "/")
    return proc, port


def start_seed(procs: Procs, workdir: Path, name: str, api_port: int) -> tuple[Any, int, Path]:
    port = free_port()
    stdout = workdir / f"{name}.stdout"
    argv = [
        tool("gunicorn"),
        "--workers",
        "2",
        "--bind",
        f"{HOST}:{port}",
        "--chdir",
        str(Path(__file__).resolve().parent),
        "--log-level",
        "warning",
        "seed_example:app",
    ]
    env = base_env(
        DIMMY_WEBHOOK_SECRET=SECRET,
        DIMMY_API_KEY="bench-key",
        DIMMY_API_URL=f"http://{HOST}:{api_port}",
        PYTHONUNBUFFERED="1",  # print() reaches the file at once, as on a terminal
    )
    proc = procs.start(name, argv, env, stdout=stdout)
    wait_ready(proc, port, "/")
    return proc, port, stdout


def durability(db: Path, prefix: str, result: dict[str, Any]) -> dict[str, Any]:
    """Every message id answered 2xx (warm-up and measured) must be a row of ``events``."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        stored = {row[0] for row in conn.execute("SELECT message_id FROM events")}
        rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        conn.close()
    acked = [f"msg_{prefix}_m_{i}" for i in result["measured"]["ok_indexes"]]
    warm = result.get("warmup", {}).get("ok", 0)
    missing = [m for m in acked if m not in stored]
    ok_total = len(acked) + warm
    return {
        "acked_2xx": ok_total,
        "event_rows": rows,
        "missing": len(missing),
        "ok": not missing and rows == ok_total,
    }


def summarise(target: str, size: int, result: dict[str, Any]) -> dict[str, Any]:
    m = result["measured"]
    lat = m["latencies"]
    non2xx = sum(n for status, n in m["statuses"].items() if not status.startswith("2"))
    elapsed = m["elapsed"] or 1e-9
    return {
        "target": target,
        "ids": size,
        "sent": m["sent"],
        "ok": m["ok"],
        "elapsed_s": round(elapsed, 3),
        "req_s": m["ok"] / elapsed,
        "p50_ms": _ms(percentile(lat, 50)),
        "p90_ms": _ms(percentile(lat, 90)),
        "p99_ms": _ms(percentile(lat, 99)),
        "max_ms": _ms(max(lat) if lat else None),
        "non_2xx": non2xx,
        "statuses": m["statuses"],
        "over_15s": m["over_svix_timeout"],
        "client_cpu": m["client_cpu"] / elapsed,
        "cpu": {name: secs / elapsed for name, secs in m["cpu"].items()},
        "other_cpu": m["other_cpu"] / (m["wall"] or 1e-9),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def measure(
    args: argparse.Namespace,
    workdir: Path,
    procs: Procs,
    target: str,
    size: int,
    ids: list[str],
    api: tuple[Any, int] | None,
    *,
    connections: int | None = None,
    db_dir: Path | None = None,
) -> dict[str, Any]:
    label = target.replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")
    name = f"{label}-{size}"
    prefix = f"{label}{size}_{int(time.time())}"
    db = stdout = None
    if target.startswith("ours"):
        proc, port, db = start_ours(procs, workdir, name, db_dir or workdir / name)
        watch = {"server": proc.pid}
        warmup = args.warmup
    elif target == "bare uvicorn":
        proc, port = start_bare(procs, name)
        watch = {"server": proc.pid}
        warmup = args.warmup
    else:
        assert api is not None
        proc, port, stdout = start_seed(procs, workdir, name, api[1])
        watch = {"server": proc.pid, "api": api[0].pid}
        warmup = SEED_WARMUP
    spec = {
        "host": HOST,
        "port": port,
        "path": "/webhook",
        "secret": SECRET,
        "ids": ids,
        "ids_per_body": size,
        "count": args.count * (BARE_COUNT_FACTOR if target == "bare uvicorn" else 1),
        "warmup": warmup,
        "warmup_duration": WARMUP_SECONDS,
        "warmup_ids_per_body": 1 if target == "seed example" else size,
        "connections": connections or args.connections,
        "duration": args.duration,
        "grace": args.grace,
        "msg_prefix": prefix,
        "watch": watch,
    }
    try:
        result = run_loadgen(workdir, spec, name)
        row = summarise(target, size, result)
        row["connections"] = spec["connections"]
        if db is not None:
            row["durability"] = durability(db, prefix, result)
        if stdout is not None:
            # the seed example prints one line per fetched item
            row["printed_lines"] = count_lines(stdout)
    finally:
        procs.stop(proc)
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    header = machine_lines()
    print("\n".join(header), flush=True)
    print(
        f"preset {args.preset}: <= {args.count} requests or {args.duration:.0f} s per row "
        f"(+ up to {args.grace:.0f} s for late answers), {args.connections} connections, "
        f"seed example's fake API latency {args.api_latency * 1000:.0f} ms",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    with run_context("dimmy-bench-ack-") as (workdir, procs):
        pool_size = max(1000, *args.sizes)
        api: tuple[Any, int] | None = start_fake_api(
            procs, items=pool_size, latency=args.api_latency
        )
        assert api is not None
        ids = fake_item_ids(api[1], pool_size)
        if "seed" not in args.targets:
            procs.stop(api[0])
            api = None
        plan = [("bare", "bare uvicorn"), ("ours", "ours"), ("seed", "seed example")]
        for size in args.sizes:
            for key, target in plan:
                if key not in args.targets:
                    continue
                row = measure(args, workdir, procs, target, size, ids, api)
                rows.append(row)
                print(f"  {_progress(row)}", flush=True)
            if args.diag and "ours" in args.targets:
                shm = Path("/dev/shm")  # noqa: S108 (a private subdirectory, removed after)
                if shm.is_dir():
                    tmp = shm / f"dimmy-bench-{workdir.name}"
                    try:
                        row = measure(
                            args, workdir, procs, "ours (db on tmpfs)", size, ids, api, db_dir=tmp
                        )
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
                    rows.append(row)
                    print(f"  {_progress(row)}", flush=True)
                row = measure(
                    args, workdir, procs, "ours (1 connection)", size, ids, api, connections=1
                )
                rows.append(row)
                print(f"  {_progress(row)}", flush=True)
    bare = {r["ids"]: r["req_s"] for r in rows if r["target"] == "bare uvicorn"}
    for r in rows:
        r["vs_bare"] = r["req_s"] / bare[r["ids"]] if bare.get(r["ids"]) else None
    print()
    print(render(rows))
    print(_notes(rows))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": header, "preset": args.preset, "rows": rows}, indent=2)
        )
        print(f"results written to {args.json}")
    failed = [r for r in rows if r.get("durability") and not r["durability"]["ok"]]
    return 1 if failed else 0


def _progress(row: dict[str, Any]) -> str:
    return f"{row['target']:<22} ids={row['ids']:<4} {row['req_s']:8.1f} req/s ({row['ok']} ok)"


def render(rows: list[dict[str, Any]]) -> str:
    headers = [
        "target",
        "ids/body",
        "conns",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "non-2xx",
        ">15 s",
        "vs bare",
        "srv cpu",
        "api cpu",
        "gen cpu",
        "other cpu",
        "durable (204 = rows)",
    ]
    out = []
    for r in rows:
        d = r.get("durability")
        durable = "n/a"
        if d is not None:
            durable = f"{d['acked_2xx']} = {d['event_rows']} {'ok' if d['ok'] else 'FAIL'}"
            if d["missing"]:
                durable += f" ({d['missing']} missing)"
        out.append(
            [
                r["target"],
                r["ids"],
                r["connections"],
                r["req_s"],
                r["p50_ms"],
                r["p99_ms"],
                r["max_ms"],
                r["non_2xx"],
                r["over_15s"],
                None if r["vs_bare"] is None else f"{r['vs_bare']:.2f}x",
                r["cpu"].get("server"),
                r["cpu"].get("api"),
                r["client_cpu"],
                r["other_cpu"],
                durable,
            ]
        )
    return table(headers, out)


def _notes(rows: list[dict[str, Any]]) -> str:
    notes = []
    for r in rows:
        bad = {k: v for k, v in r["statuses"].items() if not k.startswith("2")}
        if bad:
            notes.append(f"  {r['target']} ids={r['ids']}: non-2xx {bad}")
        if "printed_lines" in r:
            notes.append(
                f"  {r['target']} ids={r['ids']}: printed {r['printed_lines']} item lines "
                "(warm-up and late answers included)"
            )
    return "notes:\n" + "\n".join(notes) if notes else ""


if __name__ == "__main__":
    sys.exit(main())
