"""A hostile network in front of the receiver (catalogue S6), against ``dimmy-webhooks serve``
as a user starts it, over raw sockets on 127.0.0.1.

- S6: fifty 4 MiB bodies with a bad signature, sent slowly and again and again, make the service
  hold a bounded amount of memory, and genuine webhooks sent meanwhile are all stored.

Every loop is bounded in count and time; each test prints one summary line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dimmy_webhooks.devtools.sender import items_scanned_body

from ..helpers import (
    SECRET,
    ServiceProcess,
    query,
    signed,
    webhook_head,
)

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


def post_signed(url: str, msg_id: str, timeout: float = 5.0) -> int:
    return httpx.post(
        url + "/webhook", content=BODY, headers=signed(BODY, msg_id), timeout=timeout
    ).status_code


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
        assert post_signed(service.url, f"msg_warm_{n}") == 204
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
