"""A hostile network in front of the receiver (catalogue S5, S6), against ``dimmy-webhooks serve``
as a user starts it, over raw sockets on 127.0.0.1.

- S5: request heads of 1 MiB and 64 MiB are refused (431) after the first few KiB, not read;
  heads trickled and never finished, or never started, are closed within the header timeout;
  1,100 idle half-open connections under a 1,024-file limit (systemd's default) leave a signed
  webhook stored and ``/healthz`` answering beside them; at the cap with every connection busy, a
  new one is refused, and the service serves again once they are done.
- S6: fifty 4 MiB bodies with a bad signature, sent slowly and again and again, make the service
  hold a bounded amount of memory, and genuine webhooks sent meanwhile are all stored.

Every loop is bounded in count and time; each test prints one summary line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dimmy_webhooks.devtools.sender import items_scanned_body
from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.intake.httpserver import connection_cap

from ..support.builders import make_settings
from ..support.constants import SECRET
from ..support.databases import query
from ..support.processes import ServiceProcess, wait_until
from ..support.rawhttp import closed_by_peer, raw_connection, read_status, webhook_head
from ..support.senders import post_signed, signed

pytestmark = pytest.mark.faults

BODY = items_scanned_body(["6592008029c8c3e4dc76256c", "6592008029c8c3e4dc76256d"])
MIB = 1024 * 1024


def start_serve(
    service_factory: Any, tmp_path: Path, *, nofile: int | None = None, **env: str
) -> tuple[ServiceProcess, str]:
    """``serve --no-worker`` on a fresh SQLite file (``nofile``: its open-file limit); returns
    it and the database URL."""
    db_url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    service = service_factory(
        ["serve", "--no-worker"],
        nofile=nofile,
        DIMMY_DATABASE_URL=db_url,
        DIMMY_WEBHOOK_SECRET=SECRET,
        DIMMY_OUTPUTS="",
        **env,
    ).start()
    return service, db_url


def stored(db_url: str) -> set[str]:
    return {row["message_id"] for row in query(db_url, "SELECT message_id FROM events")}


# S5: head size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [MIB, 64 * MIB], ids=["1MiB", "64MiB"])
def test_s5_oversized_headers_are_refused_without_being_read(
    service_factory: Any, tmp_path: Path, size: int
) -> None:
    """A header of ``size`` bytes gets 431 as soon as the cap (16 KiB) is passed: the sender
    cannot push much more than the loopback's buffers before the connection is gone, and the
    server's memory does not grow by anything like ``size``."""
    service, db_url = start_serve(service_factory, tmp_path)
    before = service.rss_kb()
    sock = raw_connection(service.url)
    sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Padding: ")
    chunk = b"a" * 65536
    sent = 0
    started = time.monotonic()
    with contextlib.suppress(OSError):  # reset once the server closed, or its buffers full
        sock.settimeout(2)
        while sent < size and time.monotonic() - started < 10:
            sock.sendall(chunk)
            sent += len(chunk)
    sock.settimeout(5)
    try:
        status: int | None = read_status(sock)
    except (OSError, ValueError, IndexError):
        status = None
    elapsed = time.monotonic() - started
    sock.close()
    growth_mib = (service.rss_kb() - before) / 1024
    print(
        f"\nS5 {size // MIB} MiB header: answer {status} after {elapsed:.2f} s, "
        f"{sent / MIB:.1f} MiB accepted by the socket, server RSS {growth_mib:+.1f} MiB"
    )
    assert status == 431
    assert elapsed < 3
    if size > 16 * MIB:  # the server stopped reading: only the loopback's buffers took more
        assert sent < 16 * MIB
    assert growth_mib < 16
    assert post_signed(service.url, "msg_after_big_header", BODY).status_code == 204
    assert stored(db_url) == {"msg_after_big_header"}
    assert "http request refused: headers too large" in service.log()


def test_s5_too_many_header_lines_are_refused(service_factory: Any, tmp_path: Path) -> None:
    service, _ = start_serve(service_factory, tmp_path)
    sock = raw_connection(service.url)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"x-a: b\r\n" * 150 + b"\r\n")
    assert read_status(sock) == 431
    sock.close()


