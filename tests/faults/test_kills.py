"""Processes killed at the worst moments (catalogue R1, R2, R3, R15), on SQLite and PostgreSQL.

Every process is started as a user starts it (``dimmy-webhooks serve|worker``, its own process
group); the fake Dimmy API runs in this process on 127.0.0.1. Each test prints its seed (replay
with ``DIMMY_FAULTS_SEED``), its kill schedule and a ``SUMMARY`` line; assertions about the final
state are made after every process exited. ``DIMMY_FAULTS_FULL=1`` makes the loops 10x bigger.

- R1: three workers, one SIGKILLed at random while it provably holds claimed work, again and
  again; afterwards every item is stored once, nothing is claimed or pending, and every extra
  upstream fetch or repeated delivery is explained by a kill.
- R2: failpoints make a worker die right after a claim, after a fetch (before its commit) and
  after a commit, and make the receiver die after committing a webhook but before answering.
- R3: the receiver SIGKILLed repeatedly under a retrying sender: every 2xx is in the inbox, no
  message twice, every message acknowledged in the end, the SQLite file sound.
- R15: SIGTERM while fetches are in flight: a clean exit within the grace period, claims
  released at once (the lease is long, so expiry cannot be what frees them), nothing lost.
"""

from __future__ import annotations

import random
import re
import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ..support.builders import fetch_pairs, make_events
from ..support.constants import API_KEY, SECRET, scaled
from ..support.databases import (
    backend,
    db_state,
    insert_events,
    integrity_check,
    rows,
    running_by_owner,
    running_jobs,
    scalar,
    work_left,
)
from ..support.processes import ServiceProcess, logs_tail, wait_until
from ..support.senders import RetryingSender
from .procs import Deliveries, WorkerSlot, exit_code, read_deliveries, stop_all, summary

pytestmark = [pytest.mark.faults, pytest.mark.timeout(1200 if scaled(1) > 1 else 240)]

# uvicorn re-raises the SIGTERM it handled once it shut down gracefully: `serve` exits -15
SERVE_CLEAN_EXIT = (0, -signal.SIGTERM)
GRACE_SECONDS = 10.0  # WorkerPolicy.grace_seconds (not a setting)
WORKERS = 3
CONCURRENCY = 4  # per worker: jobs held (--concurrency) = API requests in flight at most


def worker_env(db_url: str, fake_url: str, outputs: str = "", **extra: str) -> dict[str, str]:
    env = {
        "DIMMY_DATABASE_URL": db_url,
        "DIMMY_API_KEY": API_KEY,
        "DIMMY_API_URL": fake_url,
        "DIMMY_OUTPUTS": outputs,
        "DIMMY_API_CONCURRENCY": str(CONCURRENCY),
        "DIMMY_API_RATE_LIMIT": "100000",
        "DIMMY_LEASE_SECONDS": "1",
        "DIMMY_RETRY_BASE_SECONDS": "0.05",
        "DIMMY_MAX_ATTEMPTS": "50",
    }
    env.update(extra)
    return env


def receive_through_serve(
    db_url: str, service_factory: Any, messages: list[tuple[str, bytes]], seed: int
) -> None:
    """Post ``messages`` signed to a real ``serve --no-worker``, then stop it cleanly."""
    receiver = service_factory(
        ["serve", "--no-worker"],
        DIMMY_DATABASE_URL=db_url,
        DIMMY_WEBHOOK_SECRET=SECRET,
        DIMMY_LOG_LEVEL="WARNING",
    ).start()
    sender = RetryingSender([receiver.url], messages, seed=seed, deadline_seconds=60).start()
    finished = sender.join(timeout=90)
    assert receiver.stop() in SERVE_CLEAN_EXIT, receiver.log()
    assert finished, "sender did not finish"
    assert not sender.missing(), f"{len(sender.missing())} not acknowledged\n{receiver.log()}"
    assert scalar(db_url, "SELECT count(*) FROM events") == len(messages)


def drain(
    db_url: str,
    workers: Sequence[ServiceProcess],
    timeout: float,
    earlier: Sequence[ServiceProcess] = (),
) -> None:
    """Wait until no work is left, then SIGTERM ``workers``: each must exit 0 (the logs of the
    ``earlier`` incarnations go into the failure message too)."""
    drained = wait_until(lambda: work_left(db_url) == 0, timeout=timeout)
    codes = stop_all(workers)
    assert drained, db_state(db_url) + "\n" + logs_tail([*earlier, *workers])
    assert codes == [0] * len(workers), logs_tail(workers)


