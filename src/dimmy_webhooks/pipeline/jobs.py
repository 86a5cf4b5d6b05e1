"""One job: its kind run, its outcome recorded under the lease it was claimed with.

Three kinds of work (see :class:`~dimmy_webhooks.models.JobKind`):

- ``event``: read the inbox event; ``items.scanned`` fans out to one ``fetch`` per id, the full
  payload is stored as the item, an unknown shape is marked done with a note (kept, never run);
- ``fetch``: ``GET /items/{id}``, normalise, store if newer, queue one ``deliver`` per output;
- ``deliver``: hand the stored version to one output, with a stable idempotency key.

Failures: a transient upstream error or a failed output is retried with jittered exponential
backoff (never sooner than ``Retry-After``) and ends ``dead`` after ``max_attempts``; a permanent
one (404, 422) is ``dead`` at once; a refused API key pauses fetching and surfaces the problem
instead of burning attempts. How jobs are claimed, leased and given back is :mod:`.worker`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from dimmy_webhooks import failpoints
from dimmy_webhooks.config import Settings
from dimmy_webhooks.errors import (
    LeaseLost,
    OutputError,
    PermanentUpstream,
    StoreError,
    StoreUnavailable,
    TransientUpstream,
    UpstreamAuthError,
)
from dimmy_webhooks.models import (
    FULL_PAYLOAD,
    ITEMS_SCANNED,
    DeliveryAttempt,
    Job,
    JobKind,
    StoredItem,
    classify_event,
    valid_item_id,
)
from dimmy_webhooks.outputs import (
    DeliveryFailed,
    DestinationPaused,
    deliver_within,
    idempotency_key,
)
from dimmy_webhooks.pipeline.accounts import AccountWork
from dimmy_webhooks.pipeline.validation import Intake
from dimmy_webhooks.ratelimit import backoff_delay
from dimmy_webhooks.store import Lease, Store

log = logging.getLogger("dimmy_webhooks.pipeline.worker")

AUTH_PAUSE_SECONDS = 60.0


KEPT_RECHECK = 300.0
"""Seconds between looks at a delivery whose output this worker does not have."""


def unconfigured(output: str) -> str:
    """Why a delivery to ``output`` waits: what the job and ``/readyz`` say."""
    return (
        f"output {output} is not configured: its deliveries are kept; "
        f"`dimmy-webhooks move-deliveries --from {output} --to OUTPUT` (or --drop) hands them on"
    )


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


def _is_delivered_version(item: StoredItem, job: Job) -> bool:
    """Whether ``item`` (as stored now) is the version delivery ``job`` was queued for (a
    delivery queued before revisions were counted names only the version)."""
    if job.revision is not None and item.revision != job.revision:
        return False
    return item.version == job.version


def _being_cancelled() -> bool:
    """Whether the current task has been asked to stop (as opposed to code it runs raising
    ``CancelledError`` of its own)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _item_ids(values: list[object]) -> tuple[list[str], list[str]]:
    """The usable ids of an ``item_ids`` list (:func:`valid_item_id`, after trimming spaces),
    and (escaped, for the log) the others."""
    usable, rejected = [], []
    for value in values:
        text = value.strip() if isinstance(value, str) else value
        if isinstance(text, str) and valid_item_id(text):
            usable.append(text)
        else:
            rejected.append(repr(value)[:80])
    return usable, rejected


@dataclass(frozen=True, slots=True)
class WorkerPolicy:
    """How a worker paces itself and runs its jobs (:meth:`from_settings`).

    ``concurrency`` jobs in flight at most, claimed ``claim_batch`` at a time; each claim is a
    lease of ``lease_seconds`` (renewed every third of it while the job runs); a failed attempt
    waits a jittered ``retry_base_seconds * 2 ** (attempt - 1)``, at most ``retry_max_seconds``;
    an idle worker looks for due work every ``poll_seconds`` (sooner when woken); on stop,
    running jobs get ``grace_seconds`` to finish. A delivery to one output that takes longer
    than ``output_timeout_seconds`` (an ``http:`` one: its own timeout) fails. ``intake`` turns
    a fetched document into the stored item version (units, dimensional weight, and the
    plausibility rules that hold it in quarantine).
    """

    concurrency: int = 128
    lease_seconds: float = 60.0
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 900.0
    poll_seconds: float = 0.5
    grace_seconds: float = 10.0
    output_timeout_seconds: float = 30.0
    intake: Intake = field(default_factory=Intake)
    claim_batch: int = 100

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerPolicy:
        """The workers' pacing, from the settings (twice ``DIMMY_API_CONCURRENCY`` jobs in
        flight: half of them wait on the API while the others store and deliver)."""
        return cls(
            concurrency=settings.api_concurrency * 2,
            lease_seconds=settings.lease_seconds,
            retry_base_seconds=settings.retry_base_seconds,
            retry_max_seconds=settings.retry_max_seconds,
            grace_seconds=settings.shutdown_grace_seconds,
            output_timeout_seconds=settings.output_timeout_seconds,
            intake=Intake.from_settings(settings),
        )


