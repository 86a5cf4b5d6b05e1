"""Shared plumbing for the benchmarks: child processes, ports, readiness, tables, machine info.

Every server runs in its own process group (``start_new_session``) so that stopping it stops its
children too (gunicorn workers); :class:`Procs` stops exactly the groups it started, SIGTERM first,
SIGKILL after a grace period. Only 127.0.0.1 is ever used.

Code under test: the children import the ``dimmy_webhooks`` of the benchmark's own environment
(today's code) unless given ``PYTHONPATH`` at another tree's ``src``: :func:`baseline_tree` checks
a revision out into a temporary ``git worktree`` for that, and :func:`imported_from` shows which
``src`` an environment really imports.

Databases: :func:`bench_database` gives each measurement a fresh one, a SQLite file in the run's
temp directory or a PostgreSQL database ``bench_<uuid>`` created on the local server (the one in
``--pg-url``, which must be on the loopback) and dropped ``WITH (FORCE)`` afterwards, Ctrl-C
included. No other database is ever touched.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
#: The last release's main: the code before the issue-21 work (the all-in-one service's
#: acknowledgements beside its worker, the worker's CPU per item). ack.py and drain.py measure it
#: beside today's code in the same run (``--baseline-rev`` to choose another, ``--no-baseline``).
RELEASE_REV = "623ee3b"
BIN_DIR = Path(sys.executable).parent
#: A Svix-style secret used only by the benchmarks (32 bytes, base64).
SECRET = "whsec_" + base64.b64encode(b"dimmy-webhooks benchmark key 32b").decode()
API_KEY = "bench-key"
#: Where PostgreSQL is, as a superuser URL on its maintenance database (CREATE/DROP DATABASE only).
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_DB_PREFIX = "bench_"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def tool(name: str) -> str:
    """Path of a console script of the running virtualenv (falls back to ``PATH``)."""
    candidate = BIN_DIR / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found next to {sys.executable} nor on PATH")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    """The environment for a child: ours minus any DIMMY_* the caller had, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIMMY_")}
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    env.update(extra)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Procs:
    """The child processes of one benchmark run; :meth:`stop_all` in a ``finally``."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: Path | None = None,
        stdout: Path | None = None,
    ) -> Proc:
        log_path = self.workdir / f"{name}.log"
        log = log_path.open("ab")
        out = stdout.open("ab") if stdout is not None else log
        try:
            popen = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd or self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                start_new_session=True,  # own process group: stop() reaches its children
            )
        finally:
            log.close()
            if out is not log:
                out.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 15.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL it (only the group we started)."""
        if proc not in self.procs:
            return
        self.procs.remove(proc)
        pgid = proc.pid  # session leader: its group id is its pid
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=timeout)
        # children (e.g. gunicorn workers) may outlive a leader that exited
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=5)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def install_signal_exit() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit, and SIGINT into KeyboardInterrupt even when it was
    inherited as ignored (a background job of a script), so ``finally`` stops the children."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def run_context(prefix: str) -> Iterator[tuple[Path, Procs]]:
    install_signal_exit()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        procs = Procs(Path(tmp))
        try:
            yield Path(tmp), procs
        finally:
            procs.stop_all()


def http_get(
    port: int, path: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(
    proc: Proc,
    port: int,
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> float:
    """Poll until the server answers any HTTP status; return the seconds it took."""
    started = time.monotonic()
    while True:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_tail()}")
        try:
            http_get(port, path, headers, timeout=2.0)
            return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{proc.name} not ready after {timeout:.0f} s:\n{proc.log_tail()}")
        time.sleep(0.05)


def group_cpu_seconds(pgid: int | Iterable[int]) -> float:
    """User+system CPU seconds of the live processes in one process group, or in several
    (Linux /proc)."""
    pgids = {pgid} if isinstance(pgid, int) else set(pgid)
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        # fields[0] is state (field 3); pgrp is field 5, utime 14, stime 15
        if int(fields[2]) in pgids:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def pids_cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """User+system CPU seconds of each live process of ``pids`` (missing ones are left out)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        out[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def cpu_delta(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU seconds used between two :func:`pids_cpu_seconds` snapshots (new processes count
    from zero; processes gone by ``after`` are lost, which pooled connections rarely are)."""
    return sum(max(0.0, secs - before.get(pid, 0.0)) for pid, secs in after.items())


def proc_status_kb(pid: int, *keys: str) -> dict[str, int]:
    """Fields of ``/proc/<pid>/status`` given in kB (``VmRSS``, ``VmHWM``, ...)."""
    wanted = set(keys)
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            out[name] = int(value.split()[0])
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``), to spot other load."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    return 0.0


