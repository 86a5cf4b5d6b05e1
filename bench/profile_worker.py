"""Where one worker's CPU goes: ``dimmy-webhooks worker`` under cProfile draining a backlog.

``python bench/profile_worker.py [--events 20] [--concurrency 64] [--latency 0] [--top 25]
[--out worker.prof]``

The same drain as ``drain.py``'s ``ours sqlite 1 wkr`` row at 0 ms, or at ``--latency`` seconds
(a local fake API, events of
50 ids acknowledged through ``serve --no-worker`` first, ``DIMMY_API_RATE_LIMIT=100000``, a
JSON Lines output), but the one worker runs under :class:`cProfile.Profile` with
``time.thread_time`` as its clock: the CPU of the event loop's thread, where every request is
made (time spent waiting counts for nothing). The SQLite writer thread is not profiled; the
worker process's whole CPU (``/proc``, every thread) is printed beside the profiled thread's.
It is stopped with SIGTERM once every item is stored.

Printed: the profiled CPU split by where the code lives (self time of each function; a C
function's time goes to the package of the Python code that called it, so a socket call made
by aiohttp counts as aiohttp), and the inclusive time of a few entry points (the whole of
``AiohttpTransport.send`` is the HTTP client's share of a fetch, its body read apart). cProfile's
own overhead inflates every call alike, so read the shares, not the seconds.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchlib import (
    API_KEY,
    HOST,
    bench_database,
    fake_item_ids,
    machine_lines,
    pids_cpu_seconds,
    run_context,
    service_env,
    sqlite_scalar,
    start_fake_api,
    table,
)
from drain import IDS_PER_EVENT, fill_inbox

HTTP_STACK = {"aiohttp", "aiohappyeyeballs", "multidict", "yarl", "propcache", "frozenlist"}
ENTRY_POINTS = {
    "AiohttpTransport.send (request and answer head, client side)": (
        "dimmy_webhooks/upstream/transport.py",
        "send",
    ),
    "DimmyClient.get_item_document (the fetch, checks included)": (
        "dimmy_webhooks/upstream/client.py",
        "get_item_document",
    ),
    "json (parse and dump, stdlib)": ("/json/", None),
}


def child(out: str) -> None:
    """Run ``dimmy-webhooks worker`` in this process under the profiler; dump on exit."""
    from dimmy_webhooks.cli import main

    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    try:
        main(["worker"], standalone_mode=False)
    finally:
        profile.disable()
        profile.dump_stats(out)


def group(filename: str) -> str:
    if filename == "~":
        return "C functions called from C"
    if "/site-packages/" in filename:
        package = filename.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
        if package in HTTP_STACK:
            return "HTTP client: aiohttp, yarl, multidict and their helpers"
        return package
    if "/dimmy_webhooks/" in filename:
        module = filename.split("/dimmy_webhooks/", 1)[1].removesuffix(".py")
        return "dimmy_webhooks." + module.split("/", 1)[0]
    if "/asyncio/" in filename:
        return "asyncio (stdlib)"
    if "/json/" in filename:
        return "json (stdlib)"
    return "stdlib, other"


def summarise(path: Path, top: int, process_cpu: float) -> None:
    stats: Any = pstats.Stats(str(path)).stats  # {func: (cc, nc, tt, ct, callers)}
    by_group: dict[str, float] = defaultdict(float)
    for (filename, _line, _name), (_cc, _nc, tt, _ct, callers) in stats.items():
        if filename != "~" or not callers:
            by_group[group(filename)] += tt
            continue
        # a C function: its self time goes to its Python callers, in proportion to theirs
        shares = {caller: entry[2] for caller, entry in callers.items()}
        total = sum(shares.values()) or 1.0
        for caller, share in shares.items():
            by_group[group(caller[0])] += tt * share / total
    whole = sum(by_group.values())
    rows = [
        [name, secs, f"{secs / whole * 100:.1f} %"]
        for name, secs in sorted(by_group.items(), key=lambda kv: -kv[1])[:top]
    ]
    print(table(["where (self time)", "CPU s", "share"], rows))
    print()
    entry_rows = []
    for label, (file_part, name) in ENTRY_POINTS.items():
        if name is None:  # a package: self time of its Python functions
            secs = sum(
                tt
                for (filename, _l, _n), (_cc, _nc, tt, _ct, _c) in stats.items()
                if file_part in filename
            )
        else:
            secs = max(
                (
                    ct
                    for (filename, _l, n), (_cc, _nc, _tt, ct, _c) in stats.items()
                    if n == name and filename.endswith(file_part)
                ),
                default=0.0,
            )
        entry_rows.append([label, secs, f"{secs / whole * 100:.1f} %"])
    print(table(["entry point (inclusive)", "CPU s", "share"], entry_rows))
    print(
        f"\nprofiled (event-loop thread) CPU {whole:.2f} s of the worker process's "
        f"{process_cpu:.2f} s, every thread, under the profiler"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20, help=f"events of {IDS_PER_EVENT} ids")
    parser.add_argument("--concurrency", type=int, default=64, help="DIMMY_API_CONCURRENCY")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="the fake API's latency in seconds"
    )
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, help="keep the profile here (pstats format)")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    print("\n".join(machine_lines()))
    n_items = args.events * IDS_PER_EVENT
    with run_context("dimmy-profile-") as (workdir, procs):
        api = start_fake_api(procs, items=n_items, latency=args.latency)
        ids = fake_item_ids(api[1], n_items)
        run_dir = workdir / "run"
        with bench_database("sqlite", run_dir, prepare=True) as db:
            fill_inbox(procs, workdir, db, ids, args.events, "profile")
            out = args.out or workdir / "worker.prof"
            env = service_env(
                db,
                DIMMY_API_KEY=API_KEY,
                DIMMY_API_URL=f"http://{HOST}:{api[1]}",
                DIMMY_OUTPUTS=f"jsonl:{run_dir / 'out.jsonl'}",
                DIMMY_API_RATE_LIMIT="100000",
                DIMMY_API_CONCURRENCY=str(args.concurrency),
            )
            argv = [sys.executable, __file__, "--child", str(out)]
            started = time.monotonic()
            worker = procs.start("worker", argv, env, cwd=run_dir)
            assert db.path is not None
            while sqlite_scalar(db.path, "SELECT count(*) FROM items") < n_items:
                if worker.popen.poll() is not None:
                    raise SystemExit(f"worker exited:\n{worker.log_tail()}")
                if time.monotonic() - started > args.timeout:
                    raise SystemExit(f"not drained after {args.timeout:.0f} s")
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            process_cpu = pids_cpu_seconds([worker.pid]).get(worker.pid, 0.0)
            procs.stop(worker, timeout=60)
        print(f"{n_items} items drained in {elapsed:.1f} s under the profiler\n")
        summarise(out, args.top, process_cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
