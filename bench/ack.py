"""Acknowledged, durably committed webhooks per second, and acknowledgement latency.

``python bench/ack.py [--quick|--full] [--json out.json] [--api-latency 0.05] [--diag]
[--backend sqlite,postgres] [--receivers 1,2] [--baseline-rev REV | --no-baseline]``

For signed ``items.scanned`` bodies of 1, 10 and 500 ids (24-hex ids from the fake API), with 16
keep-alive connections each sending one request after another (closed loop), it measures:

* ``bare uvicorn``: bench/bare_app.py, a 204 without work, under the same uvicorn and options as
  ``serve``: the ceiling the server and this load generator allow on this machine;
* ``ours <backend> <n> rcv``: ``dimmy-webhooks serve --no-worker`` on a fresh database: SQLite in
  a temp dir (WAL, synchronous=FULL as shipped) or a PostgreSQL database ``bench_<uuid>`` of its
  own (``--pg-url``, migrated first, dropped after). With ``n`` receivers, ``n`` such processes
  listen on ``n`` ports and the connections are spread over them. After the run every message id
  answered 204 must be a row of ``events`` (the durability check);
* ``ours ... (uvicorn's protocol)``, with ``--http-baseline``: each ``ours`` row measured again
  right after it, on ``bench/plain_serve.py serve``, i.e. the same command on uvicorn's own
  httptools protocol without the head and connection limits of ``httpserver.py``, and ``bare
  uvicorn (our protocol)``: the bare app on that protocol; the notes give the ratio of each pair
  (what the limits cost, per acknowledgement and on a request that does nothing);
* ``REV: ours <backend> 1 rcv`` and ``REV: ours <backend> all-in-one``: the baseline, i.e. the
  same two rows on the code of ``--baseline-rev`` (default: the last release's main,
  ``benchlib.RELEASE_REV``), checked out into a temporary ``git worktree`` and run with
  ``PYTHONPATH`` at its ``src`` (its own migrations, a fresh database per row), each measured
  right after today's row of the same target and size. The notes give, for each backend and
  size, the all-in-one / ``--no-worker`` req/s ratio and both p99s, today's and the baseline's,
  against issue 21's target (all-in-one >= 0.90x the --no-worker row, p99 < 20 ms), and which
  ``src`` each code's rows import. ``--no-baseline`` leaves these rows out;
* ``seed example``: Dimmy's original Flask example (bench/seed_example.py) under gunicorn with 2
  sync workers, which fetches every id inline from a local ``dimmy-webhooks fake-api``
  (``--api-latency`` seconds per call, 0 by default).

Each measurement is bounded by a request count and a duration; requests still unanswered
``--grace`` seconds after the duration are abandoned and counted as non-2xx (``unanswered``).
A short warm-up (not counted) precedes each. Servers and the load generator run in separate
processes; ``cpu`` columns are CPU seconds per wall second (2.0 = both cores busy): srv = the
server's process groups, db = the PostgreSQL backends serving the row's database, api = the fake
API (seed example only), gen = the load generator, other = everything else on the machine
meanwhile (high means the figures are disturbed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import (
    API_KEY,
    BENCH_DIR,
    HOST,
    PG_ADMIN_URL,
    RELEASE_REV,
    SECRET,
    TODAY,
    BenchDB,
    Code,
    Proc,
    Procs,
    base_env,
    baseline_failed,
    bench_database,
    code_lines,
    codes_under_test,
    count_lines,
    fake_item_ids,
    free_port,
    install_signal_exit,
    machine_lines,
    percentile,
    pg_problem,
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
BACKENDS = ("sqlite", "postgres")
#: the all-in-one rows' backlog: a device's upload of BACKLOG_EVENTS x BACKLOG_IDS ids, more
#: than the worker can fetch during a row at the default 100 requests/s
BACKLOG_EVENTS = 40
BACKLOG_IDS = 1000
#: receivers per backend when --receivers is not given (SQLite has one writer per file anyway)
DEFAULT_RECEIVERS = {"sqlite": [1], "postgres": [1, 2]}
#: issue 21's target for the all-in-one serve: its req/s at least this share of the --no-worker
#: row's, with a p99 under P99_TARGET_MS, on both backends, for 10- and 500-id bodies
AIO_RATIO_TARGET = 0.90
P99_TARGET_MS = 20.0


@dataclass(frozen=True)
class Target:
    kind: str  # "bare", "ours" or "seed"
    label: str
    backend: str | None = None
    receivers: int = 1
    connections: int | None = None  # None: --connections
    db_dir: Path | None = None  # SQLite file elsewhere than the run's temp dir (tmpfs)
    #: ours: serve on uvicorn's own protocol (bench/plain_serve.py); bare: the bare app on
    #: dimmy_webhooks.intake.httpserver's protocol (bench/bare_app.py)
    plain_http: bool = False
    #: ours: the all-in-one ``serve`` (its worker draining a backlog at the default API rate
    #: from a fake API at 0 ms) instead of ``serve --no-worker``
    worker: bool = False
    #: ours: the code the processes import (today's, or the baseline's worktree)
    code: Code = TODAY


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
        help="extra rows to explain our figures: DB on tmpfs (no real fsync), 1 connection "
        "(SQLite, 1 receiver)",
    )
    parser.add_argument(
        "--http-baseline",
        action="store_true",
        help="measure each 'ours' row again right after it on uvicorn's own HTTP protocol "
        "(bench/plain_serve.py: serve without httpserver.py's head and connection limits)",
    )
    parser.add_argument(
        "--all-in-one",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after each backend's 1-receiver row, the same on the all-in-one serve while its "
        f"worker drains an upload of {BACKLOG_EVENTS} x {BACKLOG_IDS} ids at the default API "
        "rate (fake API at 0 ms)",
    )
    add_baseline_args(parser, "'ours <backend> 1 rcv' and 'ours <backend> all-in-one'")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each backend's --no-worker and all-in-one rows (and the baseline's) this "
        "many times in turn; the notes give the median of their ratios (one pair moves by "
        "about +-20%% on a 2-core machine)",
    )
    add_backend_args(parser, "--receivers", "receivers", "serve --no-worker processes", "1,2")
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full" if args.full else "default"]
    args.preset = "quick" if args.quick else "full" if args.full else "default"
    args.count = args.count or preset["count"]
    args.duration = args.duration or preset["duration"]
    args.warmup = preset["warmup"]
    args.sizes = [int(x) for x in args.sizes.split(",") if x]
    args.targets = [x.strip() for x in args.targets.split(",") if x.strip()]
    resolve_backends(parser, args, "receivers", DEFAULT_RECEIVERS)
    return args


def add_baseline_args(parser: argparse.ArgumentParser, rows: str) -> None:
    """--baseline-rev and --no-baseline (shared with drain.py)."""
    parser.add_argument(
        "--baseline-rev",
        default=RELEASE_REV,
        help=f"measure {rows} again, right after today's, on this revision's code (a temporary "
        "git worktree, PYTHONPATH at its src; default: %(default)s, the last release's main)",
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="today's rows only (no git worktree)"
    )


def add_backend_args(
    parser: argparse.ArgumentParser, flag: str, dest: str, what: str, pg_default: str
) -> None:
    """--backend, --pg-url and the per-backend process count (shared with drain.py)."""
    parser.add_argument(
        "--backend",
        help="sqlite,postgres (comma separated; default: both when PostgreSQL is reachable at "
        "--pg-url, else sqlite)",
    )
    parser.add_argument(
        flag,
        dest=dest,
        help=f"{what} per measurement, one row each (comma separated; default: {pg_default} on "
        "postgres, 1 on sqlite)",
    )
    parser.add_argument(
        "--pg-url",
        default=PG_ADMIN_URL,
        help="PostgreSQL on 127.0.0.1 where a database bench_<uuid> is created (and dropped) "
        "per row (default: $BENCH_PG_URL or %(default)s)",
    )


def resolve_backends(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    dest: str,
    defaults: dict[str, list[int]],
) -> None:
    """Turn --backend and the count option into ``args.plan``: [(backend, count), ...]."""
    args.backend_note = None
    if args.backend is None:
        problem = pg_problem(args.pg_url)
        backends = ["sqlite"] if problem else list(BACKENDS)
        if problem:
            args.backend_note = f"note: {problem}; sqlite only (--backend to choose)"
    else:
        backends = [x.strip() for x in args.backend.split(",") if x.strip()]
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown or not backends:
            parser.error(f"--backend: choose among {','.join(BACKENDS)}")
        if "postgres" in backends and (problem := pg_problem(args.pg_url)):
            parser.error(problem)
    counts = getattr(args, dest)
    explicit = None if counts is None else [int(x) for x in counts.split(",") if x]
    if explicit is not None and (not explicit or min(explicit) < 1):
        parser.error(f"--{dest}: positive integers")
    args.backends = backends
    args.plan = [(backend, n) for backend in backends for n in (explicit or defaults[backend])]


def start_ours(
    procs: Procs,
    name: str,
    db: BenchDB,
    cwd: Path,
    *,
    count: int = 1,
    plain_http: bool = False,
    worker: bool = False,
    **env: str,
) -> list[tuple[Proc, int]]:
    """``count`` processes of ``serve --no-worker`` on ``db``, each on a port of its own; they
    start together and are ready when this returns. ``plain_http``: on uvicorn's own protocol
    (``bench/plain_serve.py``); ``worker``: ``serve`` with its worker (``env`` gives it the API)."""
    command = [tool("dimmy-webhooks")]
    if plain_http:
        command = [sys.executable, str(Path(__file__).resolve().parent / "plain_serve.py")]
    started = []
    try:
        for n in range(count):
            port = free_port()
            argv = [*command, "serve", *([] if worker else ["--no-worker"]), "--host", HOST]
            proc = procs.start(
                name if count == 1 else f"{name}-r{n + 1}",
                [*argv, "--port", str(port)],
                service_env(db, **env),
                cwd=cwd,
            )
            started.append((proc, port))
        for proc, port in started:
            wait_ready(proc, port, "/healthz")
    except BaseException:
        for proc, _port in started:
            procs.stop(proc)
        raise
    return started


def fill_backlog(
    db: BenchDB,
    ids: list[str],
    events: int,
    ids_per_event: int,
    tag: str,
    code: Code = TODAY,
) -> int:
    """``events`` pending ``items.scanned`` events of ``ids_per_event`` ids each, stored through
    the store's own insert (event row and first job, as a webhook leaves them) in a child
    process of ``code``, so that the rows are the ones its schema expects; returns the ids
    queued. The ``serve`` started after it finds them as a device's upload to drain."""
    spec = {"url": db.url, "ids": ids, "events": events, "ids_per_event": ids_per_event}
    spec["tag"] = tag
    script = f"import sys; sys.path.insert(0, {str(BENCH_DIR)!r}); import ack; ack.fill_child()"
    done = subprocess.run(
        [sys.executable, "-P", "-c", script],
        input=json.dumps(spec).encode(),
        env=base_env(**code.env()),
        capture_output=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"backlog fill failed ({done.returncode}):\n{done.stderr.decode()}")
    return events * ids_per_event


