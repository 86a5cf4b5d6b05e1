"""Private message brokers for the bus outputs' tests: RabbitMQ, Redis, NATS (JetStream) and
Mosquitto, each started from Debian's package on a free loopback port in a temporary directory,
killed (SIGKILL) and started again on the same port, and stopped at the end.

A broker whose program is not installed skips its tests with the reason, unless
``DIMMY_TEST_REQUIRE_BROKERS=1`` (``.ci/run`` sets it after installing them): then it fails.
Only 127.0.0.1, never the brokers a machine may run on the default ports.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dimmy_webhooks.devtools.runner import free_port

PROGRAMS = {
    "amqp": ("rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server"),
    "redis": ("redis-server", "/usr/bin/redis-server"),
    "nats": ("nats-server", "/usr/sbin/nats-server"),
    "mqtt": ("mosquitto", "/usr/sbin/mosquitto"),
}
"""The program of each kind's broker: its name (Debian package and command) and where
Debian puts it."""
BOOT_TIMEOUT = {"amqp": 60.0}  # RabbitMQ takes 5-10 s to boot; the others well under one
LOOPBACK = "127.0.0.1"


def program(kind: str) -> str | None:
    """Where the broker's program is (``None``: not installed). RabbitMQ's is the script
    behind the one on ``PATH``, which would switch to the rabbitmq user."""
    name, path = PROGRAMS[kind]
    if Path(path).exists():
        return path
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")


def require(kind: str) -> str:
    """The broker's program, or skip (fail under ``DIMMY_TEST_REQUIRE_BROKERS=1``)."""
    found = program(kind)
    if found is None:
        package = PROGRAMS[kind][0]
        reason = f"{package} is not installed (apt-get install {package}): {kind}: tests skipped"
        if os.environ.get("DIMMY_TEST_REQUIRE_BROKERS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


ACKS_BEFORE_DISK = frozenset({"mqtt"})
"""Brokers that acknowledge a message before it is on disk: Mosquitto answers a QoS 1 publish
with PUBACK and writes its persistence file afterwards (at best at the next turn of its loop,
``autosave_on_changes``), so a SIGKILL between the two loses a message it acknowledged (seen in
CI: one of 150). Nothing on the publisher's side can tell; the tests stop these brokers with
SIGTERM, which saves, and docs/plugins.md says what this means for a site. RabbitMQ (publisher
confirms of persistent messages), Redis (``appendfsync always``) and NATS JetStream (file
storage) have written a message before acknowledging it, and are SIGKILLed."""


class Broker:
    """One broker process (in its own process group) on ``port``; ``url`` for our output."""

    def __init__(self, kind: str, binary: str, workdir: Path) -> None:
        self.kind = kind
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        scheme = {"amqp": "amqp", "redis": "redis", "nats": "nats", "mqtt": "mqtt"}[self.kind]
        auth = "guest:guest@" if self.kind == "amqp" else ""
        return f"{scheme}://{auth}{LOOPBACK}:{self.port}"

    def _command(self) -> tuple[list[str], dict[str, str]]:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.kind == "redis":
            args = [
                self.binary,
                "--port", str(self.port),
                "--bind", LOOPBACK,
                "--save", "",
                # what Redis acknowledged survives its SIGKILL: the test asks for every entry
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--dir", str(data),
            ]  # fmt: skip
            return args, env
        if self.kind == "nats":
            args = [self.binary, "-js", "-sd", str(data), "-a", LOOPBACK, "-p", str(self.port)]
            return args, env
        if self.kind == "mqtt":
            config = self.workdir / "mosquitto.conf"
            config.write_text(
                f"listener {self.port} {LOOPBACK}\nallow_anonymous true\n"
                f"persistence true\npersistence_location {data}/\n"
                # saved after every change: a queued message outlives the broker's SIGKILL
                "autosave_interval 1\nautosave_on_changes true\n"
                # as root it would run as the mosquitto user, who cannot write there
                f"user {getpass.getuser()}\nlog_dest none\n"
            )
            return [self.binary, "-c", str(config)], env
        # RabbitMQ: a node of its own (name, ports, files), no plug-ins, guest from loopback
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {LOOPBACK}:{self.port}\nloopback_users = none\n"
        )
        (self.workdir / "enabled_plugins").write_text("[].\n")
        env.update(
            RABBITMQ_NODENAME=f"dimmytest{self.port}@localhost",
            RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(free_port()),
            RABBITMQ_MNESIA_BASE=str(data / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.workdir / "log"),
            RABBITMQ_CONFIG_FILE=str(self.workdir / "rabbitmq"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.workdir / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.workdir / "rabbitmq.pid"),
            HOME=str(self.workdir),
        )
        return [self.binary], env

    def start(self) -> Broker:
        args, env = self._command()
        log = (self.workdir / f"broker-{self.starts}.log").open("ab")
        with log:
            self.proc = subprocess.Popen(
                args,
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.starts += 1
        self._wait_ready(BOOT_TIMEOUT.get(self.kind, 15.0))
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} broker exited: {self.log()[-3000:]}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"{self.kind} broker not ready in {timeout:g}s: {self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the broker and everything it started (its process group)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self) -> None:
        """Stop the broker the hardest way it survives, then start it again on the same port
        with the same files: SIGKILL, but for Mosquitto a SIGTERM (see :data:`ACKS_BEFORE_DISK`)."""
        if self.kind in ACKS_BEFORE_DISK:
            self.stop()
        else:
            self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self.proc = None

    def log(self) -> str:
        return "".join(
            path.read_text(errors="replace") for path in sorted(self.workdir.glob("broker-*.log"))
        )


def start_broker(kind: str, tmp: Path) -> Iterator[Broker]:
    """A started broker of ``kind`` in ``tmp`` (skips when its program is absent), stopped
    after use; the body of the fixtures."""
    binary = require(kind)
    broker = Broker(kind, binary, tmp)
    try:
        yield broker.start()
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    """A private broker of the kind the test is parametrized with (``indirect``), one per
    kind for the module."""
    kind: str = request.param
    yield from start_broker(kind, tmp_path_factory.mktemp(f"broker-{kind}"))
