"""The poller, reconciliation and backfill against the fake Dimmy API, on both backends.

Items are created in the fake as scans would be; some reach the service by webhook, others only
through ``GET /items`` (their webhook was lost while the receiver was down). Every item must be
stored once and delivered once per output, whichever way (or both ways) it came, including items
created while a pass pages through the list.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy, FakeDimmyConfig
from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.outputs import JsonlOutput
from dimmy_webhooks.pipeline.backfill import backfill
from dimmy_webhooks.pipeline.poller import WATERMARK
from dimmy_webhooks.pipeline.ranges import REPEATED_PAGES, PollPolicy, parse_time
from dimmy_webhooks.services import Services
from dimmy_webhooks.web import create_app

from ..support.builders import make_settings
from ..support.constants import API_KEY, CLI, SECRET
from ..support.databases import query
from ..support.processes import ServiceProcess, clean_env, run, wait_until
from ..support.senders import post_signed

FAST = PollPolicy(
    page_size=7,
    slice_seconds=1800,
    yield_seconds=2,
    reconcile_grace=0,
    sweep_days=0,
    first_lookback=7200,
)


def scanned_recently(fake: FakeDimmy, n: int) -> list[str]:
    """``n`` items created 3 to 90 s apart, the last at least a minute ago (none in the
    future: the fake spaces them from a start)."""
    start = datetime.now(UTC) - timedelta(seconds=90 * n + 60)
    return fake.generate_items(n, start=start)


def delivered(jsonl: Path) -> Counter[str]:
    """Deliveries per item in the JSON Lines output (must be 1 each)."""
    return Counter(record["item_id"] for record in JsonlOutput.read(jsonl))


@pytest.fixture
async def services(db_url: str, fake_url: str, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Started :class:`Services` (workers delivering to ``out.jsonl``), built on demand."""
    started: list[Any] = []

    async def start(**overrides: Any) -> Services:
        settings = make_settings(
            db_url,
            api_key=API_KEY,
            api_url=fake_url,
            outputs=f"jsonl:{tmp_path / 'out.jsonl'}",
            api_rate_limit=1000,
            **overrides,
        )
        built = Services.from_settings(settings)
        context = built.running()
        await context.__aenter__()
        started.append(context)
        return built

    yield start
    for context in reversed(started):
        await context.__aexit__(None, None, None)


def reader_of(services: Services, policy: PollPolicy = FAST) -> Any:
    poller = services.new_poller()
    poller.policy = policy
    return poller


async def test_a_pass_stores_and_delivers_every_item_once(
    services: Any, fake: FakeDimmy, db_url: str, tmp_path: Path
) -> None:
    ids = scanned_recently(fake, 30)
    running = await services()
    poller = reader_of(running)
    result = await poller.pass_once()
    assert result is not None
    assert (result.read, result.stored) == (30, 30)
    assert await running.drain(15) == 0
    assert {row["id"] for row in query(db_url, "SELECT id FROM items")} == set(ids)
    assert delivered(tmp_path / "out.jsonl") == Counter(dict.fromkeys(ids, 1))
    # only list requests: the documents came with the pages, nothing fetched one by one
    assert {r.path for r in fake.requests} == {"/items"}
    # a second pass reads the overlap again and changes nothing
    again = await poller.pass_once()
    assert again is not None
    assert again.stored == 0
    assert await running.drain(5) == 0
    assert delivered(tmp_path / "out.jsonl") == Counter(dict.fromkeys(ids, 1))
    mark = query(db_url, f"SELECT value FROM sync_state WHERE name = '{WATERMARK}'")[0]["value"]
    assert abs(parse_time(mark).timestamp() - time.time()) < 30


