"""The charts' reads, on every backend: items first stored per hour, delivery latency per
output (and per hour), the backlog now."""

from __future__ import annotations

from dimmy_webhooks.models import DeliveryAttempt, Job, JobKind, Source
from dimmy_webhooks.store import BacklogCounts, HourCount, Store
from dimmy_webhooks.store.ledger import record_attempt

from ..support.builders import scanned_event, stored_item
from ..support.constants import T0

HOUR = 3600.0


async def test_scans_per_hour_counts_items_by_the_hour_they_were_first_stored(
    store: Store,
) -> None:
    # T0 is an hour boundary: 2 items in the first hour, 1 two hours later, 1 before the window
    times = [T0 + 10, T0 + 3599, T0 + 2 * HOUR + 5, T0 - 10]
    items = [stored_item(f"i{n}", fetched_at=at) for n, at in enumerate(times)]
    await store.save_polled(items, Source.POLL, [], T0)
    hours = await store.scans_per_hour(since=T0, until=T0 + 3 * HOUR)
    assert hours == [HourCount(T0, 2), HourCount(T0 + 2 * HOUR, 1)]
    # a newer version fetched later still counts in the hour it was first stored
    later = stored_item("i0", "2030-01-01T00:00:00Z", "y", fetched_at=T0 + 2 * HOUR + 10)
    await store.save_polled([later], Source.POLL, [], T0)
    assert (await store.scans_per_hour(since=T0, until=T0 + 3 * HOUR, account=None)) == hours
    assert await store.scans_per_hour(since=T0 + 5 * HOUR, until=T0 + 6 * HOUR) == []


def _attempt(output: str, at: float, latency: float | None, n: int) -> DeliveryAttempt:
    return DeliveryAttempt(
        item_id=f"item{n}",
        output=output,
        idempotency_key=f"dmy_{n}",
        attempt=1,
        started_at=at,
        outcome="delivered" if latency is not None else "failed",
        latency_ms=latency,
    )


async def _record(store: Store, attempts: list[DeliveryAttempt]) -> None:
    # the ledger's own insert, as a worker's finish makes it (without the job around it)
    job = Job(1, JobKind.DELIVER, None, "x", "o", None, 1, "token")

    def write(tx: object) -> None:
        for attempt in attempts:
            record_attempt(tx, job, attempt)  # type: ignore[arg-type]

    await store._write(write)


async def test_delivery_latency_per_output_and_per_hour(store: Store) -> None:
    wms = [_attempt("http:wms", T0 + n, float(n + 1), n) for n in range(100)]  # 1..100 ms
    wms.append(_attempt("http:wms", T0 + 200, None, 999))  # no latency: not counted
    late = [_attempt("http:wms", T0 + HOUR + n, 500.0, 1000 + n) for n in range(3)]
    jsonl = [_attempt("jsonl:x", T0 + 5, 2.0, 2000)]
    outside = [_attempt("jsonl:x", T0 - 5, 9999.0, 3000)]
    await _record(store, wms + late + jsonl + outside)

    summary = await store.delivery_latency(since=T0, until=T0 + 2 * HOUR)
    by_output = {s.output: s for s in summary}
    assert set(by_output) == {"http:wms", "jsonl:x"}
    wms_all = by_output["http:wms"]
    assert wms_all.hour is None
    assert wms_all.attempts == 103
    assert wms_all.p50_ms == 52.0  # nearest rank: the 52nd of 103 values
    assert wms_all.p95_ms == 98.0  # the 98th
    assert wms_all.max_ms == 500.0
    assert (by_output["jsonl:x"].attempts, by_output["jsonl:x"].p95_ms) == (1, 2.0)

    hourly = await store.delivery_latency(since=T0, until=T0 + 2 * HOUR, per_hour=True)
    wms_hours = [(s.hour, s.attempts, s.p50_ms, s.p95_ms) for s in hourly if s.output == "http:wms"]
    assert wms_hours == [(T0, 100, 50.0, 95.0), (T0 + HOUR, 3, 500.0, 500.0)]

    # bounded: only the newest rows of the window count
    newest = await store.delivery_latency(since=T0, until=T0 + 2 * HOUR, limit=3)
    assert [(s.output, s.attempts, s.p50_ms) for s in newest] == [("http:wms", 3, 500.0)]
    assert await store.delivery_latency(since=T0 + 5 * HOUR, until=T0 + 6 * HOUR) == []


async def test_backlog_now_counts_due_waiting_running_and_dead(store: Store) -> None:
    assert await store.backlog_now(T0) == BacklogCounts(0, 0, 0, 0)
    for n in range(3):
        await store.insert_event(scanned_event(f"m{n}", ["a"], at=T0))
    [job] = await store.claim("w", 1, 30.0, T0)
    assert await store.backlog_now(T0) == BacklogCounts(due=2, waiting=0, running=1, dead=0)
    await store.fail(job, "boom", None, T0)
    [job] = await store.claim("w", 1, 30.0, T0)
    await store.fail(job, "later", T0 + 60, T0)
    counts = await store.backlog_now(T0, account=None)
    assert counts == BacklogCounts(due=1, waiting=1, running=0, dead=1)