# S5: head time ---------------------------------------------------------------------------------

HEADER_TIMEOUT = 1.0


def _trickle_until_closed(sock: socket.socket, data: bytes, limit: float) -> float | None:
    """Send ``data`` one byte every 0.1 s (then nothing) until the server closes ``sock``;
    the seconds that took, or ``None`` if it was still open after ``limit`` seconds."""
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < limit:
        if closed_by_peer(sock):
            return time.monotonic() - started
        if sent < len(data):
            try:
                sock.sendall(data[sent : sent + 1])
            except OSError:
                return time.monotonic() - started
            sent += 1
        time.sleep(0.1)
    return None


@pytest.mark.parametrize("how", ["silent", "trickled", "trickled after a keep-alive request"])
def test_s5_heads_never_finished_are_closed_within_the_header_timeout(
    service_factory: Any, tmp_path: Path, how: str
) -> None:
    service, _ = start_serve(
        service_factory, tmp_path, DIMMY_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT)
    )
    sock = raw_connection(service.url)
    if how.endswith("keep-alive request"):
        sock.sendall(webhook_head(BODY, signed(BODY, "msg_first")).encode() + BODY)
        assert read_status(sock) == 204
    never_ending = b"" if how == "silent" else b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: " * 3
    took = _trickle_until_closed(sock, never_ending, limit=HEADER_TIMEOUT + 4)
    sock.close()
    print(f"\nS5 head {how}: closed after {took} s (header timeout {HEADER_TIMEOUT} s)")
    assert took is not None, "still open long after the header timeout"
    assert HEADER_TIMEOUT - 0.3 < took < HEADER_TIMEOUT + 1.5
    assert "http connection closed: headers not received in time" in service.log()
    assert post_signed(service.url, "msg_after_slow_head", BODY).status_code == 204


def test_s5_a_slow_head_that_ends_in_time_is_served(service_factory: Any, tmp_path: Path) -> None:
    service, db_url = start_serve(
        service_factory, tmp_path, DIMMY_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT)
    )
    head = webhook_head(BODY, signed(BODY, "msg_slow_head")).encode()
    sock = raw_connection(service.url)
    for piece in (head[:20], head[20:60], head[60:]):
        sock.sendall(piece)
        time.sleep(HEADER_TIMEOUT / 4)
    sock.sendall(BODY)
    assert read_status(sock) == 204
    sock.close()
    assert stored(db_url) == {"msg_slow_head"}


def test_s5_keep_alive_and_pipelining_still_work(service_factory: Any, tmp_path: Path) -> None:
    service, db_url = start_serve(service_factory, tmp_path)
    sock = raw_connection(service.url)
    requests = [webhook_head(BODY, signed(BODY, f"msg_ka_{n}")).encode() + BODY for n in range(3)]
    sock.sendall(requests[0] + requests[1])  # two pipelined
    answers = b""
    while answers.count(b"HTTP/1.1 204") < 2:
        answers += sock.recv(65536)
    time.sleep(0.2)
    sock.sendall(requests[2])  # and one more on the same connection
    assert read_status(sock) == 204
    sock.close()
    assert stored(db_url) == {"msg_ka_0", "msg_ka_1", "msg_ka_2"}


# S5: connections -------------------------------------------------------------------------------

SYSTEMD_DEFAULT_NOFILE = 1024
IDLE_CONNECTIONS = 1100


