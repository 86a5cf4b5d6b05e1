"""Run both benchmarks (``--quick`` unless told otherwise) and print both tables: ``make bench``.

``python bench/run_all.py [--quick|--default|--full] [--json-dir DIR]``

Each benchmark runs in its own process, one after the other (never both at once: the machine's
cores are part of what is measured). The exit status is non-zero when either one fails a check.
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
    parser.add_argument("--json-dir", type=Path, help="write ack.json and drain.json here")
    args = parser.parse_args()
    preset = [] if args.default else ["--full"] if args.full else ["--quick"]
    status = 0
    for name in ("ack", "drain"):
        argv = [sys.executable, str(HERE / f"{name}.py"), *preset]
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
