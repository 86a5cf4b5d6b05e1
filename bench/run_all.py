"""Run the benchmarks (``--quick`` unless told otherwise) and print their tables: ``make bench``.

``python bench/run_all.py [--quick|--default|--full] [--no-postgres] [--no-memory]
[--no-baseline] [--json-dir DIR]``

ack.py, drain.py, fairness.py, http_clients.py, adaptive_rate.py, then memory.py: 25 to 40
minutes with ``--quick`` on 2 cores. ack, drain and fairness run their own default backends:
SQLite, plus PostgreSQL when it answers at ``$BENCH_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``; they print a note otherwise), i.e. the rows
``ours postgres 1 rcv`` and ``2 rcv`` in ack, ``ours postgres 1 wkr`` and ``3 wkr`` in drain, a
fresh database each. ``--no-postgres`` leaves those out (about 2 minutes less), ``--no-memory``
leaves memory.py out (about 1 minute less). http_clients.py (about a minute with ``--quick``)
measures the HTTP client libraries on their own; adaptive_rate.py (about 85 s with ``--quick``,
SQLite only) the fixed against the adaptive API rate.

The runs include baseline rows: ack.py and drain.py also measure the last release's main
(``benchlib.RELEASE_REV``, from a temporary git worktree) right after today's rows, i.e. ack's
``ours <backend> 1 rcv`` and ``all-in-one`` rows and each of drain's ``ours`` rows, and print
today's figures beside it (issue 21's targets), and so does fairness.py. ack measures each
backend's ``1 rcv`` and ``all-in-one`` rows, today's and the baseline's, in 4 alternating rounds
(every other one all-in-one first) and prints the medians of their ratios; drain measures each
``ours`` row and its baseline in 3 alternating rounds and prints the median CPU ratio.
``--no-baseline`` leaves every baseline row out.

Each benchmark runs in its own process, one after the other (never two at once: the machine's
cores are part of what is measured). The exit status is non-zero when any of them fails a check.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="(default) smallest sizes")
    size.add_argument("--default", action="store_true", help="the scripts' default sizes")
    size.add_argument("--full", action="store_true", help="larger sizes")
    parser.add_argument(
        "--no-postgres",
        action="store_true",
        help="SQLite only, even when PostgreSQL is reachable (about 1.2 minutes less)",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="leave memory.py out (about 1 minute less)"
    )
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="today's code only: no baseline rows in ack, drain and fairness (no git worktree)",
    )
    parser.add_argument(
        "--json-dir",
        type=Path,
        help="write ack.json, drain.json, http_clients.json, adaptive_rate.json and memory.json "
        "here",
    )
    args = parser.parse_args()
    preset = [] if args.default else ["--full"] if args.full else ["--quick"]
    backend = ["--backend", "sqlite"] if args.no_postgres else []
    baseline = ["--no-baseline"] if args.no_baseline else []
    runs = [
        # the all-in-one rows against the --no-worker ones: medians of 4 alternating rounds
        ("ack", [*preset, *backend, *baseline, "--rounds", "4"]),
        # each drain row against the release's: medians of 3 alternating rounds
        ("drain", [*preset, *backend, *baseline, "--rounds", "3"]),
        ("fairness", [*preset, *backend, *baseline]),
    ]
    runs.append(("http_clients", ["--quick"] if preset == ["--quick"] else []))
    runs.append(("adaptive_rate", preset))  # SQLite only: it compares client pacing, not backends
    if not args.no_memory:
        runs.append(("memory", []))  # one size: it measures a bound, not a rate
    status = 0
    for name, extra in runs:
        argv = [sys.executable, str(HERE / f"{name}.py"), *extra]
        if args.json_dir is not None:
            args.json_dir.mkdir(parents=True, exist_ok=True)
            argv += ["--json", str(args.json_dir / f"{name}.json")]
        print(f"=== {name} ===", flush=True)
        started = time.monotonic()
        code = subprocess.run(argv, check=False, stdin=subprocess.DEVNULL).returncode
        print(f"=== {name}: exit {code} after {time.monotonic() - started:.0f} s ===\n", flush=True)
        status = status or code
    return status


if __name__ == "__main__":
    sys.exit(main())
