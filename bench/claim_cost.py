"""What one claim's query costs on SQLite when many jobs wait that are not due.

``python bench/claim_cost.py [--waiting 100000] [--retrying 0,5000] [--due 3000] [--rounds 50]``

A fresh migrated SQLite file gets ``--waiting`` deliveries not due (a destination that is down)
whose positions come before ``--due`` due fetches of an upload, plus ``--retrying`` fetches
waiting for a retry ahead of them; then the claim's selection (``store/sql.py``: due work in the
fair order beside due deliveries oldest first) runs ``--rounds`` times, next to the baseline of
the same fair order over one index of every kind of job, which must step over every delivery
that is not due. Prints milliseconds per selection. Read-only after the fill; nothing leaves the
machine.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from dimmy_webhooks.store import schema, sql

NOW = 1000.0
_INSERT = (
    "INSERT INTO jobs (kind, event_id, item_id, output, version, revision, dedupe_key, status, "
    "attempts, max_attempts, run_at, lane, seq, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, 5, ?, 0, ?, ?, ?)"
)
SELECT = (
    f"SELECT id FROM (SELECT * FROM ({sql.WORK_DUE}) UNION ALL SELECT * FROM "
    f"({sql.DELIVERIES_DUE})) ORDER BY {sql.FAIR} LIMIT :limit"
)
ONE_INDEX = (
    "SELECT j.id FROM jobs AS j INDEXED BY bench_one_index "
    "WHERE j.status = 'pending' AND j.run_at <= :now "
    "ORDER BY j.lane, j.seq, j.run_at, j.id LIMIT :limit"
)


def fill(path: Path, waiting: int, retrying: int, due: int) -> sqlite3.Connection:
    schema.upgrade(f"sqlite:///{path}")
    conn = sqlite3.connect(path)
    rows = [
        ("deliver", None, f"i{n}", "http:x", "v", 1, f"d{n}", 1, NOW + 500, n, NOW, NOW)
        for n in range(waiting)
    ]
    rows += [
        ("fetch", 1, f"r{n}", None, None, None, f"r{n}", 1, NOW + 500, n, NOW, NOW)
        for n in range(retrying)
    ]
    rows += [
        ("fetch", 1, f"b{n}", None, None, None, f"f{n}", 0, NOW - 10, waiting + n, NOW, NOW)
        for n in range(due)
    ]
    conn.executemany(_INSERT, rows)
    conn.commit()
    conn.execute("ANALYZE")
    return conn


def per_query_ms(conn: sqlite3.Connection, query: str, rounds: int) -> tuple[float, int]:
    params = {"now": NOW, "limit": 100}
    started = time.perf_counter()
    for _ in range(rounds):
        got = conn.execute(query, params).fetchall()
    return (time.perf_counter() - started) / rounds * 1000, len(got)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiting", type=int, default=100_000)
    parser.add_argument("--retrying", default="0,5000")
    parser.add_argument("--due", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    print(f"{args.waiting:,} deliveries not due ahead of {args.due:,} due fetches; 100 claimed")
    print("retrying fetches  claim's selection ms  one index for every kind ms  rows")
    for retrying in (int(n) for n in args.retrying.split(",") if n):
        with tempfile.TemporaryDirectory() as where:
            conn = fill(Path(where) / "claims.sqlite3", args.waiting, retrying, args.due)
            try:
                ours, rows = per_query_ms(conn, SELECT, args.rounds)
                # the baseline's index only now, so that the planner cannot take it for ours
                conn.execute("CREATE INDEX bench_one_index ON jobs (status, lane, seq, run_at, id)")
                baseline, _ = per_query_ms(conn, ONE_INDEX, args.rounds)
            finally:
                conn.close()
        print(f"{retrying:>16,}  {ours:>20.3f}  {baseline:>27.3f}  {rows:>4}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
