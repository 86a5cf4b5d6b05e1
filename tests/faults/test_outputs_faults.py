"""Outputs that misbehave (catalogue S7, S8), against a real ``serve`` / ``worker``, both backends.

- S7: a ``python:`` output that blocks for ever. Webhooks are still answered ``204``, ``/readyz``
  and ``/api/events`` still answer within a bound (before, on SQLite, the blocked calls took every
  thread of the executor the store's reads shared), the delivery times out and is retried until it
  is dead (attempts counted in the jobs table), the other output gets every item, and
  ``SIGTERM`` stops the process within the grace period even though the blocked threads never
  return (before, the process never exited).
- S8: ``python:`` outputs (a plain and an ``async`` function) that raise ``SystemExit``,
  ``KeyboardInterrupt``, ``GeneratorExit``, a ``CancelledError`` of their own and a bare
  ``BaseException`` subclass, in turn. Each is a failed delivery that counts its attempt, the
  attempts grow until the delivery is dead, and the same ``serve`` process keeps answering
  throughout (before, the first ``SystemExit`` ended it, the job went back uncounted, and every
  restart died the same way).

The outputs' functions live in ``tests/support/handlers.py``; the child process imports them
through ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dimmy_webhooks.devtools.sender import items_scanned_body
from dimmy_webhooks.outputs import JsonlOutput

from ..support.constants import ADMIN_TOKEN, API_KEY, AUTH, ROOT, SECRET
from ..support.databases import backend, db_state, rows, running_jobs
from ..support.processes import ServiceProcess, wait_until
from ..support.senders import post_signed
from .procs import exit_code, summary

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(240)]

BLOCKING = "python:tests.support.handlers:block_forever"
RAISING = [
    "python:tests.support.handlers:raise_base_exception",
    "python:tests.support.handlers:async_raise_base_exception",
]
KINDS = ["SystemExit", "KeyboardInterrupt", "Fatal", "GeneratorExit", "CancelledError"]
SERVE_CLEAN_EXIT = (0, -signal.SIGTERM)  # uvicorn re-raises the SIGTERM it handled
GRACE = 2.0  # DIMMY_SHUTDOWN_GRACE_SECONDS in these tests
EXIT_BOUND = GRACE + 5.0  # what "within the grace period" allows for start-up of the shutdown
ANSWER_BOUND = 2.0  # seconds a health check, an API read or a webhook may take


def service_env(db_url: str, fake_url: str, outputs: str, **extra: str) -> dict[str, str]:
    env = {
        # the handlers' module, ahead of whatever the caller's PYTHONPATH holds
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "DIMMY_DATABASE_URL": db_url,
        "DIMMY_WEBHOOK_SECRET": SECRET,
        "DIMMY_ADMIN_TOKEN": ADMIN_TOKEN,
        "DIMMY_API_KEY": API_KEY,
        "DIMMY_API_URL": fake_url,
        "DIMMY_OUTPUTS": outputs,
        "DIMMY_API_RATE_LIMIT": "100000",
        "DIMMY_RETRY_BASE_SECONDS": "0.05",
        "DIMMY_RETRY_MAX_SECONDS": "0.2",
        "DIMMY_SHUTDOWN_GRACE_SECONDS": str(GRACE),
    }
    env.update(extra)
    return env


def post_webhook(client: httpx.Client, msg_id: str, ids: list[str]) -> tuple[int, float]:
    """POST a signed ``items.scanned``; its status and how long the answer took."""
    body = items_scanned_body(ids)
    started = time.monotonic()
    response = post_signed(client, msg_id, body)
    return response.status_code, time.monotonic() - started


def timed_get(client: httpx.Client, path: str) -> tuple[httpx.Response | None, float]:
    """GET ``path`` with the admin token; ``None`` when no answer came within the bound."""
    started = time.monotonic()
    try:
        response = client.get(path, headers=AUTH, timeout=ANSWER_BOUND)
    except httpx.TimeoutException:
        response = None
    return response, time.monotonic() - started


def deliveries(db_url: str, output: str, items: list[str] | None = None) -> list[tuple[Any, ...]]:
    """(status, attempts, last_error) of every delivery to ``output`` (of ``items`` only)."""
    only = "" if items is None else " AND item_id IN (" + ", ".join(f"'{i}'" for i in items) + ")"
    return rows(
        db_url,
        "SELECT status, attempts, last_error FROM jobs WHERE kind = 'deliver' AND output = "
        f"'{output}'{only} ORDER BY id",
    )


def sigterm_and_time(service: ServiceProcess) -> tuple[int, float]:
    assert service.proc is not None
    sent = time.monotonic()
    os.killpg(service.proc.pid, signal.SIGTERM)
    try:
        code = exit_code(service, timeout=EXIT_BOUND + 20)
    except Exception as exc:  # subprocess.TimeoutExpired: report it as the failure it is
        raise AssertionError(f"still running {EXIT_BOUND + 20:.0f}s after SIGTERM") from exc
    return code, time.monotonic() - sent


# S7 ------------------------------------------------------------------------------------------


def test_s7_a_python_output_blocking_for_ever_holds_up_nothing(
    tmp_path: Path, db_url: str, fake: Any, fake_url: str, service_factory: Any
) -> None:
    began = time.monotonic()
    # more deliveries blocked at once than the event loop's default executor has threads
    ids = fake.generate_items(12)
    later = fake.generate_items(3)
    out = tmp_path / "out.jsonl"
    env = service_env(
        db_url,
        fake_url,
        f"jsonl:{out},{BLOCKING}",
        DIMMY_OUTPUT_TIMEOUT_SECONDS="1",
        DIMMY_MAX_ATTEMPTS="3",
        DIMMY_LOG_LEVEL="INFO",
    )
    service = service_factory(["serve"], **env).start()
    with httpx.Client(base_url=service.url, timeout=10) as client:
        assert post_webhook(client, "msg_s7_first", ids)[0] == 204

        def blocked() -> bool:
            found = deliveries(db_url, BLOCKING)
            return len(found) == len(ids) and all(a >= 1 for _, a, _ in found)

        assert wait_until(blocked, timeout=30), db_state(db_url) + service.log()[-3000:]

        # while calls are blocked: health, API and webhooks answer, each within the bound
        answers: list[tuple[str, object, float]] = []
        for n in range(5):
            ready, took = timed_get(client, "/readyz")
            answers.append(("/readyz", ready and ready.status_code, took))
            events, took = timed_get(client, "/api/events?limit=5")
            answers.append(("/api/events", events and events.status_code, took))
            status, took = post_webhook(client, f"msg_s7_during_{n}", later)
            answers.append(("/webhook", status, took))
            time.sleep(0.2)
        slow = [a for a in answers if a[1] not in (200, 204) or a[2] > ANSWER_BOUND]
        assert not slow, f"{slow}\n{service.log()[-3000:]}"

        # each blocked delivery timed out, was retried, and died after its last attempt
        def all_dead() -> bool:
            found = deliveries(db_url, BLOCKING)
            return len(found) == len(ids) + len(later) and all(s == "dead" for s, _, _ in found)

        assert wait_until(all_dead, timeout=60), db_state(db_url) + service.log()[-3000:]
        found = deliveries(db_url, BLOCKING)
        assert {attempts for _, attempts, _ in found} == {3}, found
        # timed out, or failed at once once every thread of the output was blocked
        errors = [str(error) for _, _, error in found]
        assert all("no answer within 1s" in e or "threads are stuck" in e for e in errors), errors
        timed_out = len(re.findall(r"job (?:will retry|dead) .*no answer within 1s", service.log()))
        assert timed_out >= 8, service.log()[-3000:]  # at least one per thread of the output
        # the other output got every item
        assert {line["item_id"] for line in JsonlOutput.read(out)} == set(ids) | set(later)

        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        # /readyz names the problem with a fixed label; the detail is for authenticated callers
        assert "an output's calls are timing out" in ready.json()["problems"], ready.json()
        assert BLOCKING not in ready.text
        problems = client.get("/api/overview", headers=AUTH).json()["problems"]
        assert any(BLOCKING in problem for problem in problems), problems
        api = client.get("/api/events?limit=10", headers=AUTH)
        assert api.status_code == 200
        status = {event["message_id"]: event["status"] for event in api.json()["events"]}
        # every webhook stored; the two that brought new item versions are dead by the output,
        # the later resends of the same items had nothing new to deliver
        assert status == {
            "msg_s7_first": "dead",
            "msg_s7_during_0": "dead",
            **{f"msg_s7_during_{n}": "done" for n in range(1, 5)},
        }, status

    code, took = sigterm_and_time(service)
    assert code in SERVE_CLEAN_EXIT, service.log()[-3000:]
    assert took < EXIT_BOUND, f"exit took {took:.1f}s (grace {GRACE}s)\n{service.log()[-3000:]}"
    assert running_jobs(db_url) == 0, db_state(db_url)
    summary(
        f"S7 [{backend(db_url)}] serve",
        blocked_deliveries=len(found),
        attempts_each=3,
        timed_out=timed_out,
        slowest_answer_ms=round(max(a[2] for a in answers) * 1000, 1),
        exit_seconds=round(took, 2),
        exit_code=code,
        seconds=round(time.monotonic() - began, 1),
    )


def test_s7_worker_stops_within_the_grace_period_with_deliveries_blocked(
    tmp_path: Path, db_url: str, fake: Any, fake_url: str, service_factory: Any
) -> None:
    """SIGTERM while deliveries are blocked (the timeout far away): the worker gives them the
    grace period, gives up on them, releases their claims and exits."""
    ids = fake.generate_items(6)  # fewer than the output's threads: every one is in flight
    env = service_env(db_url, fake_url, BLOCKING, DIMMY_OUTPUT_TIMEOUT_SECONDS="600")
    receiver = service_factory(["serve", "--no-worker"], **env).start()
    with httpx.Client(base_url=receiver.url, timeout=10) as client:
        assert post_webhook(client, "msg_s7_worker", ids)[0] == 204
    assert receiver.stop() in SERVE_CLEAN_EXIT
    worker = service_factory(["worker"], **env).start()

    def blocked() -> bool:
        found = deliveries(db_url, BLOCKING)
        return len(found) == len(ids) and all(s == "running" for s, _, _ in found)

    assert wait_until(blocked, timeout=30), db_state(db_url) + worker.log()[-3000:]
    code, took = sigterm_and_time(worker)
    log = worker.log()
    assert code == 0, log[-3000:]
    assert GRACE - 0.5 <= took < EXIT_BOUND, f"exit took {took:.1f}s (grace {GRACE}s)\n{log}"
    assert "claims released" in log
    # back in the queue at once, the attempt given back
    assert {(s, a) for s, a, _ in deliveries(db_url, BLOCKING)} == {("pending", 0)}
    summary(
        f"S7 [{backend(db_url)}] worker",
        blocked_at_sigterm=len(ids),
        exit_seconds=round(took, 2),
        exit_code=code,
    )


# S8 ------------------------------------------------------------------------------------------


def test_s8_outputs_raising_system_exit_and_the_like_fail_deliveries_not_the_process(
    tmp_path: Path, db_url: str, fake: Any, fake_url: str, service_factory: Any
) -> None:
    began = time.monotonic()
    ids = fake.generate_items(4)
    out = tmp_path / "out.jsonl"
    attempts = len(KINDS)
    env = service_env(
        db_url,
        fake_url,
        ",".join([f"jsonl:{out}", *RAISING]),
        DIMMY_MAX_ATTEMPTS=str(attempts),
        # slow enough retries to watch the attempts grow
        DIMMY_RETRY_BASE_SECONDS="0.3",
        DIMMY_RETRY_MAX_SECONDS="0.3",
    )
    service = service_factory(["serve"], **env).start()
    assert service.proc is not None
    pid = service.proc.pid
    seen: dict[str, list[int]] = {output: [] for output in RAISING}  # attempts, as they grow
    with httpx.Client(base_url=service.url, timeout=10) as client:
        assert post_webhook(client, "msg_s8", ids)[0] == 204

        def all_dead() -> bool:
            assert service.proc is not None
            assert service.proc.poll() is None, f"serve exited\n{service.log()[-3000:]}"
            assert client.get("/healthz").status_code == 200
            done = True
            for output in RAISING:
                found = deliveries(db_url, output)
                if found:
                    seen[output].append(max(a for _, a, _ in found))
                done = done and len(found) == len(ids) and all(s == "dead" for s, _, _ in found)
            return done

        assert wait_until(all_dead, timeout=60, interval=0.05), db_state(db_url)
        status, _ = post_webhook(client, "msg_s8_after", fake.generate_items(1))
        assert status == 204
        assert client.get("/readyz").status_code == 200

    log = service.log()
    for output in RAISING:
        # the item sent afterwards is still being tried: it only showed webhooks still work
        found = deliveries(db_url, output, ids)
        assert {(s, a) for s, a, _ in found} == {("dead", attempts)}, found
        for _, _, error in found:
            assert re.search(rf"raised ({'|'.join(KINDS)}): raised by the output", str(error))
        # counted one by one: the highest attempt seen only ever grew, up to the last
        assert seen[output] == sorted(seen[output]), seen[output]
        assert len(set(seen[output])) >= 3, seen[output]
        assert seen[output][-1] == attempts
    for kind in KINDS:
        assert f"raised {kind}: raised by the output" in log, kind
    assert {line["item_id"] for line in JsonlOutput.read(out)} >= set(ids)
    assert service.proc.pid == pid  # the same process all along

    code, took = sigterm_and_time(service)
    assert code in SERVE_CLEAN_EXIT, log[-3000:]
    assert took < EXIT_BOUND
    assert running_jobs(db_url) == 0, db_state(db_url)
    summary(
        f"S8 [{backend(db_url)}] serve",
        deliveries=len(ids) * len(RAISING),
        attempts_each=attempts,
        raised=",".join(KINDS),
        process_restarts=0,
        exit_code=code,
        seconds=round(time.monotonic() - began, 1),
    )