def start_fake_api(
    procs: Procs,
    *,
    items: int,
    latency: float,
    seed: int = 7,
    name: str = "fake-api",
    extra: Sequence[str] = (),
) -> tuple[Proc, int]:
    """``dimmy-webhooks fake-api`` with ``items`` items (``extra``: more of its options)."""
    port = free_port()
    proc = procs.start(
        name,
        [
            tool("dimmy-webhooks"),
            "fake-api",
            "--host",
            HOST,
            "--port",
            str(port),
            "--items",
            str(items),
            "--latency",
            str(latency),
            "--seed",
            str(seed),
            "--api-key",
            API_KEY,
            *extra,
        ],
        base_env(DIMMY_LOG_LEVEL="WARNING"),
    )
    wait_ready(proc, port, "/items?limit=1", {"X-API-KEY": API_KEY})
    return proc, port


def fake_item_ids(port: int, n: int) -> list[str]:
    status, body = http_get(port, f"/items?skip=0&limit={n}", {"X-API-KEY": API_KEY}, 30.0)
    if status != 200:
        raise RuntimeError(f"fake API GET /items answered {status}")
    ids = [item["_id"] for item in json.loads(body)]
    if len(ids) < n:
        raise RuntimeError(f"fake API returned {len(ids)} ids, wanted {n}")
    return ids


def service_env(db: Path | BenchDB, **extra: str) -> dict[str, str]:
    """The service's environment on ``db`` (a SQLite file or a :class:`BenchDB`)."""
    url = db.url if isinstance(db, BenchDB) else f"sqlite:///{db}"
    settings = {
        "DIMMY_WEBHOOK_SECRET": SECRET,
        "DIMMY_DATABASE_URL": url,
        "DIMMY_LOG_LEVEL": "WARNING",
        "DIMMY_OUTPUTS": "",
    }
    return base_env(**{**settings, **extra})


@dataclass
class BenchDB:
    """One measurement's database: a SQLite file, or a PostgreSQL database of its own."""

    backend: str  # "sqlite" or "postgres"
    url: str  # what the service gets as DIMMY_DATABASE_URL
    path: Path | None = None  # the SQLite file
    name: str | None = None  # the PostgreSQL database
    _conn: Any = None  # the benchmark's own PostgreSQL connection (opened on first use)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of a read-only query (no parameters: the benchmarks need none)."""
        if self.path is not None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
            try:
                return [tuple(row) for row in conn.execute(sql).fetchall()]
            finally:
                conn.close()
        if self._conn is None:
            import psycopg

            self._conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=5, application_name="dimmy-bench"
            )
        return [tuple(row) for row in self._conn.execute(sql).fetchall()]

    def scalar(self, sql: str) -> Any:
        return self.query(sql)[0][0]

    def backend_cpu(self) -> dict[int, float]:
        """CPU seconds of each PostgreSQL backend now serving this database, the benchmark's own
        connection left out (``{}`` on SQLite, whose work is done in the service's processes)."""
        if self.backend != "postgres":
            return {}
        rows = self.query(
            "SELECT pid FROM pg_stat_activity "
            f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()"
        )
        return pids_cpu_seconds(int(row[0]) for row in rows)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


def pg_problem(admin_url: str = PG_ADMIN_URL) -> str | None:
    """Why PostgreSQL at ``admin_url`` cannot be used (``None``: it can)."""
    host = urllib.parse.urlsplit(admin_url).hostname
    if host not in _LOOPBACK:
        return f"{admin_url}: the benchmarks only use a server on 127.0.0.1"
    try:
        import psycopg

        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return (
            f"PostgreSQL at {admin_url} is not reachable ({exc.__class__.__name__}: "
            + (str(exc).strip().splitlines() or [""])[0]
            + ")"
        )
    return None