@pytest.mark.slow
def test_s5_many_idle_half_open_connections_leave_the_service_working(
    service_factory: Any, tmp_path: Path
) -> None:
    """Under systemd's default open-file limit, 1,100 connections that send nothing or half a
    head (and a header timeout long enough not to help) exhaust nothing: a signed webhook is
    stored and /healthz answers beside them, and the service said so in its log."""
    service, db_url = start_serve(
        service_factory,
        tmp_path,
        nofile=SYSTEMD_DEFAULT_NOFILE,
        DIMMY_HEADER_TIMEOUT_SECONDS="120",
    )
    idle: list[socket.socket] = []
    started = time.monotonic()
    try:
        for n in range(IDLE_CONNECTIONS):
            if time.monotonic() - started > 30:
                break
            try:
                sock = socket.create_connection(("127.0.0.1", service.port), timeout=5)
            except OSError:
                continue  # the server's backlog may be full for a moment: it is what we test
            with contextlib.suppress(OSError):
                if n % 2:
                    sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Half: ")
            idle.append(sock)
        opened = time.monotonic() - started
        time.sleep(0.5)
        assert service.proc is not None
        server_fds = len(os.listdir(f"/proc/{service.proc.pid}/fd"))
        status = post_signed(service.url, "msg_beside_idle", BODY).status_code
        health = httpx.get(service.url + "/healthz", timeout=5).status_code
        still_open = sum(not closed_by_peer(sock) for sock in idle)
    finally:
        for sock in idle:
            sock.close()
    print(
        f"\nS5 {len(idle)} idle connections opened in {opened:.1f} s under LimitNOFILE="
        f"{SYSTEMD_DEFAULT_NOFILE}: {still_open} still open, server fds {server_fds}; "
        f"signed webhook {status}, /healthz {health}"
    )
    assert len(idle) == IDLE_CONNECTIONS
    assert status == 204
    assert health == 200
    assert stored(db_url) == {"msg_beside_idle"}
    assert server_fds < SYSTEMD_DEFAULT_NOFILE - 100
    assert "http connection cap reached" in service.log()


def test_s5_at_the_cap_with_every_connection_busy_new_ones_are_refused(
    service_factory: Any, tmp_path: Path
) -> None:
    """With DIMMY_MAX_CONNECTIONS=8 and eight requests stuck in their body, a ninth connection
    is closed at once and logged; once the bodies time out, webhooks are served again."""
    service, db_url = start_serve(
        service_factory,
        tmp_path,
        DIMMY_MAX_CONNECTIONS="8",
        DIMMY_BODY_TIMEOUT_SECONDS="2",
    )
    busy = []
    for n in range(8):
        sock = raw_connection(service.url)
        head = webhook_head(BODY, signed(BODY, f"msg_busy_{n}"), length=len(BODY) + 100)
        sock.sendall(head.encode() + BODY)  # 100 bytes short: the receiver waits for them
        busy.append(sock)
    time.sleep(0.3)
    extra = raw_connection(service.url)
    refused = wait_until(lambda: closed_by_peer(extra), timeout=1.0)
    extra.close()
    assert refused, "a connection beyond the cap was kept while every other one was busy"
    assert "http connection refused: every connection is busy" in service.log()
    statuses = []
    for sock in busy:
        sock.settimeout(5)
        statuses.append(read_status(sock))
        sock.close()
    assert statuses == [408] * 8
    assert post_signed(service.url, "msg_after_busy", BODY).status_code == 204
    assert stored(db_url) == {"msg_after_busy"}


# S6: unsigned bodies ---------------------------------------------------------------------------

ATTACKERS = 50
ATTACK_BODY = 4 * MIB  # DIMMY_MAX_BODY_BYTES, the default
ATTACK_SECONDS = 8.0
BODY_SECONDS = 4.0  # how long one attacker takes to send one body (the timeout is 10 s)