def check_all_done(
    db_url: str, messages: list[tuple[str, bytes]], pairs: Counter[str]
) -> list[tuple[Any, ...]]:
    """After every process exited: every item stored once, every job (event, fetch, deliver)
    and every event done, the SQLite file sound. Returns the stored (id, version) rows."""
    stored = rows(db_url, "SELECT id, version FROM items")
    assert sorted(item_id for item_id, _ in stored) == sorted(pairs)  # each once (primary key)
    n_jobs = len(messages) + sum(pairs.values()) + len(pairs)  # event, fetch, deliver
    assert rows(db_url, "SELECT status, count(*) FROM jobs GROUP BY status") == [("done", n_jobs)]
    assert rows(db_url, "SELECT status, count(*) FROM events GROUP BY status") == [
        ("done", len(messages))
    ]
    assert integrity_check(db_url) in (None, "ok")
    return stored


def check_delivered(out: Path, stored: list[tuple[Any, ...]]) -> Deliveries:
    """Every stored item version reached the output, repeats only under the same key."""
    delivered = read_deliveries([out])
    assert delivered.versions == set(stored)
    assert not delivered.conflicts
    return delivered


# R1 ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_r1_workers_sigkilled_at_random_lose_and_duplicate_nothing(
    tmp_path: Path,
    db_url: str,
    fake: Any,
    fake_url: str,
    service_factory: Any,
    seed: int,
    rng: random.Random,
) -> None:
    began = time.monotonic()
    ids = fake.generate_items(scaled(300))
    messages = make_events(rng, ids, scaled(100), 10, prefix=f"msg_r1_{seed}")
    pairs = fetch_pairs(messages)  # the same id in two events is fetched once per event
    fake.config.latency_seconds = 0.01
    receive_through_serve(db_url, service_factory, messages, seed)

    # one output file shared by all workers: a deliver job names its output, and a worker
    # without that output would keep putting the job back ("not configured") until moved
    out = tmp_path / "out.jsonl"
    env = worker_env(db_url, fake_url, f"jsonl:{out}", DIMMY_LOG_LEVEL="INFO")
    args = ["worker", "--concurrency", str(CONCURRENCY)]
    slots = [WorkerSlot(service_factory(args, **env)) for _ in range(WORKERS)]
    pauses = [round(rng.uniform(0.1, 0.6), 3) for _ in range(scaled(20))]
    print(f"R1 kill schedule: pauses before each SIGKILL (s) {pauses}; victim: a random worker")
    print("  among those holding claimed work at that moment (drawn from the same seed)")

    t0 = time.monotonic()
    for slot in slots:
        slot.start()
    kills: list[str] = []
    for pause in pauses:
        time.sleep(pause)
        busy: list[tuple[int, int]] = []  # (slot, jobs it holds)

        def someone_busy(busy: list[tuple[int, int]] = busy) -> bool:
            busy.clear()
            held = running_by_owner(db_url)
            for n, slot in enumerate(slots):
                owner = slot.current_owner(timeout=0)
                if owner is not None and held.get(owner, 0) > 0:
                    busy.append((n, held[owner]))
            return bool(busy) or work_left(db_url) == 0

        assert wait_until(someone_busy, timeout=30), db_state(db_url)
        if not busy:
            break  # everything finished: the workload is too small for the schedule
        slot_no, held = rng.choice(busy)
        victim = slots[slot_no]
        victim.service.kill(signal.SIGKILL)
        code = exit_code(victim.service)
        kills.append(f"{time.monotonic() - t0:.2f}s slot {slot_no} pid {victim.pid} held {held}")
        assert code == -signal.SIGKILL, code
        victim.start()
    print("R1 kills:\n  " + "\n  ".join(kills))
    drain(db_url, [slot.service for slot in slots], timeout=scaled(90))

    # after every process exited
    assert len(kills) == len(pauses), "the work finished before every kill landed"
    stored = check_all_done(db_url, messages, pairs)
    short = {i: (pairs[i], fake.counts[i]) for i in pairs if fake.counts[i] < pairs[i]}
    assert not short, f"fetched fewer times than events name them: {short}"
    # a live worker too slow to heartbeat loses its lease (its late result is discarded and
    # the work done again): not explained by a kill, so it counts against the bound
    leases_lost = sum(slot.service.log().count("lease lost") for slot in slots)
    extra_fetches = sum(fake.counts.values()) - sum(pairs.values())
    bound = len(kills) * CONCURRENCY  # a killed worker held at most CONCURRENCY jobs
    why = f"for {len(kills)} kills ({leases_lost} leases lost by live workers)"
    assert extra_fetches <= bound, f"{extra_fetches} extra fetches {why}"
    delivered = check_delivered(out, stored)
    assert delivered.repeats <= bound, f"{delivered.repeats} repeated deliveries {why}"
    summary(
        f"R1 [{backend(db_url)}] seed={seed}",
        events=len(messages),
        fetch_jobs=sum(pairs.values()),
        items=len(pairs),
        workers=WORKERS,
        sigkills=len(kills),
        extra_fetches=f"{extra_fetches} (bound {bound})",
        repeated_deliveries=f"{delivered.repeats} (same key)",
        leases_lost_by_live_workers=leases_lost,
        lost=0,
        stored_twice=0,
        seconds=round(time.monotonic() - began, 1),
    )