async def test_items_created_during_a_pass_are_neither_skipped_nor_doubled(
    services: Any, fake: FakeDimmy, db_url: str, tmp_path: Path
) -> None:
    """Between pages, new items appear: some just created (after the pass's end), most made
    visible late with a creation time in the last minutes, so they land among the rows being
    paged (7 per page) and shift them. After the pass and the next one (its overlap), every item
    is stored once and delivered once."""
    ids = scanned_recently(fake, 40)
    rng = random.Random(5)
    added: list[str] = []

    def upload_meanwhile(skip: int) -> None:
        if len(added) >= 25:
            return
        for _ in range(rng.randint(1, 3)):
            minutes = rng.choice([0.0, rng.uniform(0.2, 9.0), rng.uniform(0.2, 9.0)])
            added.extend(
                fake.generate_items(1, start=datetime.now(UTC) - timedelta(minutes=minutes))
            )

    fake.list_hook = upload_meanwhile
    running = await services()
    poller = reader_of(running, dataclasses.replace(FAST, settle=0))
    assert await poller.pass_once() is not None
    fake.list_hook = None
    assert await poller.pass_once() is not None  # the next pass, from the watermark's overlap
    assert await running.drain(15) == 0
    every = set(ids) | set(added)
    assert len(added) >= 20
    stored = [row["id"] for row in query(db_url, "SELECT id FROM items")]
    assert sorted(stored) == sorted(every)  # none missing, none twice (ids are unique rows)
    assert delivered(tmp_path / "out.jsonl") == Counter(dict.fromkeys(every, 1))