async def _attacker(port: int, n: int, deadline: float, outcomes: dict[str, int]) -> None:
    """Sends 4 MiB bodies under well-formed headers with a wrong signature, slowly, again and
    again until ``deadline``; counts the answers."""
    chunk = b"x" * 65536
    pause = BODY_SECONDS / (ATTACK_BODY / len(chunk))
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        headers = {**signed(b"other", f"msg_attack_{n}_{attempt}"), "content-type": "text/plain"}
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = asyncio.ensure_future(reader.readline())
        try:
            writer.write(webhook_head(b"", headers, length=ATTACK_BODY).encode())
            for _ in range(ATTACK_BODY // len(chunk)):
                if answer.done():  # refused early
                    break
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(pause)
        except OSError:
            pass  # the server closed the connection: its answer, if any, is read below
        try:
            line = await asyncio.wait_for(answer, timeout=12)
            outcome = line.split(b" ")[1].decode() if line else "closed"
        except (OSError, TimeoutError, IndexError):
            outcome = "reset"
        finally:
            answer.cancel()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        await asyncio.sleep(0.05)


async def _genuine(url: str, deadline: float, statuses: dict[str, int]) -> None:
    """One signed webhook every 0.1 s until ``deadline``; each id and its answer."""
    n = 0
    async with httpx.AsyncClient(timeout=15) as client:
        while time.monotonic() < deadline:
            msg_id = f"msg_genuine_{n}"
            n += 1
            try:
                response = await client.post(url, content=BODY, headers=signed(BODY, msg_id))
                statuses[msg_id] = response.status_code
            except httpx.HTTPError as exc:
                statuses[msg_id] = -1
                print(f"genuine {msg_id}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.1)


async def _sample_rss(service: ServiceProcess, until: float, samples: list[int]) -> None:
    while time.monotonic() < until:
        samples.append(service.rss_kb())
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_s6_unsigned_large_bodies_hold_bounded_memory(
    service_factory: Any, tmp_path: Path
) -> None:
    """Fifty senders of 4 MiB bodies with a wrong signature (50 x 4 MiB = 200 MiB if held)
    raise the server's RSS by no more than the unverified-body budget (16 MiB) plus overhead,
    and genuine signed webhooks sent meanwhile are all answered 204 and stored."""
    service, db_url = start_serve(service_factory, tmp_path, DIMMY_LOG_LEVEL="WARNING")
    for n in range(3):  # warm the request path up before the baseline
        assert post_signed(service.url, f"msg_warm_{n}", BODY).status_code == 204
    baseline = service.rss_kb()
    deadline = time.monotonic() + ATTACK_SECONDS
    outcomes: dict[str, int] = {}
    genuine: dict[str, int] = {}
    samples: list[int] = []
    await asyncio.gather(
        *(_attacker(service.port, n, deadline, outcomes) for n in range(ATTACKERS)),
        _genuine(service.url + "/webhook", deadline, genuine),
        _sample_rss(service, deadline + BODY_SECONDS + 2, samples),
    )
    peak_mib = (max(samples) - baseline) / 1024
    ok = sum(status == 204 for status in genuine.values())
    print(
        f"\nS6 {ATTACKERS} unsigned 4 MiB senders for {ATTACK_SECONDS:.0f} s: answers "
        f"{json.dumps(outcomes, sort_keys=True)}; server RSS peak {peak_mib:+.1f} MiB over "
        f"{baseline / 1024:.0f} MiB; genuine {ok}/{len(genuine)} answered 204"
    )
    assert peak_mib < 48
    assert genuine
    assert all(status == 204 for status in genuine.values()), genuine
    assert set(genuine) <= stored(db_url)
    assert set(outcomes) <= {"401", "408", "503", "closed", "reset"}
    assert outcomes.get("503", 0) > 0  # the budget was what held the memory down
    assert not any(msg_id.startswith("msg_attack") for msg_id in stored(db_url))


# the cap's default ---------------------------------------------------------------------------


@pytest.mark.parametrize(("nofile", "cap"), [(1024, 704), (4096, 2048), (65536, 2048)])
def test_the_default_connection_cap_leaves_descriptors_for_everything_else(
    nofile: int, cap: int
) -> None:
    """256 descriptors plus one per API connection (64) are kept; 2,048 at most."""
    assert connection_cap(make_settings("sqlite:///unused"), nofile=nofile) == cap


def test_a_connection_cap_the_file_limit_cannot_hold_is_refused() -> None:
    settings = make_settings("sqlite:///unused", max_connections=1000)
    with pytest.raises(ConfigError, match="DIMMY_MAX_CONNECTIONS=1000 is more than"):
        connection_cap(settings, nofile=1024)
    assert (
        connection_cap(make_settings("sqlite:///unused", max_connections=100), nofile=1024) == 100
    )
    with pytest.raises(ConfigError, match="LimitNOFILE"):
        connection_cap(make_settings("sqlite:///unused"), nofile=300)
