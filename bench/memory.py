"""Memory of ``serve``: peak RSS under the acknowledgement load, and with a backlog of events.

``python bench/memory.py [--seconds 20] [--backlogs 1000,100000] [--ack-sizes 500]
[--json out.json]``

The target (issue: "peak RSS of ``serve`` under the acknowledgement benchmark and with 100,000
pending events under 150 MB; it must not grow with the backlog"). Figures come from
``/proc/<pid>/status`` of the ``serve`` process (one process: uvicorn runs inside it):
``VmHWM`` is the peak resident set since the process started, ``VmRSS`` the current one.

* ``ack``: ``serve --no-worker`` on a fresh SQLite file under ack.py's quick load (16
  connections, signed bodies of ``--ack-sizes`` ids, <= 3,000 requests or 8 s after a warm-up).
* ``backlog``: a fresh SQLite file gets ``N`` pending ``items.scanned`` events of one id each,
  written with the store's own operation (``inbox.insert_event``: the event row and its first
  job, exactly as a webhook leaves them) in one transaction, before anything is timed. Then
  ``serve`` starts WITH its workers, pointed at a local ``dimmy-webhooks fake-api``
  (``--api-latency``, 50 ms by default; ``DIMMY_API_RATE_LIMIT=100000`` so that the workers are
  as busy as they can be; ``DIMMY_OUTPUTS=jsonl:<tmp>``), and works for ``--seconds``.
  ``VmRSS`` is sampled every second from the spawn. The 1,000-event run is the baseline the
  100,000-event run is compared to. Jobs run oldest first, so with 100,000 events the workers
  first expand events (no API call) and only then fetch and deliver; 20 s may not reach the
  second phase (a note then says so; ``--seconds 45`` does).

Verdicts: every peak under ``--limit-mb`` (150); the big backlog's peak within
``max(10 MB, 10 %)`` of the baseline's (it does not grow with the backlog); and, per run, RSS
over the second half of the run rising by less than 5 MB (it does not grow with time). MB here
is MiB. Exit status 1 when a verdict fails. ``other cpu`` is, as in ack.py and drain.py, the CPU
seconds per second the rest of the machine used meanwhile (serve, the fake API and the load
generator left out): above about 0.2 the work figures are disturbed (the memory ones much less).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ack import PRESETS as ACK_PRESETS
from ack import WARMUP_SECONDS, start_ours
from benchlib import (
    API_KEY,
    HOST,
    SECRET,
    BenchDB,
    Proc,
    Procs,
    bench_database,
    count_lines,
    fake_item_ids,
    free_port,
    group_cpu_seconds,
    machine_busy_seconds,
    machine_lines,
    proc_status_kb,
    run_context,
    run_loadgen,
    service_env,
    start_fake_api,
    table,
    tool,
    wait_ready,
)

LIMIT_MB = 150.0
SAMPLE_SECONDS = 1.0
#: distinct items behind the backlog's ids (generating 100,000 fake items alone takes ~20 s);
#: a fetch of an item already stored unchanged queues no delivery
ITEM_POOL = 2000
BACKLOG_SLACK_MB = 10.0
BACKLOG_SLACK_SHARE = 0.10
TIME_SLACK_MB = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--backlogs", default="1000,100000", help="pending events per run (first = baseline)"
    )
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="how long serve works on each backlog"
    )
    parser.add_argument("--api-latency", type=float, default=0.05, help="fake API latency (s)")
    parser.add_argument(
        "--ack-sizes", default="500", help="ids per body for the ack load ('' to skip it)"
    )
    parser.add_argument("--limit-mb", type=float, default=LIMIT_MB, help="peak RSS allowed")
    args = parser.parse_args(argv)
    args.backlogs = [int(x) for x in args.backlogs.split(",") if x]
    args.ack_sizes = [int(x) for x in args.ack_sizes.split(",") if x]
    if not args.backlogs or min(args.backlogs) < 1 or not 1 <= args.seconds <= 300:
        parser.error("--backlogs: positive counts; --seconds: 1 to 300")
    return args


class Sampler:
    """Samples ``VmRSS`` and ``VmHWM`` of one process every ``every`` seconds in a thread,
    for at most ``limit`` seconds (or until :meth:`stop`, or until the process is gone)."""

    def __init__(self, pid: int, every: float = SAMPLE_SECONDS, limit: float = 600.0) -> None:
        self.pid = pid
        self.every = every
        self.limit = limit
        self.samples: list[tuple[float, float, float]] = []  # (t, rss MB, hwm MB)
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> tuple[float, float, float] | None:
        try:
            kb = proc_status_kb(self.pid, "VmRSS", "VmHWM")
        except OSError:
            return None
        if "VmRSS" not in kb:
            return None  # a zombie has no memory left to report
        point = (time.monotonic() - self.t0, kb["VmRSS"] / 1024, kb["VmHWM"] / 1024)
        self.samples.append(point)
        return point

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() - self.t0 < self.limit:
            if self.sample() is None:
                return
            self._stop.wait(self.every)

    def stop(self) -> tuple[float, float, float] | None:
        """Stop sampling; take (and return) one last sample while the process lives."""
        self._stop.set()
        self._thread.join(timeout=5)
        return self.sample()


def _single_process(proc: Proc) -> bool:
    """Whether ``serve`` is alone in its process group (then its VmHWM is the whole story)."""
    members = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            if int(raw[raw.rfind(")") + 2 :].split()[2]) == proc.pid:
                members += 1
    return members == 1


# ack ---------------------------------------------------------------------------------------


def measure_ack(procs: Procs, workdir: Path, ids: list[str], size: int) -> dict[str, Any]:
    preset = ACK_PRESETS["quick"]
    run_dir = workdir / f"ack-{size}"
    with bench_database("sqlite", run_dir, filename="inbox.sqlite3") as db:
        [(proc, port)] = start_ours(procs, f"ack-{size}", db, run_dir)
        try:
            ready = Sampler(proc.pid, limit=0).stop()  # one sample, now that it is ready
            sampler = Sampler(proc.pid, limit=120)
            spec = {
                "host": HOST,
                "port": port,
                "path": "/webhook",
                "secret": SECRET,
                "ids": ids,
                "ids_per_body": size,
                "count": preset["count"],
                "warmup": preset["warmup"],
                "warmup_duration": WARMUP_SECONDS,
                "connections": 16,
                "duration": preset["duration"],
                "grace": 15.0,
                "msg_prefix": f"mem{size}_{int(time.time())}",
            }
            result = run_loadgen(workdir, spec, f"ack-{size}")
            last = sampler.stop()
            alone = _single_process(proc)
        finally:
            procs.stop(proc)
        rows = db.scalar("SELECT count(*) FROM events")
    m = result["measured"]
    ok = m["ok"] + result["warmup"]["ok"]
    return {
        "what": f"ack, {size} ids/body",
        "rss_start_mb": ready[1] if ready else None,
        "rss_end_mb": last[1] if last else None,
        "peak_mb": last[2] if last else max(s[2] for s in sampler.samples),
        "samples": sampler.samples,
        "single_process": alone,
        "work": f"{m['ok'] / (m['elapsed'] or 1e-9):.0f} req/s, {ok} answered 2xx = {rows} rows",
        "other_cpu": m["other_cpu"] / (m["wall"] or 1e-9),
        "durable": ok == rows,
    }


# backlog -----------------------------------------------------------------------------------


def fill_backlog(db: BenchDB, n: int, ids: list[str], tag: str) -> float:
    """``n`` pending ``items.scanned`` events of one id each, as the receiver stores them
    (signed headers kept, the event row and its ``event`` job), committed at once."""
    from dimmy_webhooks.models import ITEMS_SCANNED, IncomingEvent
    from dimmy_webhooks.signatures import parse_secrets, signed_headers
    from dimmy_webhooks.store import inbox
    from dimmy_webhooks.store.sqlite import SQLiteTx, connect

    assert db.path is not None
    started = time.monotonic()
    key = parse_secrets(SECRET)[0]
    timestamp = int(time.time())
    conn = connect(db.path)
    try:
        tx = SQLiteTx(conn)
        conn.execute("BEGIN IMMEDIATE")
        for index in range(n):
            body = json.dumps({"item_ids": [ids[index % len(ids)]]}, separators=(",", ":"))
            msg_id = f"msg_{tag}_{index}"
            headers = {
                **signed_headers(key, msg_id, body.encode(), timestamp=timestamp),
                "content-type": "application/json",
                "user-agent": "Svix-Webhooks/1.0 (bench)",
            }
            event = IncomingEvent(
                message_id=msg_id,
                event_type=ITEMS_SCANNED,
                body=body.encode(),
                headers=headers,
                received_at=time.time(),
                item_count=1,
            )
            inbox.insert_event(tx, event, 8)
        conn.execute("COMMIT")
    finally:
        conn.close()
    pending = db.scalar("SELECT count(*) FROM jobs WHERE status = 'pending' AND kind = 'event'")
    if pending != n:
        raise RuntimeError(f"backlog: {pending} pending event jobs, wanted {n}")
    return time.monotonic() - started


def measure_backlog(
    args: argparse.Namespace,
    procs: Procs,
    workdir: Path,
    api: tuple[Proc, int],
    ids: list[str],
    backlog: int,
) -> dict[str, Any]:
    run_dir = workdir / f"backlog-{backlog}"
    out = run_dir / "out.jsonl"
    with bench_database("sqlite", run_dir, prepare=True) as db:
        fill_s = fill_backlog(db, backlog, ids, f"mem{backlog}")
        port = free_port()
        env = service_env(
            db,
            DIMMY_API_KEY=API_KEY,
            DIMMY_API_URL=f"http://{HOST}:{api[1]}",
            DIMMY_OUTPUTS=f"jsonl:{out}",
            DIMMY_API_RATE_LIMIT="100000",
        )
        argv = [tool("dimmy-webhooks"), "serve", "--host", HOST, "--port", str(port)]
        api_cpu, busy = group_cpu_seconds(api[0].pid), machine_busy_seconds()
        proc = procs.start(f"serve-backlog-{backlog}", argv, env, cwd=run_dir)
        try:
            sampler = Sampler(proc.pid, limit=args.seconds + 5)
            ready_s = wait_ready(proc, port, "/healthz")
            ready = sampler.sample()
            deadline = sampler.t0 + args.seconds
            while time.monotonic() < deadline:  # bounded: --seconds is at most 300
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"serve exited:\n{proc.log_tail()}")
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            last = sampler.stop()
            alone = _single_process(proc)
            wall = time.monotonic() - sampler.t0
            ours = group_cpu_seconds(proc.pid) + group_cpu_seconds(api[0].pid) - api_cpu
            other = max(0.0, machine_busy_seconds() - busy - ours) / wall
        finally:
            procs.stop(proc)
        done = dict(db.query("SELECT kind, count(*) FROM jobs WHERE status = 'done' GROUP BY kind"))
        items = db.scalar("SELECT count(*) FROM items")
    samples = sorted(sampler.samples)
    half = [s for s in samples if s[0] >= args.seconds / 2]
    growth = (half[-1][1] - half[0][1]) if len(half) >= 2 else None
    return {
        "what": f"backlog {backlog:,} events",
        "backlog": backlog,
        "fill_s": fill_s,
        "ready_s": ready_s,
        "rss_start_mb": ready[1] if ready else None,
        "rss_end_mb": last[1] if last else samples[-1][1],
        "peak_mb": last[2] if last else max(s[2] for s in samples),
        "second_half_growth_mb": growth,
        "grew_with_time": growth is not None and growth > TIME_SLACK_MB,
        "samples": samples,
        "single_process": alone,
        "fetches_done": done.get("fetch", 0),
        "other_cpu": other,
        "work": (
            f"jobs done: {done.get('event', 0):,} event, {done.get('fetch', 0):,} fetch, "
            f"{done.get('deliver', 0):,} deliver ({items:,} distinct items, "
            f"{count_lines(out) if out.exists() else 0:,} JSONL lines)"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    header = machine_lines()
    print("\n".join(header), flush=True)
    print(
        f"ack load: ids/body {','.join(map(str, args.ack_sizes)) or '-'}; backlogs "
        f"{', '.join(f'{b:,}' for b in args.backlogs)} pending events, serve with workers for "
        f"{args.seconds:.0f} s each, fake API latency {args.api_latency * 1000:.0f} ms; "
        f"limit {args.limit_mb:.0f} MB",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    with run_context("dimmy-bench-memory-") as (workdir, procs):
        pool = max([ITEM_POOL, *args.ack_sizes])
        api = start_fake_api(procs, items=pool, latency=args.api_latency)
        ids = fake_item_ids(api[1], pool)
        for size in args.ack_sizes:
            rows.append(measure_ack(procs, workdir, ids, size))
            print(f"  {_progress(rows[-1])}", flush=True)
        for backlog in args.backlogs:
            rows.append(measure_backlog(args, procs, workdir, api, ids, backlog))
            print(f"  {_progress(rows[-1])}", flush=True)
        procs.stop(api[0])
    verdicts = judge(args, rows)
    print()
    print(render(rows))
    print("RSS MB, one sample a second (ack: from ready; backlog: from the spawn):")
    for r in rows:
        print(f"  {r['what']:<24} " + " ".join(f"{s[1]:.0f}" for s in r["samples"]))
    for r in rows:
        if r.get("fetches_done") == 0:
            print(
                f"note: {r['what']}: in {args.seconds:.0f} s serve only expanded events (jobs run "
                "oldest first), so fetching and delivering under this backlog were not reached; "
                "a longer --seconds does (45 was enough on a half-busy 2-core machine)"
            )
    print("verdicts:")
    for text, ok in verdicts:
        print(f"  {'ok  ' if ok else 'FAIL'} {text}")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": header, "rows": rows, "verdicts": verdicts}, indent=2)
        )
        print(f"results written to {args.json}")
    return 0 if all(ok for _text, ok in verdicts) else 1


def judge(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    out = []
    worst = max(rows, key=lambda r: r["peak_mb"])
    out.append(
        (
            f"peak RSS under {args.limit_mb:.0f} MB everywhere "
            f"(highest {worst['peak_mb']:.1f} MB: {worst['what']})",
            worst["peak_mb"] < args.limit_mb,
        )
    )
    backlogs = [r for r in rows if "backlog" in r]
    if len(backlogs) >= 2:
        base = backlogs[0]
        for r in backlogs[1:]:
            slack = max(BACKLOG_SLACK_MB, BACKLOG_SLACK_SHARE * base["peak_mb"])
            diff = r["peak_mb"] - base["peak_mb"]
            out.append(
                (
                    f"peak with {r['backlog']:,} pending {r['peak_mb']:.1f} MB vs "
                    f"{base['backlog']:,}: {base['peak_mb']:.1f} MB ({diff:+.1f} MB, "
                    f"allowed +{slack:.0f}): does not grow with the backlog",
                    diff <= slack,
                )
            )
    for r in backlogs:
        growth = r["second_half_growth_mb"]
        out.append(
            (
                f"{r['what']}: RSS over the second half of the run "
                f"{'n/a' if growth is None else f'{growth:+.1f} MB'} "
                f"(allowed +{TIME_SLACK_MB:.0f}): does not grow with time",
                not r["grew_with_time"],
            )
        )
    for r in rows:
        if not r["single_process"]:
            out.append((f"{r['what']}: serve is not alone in its process group", False))
        if r.get("durable") is False:
            out.append((f"{r['what']}: {r['work']}", False))
    return out


def _progress(row: dict[str, Any]) -> str:
    return f"{row['what']:<24} peak {row['peak_mb']:6.1f} MB; {row['work']}"


def render(rows: list[dict[str, Any]]) -> str:
    headers = [
        "serve under",
        "fill s",
        "RSS ready MB",
        "RSS end MB",
        "peak RSS MB",
        "2nd-half growth MB",
        "grew with time",
        "other cpu",
        "work done meanwhile",
    ]
    out = []
    for r in rows:
        growth = r.get("second_half_growth_mb")
        out.append(
            [
                r["what"],
                r.get("fill_s"),
                r["rss_start_mb"],
                r["rss_end_mb"],
                r["peak_mb"],
                None if growth is None else f"{growth:+.1f}",
                None if "grew_with_time" not in r else ("yes" if r["grew_with_time"] else "no"),
                r["other_cpu"],
                r["work"],
            ]
        )
    return table(headers, out)


if __name__ == "__main__":
    sys.exit(main())
