"""Adaptive API rate: the AIMD rule, the client against a hidden limit, the learned rate kept.

Most tests run on a fake clock that moves only when the client sleeps, so convergence over a
minute of "time" takes a fraction of a second and never depends on how loaded the machine is.
Two run against the fake API on 127.0.0.1 with real time, with generous bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest

from dimmy_webhooks.config import load_settings
from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.errors import ConfigError, TransientUpstream
from dimmy_webhooks.pipeline.learned_rate import STATE as RATE_STATE
from dimmy_webhooks.ratelimit import SlidingWindow
from dimmy_webhooks.services import Services
from dimmy_webhooks.upstream.client import DimmyClient, RateMode
from dimmy_webhooks.upstream.pacing import THROTTLE_CUT, AdaptiveRate

from ..support.builders import make_settings
from ..support.constants import API_KEY
from ..support.databases import migrated_sqlite_url, scalar
from ..support.fakes import FakeTime
from ..support.transport import Canned, FakeTransport, Sent

KEY = "s3cret-key-0123456789"
ITEM_ID = "6592008029c8c3e4dc76256c"


def item_response() -> Canned:
    return Canned.json(200, {"_id": ITEM_ID, "weighing": None})


class HiddenLimit:
    """A server that allows ``limit`` requests per second on the fake clock (a token bucket
    holding one second's worth, like the fake API's) and answers 429 ``Retry-After: 1`` above."""

    def __init__(self, clock: FakeTime, limit: float) -> None:
        self.clock = clock
        self.limit = limit
        self.tokens = limit
        self.at = clock.now
        self.answers: list[tuple[float, int]] = []

    def __call__(self, request: Sent) -> Canned:
        now = self.clock.now
        self.tokens = min(self.limit, self.tokens + (now - self.at) * self.limit)
        self.at = now
        if self.tokens < 1:
            self.answers.append((now, 429))
            return Canned(429, headers={"Retry-After": "1"})
        self.tokens -= 1
        self.answers.append((now, 200))
        return item_response()

    def since(self, start: float, status: int) -> int:
        return sum(1 for at, s in self.answers if at >= start and s == status)


def adaptive_client(server: HiddenLimit, clock: FakeTime, *, rate_limit: float) -> DimmyClient:
    """One request at a time, paced adaptively from ``rate_limit`` (1 to 1,000 per second)."""
    return DimmyClient(
        "https://dimmy.test",
        KEY,
        transport=FakeTransport(server),
        clock=clock.clock,
        sleep=clock.sleep,
        rate_mode="adaptive",
        rate_limit=rate_limit,
        rate_min=1.0,
        rate_max=1000.0,
        concurrency=1,
    )


async def drive(client: DimmyClient, clock: FakeTime, seconds: float) -> None:
    """Fetch one item after another (always more work waiting) for ``seconds`` of fake time."""
    end = clock.now + seconds
    while clock.now < end:
        with contextlib.suppress(TransientUpstream):
            await client.get_item(ITEM_ID)


# -- the client on a fake clock -------------------------------------------------------------


async def test_adaptive_rate_climbs_to_a_hidden_limit_above_the_start() -> None:
    clock = FakeTime()
    server = HiddenLimit(clock, 40)
    async with adaptive_client(server, clock, rate_limit=10) as client:
        await drive(client, clock, 30)  # find it
        start = clock.now
        await drive(client, clock, 60)  # then hold it
        assert client.adaptive is not None
        assert client.adaptive.cuts >= 1  # it did find the limit, not stop short of it
    served = server.since(start, 200) / 60
    refused = server.since(start, 429)
    assert 0.7 * 40 <= served <= 40 * 1.05  # far above the start of 10, at most the limit
    assert refused <= 0.05 * server.since(start, 200)  # a few 429s per cut, not a stream
    assert 20 <= client.rate_limit <= 60


async def test_adaptive_rate_backs_off_below_a_hidden_limit_under_the_start() -> None:
    clock = FakeTime()
    server = HiddenLimit(clock, 20)
    async with adaptive_client(server, clock, rate_limit=100) as client:
        await drive(client, clock, 20)
        start = clock.now
        await drive(client, clock, 60)
    served = server.since(start, 200) / 60
    refused = server.since(start, 429)
    assert served >= 0.6 * 20
    assert refused <= 0.1 * server.since(start, 200)
    assert client.rate_limit <= 30  # far below the start of 100


async def test_a_429_in_adaptive_mode_still_holds_every_request_and_cuts_the_rate() -> None:
    clock = FakeTime()
    sent_at: list[float] = []
    answers = [Canned(429, headers={"Retry-After": "30"}), item_response(), item_response()]

    def handler(request: Sent) -> Canned:
        sent_at.append(clock.now)
        return answers.pop(0)

    async with DimmyClient(
        "https://dimmy.test",
        KEY,
        transport=FakeTransport(handler),
        clock=clock.clock,
        sleep=clock.sleep,
        rate_mode="adaptive",
        rate_limit=50,
    ) as client:
        with pytest.raises(TransientUpstream) as caught:
            await client.get_item(ITEM_ID)
        assert caught.value.retry_after == 30
        assert client.pause_remaining == 30
        assert client.rate_limit == pytest.approx(50 * THROTTLE_CUT)
        await asyncio.gather(client.get_item(ITEM_ID), client.get_item(ITEM_ID))
    assert min(sent_at[1:]) >= sent_at[0] + 30


async def test_fixed_mode_keeps_its_rate_whatever_the_answers() -> None:
    async with DimmyClient(
        "https://dimmy.test",
        KEY,
        transport=FakeTransport(lambda r: Canned(429, headers={"Retry-After": "0"})),
        rate_limit=100,
    ) as client:
        assert client.adaptive is None
        for _ in range(5):
            with pytest.raises(TransientUpstream):
                await client.get_item(ITEM_ID)
        assert client.rate_limit == 100


@pytest.mark.parametrize("rate", [0.5, 20.0])
async def test_fixed_mode_lets_a_second_of_requests_go_then_spaces_them(rate: float) -> None:
    clock = FakeTime()
    sent: list[float] = []

    def answer(request: Sent) -> Canned:
        sent.append(clock.now)
        return item_response()

    async with DimmyClient(
        "https://dimmy.test",
        KEY,
        transport=FakeTransport(answer),
        clock=clock.clock,
        sleep=clock.sleep,
        rate_limit=rate,
        concurrency=1,
    ) as client:
        for _ in range(30):
            await client.get_item(ITEM_ID)
    burst = max(1, int(rate))
    assert sent[:burst] == [sent[0]] * burst  # one second's worth at once (one at least)
    gaps = [b - a for a, b in zip(sent[burst - 1 :], sent[burst:], strict=False)]
    assert gaps == pytest.approx([1 / rate] * len(gaps))


async def test_a_sliding_window_counts_events_from_when_they_are_settled() -> None:
    now = [0.0]
    window = SlidingWindow(2, 1.0, clock=lambda: now[0])
    first = await window.turn()
    await window.turn()
    assert window.wait() == pytest.approx(1.0)
    assert window.wait(ahead=2) == pytest.approx(2.0)  # two more waiting: one window more
    third = asyncio.ensure_future(window.turn())
    await asyncio.sleep(0)
    assert not third.done()  # the oldest has not happened yet: its time is not known
    now[0] = 0.4
    first.settle(0.4)  # it happened later than it was let go: counted from then
    assert window.wait() == pytest.approx(1.0)
    now[0] = 1.4
    await asyncio.wait_for(third, 1)
    window.add(at=1.4)
    assert window.wait() > 0


# -- the rule alone ----------------------------------------------------------------------------


def window(rate: AdaptiveRate, clock: FakeTime, latency: float, *, sent: int | None = None) -> None:
    """One second of answers taking ``latency`` each, ``sent`` requests (default: the rate)."""
    n = int(rate.rate) if sent is None else sent
    answers = max(n, 5)
    start = clock.now
    for i in range(answers):
        clock.now = start + (i + 1) / answers + (1e-6 if i == answers - 1 else 0)
        if i < n:
            rate.sent()
        rate.answered(latency)


def test_latency_rising_well_above_its_baseline_cuts_once_then_is_taken_as_normal() -> None:
    clock = FakeTime(0.0)
    rate = AdaptiveRate(100, floor=1, ceiling=1000, clock=clock)
    rate.restore(100)  # additive from here
    for _ in range(3):
        window(rate, clock, 0.02)
    grown = rate.rate
    assert grown > 100
    window(rate, clock, 0.4)  # the API slows down twentyfold
    assert rate.rate < grown
    cut = rate.rate
    window(rate, clock, 0.4)  # cutting did not help: not our load, no second cut
    assert rate.rate == cut
    for _ in range(3):
        window(rate, clock, 0.4)
    assert rate.rate > cut  # growing again at the new latency


def test_noise_on_a_fast_api_is_not_a_latency_rise() -> None:
    clock = FakeTime(0.0)
    rate = AdaptiveRate(100, floor=1, ceiling=1000, clock=clock)
    rate.restore(100)
    for latency in (0.002, 0.012, 0.004, 0.03, 0.003, 0.02):  # loopback jitter, many times 2 ms
        window(rate, clock, latency)
    assert rate.cuts == 0
    assert rate.rate > 100


def test_an_idle_client_does_not_creep_up_to_the_ceiling() -> None:
    clock = FakeTime(0.0)
    rate = AdaptiveRate(100, floor=1, ceiling=1000, clock=clock)
    for _ in range(30):
        window(rate, clock, 0.01, sent=10)  # 10 requests a second of the 100 allowed
    assert rate.rate == 100


def test_the_rate_stays_between_floor_and_ceiling() -> None:
    clock = FakeTime(0.0)
    rate = AdaptiveRate(100, floor=20, ceiling=150, clock=clock)
    for _ in range(20):
        window(rate, clock, 0.01)
    assert rate.rate == 150
    for _ in range(20):
        clock.now += 5
        rate.throttled(clock.now, paused_until=clock.now + 1)
    assert rate.rate == 20
    rate.restore(5000)
    assert rate.rate == 150


def test_the_429s_of_one_episode_cut_once_and_a_big_change_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeTime(0.0)
    rate = AdaptiveRate(100, floor=1, ceiling=1000, clock=clock)
    sent = clock.now
    with caplog.at_level(logging.INFO, logger="dimmy_webhooks.upstream.pacing"):
        for _ in range(10):  # the requests in flight when the limit was hit all come back 429
            clock.now += 0.01
            rate.throttled(sent, paused_until=clock.now + 1)
    assert rate.rate == pytest.approx(100 * THROTTLE_CUT)
    assert rate.cuts == 1
    changes = [r for r in caplog.records if r.getMessage() == "Dimmy API rate changed"]
    assert len(changes) == 1
    assert changes[0].fields == {"rate": 70.0, "was": 100.0, "reason": "429 from the API"}  # type: ignore[attr-defined]


def test_adaptive_settings_need_floor_start_and_ceiling_in_order() -> None:
    with pytest.raises(ConfigError, match="DIMMY_API_RATE_MAX"):
        load_settings(None, api_rate_mode="adaptive", api_rate_limit=2000)
    with pytest.raises(ConfigError, match="DIMMY_API_RATE_MAX"):
        load_settings(None, api_rate_mode="adaptive", api_rate_min=200)
    assert load_settings(None, api_rate_limit=2000).api_rate_mode == "fixed"  # bounds unused


# -- against the fake API on 127.0.0.1 --------------------------------------------------------


async def hammer(client: DimmyClient, ids: list[str], seconds: float, tasks: int = 8) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def one(n: int) -> None:
        while loop.time() < end:
            with contextlib.suppress(TransientUpstream):
                await client.get_item(ids[n % len(ids)])
            n += tasks

    await asyncio.gather(*(one(n) for n in range(tasks)))


async def test_fake_api_hidden_limit_adaptive_backs_off_fixed_keeps_hitting_it(
    fake: FakeDimmy, fake_url: str
) -> None:
    ids = fake.generate_items(50)
    fake.config.hidden_rate_limit = 40
    refused, fetched = {}, {}
    modes: tuple[RateMode, ...] = ("fixed", "adaptive")
    for mode in modes:
        async with DimmyClient(
            fake_url, API_KEY, rate_limit=200, rate_mode=mode, rate_max=400
        ) as client:
            await hammer(client, ids, 3, tasks=16)  # adaptive mode finds the limit
            fake.reset_stats()
            await hammer(client, ids, 4, tasks=16)  # then the same load for both, measured
            refused[mode], fetched[mode] = fake.throttled, sum(fake.counts.values())
            if mode == "fixed":
                assert client.rate_limit == 200
            else:
                assert client.rate_limit < 100  # cut a few times from 200
    # fixed mode runs into the limit after every 429 pause, adaptive mode stays near it
    assert refused["fixed"] >= 8
    assert refused["adaptive"] < refused["fixed"] / 2
    assert fetched["adaptive"] >= 0.5 * 40 * 4


async def test_the_learned_rate_survives_a_restart(
    fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    ids = fake.generate_items(20)
    fake.config.hidden_rate_limit = 30
    db_url = migrated_sqlite_url(tmp_path / "dimmy.sqlite3")
    settings = make_settings(
        db_url,
        api_key=API_KEY,
        api_url=fake_url,
        api_rate_mode="adaptive",
        api_rate_limit=200,
        api_rate_max=400,
    )

    first = Services.from_settings(settings)
    first.parts = [p for p in first.parts if p.name != "worker"]
    async with first.running():
        assert first.client is not None
        assert first.client.rate_limit == 200
        await hammer(first.client, ids, 3)
        learned = first.client.rate_limit
    assert learned < 150
    saved = saved_rate(db_url)
    assert saved == {"rate": round(learned, 1), "api_url": fake_url}

    second = Services.from_settings(settings)
    second.parts = [p for p in second.parts if p.name != "worker"]
    async with second.running():
        assert second.client is not None
        assert second.client.rate_limit == pytest.approx(learned, abs=0.1)  # not 200 again
        overview = (await second.overview()).as_json()
        assert overview["api_rate"]["mode"] == "adaptive"
        assert overview["api_rate"]["restored"] is True
        assert overview["api_rate"]["per_second"] == pytest.approx(learned, abs=0.1)
        exposition = generate_latest(second.metrics.registry).decode()
        assert f"dimmy_api_rate_limit_per_second {round(learned, 1)}" in exposition

    elsewhere = Services.from_settings(settings.model_copy(update={"api_url": fake_url + "/v2"}))
    elsewhere.parts = [p for p in elsewhere.parts if p.name != "worker"]
    async with elsewhere.running():
        assert elsewhere.client is not None
        assert elsewhere.client.rate_limit == 200  # learned against another API: not used


def saved_rate(db_url: str) -> object:
    """The learned rate as the store keeps it, read straight from the database."""
    value = scalar(db_url, f"SELECT value FROM sync_state WHERE name = '{RATE_STATE}'")
    return json.loads(value) if value else None