def fill_child() -> None:
    """:func:`fill_backlog`'s child: its spec on stdin, the store of the code it imports."""
    import asyncio

    from dimmy_webhooks.models import ITEMS_SCANNED, IncomingEvent
    from dimmy_webhooks.store import create_store

    spec = json.loads(sys.stdin.read())
    ids, events, ids_per_event = spec["ids"], spec["events"], spec["ids_per_event"]
    tag = spec["tag"]

    async def fill() -> None:
        store = create_store(spec["url"])
        await store.open()
        try:
            for n in range(events):
                chosen = [ids[(n * ids_per_event + k) % len(ids)] for k in range(ids_per_event)]
                body = json.dumps({"item_ids": chosen}, separators=(",", ":")).encode()
                await store.insert_event(
                    IncomingEvent(
                        message_id=f"msg_{tag}_upload_{n}",
                        event_type=ITEMS_SCANNED,
                        body=body,
                        headers={"content-type": "application/json"},
                        received_at=time.time(),
                        item_count=ids_per_event,
                    )
                )
        finally:
            await store.close()

    asyncio.run(fill())


def start_bare(procs: Procs, name: str, *, our_protocol: bool = False) -> tuple[Any, int]:
    port = free_port()
    if our_protocol:  # same options, on dimmy_webhooks.intake.httpserver's protocol
        argv = [sys.executable, str(Path(__file__).resolve().parent / "bare_app.py"), str(port)]
        proc = procs.start(name, argv, base_env())
        wait_ready(proc, port, "/")
        return proc, port
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