@dataclass
class JobRunner:
    """Runs the jobs a worker claimed as ``owner`` (many at once, each in its own task): the
    kind's work, with its account's client and outputs (:class:`AccountWork`), then its
    outcome (done, retry, dead, postponed) written under the job's lease."""

    store: Store
    accounts: dict[str, AccountWork]
    policy: WorkerPolicy
    owner: str
    clock: Callable[[], float]
    rng: random.Random
    crash: failpoints.Failpoints
    processed: int = 0

    def work_of(self, job: Job) -> AccountWork:
        """The account ``job`` runs for (the worker claims only its accounts' jobs)."""
        return self.accounts[job.account]

    @property
    def config_error(self) -> str | None:
        """The first account's refused key (one account: its only one), for ``/readyz``."""
        return next((a.config_error for a in self.accounts.values() if a.config_error), None)

    async def handle(self, job: Job, item: StoredItem | None = None) -> None:
        """Run one job and record its outcome; ``item`` is the stored version a delivery
        hands on, when the caller already holds it.

        Never raises, whatever the job's code raises (``BaseException`` included: it is a
        failure of the job, logged and counted), except when the task running it is cancelled:
        that propagates.
        """
        fields: dict[str, object] = {"job": job.id, "kind": job.kind.value, "attempt": job.attempts}
        if job.item_id:
            fields["item"] = job.item_id
        try:
            if job.kind is JobKind.EVENT:
                await self._expand(job)
            elif job.kind is JobKind.FETCH:
                await self._fetch(job)
            else:
                await self._deliver(job, item)
            self.crash.hit("after_commit")
            self.processed += 1
        except LeaseLost:
            log.warning("lease lost, result discarded", extra={"fields": fields})
        except UpstreamAuthError as exc:
            await self._pause(job, exc.reason)
        except PermanentUpstream as exc:
            await self._fail(job, exc.reason, permanent=True, fields=fields)
        except TransientUpstream as exc:
            await self._fail(job, exc.reason, retry_after=exc.retry_after, fields=fields)
        except StoreUnavailable as exc:
            # nothing recorded: the lease expires and the work is done again
            fields["reason"] = str(exc)
            log.warning("store unavailable, work will be retried", extra={"fields": fields})
        except StoreError as exc:
            # the database refused this job's data (not an outage): record it like any failure
            await self._fail(job, str(exc), fields=fields)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and _being_cancelled():
                raise  # the worker is stopping: the claim is released, the attempt given back
            # Anything else fails this job and counts its attempt, SystemExit, KeyboardInterrupt
            # or a stray CancelledError from code the job called (a library, an output)
            # included: let through, they would end the worker task or the whole process, and
            # the job would go back uncounted, so each restart would die on it again, for ever.
            log.exception("job failed", extra={"fields": fields})
            await self._fail(job, f"{exc.__class__.__name__}: {exc}", fields=fields)

    async def _fail(
        self,
        job: Job,
        reason: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        fields: dict[str, object],
        attempt: DeliveryAttempt | None = None,
    ) -> None:
        now = self.clock()
        retry_at = None
        if not permanent:
            retry_at = now + backoff_delay(
                job.attempts,
                base=self.policy.retry_base_seconds,
                cap=self.policy.retry_max_seconds,
                rng=self.rng,
                retry_after=retry_after,
            )
        try:
            dead = await self.store.fail(job, reason, retry_at, now, attempt)
        except (LeaseLost, StoreError) as exc:
            log.warning("failure not recorded", extra={"fields": {**fields, "reason": str(exc)}})
            return
        level = logging.WARNING if dead else logging.INFO
        log.log(
            level,
            "job dead" if dead else "job will retry",
            extra={
                "fields": {
                    **fields,
                    "reason": reason,
                    "retry_in": None if dead or retry_at is None else round(retry_at - now, 1),
                }
            },
        )

    async def _pause(self, job: Job, reason: str) -> None:
        now = self.clock()
        work = self.work_of(job)
        work.config_error = reason
        work.paused_until = max(work.paused_until, now + AUTH_PAUSE_SECONDS)
        what = "DIMMY_API_KEY" if job.account == "default" else f"the api_key of {job.account}"
        log.error(
            f"fetching paused: fix {what}",
            extra={"fields": {"account": job.account, "reason": reason}},
        )
        with contextlib.suppress(LeaseLost, StoreError):
            await self.store.postpone(job, reason, work.paused_until, now)

    async def _expand(self, job: Job) -> None:
        assert job.event_id is not None
        body = await self.store.get_event_body(job.event_id)
        try:
            payload = json.loads(body)
        except RecursionError:  # stored before the receiver bounded the depth
            raise PermanentUpstream("event body nested too deeply to read") from None
        kind = classify_event(payload)
        if kind == ITEMS_SCANNED:
            ids, rejected = _item_ids(payload["item_ids"])
            note = None
            if rejected:
                note = f"{len(rejected)} item id(s) refused (not a valid id): " + ", ".join(
                    rejected[:10]
                )
                log.warning(
                    "item ids rejected",
                    extra={
                        "fields": {
                            "event": job.event_id,
                            "rejected": rejected[:10],
                            "count": len(rejected),
                        }
                    },
                )
            await self.store.expand_event(job, ids, self.clock(), note)
        elif kind == FULL_PAYLOAD:
            raw = body.decode("utf-8", errors="replace")
            await self._store_item(job, raw, payload)
        else:
            await self.store.finish(job, self.clock(), note="unknown event shape: kept, not run")

    async def _fetch(self, job: Job) -> None:
        assert job.item_id is not None
        work = self.work_of(job)
        if work.client is None:
            raise UpstreamAuthError("DIMMY_API_KEY is not set: items cannot be fetched")
        if self.clock() < work.paused_until:
            await self.store.postpone(
                job, work.config_error or "paused", work.paused_until, self.clock()
            )
            return
        raw, document = await work.client.get_item_document(job.item_id)
        self.crash.hit("after_fetch")
        work.config_error = None
        await self._store_item(job, raw.decode("utf-8", errors="replace"), document)

    async def _store_item(self, job: Job, raw: str, doc: dict[str, object]) -> None:
        now = self.clock()
        work = self.work_of(job)
        try:
            item = work.intake.prepare(doc, raw, fetched_at=now, account=job.account)
        except ValueError as exc:
            raise PermanentUpstream(f"not an item: {exc}") from exc
        lease = Lease(self.owner, self.policy.lease_seconds)
        saved = await self.store.save_item(job, item, list(work.outputs), now, lease)
        # the new version's deliveries are ours already: hand it on without a claim or a read
        if saved.deliveries:
            item = replace(item, revision=saved.revision)
            if len(saved.deliveries) == 1:  # one output, the common case: no task for it
                await self.handle(saved.deliveries[0], item)
            else:
                await asyncio.gather(*(self.handle(d, item) for d in saved.deliveries))

    async def _deliver(self, job: Job, item: StoredItem | None) -> None:
        assert job.item_id is not None
        assert job.output is not None
        output = self.work_of(job).outputs.get(job.output)
        if output is None:
            # kept, never killed: the output was renamed or removed, or this worker is
            # configured apart from the others; `move-deliveries` hands the backlog on (S20)
            now = self.clock()
            await self.store.postpone(job, unconfigured(job.output), now + KEPT_RECHECK, now)
            return
        if item is None:
            item = await self.store.get_item(job.item_id)
        if item is not None and item.account != job.account:
            item = None  # never another account's document (cannot happen: stored by account)
        key = idempotency_key(item.id, item.version, output.name, item.revision) if item else ""
        # the ledger row of this attempt, built once its outcome is known
        attempt = functools.partial(
            DeliveryAttempt,
            item_id=job.item_id,
            output=output.name,
            idempotency_key=key,
            attempt=job.attempts,
            started_at=self.clock(),
            revision=job.revision,
            version=job.version,
        )
        if item is None or not _is_delivered_version(item, job):
            # a newer revision exists: never send an older one after it (it is delivered on
            # its own, after this one's turn)
            why = "superseded by a newer version"
            superseded = attempt(outcome="superseded", error=why)
            await self.store.finish(job, self.clock(), note=why, attempt=superseded)
            return
        timeout = output.delivery_timeout or self.policy.output_timeout_seconds
        started = time.monotonic()
        try:
            receipt = await deliver_within(output, item, key, timeout)
        except DestinationPaused as exc:  # not this item's fault: wait, uncounted
            await self.store.postpone(job, str(exc), exc.until, self.clock())
            return
        except DeliveryFailed as exc:
            answer = exc.receipt
            failed = attempt(
                outcome="failed",  # or "dead": the store says which
                latency_ms=answer.latency_ms,
                status_code=answer.status_code,
                error=str(exc),
                response_excerpt=answer.excerpt,
                record_id=answer.record_id,
            )
            await self._fail(
                job,
                str(exc),
                permanent=exc.permanent,
                retry_after=exc.retry_after,
                fields={"job": job.id, "kind": job.kind.value, "item": job.item_id},
                attempt=failed,
            )
            return
        except OutputError as exc:
            failed = attempt(outcome="failed", latency_ms=_ms_since(started), error=str(exc))
            await self._fail(
                job,
                str(exc),
                fields={"job": job.id, "kind": job.kind.value, "item": job.item_id},
                attempt=failed,
            )
            return
        note = receipt.note if receipt is not None else None
        done = attempt(
            outcome="filtered" if note and note.startswith("filtered") else "delivered",
            latency_ms=receipt.latency_ms if receipt and receipt.latency_ms else _ms_since(started),
            status_code=receipt.status_code if receipt else None,
            response_excerpt=receipt.excerpt if receipt else None,
            record_id=receipt.record_id if receipt else None,
            error=note,
        )
        await self.store.finish(job, self.clock(), note=note, attempt=done)
