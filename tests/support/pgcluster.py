"""A private, throwaway PostgreSQL cluster for tests that stop the server on purpose.

Stopping the shared server (127.0.0.1:5432) would break every other test running at the same
time, so a fault test that kills PostgreSQL starts its own: ``initdb`` into a temporary
directory, ``pg_ctl start`` on a free loopback port, ``pg_ctl stop -m immediate`` (a crash: no
checkpoint, recovery from the WAL on the next start), and everything removed at the end.

PostgreSQL refuses to run as root; when we are root the binaries run as the ``postgres`` user
through ``runuser`` and the directory is handed to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from dimmy_webhooks.devtools.runner import free_port

PG_USER = "postgres"


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``pg_ctl``."""

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        bindir = Path(candidate)
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name)
        if found is None:
            return None
    return Path(str(shutil.which("pg_ctl"))).parent


def unavailable_reason() -> str | None:
    """Why a private cluster cannot be started here, or ``None`` if it can."""
    if find_bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root and `runuser` is missing (initdb refuses to run as root)"
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"running as root and there is no {PG_USER!r} user to run PostgreSQL as"
    return None


class PgCluster:
    """One private cluster: ``start()``, ``crash()`` (stop ``-m immediate``), ``destroy()``."""

    def __init__(self, *, port: int | None = None, log_tag: str = "dimmy-pg") -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found")
        self.bindir = bindir
        self.port = port or free_port()
        # not under pytest's tmp_path: that is private to root, and the server runs as postgres
        self.base = Path(tempfile.mkdtemp(prefix=f"{log_tag}-"))
        self.datadir = self.base / "data"
        self.logfile = self.base / "server.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            entry = pwd.getpwnam(PG_USER)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
        os.chmod(self.base, 0o700)
        self.url = f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"
        self.initialised = False

    # commands ------------------------------------------------------------------------------

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", PG_USER, "--", *command]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n"
                f"{result.stderr}\n--- server log ---\n{self.log()[-4000:]}"
            )
        return result

    def init(self) -> None:
        self._run(
            [
                "initdb",
                "-D",
                str(self.datadir),
                "-A",
                "trust",
                "-U",
                PG_USER,
                "--no-sync",  # the cluster is thrown away; the server itself runs fsync=on
                "-E",
                "UTF8",
                "--locale=C",
            ]
        )
        self.initialised = True

    def start(self, timeout: float = 60) -> float:
        """Start the server and wait until it accepts connections; returns the seconds taken."""
        if not self.initialised:
            self.init()
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=on "
            "-c synchronous_commit=on -c max_connections=200"
        )
        started = time.monotonic()
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            timeout=timeout + 10,
        )
        return time.monotonic() - started

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """``pg_ctl stop -m mode`` (``immediate`` is a crash: recovery runs on the next start)."""
        self._run(
            ["pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", str(int(timeout)), "stop"],
            timeout=timeout + 10,
        )

    def crash(self) -> None:
        self.stop("immediate")

    def running(self) -> bool:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status"]
        if self._as_root:
            command = ["runuser", "-u", PG_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, timeout=30, check=False)
        return result.returncode == 0

    def destroy(self) -> None:
        """Stop the server if it runs (immediately) and remove every file."""
        try:
            if self.initialised and self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""