async def test_webhooks_and_polling_together_store_and_deliver_once(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    """Half the scans arrive by webhook, all of them by polling too, the other half only by
    polling (their webhooks were lost while the receiver was down): each stored once,
    delivered once; the lost half is the reconciliation report, per day, with the ids."""
    ids = scanned_recently(fake, 24)
    jsonl = tmp_path / "out.jsonl"
    settings = make_settings(
        db_url,
        api_key=API_KEY,
        api_url=fake_url,
        admin_token="t" * 40,
        outputs=f"jsonl:{jsonl}",
        reconcile_grace_seconds=0,
        poll_interval_seconds=5,
        poll_sweep_days=0,
    )
    app = create_app(settings, run_poller=True)
    auth = {"Authorization": "Bearer " + "t" * 40}
    with serve_in_thread(app) as url:
        body = json.dumps({"item_ids": ids[:12]}).encode()
        answer = post_signed(url, "msg_half", body)
        assert answer.status_code == 204
        assert wait_until(lambda: len(delivered(jsonl)) == 24, 30), delivered(jsonl)
        poller = app.state.services.poller
        assert wait_until(lambda: bool(poller.last_pass), 15)
        report = httpx.get(f"{url}/api/reconciliation", headers=auth).json()
        ready = httpx.get(f"{url}/readyz").json()
    assert delivered(jsonl) == Counter(dict.fromkeys(ids, 1))
    assert len(query(db_url, "SELECT id FROM items")) == 24
    # the webhook's half either came first or was named by it: not counted as missed
    assert report["mode"] == "webhooks"
    missed = {item for day in report["days"] for item in day["item_ids"]}
    assert missed <= set(ids[12:])
    assert report["missed"] == len(missed) >= 1
    assert sum(day["count"] for day in report["days"]) == report["missed"]
    assert all(len(day["day"]) == 10 for day in report["days"])
    assert ready["status"] == "degraded"
    assert any("never arrived by webhook" in p for p in ready["problems"])


async def test_bulk_reads_give_way_to_due_webhook_fetches(
    db_url: str, fake: FakeDimmy, fake_url: str
) -> None:
    """While a webhook's fetch is due (here no worker runs it), every page waits its bounded
    turn; once none is due, pages go at once."""
    from dimmy_webhooks.models import ITEMS_SCANNED, IncomingEvent

    scanned_recently(fake, 5)
    settings = make_settings(db_url, api_key=API_KEY, api_url=fake_url, api_rate_limit=1000)
    running = Services.from_settings(settings, run_workers=False)
    poller = reader_of(running, PollPolicy(page_size=50, yield_seconds=1.0))
    async with running.running():
        started = time.monotonic()
        assert await poller.pass_once() is not None
        quick = time.monotonic() - started
        body = json.dumps({"item_ids": ["6592008029c8c3e4dc76256c"]}).encode()
        event = IncomingEvent("m", ITEMS_SCANNED, body, {}, time.time(), 1)
        await running.store.insert_event(event)
        [job] = await running.store.claim("w", 1, 30, time.time())
        await running.store.expand_event(job, ["6592008029c8c3e4dc76256c"], time.time())
        assert await running.store.live_fetch_due(time.time())
        started = time.monotonic()
        assert await poller.pass_once() is not None
        held = time.monotonic() - started
    assert quick < 0.9
    assert held >= 0.95  # its one page (the overlap holds no item) waited its whole turn


async def test_a_sweep_catches_an_update_to_an_older_item(
    services: Any, fake: FakeDimmy, db_url: str, tmp_path: Path
) -> None:
    """``start_date`` is creation time: an item created days ago and updated now is outside
    the pass's window; the deeper sweep re-reads the last days and stores the newer version."""
    (old,) = fake.generate_items(1, start=datetime.now(UTC) - timedelta(days=3))
    running = await services()
    poller = reader_of(running, dataclasses.replace(FAST, sweep_days=5, first_lookback=3600))
    assert await poller.pass_once() is not None  # the first pass sweeps once: stores it
    assert query(db_url, "SELECT revision FROM items")[0]["revision"] == 1
    later = (datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    fake.update_item(old, updated_at=later, photographing=[])
    assert await poller.pass_once() is not None  # the window only: not seen
    assert query(db_url, "SELECT revision FROM items")[0]["revision"] == 1
    await running.store.set_state("poll.swept", "2000-01-01T00:00:00.000000Z", time.time())
    assert await poller.pass_once() is not None  # a sweep is due again
    assert query(db_url, "SELECT revision FROM items")[0]["revision"] == 2
    assert await running.drain(15) == 0
    revisions = [r["item"]["revision"] for r in JsonlOutput.read(tmp_path / "out.jsonl")]
    assert revisions == [1, 2]


async def test_a_429_on_a_page_waits_and_retries(
    services: Any, fake: FakeDimmy, db_url: str
) -> None:
    ids = scanned_recently(fake, 20)
    fake.config.rate_limit_every = 3
    fake.config.retry_after_seconds = 1
    running = await services()
    poller = reader_of(running)
    started = time.monotonic()
    result = await poller.pass_once()
    assert result is not None, poller.problem
    assert result.read == 20
    assert time.monotonic() - started >= 1.0  # Retry-After was honoured
    assert {row["id"] for row in query(db_url, "SELECT id FROM items")} == set(ids)
    assert any(r.status == 429 for r in fake.requests)


async def test_a_backfill_resumes_after_an_interruption(
    services: Any, fake: FakeDimmy, db_url: str, tmp_path: Path
) -> None:
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    ids = fake.generate_items(60, start=start)  # a few hours of scans, 3-90 s apart
    running = await services()
    reader = reader_of(running, PollPolicy(page_size=5, slice_seconds=600)).reader()
    until = start + timedelta(hours=6)
    stop = asyncio.Event()
    seen: list[str] = []

    def interrupt_after_two(state: Any) -> None:
        seen.append(state.done_until)
        if len(seen) == 2:
            stop.set()  # as a Ctrl-C would, between pages

    first = await backfill(reader, start, until, progress=interrupt_after_two, stop=stop)
    assert not first.finished
    assert first.done_until == seen[1]
    second = await backfill(reader, start, until)
    assert second.resumed
    assert second.finished
    assert await running.drain(15) == 0
    assert sorted(row["id"] for row in query(db_url, "SELECT id FROM items")) == sorted(ids)
    assert delivered(tmp_path / "out.jsonl") == Counter(dict.fromkeys(ids, 1))
    sources = {row["first_source"] for row in query(db_url, "SELECT first_source FROM items")}
    assert sources == {"backfill"}
    third = await backfill(reader, start, until)
    assert third.finished
    assert third.resumed


@pytest.mark.slow
def test_backfill_command_killed_then_started_again_misses_and_doubles_nothing(
    tmp_path: Path, fake: FakeDimmy, fake_url: str, sqlite_url: str
) -> None:
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    ids = fake.generate_items(150, start=start)
    fake.config.latency_seconds = 0.2  # about 8 s of pages: time to kill it half-way
    env = clean_env(
        DIMMY_DATABASE_URL=sqlite_url,
        DIMMY_API_KEY=API_KEY,
        DIMMY_API_URL=fake_url,
        DIMMY_OUTPUTS=f"jsonl:{tmp_path / 'out.jsonl'}",
        DIMMY_POLL_PAGE_SIZE="5",
    )
    args = ["backfill", "--since", "2026-01-05T09:00:00Z", "--until", "2026-01-05T14:00:00Z"]
    first = ServiceProcess(tmp_path, env, args).start(wait=False)

    def committed() -> bool:
        rows = query(sqlite_url, "SELECT value FROM sync_state WHERE name LIKE 'backfill:%'")
        return bool(rows) and json.loads(rows[0]["value"])["read"] >= 30

    assert wait_until(committed, 60, interval=0.02), first.log()
    first.kill(signal.SIGKILL)
    fake.config.latency_seconds = 0
    partial = len(query(sqlite_url, "SELECT id FROM items"))
    assert 0 < partial < 150
    dimmy = {k: v for k, v in env.items() if k.startswith("DIMMY_")}
    proc = run([CLI, *args], tmp_path, timeout=120, **dimmy)
    assert proc.returncode == 0, proc.stderr
    assert "backfill up to" in proc.stderr  # plain progress lines (not a terminal)
    assert sorted(row["id"] for row in query(sqlite_url, "SELECT id FROM items")) == sorted(ids)
    assert delivered(tmp_path / "out.jsonl") == Counter(dict.fromkeys(ids, 1))


def test_pull_mode_serves_without_a_webhook_secret(
    tmp_path: Path, fake: FakeDimmy, fake_url: str, sqlite_url: str
) -> None:
    ids = scanned_recently(fake, 8)
    env = clean_env(
        DIMMY_DATABASE_URL=sqlite_url,
        DIMMY_API_KEY=API_KEY,
        DIMMY_API_URL=fake_url,
        DIMMY_OUTPUTS=f"jsonl:{tmp_path / 'out.jsonl'}",
        DIMMY_POLL_INTERVAL_SECONDS="5",
    )
    service = ServiceProcess(tmp_path, env, ["serve", "--poll"]).start()
    try:
        answer = post_signed(service.url, "m", b"{}")
        assert answer.status_code == 404
        assert "pull mode" in answer.json()["error"]
        assert wait_until(lambda: len(delivered(tmp_path / "out.jsonl")) == 8, 30), service.log()
        report = httpx.get(service.url + "/api/reconciliation").json()
        assert report["mode"] == "pull"
        assert httpx.get(service.url + "/readyz").json()["status"] == "ready"
    finally:
        service.stop()
    assert "pull mode (no webhooks)" in service.log()
    assert delivered(tmp_path / "out.jsonl") == Counter(dict.fromkeys(ids, 1))


def test_serve_without_a_secret_and_without_poll_says_how_to_pull(tmp_path: Path) -> None:
    proc = run([CLI, "serve"], tmp_path, DIMMY_DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}")
    assert proc.returncode == 2
    assert "DIMMY_WEBHOOK_SECRET is not set" in proc.stderr
    assert "serve --poll" in proc.stderr


def test_poll_once_runs_one_pass_and_reports(
    tmp_path: Path, fake: FakeDimmy, fake_url: str, sqlite_url: str
) -> None:
    ids = scanned_recently(fake, 12)
    env = {
        "DIMMY_DATABASE_URL": sqlite_url,
        "DIMMY_API_KEY": API_KEY,
        "DIMMY_API_URL": fake_url,
        "DIMMY_WEBHOOK_SECRET": SECRET,
        "DIMMY_OUTPUTS": f"jsonl:{tmp_path / 'out.jsonl'}",
        "DIMMY_RECONCILE_GRACE_SECONDS": "0",
    }
    proc = run([CLI, "poll", "--once"], tmp_path, **env)
    assert proc.returncode == 0, proc.stderr
    assert "read 12 items" in proc.stdout
    assert "stored 12" in proc.stdout
    assert "12 never arrived by webhook" in proc.stdout
    assert "webhooks are being lost" in proc.stderr  # the WARNING line
    assert delivered(tmp_path / "out.jsonl") == Counter(dict.fromkeys(ids, 1))
    again = run([CLI, "poll", "--once"], tmp_path, **env)
    assert "stored 0" in again.stdout
    assert "webhooks are being lost" not in again.stderr  # not growing: said once
    assert delivered(tmp_path / "out.jsonl") == Counter(dict.fromkeys(ids, 1))


# S23: a source whose pages never end, or that ignores skip -----------------------------------


def _mark(db_url: str) -> datetime | None:
    rows = query(db_url, f"SELECT value FROM sync_state WHERE name = '{WATERMARK}'")
    return parse_time(rows[0]["value"]) if rows else None


async def test_pages_that_never_end_stop_the_pass_and_keep_the_watermark_at_what_was_read(
    services: Any, fake: FakeDimmy, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """S23: while a pass reads it, the second slice of the window grows by a page per page
    asked. The pass stops at the slice's page bound: the first slice is stored, nothing after
    the endless slice is read, the watermark stays at the endless slice's start (not the
    window's end), a WARNING says so and the pass counts as failed. Once the source behaves, the
    next pass reads on from there and misses nothing."""
    now = datetime.now(UTC)
    early = fake.generate_items(3, start=now - timedelta(seconds=7000))  # slice 1 of 4
    late = fake.generate_items(3, start=now - timedelta(seconds=1500))  # slice 4
    added: list[str] = []

    def endless(skip: int) -> None:  # slice 2 gets a page more for every page read
        added.extend(fake.generate_items(FAST.page_size, start=now - timedelta(seconds=5300)))

    fake.list_hook = endless
    running = await services()
    poller = reader_of(running, dataclasses.replace(FAST, settle=0, slice_pages=5))
    with caplog.at_level("WARNING", logger="dimmy_webhooks.pipeline.poller"):
        assert await poller.pass_once() is None  # failed: cut short
    lists = [r for r in fake.requests if r.path == "/items"]
    assert len(lists) <= 1 + 5 + 1  # slice 1 (one short page and the empty one after), slice 2
    mark = _mark(db_url)
    assert mark is not None
    assert abs((mark - (now - timedelta(seconds=5400))).total_seconds()) < 30, mark
    stored = {row["id"] for row in query(db_url, "SELECT id FROM items")}
    assert set(early) <= stored
    assert not set(late) & stored  # the pass stopped at the bound: nothing after it was read
    assert any("poll slice cut short" in r.getMessage() for r in caplog.records), caplog.text
    assert any("watermark stays at what was read" in r.getMessage() for r in caplog.records)
    assert poller.problem is not None
    assert "poller" in poller.problem

    fake.list_hook = None
    poller.policy = dataclasses.replace(poller.policy, slice_pages=100)  # the slice holds ~50
    assert await poller.pass_once() is not None  # from the watermark's overlap to now
    assert poller.problem is None
    stored = {row["id"] for row in query(db_url, "SELECT id FROM items")}
    assert stored == set(early) | set(late) | set(added)
    mark = _mark(db_url)
    assert mark is not None
    assert (now - mark).total_seconds() < 30


async def test_a_source_that_ignores_skip_stops_the_pass_at_once(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """S23: ``GET /items`` answers the same full page whatever ``skip`` says. The slice is cut
    after a few pages that bring nothing new (not after thousands of requests), the watermark
    stays at the window's start and the WARNING names the repeats."""
    now = datetime.now(UTC)
    source = FakeDimmy(FakeDimmyConfig(seed=23))
    ids = source.generate_items(FAST.page_size, start=now - timedelta(seconds=6000))
    page = [source.items[item_id] for item_id in ids]
    asked: list[str] = []

    async def same_page(request: Request) -> Response:
        asked.append(str(request.url.query))
        return Response(json.dumps(page), media_type="application/json")

    api = Starlette(routes=[Route("/items", same_page, methods=["GET"])])
    with serve_in_thread(api) as api_url:
        settings = make_settings(
            db_url,
            api_key=API_KEY,
            api_url=api_url,
            outputs=f"jsonl:{tmp_path / 'out.jsonl'}",
            api_rate_limit=1000,
        )
        built = Services.from_settings(settings)
        async with built.running():
            poller = reader_of(built, dataclasses.replace(FAST, settle=0))
            with caplog.at_level("WARNING", logger="dimmy_webhooks.pipeline.poller"):
                assert await poller.pass_once() is None
    assert len(asked) == 1 + REPEATED_PAGES, asked
    mark = _mark(db_url)
    assert mark is not None
    assert abs((mark - (now - timedelta(seconds=FAST.first_lookback))).total_seconds()) < 30
    assert {row["id"] for row in query(db_url, "SELECT id FROM items")} == set(ids)
    assert any("pages repeat" in r.getMessage() for r in caplog.records), caplog.text