def durability(db: BenchDB, prefix: str, result: dict[str, Any]) -> dict[str, Any]:
    """Every message id answered 2xx (warm-up and measured) must be a row of ``events`` (the
    all-in-one rows' upload, stored before, left out)."""
    stored = {row[0] for row in db.query("SELECT message_id FROM events")}
    rows = db.scalar("SELECT count(*) FROM events WHERE message_id NOT LIKE '%_upload_%'")
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
        "ok_by_port": m.get("ok_by_port", {}),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def measure(
    args: argparse.Namespace,
    workdir: Path,
    procs: Procs,
    target: Target,
    size: int,
    ids: list[str],
    api: tuple[Any, int] | None,
    round_: int = 1,
) -> dict[str, Any]:
    label = "".join(c if c.isalnum() else "-" for c in target.label).strip("-")
    name = f"{label}-{size}" + (f"-r{round_}" if round_ > 1 else "")  # a fresh database each
    prefix = f"{label.replace('-', '')}{size}_{int(time.time())}"
    spec = {
        "host": HOST,
        "path": "/webhook",
        "secret": SECRET,
        "ids": ids,
        "ids_per_body": size,
        "count": args.count * (BARE_COUNT_FACTOR if target.kind == "bare" else 1),
        "warmup": SEED_WARMUP if target.kind == "seed" else args.warmup,
        "warmup_duration": WARMUP_SECONDS,
        "warmup_ids_per_body": 1 if target.kind == "seed" else size,
        "connections": target.connections or args.connections,
        "duration": args.duration,
        "grace": args.grace,
        "msg_prefix": prefix,
    }
    if target.kind == "ours":
        assert target.backend is not None
        run_dir = target.db_dir or workdir / name
        with bench_database(
            target.backend,
            run_dir,
            admin_url=args.pg_url,
            filename="inbox.sqlite3",
            prepare=target.receivers > 1 or target.worker,
            env=target.code.env(),
        ) as db:
            env: dict[str, str] = target.code.env()
            if target.worker:
                assert api is not None
                backlog = fill_backlog(db, ids, BACKLOG_EVENTS, BACKLOG_IDS, prefix, target.code)
                env |= {"DIMMY_API_KEY": API_KEY, "DIMMY_API_URL": f"http://{HOST}:{api[1]}"}
            started = start_ours(
                procs,
                name,
                db,
                run_dir,
                count=target.receivers,
                plain_http=target.plain_http,
                worker=target.worker,
                **env,
            )
            try:
                spec["ports"] = [port for _proc, port in started]
                spec["watch"] = {"server": [proc.pid for proc, _port in started]}
                if db.backend == "postgres":
                    spec["watch_db"] = {"url": db.url, "name": db.name}
                fetched = "SELECT count(*) FROM jobs WHERE kind = 'fetch' AND status = 'done'"
                before, started_at = db.scalar(fetched), time.monotonic()
                result = run_loadgen(workdir, spec, name)
                row = summarise(target.label, size, result)
                if target.worker:
                    row["drained"] = {
                        "backlog": backlog,
                        "fetched": db.scalar(fetched) - before,
                        "seconds": time.monotonic() - started_at,
                    }
                row["durability"] = durability(db, prefix, result)
            finally:
                for proc, _port in started:
                    procs.stop(proc)
    elif target.kind == "bare":
        proc, spec["port"] = start_bare(procs, name, our_protocol=target.plain_http)
        spec["watch"] = {"server": proc.pid}
        try:
            row = summarise(target.label, size, run_loadgen(workdir, spec, name))
        finally:
            procs.stop(proc)
    else:
        assert api is not None
        proc, spec["port"], stdout = start_seed(procs, workdir, name, api[1])
        spec["watch"] = {"server": proc.pid, "api": api[0].pid}
        try:
            row = summarise(target.label, size, run_loadgen(workdir, spec, name))
            # the seed example prints one line per fetched item
            row["printed_lines"] = count_lines(stdout)
        finally:
            procs.stop(proc)
    row["connections"] = spec["connections"]
    row["backend"] = target.backend
    row["receivers"] = target.receivers if target.kind == "ours" else None
    if target.kind == "ours":
        row["code"] = target.code.name
        row["src"] = target.code.imported
    return row