def _pg_url(admin_url: str, dbname: str) -> str:
    parts = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + dbname))


def _pg_admin(admin_url: str, statement: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL(statement).format(sql.Identifier(name)))


def migrate(db: BenchDB, cwd: Path, env: Mapping[str, str] | None = None) -> None:
    """``dimmy-webhooks migrate`` on ``db`` (not timed by any benchmark); ``env``: more of its
    environment (``PYTHONPATH`` of a baseline tree: its own migrations)."""
    done = subprocess.run(
        [tool("dimmy-webhooks"), "migrate"],
        env=service_env(db, **(env or {})),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"migrate failed ({done.returncode}):\n{done.stderr.decode()[-2000:]}")


@contextlib.contextmanager
def bench_database(
    backend: str,
    run_dir: Path,
    *,
    admin_url: str = PG_ADMIN_URL,
    filename: str = "service.sqlite3",
    prepare: bool = False,
    env: Mapping[str, str] | None = None,
) -> Iterator[BenchDB]:
    """A fresh database for one measurement, removed afterwards.

    SQLite: ``run_dir/filename`` (migrated here only with ``prepare``; ``serve`` and ``worker``
    migrate SQLite themselves, but two processes starting at once on a new file should not).
    PostgreSQL: ``CREATE DATABASE bench_<uuid>``, ``dimmy-webhooks migrate``, and at the end
    ``DROP DATABASE ... WITH (FORCE)`` (the caller stops its processes first). ``env``: more of
    ``migrate``'s environment (the ``PYTHONPATH`` of the code under test).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        path = run_dir / filename
        db = BenchDB("sqlite", f"sqlite:///{path}", path=path)
        if prepare:
            migrate(db, run_dir, env)
        yield db
        return
    if backend != "postgres":
        raise ValueError(f"unknown backend {backend!r}")
    name = f"{PG_DB_PREFIX}{uuid.uuid4().hex}"
    db = BenchDB("postgres", _pg_url(admin_url, name), name=name)
    try:
        _pg_admin(admin_url, "CREATE DATABASE {}", name)
        migrate(db, run_dir, env)
        yield db
    finally:
        db.close()
        # IF EXISTS: also right when the CREATE itself was interrupted; the name is ours alone
        _pg_admin(admin_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


@contextlib.contextmanager
def baseline_tree(rev: str, notes: list[str] | None = None) -> Iterator[str | None]:
    """The ``src`` of ``rev`` in a temporary git worktree (removed afterwards), for a child's
    ``PYTHONPATH``; ``None``, with a note on stderr (and in ``notes``), when it cannot be checked
    out (outside a git checkout, an unknown ``rev``, no git)."""
    where = Path(tempfile.mkdtemp(prefix="dimmy-bench-baseline-"))
    tree = where / "tree"
    try:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), rev],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None)
        reason = (detail.decode(errors="replace").strip() if detail else "") or str(exc)
        note = f"NO BASELINE ROWS: cannot check {rev} out with git worktree ({reason})"
        print(f"note: {note}", file=sys.stderr, flush=True)
        if notes is not None:
            notes.append(note)
        shutil.rmtree(where, ignore_errors=True)
        yield None
        return
    try:
        yield str(tree / "src")
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        shutil.rmtree(where, ignore_errors=True)


def imported_from(env: Mapping[str, str]) -> str:
    """The ``dimmy_webhooks/__init__.py`` that a child with ``env`` imports, or ``?: <why>``.
    It imports what the ``dimmy-webhooks`` script imports first (its ``cli``) and, like the
    script, leaves the working directory out of ``sys.path`` (``-P``)."""
    script = "import dimmy_webhooks, dimmy_webhooks.cli; print(dimmy_webhooks.__file__)"
    try:
        done = subprocess.run(
            [sys.executable, "-P", "-c", script],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"?: {exc}"
    if done.returncode != 0:
        return "?: " + (done.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
    return done.stdout.decode().strip()


@dataclass(frozen=True)
class Code:
    """The ``dimmy_webhooks`` that a row's child processes import."""

    name: str  # "today", or the baseline's revision
    pythonpath: str | None = None  # None: the benchmark's own environment (today's code)
    imported: str = "?"  # its dimmy_webhooks/__init__.py, as imported_from found it

    @property
    def is_baseline(self) -> bool:
        return self.pythonpath is not None

    @property
    def prefix(self) -> str:
        """What a baseline row's label starts with (``623ee3b: ``); nothing for today's."""
        return f"{self.name}: " if self.is_baseline else ""

    @property
    def slug(self) -> str:
        """The name, safe in file names and message ids."""
        return "".join(c if c.isalnum() else "-" for c in self.name)

    def env(self) -> dict[str, str]:
        """What a child gets on top of :func:`service_env` or :func:`base_env`."""
        return {} if self.pythonpath is None else {"PYTHONPATH": self.pythonpath}