# R2 ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_claim", "after_fetch", "after_commit"])
def test_r2_worker_dying_at_a_failpoint_costs_at_most_a_refetch(
    point: str,
    tmp_path: Path,
    db_url: str,
    fake: Any,
    fake_url: str,
    service_factory: Any,
    seed: int,
    rng: random.Random,
) -> None:
    began = time.monotonic()
    ids = fake.generate_items(scaled(12))
    messages = make_events(rng, ids, scaled(4), 5, prefix=f"msg_r2_{seed}")
    pairs = fetch_pairs(messages)
    insert_events(db_url, messages)
    out = tmp_path / "out.jsonl"
    # one job at a time, so the crash takes exactly one job down with it
    env = worker_env(db_url, fake_url, f"jsonl:{out}", DIMMY_API_CONCURRENCY="1")
    args = ["worker", "--concurrency", "1"]
    # the n-th pass: any fetch for after_fetch; any event or fetch job (and the deliveries
    # queued between them) for the others; jobs run one at a time, oldest first
    k = rng.randint(1, sum(pairs.values()) + (0 if point == "after_fetch" else len(messages)))
    print(f"R2 schedule: DIMMY_FAILPOINT={point}:{k}")
    crashing = service_factory(args, **env, DIMMY_FAILPOINT=f"{point}:{k}").start()
    code = exit_code(crashing, timeout=60)
    assert code == -signal.SIGKILL, f"did not die at {point}:{k}\n{crashing.log()}"

    # the state the crash left (no process running)
    claimed = rows(db_url, "SELECT kind, item_id FROM jobs WHERE status = 'running'")
    fetched_at_crash = sum(fake.counts.values())
    last_done = rows(db_url, "SELECT kind FROM jobs WHERE status = 'done' ORDER BY updated_at DESC")
    if point == "after_commit":
        assert claimed == [], claimed  # committed, and nothing else was held
        hit = last_done[0][0]  # the kind of job it had just committed
    else:
        assert len(claimed) == 1, claimed  # the one job it held stays claimed until its lease ends
        hit = claimed[0][0]
    crashed_item = None
    if point == "after_fetch":
        kind, crashed_item = claimed[0]
        assert kind == "fetch"
        assert fake.counts[crashed_item] >= 1  # fetched, then the worker died before storing it

    restarted = service_factory(args, **env).start()
    drain(db_url, [restarted], timeout=60, earlier=[crashing])

    stored = check_all_done(db_url, messages, pairs)
    extra_fetches = sum(fake.counts.values()) - sum(pairs.values())
    if point == "after_fetch":
        assert crashed_item is not None
        assert extra_fetches == 1  # the crash cost one refetch, not a loss
        assert fake.counts[crashed_item] == pairs[crashed_item] + 1
    else:
        assert extra_fetches == 0
    delivered = check_delivered(out, stored)
    assert delivered.repeats == 0  # no failpoint lies between a delivery and its commit
    summary(
        f"R2 [{backend(db_url)}] seed={seed} {point}:{k}",
        events=len(messages),
        fetch_jobs=sum(pairs.values()),
        crashed_in=f"{hit} job",
        fetched_before_crash=fetched_at_crash,
        jobs_held_at_crash=len(claimed),
        extra_fetches=extra_fetches,
        repeated_deliveries=delivered.repeats,
        lost=0,
        stored_twice=0,
        seconds=round(time.monotonic() - began, 1),
    )


