"""Disk full under SQLite (catalogue R14): no 2xx for a failed write, recovery without a restart.

"Disk full" is made with ``RLIMIT_FSIZE`` on the running ``serve`` process (``prlimit --pid``,
util-linux): past the limit a write fails with ``EFBIG`` (Python ignores ``SIGXFSZ``), which
SQLite reports as "database or disk is full" (a short write) or "disk I/O error" (a write that
starts past the limit). Only the soft limit is lowered and restored, so no privilege is needed.
The cap is set just above the largest file the process writes (database, WAL, log) and the
webhooks carry ~80 KB bodies, so the WAL or the database must grow past it within a few commits.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..support.constants import API_KEY, SECRET, scaled
from ..support.databases import query, unfinished_jobs
from ..support.processes import wait_until
from ..support.senders import signed

pytestmark = [pytest.mark.faults, pytest.mark.slow]

PAD_BYTES = 80_000
CAP_MARGIN = 64 * 1024
CAP_HOLD_SECONDS = 3.0  # longer than the lease, so the worker also runs into the full disk
WAVE = 8  # concurrent posts while capped


def _prlimit(pid: int, value: str) -> None:
    """Set the soft ``RLIMIT_FSIZE`` of ``pid`` (``value`` bytes or ``unlimited``)."""
    subprocess.run(
        ["prlimit", "--pid", str(pid), f"--fsize={value}:"],
        check=True,
        capture_output=True,
        timeout=10,
    )


def _soft_fsize(pid: int) -> str:
    out = subprocess.run(
        ["prlimit", "--pid", str(pid), "--fsize", "--output=SOFT", "--noheadings"],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return out.strip()


def _body(item_id: str, rng: random.Random) -> bytes:
    pad = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=PAD_BYTES))
    return json.dumps({"item_ids": [item_id], "note": pad}, separators=(",", ":")).encode()


def test_r14_disk_full_then_freed_recovers_without_restart(
    sqlite_url: str,
    fake: Any,
    fake_url: str,
    service_factory: Any,
    seed: int,
    rng: random.Random,
) -> None:
    """R14: while writes fail for lack of space, the receiver answers 503 and never 2xx for a
    webhook it did not store; once space is back the same process stores webhooks again (and its
    worker finishes the work); the file passes ``integrity_check`` and holds every 2xx'd message.
    """
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) not found: cannot cap the service's file size")
    db_path = Path(sqlite_url.removeprefix("sqlite:///"))
    n_before, n_after = scaled(20), scaled(20)
    max_capped, min_refused = scaled(400), 20
    ids = fake.generate_items(n_before + max_capped + n_after)
    service = service_factory(
        ["serve"],
        DIMMY_DATABASE_URL=sqlite_url,
        DIMMY_WEBHOOK_SECRET=SECRET,
        DIMMY_API_KEY=API_KEY,
        DIMMY_API_URL=fake_url,
        DIMMY_OUTPUTS="",
        DIMMY_LEASE_SECONDS="2",
        DIMMY_RETRY_BASE_SECONDS="0.1",
        DIMMY_RETRY_MAX_SECONDS="1",
    ).start()
    assert service.proc is not None
    pid = service.proc.pid
    url = service.url + "/webhook"
    bodies: dict[str, bytes] = {}
    answers: dict[str, list[int]] = {}  # every answer per message id, in order
    lock = threading.Lock()

    def post(client: httpx.Client, msg_id: str) -> int:
        body = bodies[msg_id]
        try:
            status = client.post(url, content=body, headers=signed(body, msg_id)).status_code
        except httpx.HTTPError as exc:
            print(f"R14 {msg_id}: {type(exc).__name__}: {exc}")
            status = -1
        with lock:
            answers.setdefault(msg_id, []).append(status)
        return status

    ids_left = iter(ids)

    def new_message(phase: str, n: int) -> str:
        msg_id = f"msg_r14_{phase}_{n}"
        bodies[msg_id] = _body(next(ids_left), rng)
        return msg_id

    with httpx.Client(timeout=30) as client:
        before = [post(client, new_message("before", n)) for n in range(n_before)]
        assert before == [204] * n_before, service.log()[-3000:]

        files = [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm"), service.log_path]
        sizes = {f.name: f.stat().st_size for f in files if f.exists()}
        cap = max(sizes.values()) + CAP_MARGIN
        _prlimit(pid, str(cap))
        assert _soft_fsize(pid) == str(cap)
        print(f"R14 inject: RLIMIT_FSIZE {cap} bytes on pid {pid} (files {sizes})")

        # waves of concurrent posts (one group commit holds several ~80 KB bodies, more than the
        # page cache: some fail mid-batch, not only at COMMIT), until enough were refused and
        # the worker's leases (2 s) expired under the cap; bounded in count and time
        capped: list[tuple[str, int]] = []
        capped_at = time.monotonic()
        with ThreadPoolExecutor(WAVE) as pool:
            for wave in range(max_capped // WAVE):
                msg_ids = [new_message("capped", wave * WAVE + k) for k in range(WAVE)]
                capped += zip(msg_ids, pool.map(lambda m: post(client, m), msg_ids), strict=True)
                held = time.monotonic() - capped_at
                refusals = sum(1 for _, s in capped if s == 503)
                if (refusals >= min_refused and held >= CAP_HOLD_SECONDS) or held > 30:
                    break
                time.sleep(0.05)
        capped_for = time.monotonic() - capped_at
        refused = [msg_id for msg_id, s in capped if s == 503]
        accepted_capped = [msg_id for msg_id, s in capped if s == 204]
        other = [(msg_id, s) for msg_id, s in capped if s not in (204, 503)]
        assert not other, f"answers other than 204/503 while capped: {other}"
        assert len(refused) >= min_refused, (
            f"the cap did not make writes fail: {len(capped)} posts, statuses "
            f"{[s for _, s in capped]}\n{service.log()[-3000:]}"
        )
        capped_log = service.log()

        _prlimit(pid, "unlimited")
        assert _soft_fsize(pid) == "unlimited"
        assert service.proc.poll() is None, "the service died while the disk was full"
        after = [post(client, new_message("after", n)) for n in range(n_after)]
        # a 503 should mean "not stored" (harmless if not: the retry is then a duplicate)
        in_inbox = {row["message_id"] for row in query(sqlite_url, "SELECT message_id FROM events")}
        refused_but_stored = len(set(refused) & in_inbox)
        # the sender retries what was refused: accepted now
        retried = [post(client, msg_id) for msg_id in refused]

    recovered = all(s == 204 for s in after)
    assert recovered, f"after the cap was lifted: {after}\n{service.log()[-3000:]}"
    assert retried == [204] * len(refused), f"retries of refused webhooks: {retried}"
    assert service.proc.pid == pid
    assert service.proc.poll() is None

    # the worker catches up too (claims and finishes that failed while capped are redone)
    work_done = wait_until(lambda: unfinished_jobs(sqlite_url) == 0, timeout=30, interval=0.2)
    code = service.stop()  # SIGTERM; uvicorn re-raises it after a graceful shutdown
    log = service.log()
    assert code in (0, -signal.SIGTERM), log[-3000:]
    assert "worker stopped" in log
    assert work_done, f"work left after the cap was lifted\n{log[-3000:]}"

    # after every process exited: the file is sound and holds every acknowledged webhook, intact
    assert query(sqlite_url, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    acked = {msg_id for msg_id, statuses in answers.items() if 204 in statuses}
    rows = query(sqlite_url, "SELECT message_id, body FROM events")
    stored = {row["message_id"]: bytes(row["body"]) for row in rows}
    missing = sorted(acked - set(stored))
    assert not missing, f"acknowledged (204) but not stored: {missing}"
    assert set(stored) == set(answers)  # everything was finally accepted, nothing else appeared
    assert all(stored[msg_id] == bodies[msg_id] for msg_id in stored)
    statuses = {row["status"] for row in query(sqlite_url, "SELECT status FROM jobs")}
    assert statuses == {"done"}, statuses
    errors = capped_log.count("webhook not stored")
    print(
        f"R14 sqlite seed={seed}: cap {cap} B on pid {pid} after {n_before} webhooks of "
        f"~{PAD_BYTES // 1000} KB; while capped ({capped_for:.1f} s, "
        f"{WAVE} concurrent) {len(capped)} posts -> {len(accepted_capped)} "
        f"204, {len(refused)} 503 ({errors} 'webhook not stored' logged, "
        f"{refused_but_stored} stored anyway); cap lifted, same pid: "
        f"{n_after}/{n_after} new + {len(refused)}/{len(refused)} retried -> 204; "
        f"{len(stored)} events stored = every 204, integrity_check ok, all jobs done"
    )
