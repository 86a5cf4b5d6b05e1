"""Scale-out acceptance test: 2 receivers and 3 workers on one PostgreSQL, under faults.

``dimmy-webhooks serve --no-worker`` twice and ``dimmy-webhooks worker`` three times, as users start
them, share one private PostgreSQL cluster (:mod:`tests.support.pgcluster`: the shared test server
must not be stopped under other tests). A retrying sender posts a few thousand signed
``items.scanned`` events (a few hundred distinct item ids, 1-5 per event, repeated across events),
alternating between the receivers and retrying any non-2xx or connection error with the same message
id. Meanwhile workers are SIGKILLed (and restarted at once, as a supervisor would), and PostgreSQL
is crashed (``pg_ctl stop -m immediate``) and started again in the middle of the load (R1, R3, R13).
One worker, the witness, is never killed: it has to come through the outage by itself. After the
queue drained, each worker alone (the others SIGSTOPped) must process a few new events.

After every process exited, the database must hold every event that was answered 2xx, each once,
every item once, no work left queued or claimed or dead, every event ``done``, every item in the
output; no 2xx may have been answered for a request made while the database was down, and 503s
must have been seen then. Each run prints its seed (``DIMMY_FAULTS_SEED`` replays its schedule),
its kills and its numbers; ``DIMMY_FAULTS_FULL=1`` makes it ten times bigger.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dimmy_webhooks.outputs import JsonlOutput

from ..support.builders import make_events
from ..support.constants import API_KEY, CLI, FULL, SECRET, scaled
from ..support.databases import job_counts, rows, scalar, work_left
from ..support.pgcluster import PgCluster, unavailable_reason
from ..support.processes import ServiceProcess, clean_env, logs_tail, wait_until
from ..support.senders import RetryingSender, post_signed

SCALE = scaled(1)
N_EVENTS = scaled(2000)
N_ITEM_IDS = scaled(300)
N_KILLS = scaled(10)
N_WORKERS = 3
N_RECEIVERS = 2
SEND_SECONDS = 16.0 * SCALE  # the sender spreads the events over about this long
OUTAGE_SECONDS = 12.0  # longer than the receivers' pool timeout (10 s): 503s must show
SENDER_CONCURRENCY = 24
REQUEST_TIMEOUT = 40.0  # a request may queue behind others waiting for the pool
DRAIN_SECONDS = 60.0 * SCALE
PROBE_EVENTS = 6

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.timeout(3600 if FULL else 300),
]


@pytest.fixture
def private_pg() -> Iterator[PgCluster]:
    reason = unavailable_reason()
    if reason is not None:
        reason = f"cannot start a private PostgreSQL cluster: {reason}"
        if os.environ.get("DIMMY_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = PgCluster(log_tag="dimmy-scale-out")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


# helpers -------------------------------------------------------------------------------------


def pg_connections(pid: int, pg_port: int) -> int:
    """Established TCP connections process ``pid`` holds to ``pg_port`` on 127.0.0.1."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        table = Path(f"/proc/{pid}/net/tcp").read_text()
    except OSError:
        return 0
    count = 0
    for line in table.splitlines()[1:]:
        fields = line.split()
        remote, state, inode = fields[2], fields[3], fields[9]
        if state == "01" and int(remote.split(":")[1], 16) == pg_port and inode in inodes:
            count += 1
    return count