def plan_targets(
    args: argparse.Namespace, workdir: Path, today: Code = TODAY, baseline: Code | None = None
) -> list[Target]:
    """The rows of one body size, in order; the baseline's right after today's same row."""
    out = []
    if "bare" in args.targets:
        out.append(Target("bare", "bare uvicorn"))
        if args.http_baseline:  # here the other way round: the same app on our protocol
            out.append(Target("bare", "bare uvicorn (our protocol)", plain_http=True))
    if "ours" in args.targets:
        for backend, n in args.plan:
            out.append(Target("ours", f"ours {backend} {n} rcv", backend, n, code=today))
            if n == 1 and baseline is not None:
                label = f"{baseline.prefix}ours {backend} 1 rcv"
                out.append(Target("ours", label, backend, code=baseline))
            if n == 1 and args.all_in_one:
                label = f"ours {backend} all-in-one"
                out.append(Target("ours", label, backend, worker=True, code=today))
                if baseline is not None:
                    label = f"{baseline.prefix}ours {backend} all-in-one"
                    out.append(Target("ours", label, backend, worker=True, code=baseline))
            if args.http_baseline:
                label = f"ours {backend} {n} rcv (uvicorn's protocol)"
                out.append(Target("ours", label, backend, n, plain_http=True, code=today))
        if args.diag:
            shm = Path("/dev/shm")  # noqa: S108 (a private subdirectory, removed after)
            if shm.is_dir():
                tmp = shm / f"dimmy-bench-{workdir.name}"
                label = "ours sqlite (db on tmpfs)"
                out.append(Target("ours", label, "sqlite", db_dir=tmp, code=today))
            out.append(
                Target("ours", "ours sqlite (1 connection)", "sqlite", connections=1, code=today)
            )
    if "seed" in args.targets:
        out.append(Target("seed", "seed example"))
    return out


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
    if "ours" in args.targets:
        ours = ", ".join(f"{b} {n} rcv" for b, n in args.plan)
        print(f"ours: {ours}; a fresh database per row", flush=True)
        if args.backend_note:
            print(args.backend_note, flush=True)
    rows: list[dict[str, Any]] = []
    code_notes: list[str] = []
    rev = None if args.no_baseline or "ours" not in args.targets else args.baseline_rev
    install_signal_exit()  # already for the worktree: a SIGTERM still removes it
    with (
        codes_under_test(rev, code_notes) as (today, baseline),
        run_context("dimmy-bench-ack-") as (workdir, procs),
    ):
        code_notes[:0] = code_lines(today, baseline)
        print("\n".join(code_notes), flush=True)
        pool_size = max(1000, *args.sizes)
        api: tuple[Any, int] | None = start_fake_api(
            procs, items=pool_size, latency=args.api_latency
        )
        assert api is not None
        ids = fake_item_ids(api[1], pool_size)
        if "seed" not in args.targets and not ("ours" in args.targets and args.all_in_one):
            procs.stop(api[0])
            api = None
        targets = plan_targets(args, workdir, today, baseline)
        # later rounds: only the pairs the all-in-one rows are compared with
        paired = [
            t
            for t in targets
            if t.kind == "ours"
            and t.receivers == 1
            and not t.plain_http
            and t.db_dir is None
            and t.connections is None
        ]
        # even rounds run the pairs the other way round (all-in-one first), so that neither
        # kind of row is always measured first: a machine that speeds up or slows down during
        # a round favours neither
        plan = [
            (size, n, target)
            for size in args.sizes
            for n in range(1, args.rounds + 1)
            for target in (targets if n == 1 else paired if n % 2 else paired[::-1])
        ]
        for size, round_, target in plan:
            try:
                row = measure(args, workdir, procs, target, size, ids, api, round_)
            except Exception as exc:
                if not target.code.is_baseline:
                    raise
                baseline_failed(f"{target.label} ids={size}", exc, code_notes)
                continue
            finally:
                if target.db_dir is not None:
                    shutil.rmtree(target.db_dir, ignore_errors=True)
            row["round"] = round_
            rows.append(row)
            print(f"  {_progress(row)}", flush=True)
    bare = {r["ids"]: r["req_s"] for r in rows if r["target"] == "bare uvicorn"}
    for r in rows:
        r["vs_bare"] = r["req_s"] / bare[r["ids"]] if bare.get(r["ids"]) else None
    print()
    print(render(rows))
    print(_notes(rows, code_notes))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": header, "preset": args.preset, "code": code_notes, "rows": rows},
                indent=2,
            )
        )
        print(f"results written to {args.json}")
    failed = [r for r in rows if r.get("durability") and not r["durability"]["ok"]]
    return 1 if failed else 0