@pytest.mark.slow
def test_r2_receiver_dying_after_insert_is_answered_by_the_retry(
    db_url: str, service_factory: Any, seed: int, rng: random.Random
) -> None:
    began = time.monotonic()
    env = {"DIMMY_DATABASE_URL": db_url, "DIMMY_WEBHOOK_SECRET": SECRET}
    receiver = service_factory(["serve", "--no-worker"], **env, DIMMY_FAILPOINT="after_insert")
    receiver.start()
    ids = [f"{rng.getrandbits(96):024x}" for _ in range(3)]
    message = make_events(rng, ids, 1, 3, prefix=f"msg_r2r_{seed}")[0]
    print(f"R2 schedule: DIMMY_FAILPOINT=after_insert on the first POST of {message[0]}")
    sender = RetryingSender(
        [receiver.url], [message], seed=seed, concurrency=1, retry_delay=(0.1, 0.3)
    ).start()
    code = exit_code(receiver, timeout=30)
    assert code == -signal.SIGKILL, receiver.log()
    first_life = receiver.log()
    del receiver.env["DIMMY_FAILPOINT"]
    receiver.start()  # the same port: the sender keeps retrying the same URL
    finished = sender.join(timeout=60)
    assert receiver.stop() in SERVE_CLEAN_EXIT, receiver.log()
    assert finished

    attempts = list(sender.attempts)
    assert attempts, first_life
    assert {a.msg_id for a in attempts} == {message[0]}  # every retry with the same id
    assert attempts[0].status is None, attempts[0]  # the crash: no answer at all, no 2xx
    assert [a.ok for a in attempts].count(True) == 1, attempts
    assert attempts[-1].status == 204, attempts
    found = rows(db_url, "SELECT message_id, body, deliveries FROM events")
    answered = sum(1 for a in attempts if a.status is not None)
    # one row; it counts the crashed delivery and every answered retry
    assert found == [(message[0], message[1], 1 + answered)], found
    summary(
        f"R2 [{backend(db_url)}] seed={seed} after_insert",
        attempts=len(attempts),
        first=attempts[0].error,
        last=attempts[-1].status,
        event_rows=len(found),
        seconds=round(time.monotonic() - began, 1),
    )


# R3 ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_r3_receiver_sigkilled_under_a_retrying_sender_loses_and_doubles_nothing(
    db_url: str, service_factory: Any, seed: int, rng: random.Random
) -> None:
    began = time.monotonic()
    n_messages, n_kills = scaled(600), scaled(10)
    ids = [f"{rng.getrandbits(96):024x}" for _ in range(100)]
    messages = make_events(rng, ids, n_messages, 3, prefix=f"msg_r3_{seed}")
    env = {
        "DIMMY_DATABASE_URL": db_url,
        "DIMMY_WEBHOOK_SECRET": SECRET,
        "DIMMY_LOG_LEVEL": "WARNING",
    }
    receiver = service_factory(["serve", "--no-worker"], **env).start()
    margin = n_messages // 20
    marks = sorted(rng.sample(range(margin, n_messages - margin), n_kills))
    print(f"R3 kill schedule: SIGKILL the receiver once the sender has this many 2xx: {marks}")
    sender = RetryingSender(
        [receiver.url],
        messages,
        seed=seed,
        concurrency=8,
        retry_delay=(0.05, 0.25),
        deadline_seconds=scaled(150),
    ).start()
    kills: list[str] = []
    t0 = time.monotonic()
    for mark in marks:

        def reached_mark(mark: int = mark) -> bool:
            return len(sender.acked) >= mark or sender.finished

        reached = wait_until(reached_mark, timeout=60)
        assert reached, f"sender stalled at {len(sender.acked)} acks"
        assert not sender.finished, "the sender finished before every kill landed"
        receiver.kill(signal.SIGKILL)
        assert receiver.proc is not None
        assert receiver.proc.returncode == -signal.SIGKILL
        kills.append(f"{time.monotonic() - t0:.2f}s at {len(sender.acked)} acks")
        receiver.start()  # same object, same port; waits for /healthz
    print("R3 kills:\n  " + "\n  ".join(kills))
    finished = sender.join(timeout=scaled(180))
    assert receiver.stop() in SERVE_CLEAN_EXIT, receiver.log()[-3000:]
    assert finished, "sender did not finish"

    # after the receiver exited
    missing = sender.missing()
    assert not missing, f"{len(missing)} never answered 2xx, e.g. {missing[:3]}"
    stored = rows(db_url, "SELECT message_id, body, deliveries FROM events")
    by_id = {msg_id: (bytes(body), deliveries) for msg_id, body, deliveries in stored}
    assert len(by_id) == len(stored) == n_messages  # none twice
    assert set(sender.acked) <= set(by_id)  # every 2xx is in the inbox
    assert {msg_id: body for msg_id, (body, _) in by_id.items()} == dict(messages)
    assert integrity_check(db_url) in (None, "ok")
    failed = sender.failed_attempts
    cut = [a for a in failed if a.error and not a.error.startswith("ConnectError")]
    recognised = sum(deliveries for _, deliveries in by_id.values()) - n_messages
    summary(
        f"R3 [{backend(db_url)}] seed={seed}",
        posts=n_messages,
        receiver_sigkills=len(kills),
        attempts=len(sender.attempts),
        failed_attempts=len(failed),
        cut_mid_request=len(cut),
        duplicates_recognised=recognised,
        lost=0,
        stored_twice=0,
        seconds=round(time.monotonic() - began, 1),
    )


