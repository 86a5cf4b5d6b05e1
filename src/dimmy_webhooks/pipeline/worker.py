"""Workers: claim due work with a lease, run it, give back what is left when stopping.

A worker claims up to ``concurrency`` jobs, ``claim_batch`` at a time, runs each in its own task
(:class:`~.jobs.JobRunner`: the three kinds of work and how each failure is recorded), renews
its leases while they run, and sleeps until woken (this process), hinted (another process,
through the database) or its poll is due. A worker killed mid-way loses nothing: its leases
expire and another worker (or the same one restarted) takes the work over; its late writes are
refused. One stopped gives running jobs a grace period, then releases every claim.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence

from dimmy_webhooks import failpoints
from dimmy_webhooks.errors import StoreError
from dimmy_webhooks.models import Job, JobKind
from dimmy_webhooks.outputs import Output
from dimmy_webhooks.pipeline.accounts import AccountWork
from dimmy_webhooks.pipeline.jobs import JobRunner, WorkerPolicy
from dimmy_webhooks.store import Store
from dimmy_webhooks.upstream.client import DimmyClient

log = logging.getLogger("dimmy_webhooks.pipeline.worker")

CANCEL_WAIT_SECONDS = 5.0
"""How long a stopping worker waits for its cancelled jobs to end before it releases its claims
(a cancelled job first lets its store write in flight end, which takes milliseconds)."""

REFILL_SHARE = 4
"""A worker with running jobs claims again once 1/REFILL_SHARE of its slots are free ..."""

REFILL_WAIT_SECONDS = 0.5
"""... or this long after its last claim, with at least one slot free."""


class Worker:
    """Runs jobs from ``store`` until :meth:`run`'s stop event is set."""

    def __init__(
        self,
        store: Store,
        client: DimmyClient | None,
        outputs: Sequence[Output],
        policy: WorkerPolicy,
        *,
        accounts: Sequence[AccountWork] = (),
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        crash: failpoints.Failpoints = failpoints.NONE,
    ) -> None:
        self.crash = crash
        self.store = store
        self.policy = policy
        self.owner = owner or f"worker-{uuid.uuid4().hex[:12]}"
        self.clock = clock
        if not accounts:  # one account: the installation's settings
            by_name = {output.name: output for output in outputs}
            accounts = [AccountWork("default", client, by_name, policy.intake, policy.concurrency)]
        self.jobs = JobRunner(
            store,
            {work.name: work for work in accounts},
            policy,
            owner=self.owner,
            clock=clock,
            rng=rng or random.Random(),
            crash=crash,
        )
        self._wake = asyncio.Event()
        self._active: dict[asyncio.Task[None], Job] = {}  # running jobs: what each runs
        self._refill = max(1, policy.concurrency // REFILL_SHARE)
        self._last_claim = 0.0
        self._new_work = False  # woken for new work since the last claim (not a slot freed)

    @property
    def accounts(self) -> dict[str, AccountWork]:
        """What each account's jobs run with, by account name."""
        return self.jobs.accounts

    @property
    def client(self) -> DimmyClient | None:
        """The first account's client (one account: its only one)."""
        return next(iter(self.accounts.values())).client

    @property
    def outputs(self) -> dict[str, Output]:
        """The first account's outputs by name (one account: its only ones)."""
        return next(iter(self.accounts.values())).outputs

    @property
    def config_error(self) -> str | None:
        """Why fetching is paused (a refused API key), for ``/readyz``."""
        return self.jobs.config_error

    @property
    def processed(self) -> int:
        """Jobs run to their end (done, or handed on) by this worker."""
        return self.jobs.processed

    def wake(self) -> None:
        """New work may be due (called by the receiver in the same process)."""
        self._new_work = True
        self._wake.set()

    # main loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run work until ``stop`` is set, then stop gracefully (release claims)."""
        log.info("worker started", extra={"fields": {"owner": self.owner}})
        beat = asyncio.create_task(self._heartbeat(stop))
        try:
            while not stop.is_set():
                self._wake.clear()
                claimed, asked = await self._claim_some()
                if claimed and claimed == asked and self._free() >= self._refill:
                    continue  # there may be more due work: claim again before sleeping
                await self._sleep(stop)
                await self._until_refill(stop)
        finally:
            await self._drain()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            log.info("worker stopped", extra={"fields": {"owner": self.owner}})

    def _free(self) -> int:
        return self.policy.concurrency - len(self._active)

    async def _until_refill(self, stop: asyncio.Event) -> None:
        """Claim in batches: wait, after the last claim, until 1/:data:`REFILL_SHARE` of the
        slots are free, or :data:`REFILL_WAIT_SECONDS` have passed with one free.

        Each claim is a write through the store's writers, which webhook inserts wait on in an
        all-in-one ``serve``; without this, a worker whose jobs wait for the API's rate budget
        would claim again for every slot a job frees (one claim per item). New work (a webhook
        stored, an event expanded) is claimed at once, with the slots that are free: a live
        scan does not wait for the backlog's jobs to end."""
        deadline = self._last_claim + REFILL_WAIT_SECONDS
        while not stop.is_set() and self._free() < self._refill and not self._new_work:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def _claim_some(self) -> tuple[int, int]:
        """Claim what fits in the free slots: (jobs claimed, jobs asked for)."""
        free = self._free()
        if free <= 0:
            return 0, 0
        running = collections.Counter(job.account for job in self._active.values())
        room = {name: work.share - running[name] for name, work in self.accounts.items()}
        asked = min(free, self.policy.claim_batch)
        self._last_claim = time.monotonic()
        self._new_work = False
        try:
            jobs = await self.store.claim(
                self.owner, asked, self.policy.lease_seconds, self.clock(), accounts=room
            )
        except StoreError as exc:
            log.warning("claim failed", extra={"fields": {"reason": str(exc)}})
            return 0, asked
        if jobs:
            self.crash.hit("after_claim")
        for job in jobs:
            task = asyncio.create_task(self.jobs.handle(job))
            self._active[task] = job
            task.add_done_callback(self._done)
        return len(jobs), asked

    def _done(self, task: asyncio.Task[None]) -> None:
        job = self._active.pop(task, None)
        if job is not None and job.kind is JobKind.EVENT:  # it queued fetches: new work
            self._new_work = True
        self._wake.set()

    async def _sleep(self, stop: asyncio.Event) -> None:
        """Until stopped, woken (this process), hinted (another process), or the poll is due."""
        waiters = {
            asyncio.create_task(stop.wait()),
            asyncio.create_task(self._wake.wait()),
            asyncio.create_task(self.store.wait_for_work(self.policy.poll_seconds)),
        }
        try:
            await asyncio.wait(
                waiters, timeout=self.policy.poll_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        interval = self.policy.lease_seconds / 3
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if self._active:
                try:
                    await self.store.heartbeat(self.owner, self.policy.lease_seconds, self.clock())
                except StoreError as exc:
                    log.warning("heartbeat failed", extra={"fields": {"reason": str(exc)}})

    async def _drain(self) -> None:
        """Give running jobs ``grace_seconds``, cancel the rest, then release every claim.

        A cancelled job ends once its store write in flight has ended, so the release sees what
        it wrote; one that has not ended after :data:`CANCEL_WAIT_SECONDS` (an ``async`` output
        that ignores cancellation) is left behind: stopping never waits for it, and a write it
        makes after the release is refused (the lease is gone).
        """
        if self._active:
            _, pending = await asyncio.wait(set(self._active), timeout=self.policy.grace_seconds)
            for task in pending:
                task.cancel()
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=CANCEL_WAIT_SECONDS)
                if stuck:
                    log.warning(
                        "jobs did not stop when cancelled", extra={"fields": {"jobs": len(stuck)}}
                    )
        try:
            released = await self.store.release(self.owner, self.clock())
        except StoreError as exc:
            log.warning(
                "release failed; leases will expire", extra={"fields": {"reason": str(exc)}}
            )
            return
        if released:
            log.info("claims released", extra={"fields": {"jobs": released}})