#: today's code: the benchmark's own environment
TODAY = Code("today")


@contextlib.contextmanager
def codes_under_test(
    baseline_rev: str | None, notes: list[str]
) -> Iterator[tuple[Code, Code | None]]:
    """Today's code and, unless ``baseline_rev`` is ``None``, the code of that revision from a
    temporary worktree (``None`` when it cannot be made, or when its environment does not
    import the worktree's own ``src``: a note in ``notes`` says so)."""
    today = Code(TODAY.name, None, imported_from(base_env()))
    if baseline_rev is None:
        yield today, None
        return
    with baseline_tree(baseline_rev, notes) as src:
        baseline = None
        if src is not None:
            imported = imported_from(base_env(PYTHONPATH=src))
            if imported.startswith(src + os.sep):
                baseline = Code(baseline_rev, src, imported)
            else:
                note = (
                    f"NO BASELINE ROWS: with PYTHONPATH={src} a child imports {imported}, not "
                    f"{baseline_rev}'s code (its dependencies may differ from this environment's)"
                )
                print(f"note: {note}", file=sys.stderr, flush=True)
                notes.append(note)
        yield today, baseline


def baseline_failed(label: str, exc: BaseException, notes: list[str]) -> None:
    """A baseline row that failed (the baseline's code may need what this environment lacks):
    a note, printed now and kept for the end, instead of the end of the run."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    note = f"BASELINE ROW FAILED, left out: {label}: {exc.__class__.__name__}: " + (
        lines[-1] if lines else "?"
    )
    print(f"  note: {note}", flush=True)
    notes.append(note)


def code_lines(today: Code, baseline: Code | None) -> list[str]:
    """Which code each row's children import (printed before and after the tables)."""
    lines = [f"code: our rows without a prefix import {today.imported} (today's)"]
    if baseline is not None:
        lines.append(
            f"code: rows '{baseline.prefix}ours ...' import {baseline.imported} (the baseline, "
            f"a temporary git worktree of {baseline.name}; its own migrations)"
        )
    return lines


def run_loadgen(workdir: Path, spec: dict[str, Any], name: str) -> dict[str, Any]:
    """Run bench/loadgen.py in its own process; return its JSON result."""
    spec_path = workdir / f"{name}.spec.json"
    out_path = workdir / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec))
    limit = spec["duration"] + spec["grace"] + 120  # signing + start-up + warm-up, generously
    subprocess.run(
        [sys.executable, str(BENCH_DIR / "loadgen.py"), str(spec_path), str(out_path)],
        check=True,
        timeout=limit,
        stdin=subprocess.DEVNULL,
    )
    result: dict[str, Any] = json.loads(out_path.read_text())
    return result


def sqlite_scalar(db: Path, sql: str, params: Sequence[Any] = ()) -> Any:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()


def machine_lines() -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return [
        f"machine: nproc={os.cpu_count()} ({cpu}), {platform.system()} {platform.release()}",
        f"python {platform.python_version()} ({sys.executable}), sqlite {sqlite3.sqlite_version}",
        "command: " + " ".join([Path(sys.executable).name, *sys.argv]),
    ]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