# R15 -----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["finishes_in_grace", "hangs_past_grace"])
def test_r15_sigterm_during_work_exits_in_grace_and_releases_claims(
    mode: str,
    tmp_path: Path,
    db_url: str,
    fake: Any,
    fake_url: str,
    service_factory: Any,
    seed: int,
    rng: random.Random,
) -> None:
    import os

    began = time.monotonic()
    ids = fake.generate_items(scaled(40))
    messages = make_events(rng, ids, scaled(4), 10, prefix=f"msg_r15_{seed}")
    pairs = fetch_pairs(messages)
    insert_events(db_url, messages)
    fake.config.latency_seconds = 0.3  # fetches are in flight when SIGTERM comes
    extra: dict[str, str] = {}
    if mode == "hangs_past_grace":  # ... and never answer: the grace period runs out
        fake.config.hang_rate, fake.config.hang_seconds = 1.0, 60.0
        extra["DIMMY_API_TIMEOUT_SECONDS"] = "30"  # no client timeout within the grace period
    out = tmp_path / "out.jsonl"
    # a long lease: if claims are freed at once, it was the release, not the lease expiring
    env = worker_env(db_url, fake_url, f"jsonl:{out}", DIMMY_LEASE_SECONDS="120", **extra)
    first = WorkerSlot(service_factory(["worker"], **env)).start()
    owner = first.current_owner(timeout=30)
    assert owner, first.service.log()
    pause = round(rng.uniform(0.0, 1.0), 3)
    print(f"R15 schedule: {mode}, SIGTERM {pause}s after the worker holds work and fetches")
    print("  are in flight")
    held = in_flight = 0

    def working() -> bool:
        nonlocal held, in_flight
        held, in_flight = running_jobs(db_url, owner), fake.in_flight
        return held > 0 and in_flight > 0

    assert wait_until(working, timeout=30), db_state(db_url)
    time.sleep(pause)
    assert wait_until(working, timeout=30), db_state(db_url)
    assert first.service.proc is not None
    sent = time.monotonic()
    os.killpg(first.service.proc.pid, signal.SIGTERM)
    code = exit_code(first.service, timeout=60)
    took = time.monotonic() - sent
    still_claimed = running_jobs(db_url, owner)  # at once, long before any lease could end
    left = work_left(db_url)
    log = first.service.log()
    assert code == 0, log
    assert took < GRACE_SECONDS + 5, f"took {took:.1f}s to exit (grace period {GRACE_SECONDS}s)"
    assert still_claimed == 0, db_state(db_url)
    assert running_jobs(db_url) == 0, db_state(db_url)
    assert "worker stopped" in log
    released = [int(n) for n in re.findall(r"claims released jobs=(\d+)", log)]
    if mode == "hangs_past_grace":
        assert took >= GRACE_SECONDS - 0.5, f"gave up after {took:.1f}s, before the grace period"
        assert released, log  # the unfinished jobs went back to the queue at once
        assert released[0] >= held, (released, held)
        # a released job gets its attempt back: the shutdown was not the job's failure
        burnt = rows(
            db_url, "SELECT id, attempts FROM jobs WHERE status = 'pending' AND attempts > 0"
        )
        assert burnt == [], burnt
    fake.config.hang_rate, fake.config.latency_seconds = 0.0, 0.0

    second = service_factory(["worker"], **env).start()
    drain(db_url, [second], timeout=60, earlier=[first.service])

    stored = check_all_done(db_url, messages, pairs)
    extra_fetches = sum(fake.counts.values()) - sum(pairs.values())
    # what finished within the grace period was stored; what hung was never answered: nothing
    # fetched twice either way
    assert extra_fetches == 0
    delivered = check_delivered(out, stored)
    assert delivered.repeats == 0
    summary(
        f"R15 [{backend(db_url)}] seed={seed} {mode}",
        jobs_held_at_sigterm=held,
        fetches_in_flight=in_flight,
        exit_seconds=round(took, 2),
        exit_code=code,
        claimed_after_exit=still_claimed,
        released_at_exit=sum(released),
        work_left_for_next_worker=left,
        extra_fetches=extra_fetches,
        repeated_deliveries=delivered.repeats,
        lost=0,
        seconds=round(time.monotonic() - began, 1),
    )
