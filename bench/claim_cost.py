"""What one claim costs as the backlog grows, on SQLite and PostgreSQL.

``python bench/claim_cost.py [--pending 1000,100000,1000000] [--backend sqlite,postgres]
[--rounds 30] [--limit 100]``

For each backlog size, a fresh migrated database gets that many pending jobs mixed as a real
upload leaves them (:func:`backlog`): expansions, an upload's fetches by event and position,
fetches the poller queued and replays (lanes 1 and 2), fetches waiting for a retry, deliveries
due and deliveries waiting for a destination that is down, beside as many finished jobs and 128
running ones. Then the worker's claim (``store/queue.py:claim``: the reap of expired leases and
the claim's ``UPDATE`` in the fair order, one account as a single-account worker asks) runs
``--rounds`` times, each in a transaction rolled back afterwards, so every round sees the same
backlog. SQLite runs without ``ANALYZE`` (the service never runs it); PostgreSQL after one (its
autovacuum does). Prints the median and best milliseconds per claim and the ratio to the
smallest backlog's median (the target: within 2x). Needs PostgreSQL at ``$BENCH_PG_URL`` for its
rows; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchlib import PG_ADMIN_URL, bench_database, pg_problem, table
from dimmy_webhooks.store import queue

NOW = 1_000_000.0
COLUMNS = (
    "kind, event_id, item_id, output, version, revision, dedupe_key, status, attempts, "
    "max_attempts, run_at, lane, seq, account, lease_owner, lease_token, lease_expires_at, "
    "created_at, updated_at"
)
UPLOAD_IDS = 1000  # ids per upload event
RUNNING = 128


def backlog(pending: int) -> Iterator[tuple[Any, ...]]:
    """``pending`` pending jobs as an upload, the poller and a down destination leave them
    (shares of the whole: 65 % an upload's fetches, 1 % expansions, 10 % polled fetches, 4 %
    replays, 5 % fetches waiting for a retry, 7 % deliveries due, 8 % deliveries whose
    destination is down), then as many done jobs and :data:`RUNNING` running ones."""

    def job(
        kind: str,
        n: int,
        *,
        status: str = "pending",
        run_at: float = NOW - 60,
        lane: int = 0,
        seq: int = 0,
        output: str | None = None,
    ) -> tuple[Any, ...]:
        event = 1 + n // UPLOAD_IDS
        lease = (f"w{n % 2}", f"t{n}", NOW + 60) if status == "running" else (None, None, None)
        version = "v" if kind == "deliver" else None
        return (
            kind,
            event,
            f"i{n}",
            output,
            version,
            1 if version else None,
            f"{kind[0]}:{status}:{n}",
            status,
            1 if status == "running" else 0,
            8,
            run_at,
            lane,
            seq,
            "default",
            *lease,
            NOW - 60,
            NOW - 60,
        )

    shares = {
        "upload": 0.65,
        "event": 0.01,
        "polled": 0.10,
        "replay": 0.04,
        "retrying": 0.05,
        "deliver due": 0.07,
    }
    counts = {name: max(1, int(pending * share)) for name, share in shares.items()}
    counts["deliver down"] = max(1, pending - sum(counts.values()))
    n = 0
    for name, count in counts.items():
        for k in range(count):
            n += 1
            # arrivals spread over the last minute; an upload's positions 0..UPLOAD_IDS-1
            if name == "upload":
                yield job("fetch", n, seq=k % UPLOAD_IDS, run_at=NOW - 60 + k / count * 59)
            elif name == "event":
                yield job("event", n, run_at=NOW - 60 + k / count * 59)
            elif name == "polled":
                yield job("fetch", n, lane=1, run_at=NOW - 60 + k / count * 59)
            elif name == "replay":
                yield job("fetch", n, lane=2, run_at=NOW - 30)
            elif name == "retrying":
                yield job("fetch", n, seq=k % UPLOAD_IDS, run_at=NOW + 30 + k % 600)
            elif name == "deliver due":
                yield job("deliver", n, seq=k % UPLOAD_IDS, output="http:wms", run_at=NOW - 1)
            else:
                yield job("deliver", n, seq=k % UPLOAD_IDS, output="http:down", run_at=NOW + 300)
    for k in range(pending):
        n += 1
        yield job("fetch", n, status="done", seq=k % UPLOAD_IDS)
    for _ in range(RUNNING):
        n += 1
        yield job("fetch", n, status="running")


def timed(run_claim: Callable[[], int], rounds: int) -> tuple[float, float, int]:
    """Median and best milliseconds of ``rounds`` claims, and the rows the last one took."""
    times = []
    got = 0
    for _ in range(rounds):
        started = time.perf_counter()
        got = run_claim()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), min(times), got


def sqlite_claims(pending: int, rounds: int, limit: int) -> tuple[float, float, int]:
    from dimmy_webhooks.store import schema
    from dimmy_webhooks.store.sqlite import SQLiteTx, connect

    with tempfile.TemporaryDirectory() as where:
        path = Path(where) / "claims.sqlite3"
        schema.upgrade(f"sqlite:///{path}")
        conn = connect(path)
        try:
            marks = ", ".join("?" * len(COLUMNS.split(", ")))
            conn.execute("BEGIN")
            conn.executemany(f"INSERT INTO jobs ({COLUMNS}) VALUES ({marks})", backlog(pending))
            conn.execute("COMMIT")

            def claim() -> int:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    return len(
                        queue.claim(SQLiteTx(conn), "bench", limit, 60, NOW, {"default": limit})
                    )
                finally:
                    conn.execute("ROLLBACK")

            return timed(claim, rounds)
        finally:
            conn.close()


def postgres_claims(
    pending: int, rounds: int, limit: int, admin_url: str
) -> tuple[float, float, int]:
    import psycopg
    from psycopg.rows import dict_row

    from dimmy_webhooks.store.postgres_sql import PostgresTx

    with (
        tempfile.TemporaryDirectory() as where,
        bench_database("postgres", Path(where), admin_url=admin_url) as db,
        psycopg.connect(db.url, autocommit=True) as conn,
    ):
        with conn.cursor() as cur:
            with cur.copy(f"COPY jobs ({COLUMNS}) FROM STDIN") as copy:
                for row in backlog(pending):
                    copy.write_row(row)
            cur.execute("ANALYZE jobs")

        def claim() -> int:
            with conn.transaction(force_rollback=True):
                tx = PostgresTx(psycopg.ClientCursor(conn, row_factory=dict_row))
                return len(queue.claim(tx, "bench", limit, 60, NOW, {"default": limit}))

        return timed(claim, rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pending", default="1000,100000,1000000")
    parser.add_argument("--backend", default="sqlite,postgres")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--limit", type=int, default=100, help="jobs per claim (claim_batch)")
    parser.add_argument("--pg-url", default=PG_ADMIN_URL)
    args = parser.parse_args()
    sizes = [int(n) for n in args.pending.split(",") if n]
    backends = [b for b in args.backend.split(",") if b]
    if "postgres" in backends and (problem := pg_problem(args.pg_url)) is not None:
        print(f"note: {problem}; sqlite only")
        backends.remove("postgres")
    rows = []
    for backend in backends:
        first = None
        for pending in sizes:
            if backend == "sqlite":
                median, best, got = sqlite_claims(pending, args.rounds, args.limit)
            else:
                median, best, got = postgres_claims(pending, args.rounds, args.limit, args.pg_url)
            first = first or median
            rows.append([backend, f"{pending:,}", median, best, got, f"{median / first:.2f}x"])
            print(f"  {backend} {pending:,}: {median:.3f} ms", flush=True)
    print()
    print(
        table(
            ["backend", "pending jobs", "claim ms (median)", "best ms", "claimed", "vs smallest"],
            rows,
        )
    )
    worst = max((float(r[5][:-1]) for r in rows), default=1.0)
    print(f"largest ratio to the smallest backlog: {worst:.2f}x (target: within 2x)")
    return 0 if worst <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
