"""Items fetched, stored and delivered per second, draining a backlog of ``items.scanned`` events.

``python bench/drain.py [--quick|--full] [--json out.json] [--latencies 0,0.05]
[--backend sqlite,postgres] [--workers 1,3] [--baseline-rev REV | --no-baseline] [--rounds 1]``

For each fake-API latency (0 ms, then 50 ms by default):

* ``ours <backend> <n> wkr``: a local ``dimmy-webhooks fake-api`` with exactly the items needed;
  their ids come from ``GET /items?limit=N``. On a fresh database (SQLite in a temp dir, or a
  PostgreSQL database ``bench_<uuid>`` of its own, migrated first and dropped after), N signed
  events of 50 ids each go in through ``serve --no-worker`` (not timed); then ``n`` processes of
  ``dimmy-webhooks worker`` start at once, all with the same
  ``DIMMY_OUTPUTS=jsonl:<tmp>/out.jsonl`` (a delivery job names its output) and
  ``DIMMY_API_RATE_LIMIT=100000``, and the clock runs from their spawn until every item is a row
  of ``items`` and no job is pending or running (the database is polled: the SQLite file, or
  one psycopg connection). The JSONL output must then hold exactly one line per item.
  ``theory`` is ``n x DIMMY_API_CONCURRENCY / latency``. ``--api-concurrency 16,64`` adds one
  row per value.
* ``REV: ours <backend> <n> wkr``: the baseline, i.e. each ``ours`` row again, right after
  today's, on the code of ``--baseline-rev`` (default: the last release's main,
  ``benchlib.RELEASE_REV``), checked out into a temporary ``git worktree`` and run with
  ``PYTHONPATH`` at its ``src`` (inbox, migrations and workers: its own code, a fresh database
  per row). The notes give, for each pair, today's ``cpu ms/item`` over the baseline's (issue
  21's target: halved, <= 0.5x) and both items/s, and which ``src`` each code's rows import.
  ``--no-baseline`` leaves these rows out (the ``+http`` row has none). ``--rounds N`` measures
  each pair N times in turn (every other round the baseline first; later rounds' rows are
  marked ``#2``, ``#3``...) and the notes give the median of the N ratios and their range: one
  pair of 1,000-item drains moves by 30 % or more on a busy 2-core machine;
* ``seed example``: Dimmy's original Flask example under gunicorn (2 sync workers), fed the
  same items as events of 10 ids over 16 connections; its rate is the items it fetched and
  printed per second during ``--seed-duration`` seconds (it goes over the items again when it
  runs out; it stores nothing, so that costs it nothing); ``theory`` is ``2 workers / latency``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ack import add_backend_args, add_baseline_args, resolve_backends, start_ours, start_seed
from benchlib import (
    API_KEY,
    HOST,
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
    cpu_delta,
    fake_item_ids,
    free_port,
    group_cpu_seconds,
    install_signal_exit,
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
#: worker processes per backend when --workers is not given
DEFAULT_WORKERS = {"sqlite": [1], "postgres": [1, 3]}
#: issue 21's target for the worker: its CPU per item at most this share of the release's
CPU_RATIO_TARGET = 0.5


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
    parser.add_argument(
        "--targets",
        default="ours,http,seed",
        help="subset of ours,http,seed (http: SQLite, 1 worker, also handing every item to a "
        "local WMS endpoint)",
    )
    add_baseline_args(parser, "each 'ours <backend> <n> wkr' row")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each 'ours' row and its baseline this many times in turn (every other "
        "round the baseline first); the notes give the median of their CPU ratios",
    )
    add_backend_args(parser, "--workers", "workers", "dimmy-webhooks worker processes", "1,3")
    args = parser.parse_args(argv)
    args.preset = "quick" if args.quick else "full" if args.full else "default"
    preset = PRESETS[args.preset]
    args.events = args.events or preset["events"]
    args.timeout = args.timeout or preset["timeout"]
    args.seed_duration = args.seed_duration or preset["seed_duration"]
    args.latencies = [float(x) for x in args.latencies.split(",") if x]
    args.api_concurrency = [int(x) for x in str(args.api_concurrency).split(",") if x]
    args.targets = [x.strip() for x in args.targets.split(",") if x.strip()]
    resolve_backends(parser, args, "workers", DEFAULT_WORKERS)
    return args


def _counts(db: BenchDB) -> tuple[int, int, int]:
    """(items stored, jobs pending or running, jobs dead)."""
    items = db.scalar("SELECT count(*) FROM items")
    rows = dict(db.query("SELECT status, count(*) FROM jobs GROUP BY status"))
    return items, rows.get("pending", 0) + rows.get("running", 0), rows.get("dead", 0)


def fill_inbox(
    procs: Procs,
    workdir: Path,
    db: BenchDB,
    ids: list[str],
    events: int,
    tag: str,
    code: Code = TODAY,
) -> None:
    """Post the events through ``serve --no-worker`` of ``code`` (not timed) and check they are
    stored."""
    [(proc, port)] = start_ours(
        procs, f"inbox-{tag}", db, workdir, count=1, plain_http=False, worker=False, **code.env()
    )
    try:
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
    stored = db.scalar("SELECT count(*) FROM events")
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
    backend: str,
    n_workers: int,
    wms_port: int | None = None,
    code: Code = TODAY,
    round_: int = 1,
) -> dict[str, Any]:
    tag = f"{backend}-w{n_workers}-{latency * 1000:.0f}ms-c{concurrency}"
    if wms_port is not None:
        tag += "-http"
    if code.is_baseline:
        tag += f"-{code.slug}"
    if round_ > 1:
        tag += f"-r{round_}"
    run_dir = workdir / f"ours-{tag}"
    out = run_dir / "out.jsonl"
    outputs = f"jsonl:{out}"
    extra = {}
    if wms_port is not None:  # the signed hand-off too, as a warehouse would configure it
        outputs += f",http:http://{HOST}:{wms_port}/dimmy-items"
        extra["DIMMY_FORWARD_SECRET"] = SECRET
    handed = None
    with bench_database(backend, run_dir, admin_url=args.pg_url, env=code.env()) as db:
        fill_inbox(procs, workdir, db, ids, args.events, tag, code)
        env = service_env(
            db,
            DIMMY_API_KEY=API_KEY,
            DIMMY_API_URL=f"http://{HOST}:{api[1]}",
            DIMMY_OUTPUTS=outputs,
            DIMMY_API_RATE_LIMIT="100000",
            DIMMY_API_CONCURRENCY=str(concurrency),
            **extra,
            **code.env(),
        )
        measured = _drain(args, procs, db, env, run_dir, api, len(ids), n_workers, tag)
        if wms_port is not None:
            handed = int(
                db.scalar(
                    "SELECT count(DISTINCT item_id) FROM delivery_attempts "
                    "WHERE output LIKE 'http:%' AND outcome = 'delivered'"
                )
            )
    lines = out.read_bytes().splitlines() if out.exists() else []
    delivered = [json.loads(line)["item_id"] for line in lines if line.strip()]
    one_each = len(delivered) == len(ids) and set(delivered) == set(ids)
    if handed is not None:
        one_each = one_each and handed == len(ids)
    theory = n_workers * concurrency / latency if latency else None
    elapsed, first, finished = measured["elapsed"], measured["first"], measured["finished"]
    items = measured["items"]
    rate = items / elapsed
    target = f"{code.prefix}ours {backend} {n_workers} wkr" + (" +http" if wms_port else "")
    return {
        "target": target + (f" #{round_}" if round_ > 1 else ""),
        "round": round_,
        "code": code.name,
        "src": code.imported,
        "backend": backend,
        "workers": n_workers,
        "latency_ms": latency * 1000,
        "concurrency": concurrency,
        "items": len(ids),
        "stored": items,
        "dead_jobs": measured["dead"],
        "timed_out": measured["timed_out"],
        "seconds": elapsed,
        "startup_s": None if first is None else first - measured["started"],
        "items_s": rate,
        "items_s_after_first": (
            (items - 1) / (finished - first) if first and finished > first else None
        ),
        "theory": theory,
        "of_theory": rate / theory if theory else None,
        "jsonl_lines": len(delivered),
        "jsonl_ok": one_each,
        "http_delivered": handed,
        "cpu": measured["cpu"],
        "other_cpu": measured["other_cpu"],
        # CPU of the workers and (PostgreSQL) the database's backends per item stored after
        # the first: the figure a busy machine barely moves
        "cpu_ms_per_item": measured["cpu_ms_per_item"],
    }


def _drain(
    args: argparse.Namespace,
    procs: Procs,
    db: BenchDB,
    env: dict[str, str],
    run_dir: Path,
    api: tuple[Proc, int],
    n_items: int,
    n_workers: int,
    tag: str,
) -> dict[str, Any]:
    """Start the workers, poll until the backlog is gone (or the timeout), stop them."""
    api_cpu0 = group_cpu_seconds(api[0].pid)
    db_cpu0 = db.backend_cpu()
    busy0 = machine_busy_seconds()
    started = time.monotonic()
    workers: list[Proc] = []
    first = None
    items = open_jobs = dead = items_first = 0
    cpu_first = 0.0
    timed_out = False
    try:
        for n in range(n_workers):
            name = f"worker-{tag}" + (f"-{n + 1}" if n_workers > 1 else "")
            workers.append(procs.start(name, [tool("dimmy-webhooks"), "worker"], env, cwd=run_dir))
        while True:
            time.sleep(POLL_SECONDS)
            for worker in workers:
                if worker.popen.poll() is not None:
                    raise RuntimeError(f"{worker.name} exited early:\n{worker.log_tail()}")
            items, open_jobs, dead = _counts(db)
            now = time.monotonic()
            if items and first is None:
                first, items_first = now, items
                cpu_first = group_cpu_seconds(w.pid for w in workers) + cpu_delta(
                    db_cpu0, db.backend_cpu()
                )
            if items >= n_items and open_jobs == 0:
                break
            if dead and open_jobs == 0:
                break
            if now - started > args.timeout:
                timed_out = True
                break
        finished = time.monotonic()
        worker_cpu = group_cpu_seconds(w.pid for w in workers)
        db_cpu = cpu_delta(db_cpu0, db.backend_cpu())
        busy = machine_busy_seconds() - busy0
    finally:
        for worker in workers:
            procs.stop(worker)
    api_cpu = group_cpu_seconds(api[0].pid) - api_cpu0
    elapsed = finished - started
    cpu = {"worker": worker_cpu / elapsed, "api": api_cpu / elapsed}
    if db.backend == "postgres":
        cpu["db"] = db_cpu / elapsed
    return {
        "started": started,
        "first": first,
        "finished": finished,
        "elapsed": elapsed,
        "items": items,
        "dead": dead,
        "timed_out": timed_out,
        "cpu": cpu,
        "other_cpu": max(0.0, busy - worker_cpu - api_cpu - db_cpu) / elapsed,
        # after the first item is stored: the workers' start-up (imports, connections) left out
        "cpu_ms_per_item": (
            (worker_cpu + db_cpu - cpu_first) / (items - items_first) * 1000
            if items > items_first
            else None
        ),
    }


def start_wms(procs: Procs, name: str) -> tuple[Proc, int]:
    """A local WMS endpoint (``http_clients.py --serve-post``: answers every request 200 with
    a record id) for the hand-off rows."""
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve().parent / "http_clients.py")]
    proc = procs.start(name, [*argv, "--serve-post", str(port)], base_env())
    wait_ready(proc, port, "/")
    return proc, port


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
        "conc = API requests in flight at most per worker process (seed: gunicorn workers);\n"
        f"seed example fed events of {SEED_IDS_PER_EVENT} ids for <= {args.seed_duration:.0f} s",
        flush=True,
    )
    if "ours" in args.targets:
        ours = ", ".join(f"{b} {n} wkr" for b, n in args.plan)
        print(f"ours: {ours}; a fresh database per row", flush=True)
        if args.backend_note:
            print(args.backend_note, flush=True)
    rows: list[dict[str, Any]] = []
    code_notes: list[str] = []
    rev = None if args.no_baseline or "ours" not in args.targets else args.baseline_rev
    install_signal_exit()  # already for the worktree: a SIGTERM still removes it
    with (
        codes_under_test(rev, code_notes) as (today, baseline),
        run_context("dimmy-bench-drain-") as (workdir, procs),
    ):
        code_notes[:0] = code_lines(today, baseline)
        print("\n".join(code_notes), flush=True)
        codes = [today] if baseline is None else [today, baseline]
        for latency in args.latencies:
            api = start_fake_api(procs, items=n_items, latency=latency, name=f"fake-{latency}")
            try:
                ids = fake_item_ids(api[1], n_items)
                if "ours" in args.targets:
                    rows += ours_rows(args, procs, workdir, api, ids, latency, codes, code_notes)
                if "http" in args.targets:
                    wms = start_wms(procs, f"wms-{latency}")
                    try:
                        row = drain_ours(
                            args, procs, workdir, api, ids, latency, 64, "sqlite", 1, wms[1], today
                        )
                    finally:
                        procs.stop(wms[0])
                    rows.append(row)
                    print(f"  {_progress(row)}", flush=True)
                if "seed" in args.targets:
                    rows.append(drain_seed(args, procs, workdir, api, ids, latency))
                    print(f"  {_progress(rows[-1])}", flush=True)
            finally:
                procs.stop(api[0])
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
    today_rows = [r for r in rows if r.get("code") == TODAY.name]  # the baseline's: shown
    bad = [r for r in today_rows if not r["jsonl_ok"] or r["timed_out"]]
    return 1 if bad else 0


def ours_rows(
    args: argparse.Namespace,
    procs: Procs,
    workdir: Path,
    api: tuple[Proc, int],
    ids: list[str],
    latency: float,
    codes: list[Code],
    notes: list[str],
) -> list[dict[str, Any]]:
    """The ``ours`` rows of one latency, each code's (the baseline's right after today's, or
    right before it in even rounds); a baseline row that fails is a note in ``notes``."""
    rows = []
    for backend, n_workers in args.plan:
        for concurrency, round_ in (
            (c, n) for c in args.api_concurrency for n in range(1, args.rounds + 1)
        ):
            for code in codes if round_ % 2 else codes[::-1]:
                try:
                    row = drain_ours(
                        args,
                        procs,
                        workdir,
                        api,
                        ids,
                        latency,
                        concurrency,
                        backend,
                        n_workers,
                        code=code,
                        round_=round_,
                    )
                except Exception as exc:
                    if not code.is_baseline:
                        raise
                    label = f"{code.prefix}ours {backend} {n_workers} wkr"
                    label += f" api {latency * 1000:.0f} ms conc {concurrency}"
                    baseline_failed(label, exc, notes)
                    continue
                rows.append(row)
                print(f"  {_progress(row)}", flush=True)
    return rows


def _progress(row: dict[str, Any]) -> str:
    return (
        f"{row['target']:<28} api {row['latency_ms']:4.0f} ms, concurrency "
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
        "cpu ms/item",
        "svc cpu",
        "db cpu",
        "api cpu",
        "other cpu",
        "check",
    ]
    out = []
    for r in rows:
        if "code" in r:  # ours, today's or the baseline's
            handed = r.get("http_delivered")
            check = (
                f"jsonl {r['jsonl_lines']} lines"
                + ("" if handed is None else f", WMS {handed} items")
                + ", one per item: "
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
                r.get("cpu_ms_per_item"),
                cpu,
                r["cpu"].get("db"),
                r["cpu"].get("api"),
                r["other_cpu"],
                check,
            ]
        )
    return table(headers, out)


def _notes(rows: list[dict[str, Any]], code_notes: list[str]) -> str:
    """Each baseline row beside today's same row of the same round: CPU per item (issue 21's
    target: today's at most half the release's) and items/s; with several rounds, the median
    of the ratios and their range; then which src each code's rows import."""
    today = {
        (r["backend"], r["workers"], r["latency_ms"], r["concurrency"], r.get("round", 1)): r
        for r in rows
        if r.get("code") == TODAY.name and not r["target"].endswith("+http")
    }
    pairs: dict[tuple[Any, ...], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for base in rows:
        if base.get("code") in (None, TODAY.name):
            continue
        key = (base["backend"], base["workers"], base["latency_ms"], base["concurrency"])
        ours = today.get((*key, base.get("round", 1)))
        if ours is not None:
            pairs.setdefault(key, []).append((ours, base))
    out = []
    for (backend, workers, latency_ms, concurrency), measured in pairs.items():
        ratios = sorted(
            ours["cpu_ms_per_item"] / base["cpu_ms_per_item"]
            for ours, base in measured
            if ours["cpu_ms_per_item"] and base["cpu_ms_per_item"]
        )
        cpus = sorted(o["cpu_ms_per_item"] for o, _ in measured if o["cpu_ms_per_item"])
        base_cpus = sorted(b["cpu_ms_per_item"] for _, b in measured if b["cpu_ms_per_item"])
        rates = sorted(o["items_s"] for o, _ in measured)
        base_rates = sorted(b["items_s"] for _, b in measured)
        if ratios:
            ratio = statistics.median(ratios)
            verdict = "met" if ratio <= CPU_RATIO_TARGET else "NOT met"
            spread = ""
            if len(ratios) > 1:
                spread = f" in {len(ratios)} rounds, {ratios[0]:.2f}-{ratios[-1]:.2f}x"
            cpu_text = (
                f"{statistics.median(cpus):.3f} against {statistics.median(base_cpus):.3f}: "
                f"{ratio:.2f}x{spread}, {verdict}"
            )
        else:
            cpu_text = "not measured (no item stored after the first)"
        rate, base_rate = statistics.median(rates), statistics.median(base_rates)
        out.append(
            f"    {backend:<8} {workers} wkr, api {latency_ms:.0f} ms, conc {concurrency}: "
            f"cpu ms/item {cpu_text}; items/s {rate:.0f} against {base_rate:.0f} "
            f"({rate / (base_rate or 1e-9):.2f}x)"
        )
    notes = []
    if out:
        code = next(r["code"] for r in rows if r.get("code") not in (None, TODAY.name))
        median = " (medians over the rounds)" if any(len(m) > 1 for m in pairs.values()) else ""
        notes.append(
            f"  issue 21, today's rows against {code}'s{median} (target: cpu ms/item halved, "
            f"<= {CPU_RATIO_TARGET:.1f}x):"
        )
        notes += out
    notes += [f"  {line}" for line in code_notes]
    return "notes:\n" + "\n".join(notes) if notes else ""


if __name__ == "__main__":
    sys.exit(main())
