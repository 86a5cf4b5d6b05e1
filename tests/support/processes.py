"""The service as a user starts it (a child process in its own process group), commands run to
their end, and waiting for a condition."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from dimmy_webhooks.devtools.runner import free_port

from .constants import CLI


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true (``True``) or ``timeout`` seconds passed (``False``)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def clean_env(**values: str) -> dict[str, str]:
    """The environment for a child process: ours without any DIMMY_* the developer set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIMMY_")}
    env.update(values)
    return env


def run(
    args: Sequence[str], cwd: Path, *, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end as a user would (text output captured, ``env`` added to a
    :func:`clean_env`); never raises for a non-zero exit."""
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ServiceProcess:
    """``dimmy-webhooks <command>`` as a user starts it, in its own process group; ``nofile``
    sets its open-file limit (``LimitNOFILE=`` of a systemd unit)."""

    def __init__(
        self, tmp_path: Path, env: dict[str, str], args: list[str], *, nofile: int | None = None
    ) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.args = args
        self.nofile = nofile
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp_path / f"service-{self.port}.log"

    def start(self, *, wait: bool = True) -> ServiceProcess:
        args = [CLI, *self.args]
        if self.args and self.args[0] == "serve":
            args += ["--port", str(self.port)]
        limit = self.nofile

        def set_nofile() -> None:  # in the child, before exec
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                args,
                cwd=self.tmp_path,
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=set_nofile if limit is not None else None,  # noqa: PLW1509
            )
        if wait and self.args[0] == "serve":
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited: {self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"service not ready: {self.log()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_kb(self) -> int:
        """The process's resident memory now (``VmRSS``, kB)."""
        assert self.proc is not None
        return proc_status_kb(self.proc.pid)["VmRSS"]


def proc_status_kb(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``, ...)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            out[name] = int(value.split()[0])
    return out


def logs_tail(services: Sequence[ServiceProcess], tail: int = 4000) -> str:
    """The end of every service's log, for an assertion message."""
    return "\n".join(
        f"--- {' '.join(s.args)} pid={s.proc.pid if s.proc else '-'} ({s.log_path.name}) ---\n"
        f"{s.log()[-tail:]}"
        for s in services
    )