# the run -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """The fault schedule, as shares of the events answered 2xx (so it adapts to the machine's
    speed): PostgreSQL is crashed once for ``OUTAGE_SECONDS``; workers are SIGKILLed in order,
    each as soon as its share is reached and that worker is running."""

    outage_at: float
    kills: list[tuple[float, int]]  # (share of the events answered 2xx, worker slot)
    witness: int  # this worker is never killed: it must come through the outage by itself

    @classmethod
    def draw(cls, rng: random.Random) -> Plan:
        witness = rng.randrange(N_WORKERS)
        others = [slot for slot in range(N_WORKERS) if slot != witness]
        kills = [(round(rng.uniform(0.02, 0.95), 3), rng.choice(others)) for _ in range(N_KILLS)]
        return cls(round(rng.uniform(0.3, 0.45), 3), sorted(kills), witness)

    def describe(self) -> str:
        kills = ", ".join(f"{share:.0%}:slot {slot}" for share, slot in self.kills)
        return (
            f"postgres down at {self.outage_at:.0%} of the events for {OUTAGE_SECONDS}s; "
            f"witness worker slot {self.witness} (never killed); SIGKILL at {kills}"
        )


@dataclass
class Slot:
    """One of the worker processes: ``starting`` until it holds a database connection."""

    service: ServiceProcess
    state: str = "starting"  # starting | running | deferred (waits for the database)
    since: float = field(default_factory=time.monotonic)


@dataclass
class ScaleOut:
    """The processes of one run, started as users start them, and what happened to them."""

    tmp_path: Path
    pg: PgCluster
    env: dict[str, str]
    every: list[ServiceProcess] = field(default_factory=list)
    receivers: list[ServiceProcess] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)
    kill_log: list[str] = field(default_factory=list)
    refused_starts: int = 0  # worker starts refused (exit 2) because the database was down
    t_down: float = 0.0  # time.monotonic() once PostgreSQL was down
    t_up: float = 0.0  # ... when its start began

    @property
    def workers(self) -> list[ServiceProcess]:
        return [slot.service for slot in self.slots]

    @property
    def db_down(self) -> bool:
        return self.t_down > self.t_up

    def start(self, args: list[str]) -> ServiceProcess:
        service = ServiceProcess(self.tmp_path, clean_env(**self.env), args)
        self.every.append(service)
        return service.start(wait=False)

    def start_all(self) -> None:
        self.receivers = [self.start(["serve", "--no-worker"]) for _ in range(N_RECEIVERS)]
        self.slots = [Slot(self.start(["worker"])) for _ in range(N_WORKERS)]
        for receiver in self.receivers:
            receiver.wait_ready(timeout=60)
        self.wait_workers_running(60)

    def tend(self) -> None:
        """Mark started workers ``running`` once connected; a worker that could not start
        because the database was down waits for it, as a supervisor would restart it."""
        for number, slot in enumerate(self.slots):
            proc = slot.service.proc
            assert proc is not None
            if slot.state == "deferred" and not self.db_down:
                self.slots[number] = Slot(self.start(["worker"]))
            elif slot.state == "running":
                assert proc.poll() is None, (
                    f"worker slot {number} exited by itself ({proc.returncode}):\n"
                    + slot.service.log()
                )
            elif slot.state != "starting":
                continue
            elif proc.poll() is None:
                # its pool (2) and its LISTEN connection are open: the store is open
                if pg_connections(proc.pid, self.pg.port) >= 3:
                    slot.state = "running"
            else:
                # `worker` exits 2 at start-up without its database: fine while it was down
                refused = proc.returncode == 2 and (self.t_down >= slot.since or self.db_down)
                assert refused, (
                    f"worker slot {number} exited ({proc.returncode}) while starting:\n"
                    + slot.service.log()
                )
                self.refused_starts += 1
                slot.state = "deferred"

    def wait_workers_running(self, timeout: float) -> None:
        def all_running() -> bool:
            self.tend()
            return all(slot.state == "running" for slot in self.slots)

        assert wait_until(all_running, timeout, 0.05), (
            f"workers not running: {[s.state for s in self.slots]}\n" + logs_tail(self.workers)
        )

    def run_faults(self, plan: Plan, sender: RetryingSender) -> None:
        """Follow the plan while the sender runs: crash and restart PostgreSQL once, SIGKILL
        workers (each restarted at once, as a supervisor would)."""
        t0 = sender.started_at
        kills = list(plan.kills)
        crashed = False
        give_up = float("inf")  # kills left when the sender is done land in the drain
        while (kills or not crashed or self.db_down) and time.monotonic() < give_up:
            if give_up == float("inf") and sender.finished:
                give_up = time.monotonic() + 60
            self.tend()
            share = len(sender.acked) / len(sender.messages)
            now = time.monotonic() - t0
            if not crashed and share >= plan.outage_at:
                self.pg.crash()
                self.t_down, crashed = time.monotonic(), True
                print(f"[{now:6.2f}s] postgres stopped -m immediate")
            elif self.db_down and time.monotonic() >= self.t_down + OUTAGE_SECONDS:
                self.t_up = time.monotonic()
                took = self.pg.start()
                print(f"[{now:6.2f}s] postgres started again ({took:.2f}s)")
            elif kills and share >= kills[0][0] and self.slots[kills[0][1]].state == "running":
                self.kill_worker(kills.pop(0)[1], now)
            else:
                time.sleep(0.05)
        assert crashed, "the sender stopped before PostgreSQL was crashed"
        assert not kills, f"these kills could not happen: {kills}"
        self.wait_workers_running(60)

    def kill_worker(self, number: int, now: float) -> None:
        slot = self.slots[number]
        proc = slot.service.proc
        assert proc is not None
        if slot.state != "running":
            print(f"  skipped the kill of slot {number} at {now:.2f}s: it is {slot.state}")
            return
        assert proc.poll() is None, f"worker slot {number} exited by itself:\n{slot.service.log()}"
        running: object = "db down"
        if not self.db_down:
            running = scalar(self.pg.url, "SELECT count(*) FROM jobs WHERE status = 'running'")
        slot.service.kill(signal.SIGKILL)
        self.kill_log.append(f"{now:.2f}s slot {number} pid {proc.pid} jobs running={running}")
        print(f"  SIGKILL {self.kill_log[-1]}")
        # restarted at once, even while the database is down (it then exits 2 and waits)
        self.slots[number] = Slot(self.start(["worker"]))

    def probe_each_worker(
        self, ids: list[str], rng: random.Random, plan: Plan
    ) -> list[tuple[str, bytes]]:
        """Each worker alone (the others SIGSTOPped) must process new events; returns them."""
        for service in self.receivers + self.workers:
            assert service.proc is not None
            assert service.proc.poll() is None, f"exited by itself:\n{service.log()}"
        probed: list[tuple[str, bytes]] = []
        for slot, worker in enumerate(self.workers):
            others = [w.proc for w in self.workers if w is not worker and w.proc is not None]
            for other in others:
                os.killpg(other.pid, signal.SIGSTOP)
            try:
                probe = make_events(rng, ids, PROBE_EVENTS, (1, 5), f"msg_probe{slot}")
                for n_msg, (msg_id, body) in enumerate(probe):
                    receiver = self.receivers[n_msg % N_RECEIVERS]
                    response = post_signed(receiver.url, msg_id, body, timeout=REQUEST_TIMEOUT)
                    assert response.status_code == 204, (response.status_code, receiver.log())
                probed += probe
                how = "ran through the outage" if slot == plan.witness else "restarted"
                assert wait_until(lambda: work_left(self.pg.url) == 0, 30, 0.2), (
                    f"worker slot {slot} ({how}) does not work after the outage:\n{worker.log()}"
                )
            finally:
                for other in others:
                    os.killpg(other.pid, signal.SIGCONT)
        return probed

    def stop_all(self) -> None:
        """SIGTERM: workers exit 0; uvicorn re-raises the signal after its graceful shutdown."""
        codes = {f"worker {w.proc.pid}": w.stop() for w in self.workers if w.proc}
        codes.update({f"serve {r.proc.pid}": r.stop() for r in self.receivers if r.proc})
        bad = {k: c for k, c in codes.items() if c not in (0, -signal.SIGTERM)}
        bad.update({k: c for k, c in codes.items() if k.startswith("worker") and c != 0})
        assert not bad, f"{codes}\n" + logs_tail(self.receivers + self.workers)

    def kill_all(self) -> None:
        for service in self.every:
            if service.proc is not None and service.proc.poll() is None:
                os.killpg(service.proc.pid, signal.SIGCONT)
                service.kill()


def migrate(url: str) -> None:
    result = subprocess.run(
        [CLI, "migrate"],
        env=clean_env(DIMMY_DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# the test ------------------------------------------------------------------------------------


def test_receivers_and_workers_on_one_postgres_lose_and_duplicate_nothing_under_faults(
    tmp_path: Path, private_pg: PgCluster, fake: Any, fake_url: str
) -> None:
    seed = int(os.environ.get("DIMMY_FAULTS_SEED") or random.SystemRandom().randrange(10**9))
    rng = random.Random(seed)
    url = private_pg.url
    plan = Plan.draw(rng)
    print(
        f"\nseed={seed} (DIMMY_FAULTS_SEED={seed} replays this schedule) full={FULL} "
        f"events={N_EVENTS} item_ids={N_ITEM_IDS} workers={N_WORKERS} receivers={N_RECEIVERS} "
        f"postgres={url}\nschedule: {plan.describe()}"
    )
    migrate(url)
    ids = fake.generate_items(N_ITEM_IDS)
    messages = make_events(rng, ids, N_EVENTS, (1, 5), f"msg_{seed}")
    run = ScaleOut(
        tmp_path,
        private_pg,
        {
            "DIMMY_DATABASE_URL": url,
            "DIMMY_WEBHOOK_SECRET": SECRET,
            "DIMMY_API_KEY": API_KEY,
            "DIMMY_API_URL": fake_url,
            # the same outputs everywhere: a deliver job names its output, and a worker
            # without that output keeps putting the job back ("not configured") until it is moved
            "DIMMY_OUTPUTS": f"jsonl:{tmp_path / 'out.jsonl'}",
            "DIMMY_LEASE_SECONDS": "2",
            "DIMMY_RETRY_BASE_SECONDS": "0.1",
            "DIMMY_MAX_ATTEMPTS": "50",
            "DIMMY_API_RATE_LIMIT": "100000",
            "DIMMY_LOG_LEVEL": "WARNING",
        },
    )
    sender = RetryingSender(
        urls=[],  # the receivers', once started
        messages=messages,
        seed=seed,
        concurrency=SENDER_CONCURRENCY,
        rate=N_EVENTS / SEND_SECONDS,
        retry_delay=(0.1, 0.4),
        deadline_seconds=SEND_SECONDS + OUTAGE_SECONDS + 120 * SCALE,
        timeout=REQUEST_TIMEOUT,
    )
    try:
        run.start_all()
        sender.urls = [r.url for r in run.receivers]
        t0 = sender.start().started_at
        run.run_faults(plan, sender)
        finished = sender.join(
            timeout=max(1.0, sender.deadline - time.monotonic() + REQUEST_TIMEOUT)
        )
        assert finished, "the sender did not finish in time"
        sent_in = max(sender.acked.values(), default=t0) - t0
        never = sender.missing()
        assert not never, f"{len(never)} messages never answered 2xx, e.g. {never[:3]}\n" + (
            logs_tail(run.receivers)
        )
        drained = wait_until(lambda: work_left(url) == 0, DRAIN_SECONDS, 0.2)
        assert drained, f"work still queued after {DRAIN_SECONDS}s: {job_counts(url)}\n" + (
            logs_tail(run.workers)
        )
        drained_in = time.monotonic() - t0
        probes = run.probe_each_worker(ids, random.Random(seed + 1), plan)
        run.stop_all()
    finally:
        sender.stop()  # no new attempt starts if we failed half-way
        run.kill_all()
    elapsed = time.monotonic() - t0
    messages += probes

    # the answers while the database was down
    during = [a for a in sender.attempts if run.t_down <= a.ended <= run.t_up]
    made_during = [a for a in during if a.started >= run.t_down]
    ok_during = [a for a in made_during if a.ok]
    outage_answers = Counter(a.outcome for a in during)
    n_503 = outage_answers.get("503", 0)
    offsets_503 = sorted(round(a.ended - run.t_down, 1) for a in during if a.status == 503)
    # how long after PostgreSQL was started again each receiver answered 2xx again
    recovered = [
        round(
            min(
                (
                    a.ended
                    for a in sender.attempts
                    if a.url == receiver.url and a.ok and a.ended > run.t_up
                ),
                default=float("nan"),
            )
            - run.t_up,
            1,
        )
        for receiver in run.receivers
    ]

    # the database, after every process exited
    expected_msgs = {msg_id for msg_id, _ in messages}
    expected_ids = {i for _, body in messages for i in json.loads(body)["item_ids"]}
    events = rows(url, "SELECT message_id, status FROM events")
    stored_msgs = Counter(m for m, _ in events)
    acked = set(sender.acked) | {msg_id for msg_id, _ in probes}  # probes: all 204
    lost = acked - set(stored_msgs)
    duplicated = {m: n for m, n in stored_msgs.items() if n > 1}
    item_rows = Counter(r[0] for r in rows(url, "SELECT id FROM items"))
    items_duplicated = {i: n for i, n in item_rows.items() if n > 1}
    jobs = job_counts(url)
    event_status = Counter(s for _, s in events)
    # one fetch per (event, item id) by design; more than that is work redone after a fault
    extra_fetches = sum(fake.counts.values()) - jobs.get(("fetch", "done"), 0)
    failed_attempts = len(sender.failed_attempts)
    slowest = max((a.ended - a.started for a in sender.attempts), default=0.0)
    timeline = Counter(int((t - t0) // 5) * 5 for t in sender.acked.values())
    print(
        f"2xx per 5 s: {dict(sorted(timeline.items()))}\n"
        f"events sent={len(expected_msgs)} answered 2xx={len(acked)} stored={len(stored_msgs)} "
        f"lost={len(lost)} duplicated={len(duplicated)} | items expected={len(expected_ids)} "
        f"stored={len(item_rows)} duplicated={len(items_duplicated)} | "
        f"POSTs={len(sender.attempts)} non-2xx or failed={failed_attempts} "
        f"slowest answer={slowest:.1f}s | "
        f"outage {run.t_up - run.t_down:.1f}s: answers {dict(outage_answers)}, 503s={n_503} "
        f"(seconds after the crash: {offsets_503}), receivers answering 2xx again "
        f"{recovered}s after the restart began, refused worker starts={run.refused_starts}, "
        f"2xx for requests made during it={len(ok_during)} | kills={len(run.kill_log)} | "
        f"extra upstream fetches={extra_fetches} | jobs {jobs} | events {dict(event_status)}\n"
        f"last 2xx at {sent_in:.1f}s, drained at {drained_in:.1f}s, whole run {elapsed:.1f}s"
    )
    assert not ok_during, f"2xx answered while PostgreSQL was down: {ok_during[:5]}"
    assert n_503 > 0, f"no 503 seen while PostgreSQL was down: {outage_answers}"
    assert not lost, f"answered 2xx but not stored: {sorted(lost)[:5]}"
    assert set(stored_msgs) == expected_msgs, sorted(set(stored_msgs) ^ expected_msgs)[:5]
    assert not duplicated, duplicated
    assert set(item_rows) == expected_ids, sorted(set(item_rows) ^ expected_ids)[:5]
    assert not items_duplicated, items_duplicated
    assert not [key for key in jobs if key[1] != "done"], jobs
    assert event_status == Counter({"done": len(expected_msgs)}), event_status
    # every item reached the output, at least once, repeats only with the same key
    lines = JsonlOutput.read(tmp_path / "out.jsonl")
    assert {line["item_id"] for line in lines} == expected_ids
    assert len({line["idempotency_key"] for line in lines}) == len(expected_ids)
    assert len(run.kill_log) == N_KILLS