def _progress(row: dict[str, Any]) -> str:
    return f"{row['target']:<36} ids={row['ids']:<4} {row['req_s']:8.1f} req/s ({row['ok']} ok)"


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
        "db cpu",
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
                r["target"] + (f" #{r['round']}" if r.get("round", 1) > 1 else ""),
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
                r["cpu"].get("db"),
                r["cpu"].get("api"),
                r["client_cpu"],
                r["other_cpu"],
                durable,
            ]
        )
    return table(headers, out)


def _prefix(row: dict[str, Any]) -> str:
    """``REV: `` for a baseline row, nothing for today's (see ``Code.prefix``)."""
    code = row.get("code")
    return "" if code in (None, TODAY.name) else f"{code}: "


def _notes(rows: list[dict[str, Any]], code_notes: Sequence[str] = ()) -> str:
    notes = []
    by_label = {(r["target"], r["ids"]): r for r in rows if r.get("round", 1) == 1}
    for r in rows:
        if r.get("round", 1) > 1:
            continue
        ours_bare = by_label.get(("bare uvicorn (our protocol)", r["ids"]))
        if r["target"] == "bare uvicorn" and ours_bare is not None and r["req_s"]:
            notes.append(
                f"  bare uvicorn ids={r['ids']}: {r['req_s']:.0f} req/s; on our protocol "
                f"{ours_bare['req_s']:.0f} req/s: {ours_bare['req_s'] / r['req_s']:.2f}x"
            )
        plain = by_label.get((r["target"] + " (uvicorn's protocol)", r["ids"]))
        if plain is not None and plain["req_s"]:
            notes.append(
                f"  {r['target']} ids={r['ids']}: {r['req_s']:.0f} req/s, p99 "
                f"{r['p99_ms'] or 0:.2f} ms; on uvicorn's own protocol {plain['req_s']:.0f} req/s, "
                f"p99 {plain['p99_ms'] or 0:.2f} ms: {r['req_s'] / plain['req_s']:.2f}x"
            )
        alone = by_label.get((f"{_prefix(r)}ours {r['backend']} 1 rcv", r["ids"]))
        if "drained" in r and alone is not None and alone["req_s"]:
            d = r["drained"]
            notes.append(
                f"  {r['target']} ids={r['ids']}: {r['req_s'] / alone['req_s']:.2f}x the "
                f"--no-worker row's req/s (p99 {r['p99_ms'] or 0:.1f} against "
                f"{alone['p99_ms'] or 0:.1f} ms) while its worker fetched "
                f"{d['fetched'] / d['seconds']:.0f} items/s of a {d['backlog']:,}-id upload"
            )
        bad = {k: v for k, v in r["statuses"].items() if not k.startswith("2")}
        if bad:
            notes.append(f"  {r['target']} ids={r['ids']}: non-2xx {bad}")
        if len(r.get("ok_by_port", {})) > 1:
            spread = " + ".join(str(n) for n in r["ok_by_port"].values())
            notes.append(f"  {r['target']} ids={r['ids']}: 2xx per receiver {spread}")
        if "printed_lines" in r:
            notes.append(
                f"  {r['target']} ids={r['ids']}: printed {r['printed_lines']} item lines "
                "(warm-up and late answers included)"
            )
    notes += _issue21_notes(rows)
    notes += [f"  {line}" for line in code_notes]
    return "notes:\n" + "\n".join(notes) if notes else ""


def _issue21_notes(rows: list[dict[str, Any]]) -> list[str]:
    """For each backend and size with all-in-one rows: their req/s over the --no-worker rows' of
    the same code and round (the median over ``--rounds``, and the range), and the p99s, today's
    code and the baseline's, against issue 21's target."""
    by_label: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        by_label.setdefault((r["target"], r["ids"]), []).append(r)
    prefixes = list(dict.fromkeys(_prefix(r) for r in rows if r.get("code")))
    backends = list(dict.fromkeys(r["backend"] for r in rows if r.get("code")))
    sizes = list(dict.fromkeys(r["ids"] for r in rows))
    out = []
    for backend in backends:
        for size in sizes:
            for prefix in prefixes:
                alone = {
                    r.get("round", 1): r
                    for r in by_label.get((f"{prefix}ours {backend} 1 rcv", size), [])
                }
                pairs = [
                    (alone[r.get("round", 1)], r)
                    for r in by_label.get((f"{prefix}ours {backend} all-in-one", size), [])
                    if alone.get(r.get("round", 1), {}).get("req_s")
                ]
                if not pairs:
                    continue
                ratios = sorted(aio["req_s"] / one["req_s"] for one, aio in pairs)
                ratio = statistics.median(ratios)
                p99 = statistics.median(aio["p99_ms"] or 0 for _, aio in pairs)
                p99_alone = statistics.median(one["p99_ms"] or 0 for one, _ in pairs)
                req = statistics.median(aio["req_s"] for _, aio in pairs)
                req_alone = statistics.median(one["req_s"] for one, _ in pairs)
                met = ratio >= AIO_RATIO_TARGET and p99 < P99_TARGET_MS
                verdict = "met" if met else "NOT met"
                if size not in (10, 500):
                    verdict += " (not a target size)"
                spread = (
                    f" in {len(pairs)} rounds, {ratios[0]:.2f}-{ratios[-1]:.2f}x"
                    if len(pairs) > 1
                    else ""
                )
                code = prefix.rstrip(": ") or TODAY.name
                out.append(
                    f"    {backend:<8} ids={size:<4} {code + ':':<9} {ratio:.2f}x{spread} "
                    f"({req:.0f} / {req_alone:.0f} req/s), p99 {p99:.1f} ms (--no-worker "
                    f"{p99_alone:.1f} ms): {verdict}"
                )
    if not out:
        return []
    head = (
        f"  issue 21, all-in-one req/s over the --no-worker row's, medians (target >= "
        f"{AIO_RATIO_TARGET:.2f}x with the all-in-one p99 < {P99_TARGET_MS:.0f} ms, both "
        "backends, 10- and 500-id bodies):"
    )
    return [head, *out]


if __name__ == "__main__":
    sys.exit(main())
