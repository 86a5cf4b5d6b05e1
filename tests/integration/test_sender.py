"""The Svix-like sender simulator against real loopback HTTP endpoints."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dimmy_webhooks.devtools.runner import free_port, serve_in_thread
from dimmy_webhooks.devtools.sender import (
    RETRY_SCHEDULE,
    SimulatedSender,
    items_scanned_body,
)
from dimmy_webhooks.signatures import Verifier
from dimmy_webhooks.web import create_app

from ..support.builders import make_settings
from ..support.constants import KEY
from ..support.databases import query
from ..support.fakes import ticking_clock

BODY = items_scanned_body(["6592008029c8c3e4dc76256c", "6592008029c8c3e4dc76256d"])


@dataclass
class Seen:
    at: float  # time.monotonic() on arrival
    headers: dict[str, str]
    body: bytes


class Endpoint:
    """A webhook endpoint whose first answers can be made to fail or hang."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.fail_first = 0
        self.fail_status = 500
        self.sleep_first = 0
        self.sleep_seconds = 0.0
        self.hold = 0.0
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.seen.append(Seen(time.monotonic(), dict(request.headers), body))
        number = len(self.seen)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if number <= self.sleep_first:
                await asyncio.sleep(self.sleep_seconds)
            if self.hold:
                await asyncio.sleep(self.hold)
        finally:
            self.in_flight -= 1
        if number <= self.fail_first:
            headers = {"location": "/elsewhere"} if 300 <= self.fail_status < 400 else None
            return Response(status_code=self.fail_status, headers=headers)
        return Response(status_code=204)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Endpoint, str]]:
    endpoint = Endpoint()
    app = Starlette(routes=[Route("/webhook", endpoint.handle, methods=["POST"])])
    with serve_in_thread(app) as url:
        yield endpoint, url + "/webhook"


@pytest.fixture
def endpoint(served: tuple[Endpoint, str]) -> Endpoint:
    served[0].reset()
    return served[0]


@pytest.fixture
def url(served: tuple[Endpoint, str], endpoint: Endpoint) -> str:
    return served[1]


async def test_retries_with_the_same_id_and_fresh_signatures_until_a_2xx(
    endpoint: Endpoint, url: str
) -> None:
    endpoint.fail_first = 3
    async with SimulatedSender(url, KEY, compress=10_000, clock=ticking_clock()) as sender:
        result = await sender.deliver(BODY)

    assert result.delivered
    assert [a.status for a in result.attempts] == [500, 500, 500, 204]
    assert all(a.error is None for a in result.attempts)
    assert len(endpoint.seen) == 4
    verifier = Verifier([KEY])
    timestamps = []
    for seen in endpoint.seen:
        assert seen.body == BODY
        assert seen.headers["svix-id"] == result.msg_id
        assert seen.headers["content-type"] == "application/json"
        verified = verifier.verify(seen.headers, seen.body)
        assert verified.msg_id == result.msg_id
        timestamps.append(verified.timestamp)
    assert timestamps == sorted(set(timestamps))  # strictly increasing: new on every attempt
    assert len({seen.headers["svix-signature"] for seen in endpoint.seen}) == 4
    assert (sender.sent, sender.attempts_failed, sender.succeeded, sender.failed) == (4, 3, 1, 0)
    assert sender.duplicates_sent == 0


async def test_real_clock_timestamps_and_webhook_headers_verify(
    endpoint: Endpoint, url: str
) -> None:
    async with SimulatedSender(url, KEY, family="webhook") as sender:
        result = await sender.deliver(BODY, msg_id="msg_given")

    assert result.msg_id == "msg_given"
    assert result.delivered
    assert len(result.attempts) == 1
    (seen,) = endpoint.seen
    assert "svix-id" not in seen.headers
    assert seen.headers["webhook-id"] == "msg_given"
    assert abs(int(seen.headers["webhook-timestamp"]) - time.time()) < 5
    assert Verifier([KEY], tolerance_seconds=5).verify(seen.headers, BODY).msg_id == "msg_given"


@pytest.mark.parametrize("status", [302, 400, 429, 503])
async def test_any_answer_but_2xx_is_a_failed_attempt(
    endpoint: Endpoint, url: str, status: int
) -> None:
    endpoint.fail_first, endpoint.fail_status = 1, status
    async with SimulatedSender(url, KEY, compress=10_000) as sender:
        result = await sender.deliver(BODY)

    assert [a.status for a in result.attempts] == [status, 204]
    assert result.delivered
    assert len(endpoint.seen) == 2  # a redirect is not followed


async def test_gives_up_after_eight_attempts(endpoint: Endpoint, url: str) -> None:
    endpoint.fail_first = 100
    compress = 100_000
    started = time.monotonic()
    async with SimulatedSender(url, KEY, compress=compress) as sender:
        result = await sender.deliver(BODY)
    took = time.monotonic() - started

    assert len(RETRY_SCHEDULE) == 8
    assert not result.delivered
    assert [a.status for a in result.attempts] == [500] * 8
    assert len(endpoint.seen) == 8
    assert {seen.headers["svix-id"] for seen in endpoint.seen} == {result.msg_id}
    assert took >= sum(RETRY_SCHEDULE) / compress
    assert (sender.sent, sender.attempts_failed, sender.succeeded, sender.failed) == (8, 8, 0, 1)


async def test_the_compressed_schedule_is_respected(endpoint: Endpoint, url: str) -> None:
    endpoint.fail_first = 4
    compress = 10_000
    async with SimulatedSender(url, KEY, compress=compress) as sender:
        result = await sender.deliver(BODY)

    assert [a.status for a in result.attempts] == [500, 500, 500, 500, 204]
    expected = [delay / compress for delay in RETRY_SCHEDULE[1:5]]  # 0.5 ms ... 0.72 s
    arrivals = [seen.at for seen in endpoint.seen]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    records = result.attempts
    waits = [b.at - (a.at + a.elapsed) for a, b in itertools.pairwise(records)]
    assert records[0].at == pytest.approx(0.0, abs=0.05)
    for gap, wait, delay in zip(gaps, waits, expected, strict=True):
        assert gap >= delay - 0.002
        assert gap <= delay + 0.25
        assert wait == pytest.approx(delay, abs=0.1)
        assert wait >= delay - 0.002


async def test_a_timeout_is_a_failed_attempt(endpoint: Endpoint, url: str) -> None:
    endpoint.sleep_first, endpoint.sleep_seconds = 1, 0.8
    async with SimulatedSender(url, KEY, compress=10_000, timeout=0.3) as sender:
        result = await sender.deliver(BODY)
    deadline = time.monotonic() + 5
    while endpoint.in_flight and time.monotonic() < deadline:  # let the hung handler finish
        await asyncio.sleep(0.05)

    first, second = result.attempts
    assert first.status is None
    assert first.error is not None
    assert "timeout" in first.error
    assert 0.25 <= first.elapsed < 0.8
    assert second.status == 204
    assert result.delivered
    assert [seen.headers["svix-id"] for seen in endpoint.seen] == [result.msg_id] * 2


async def test_a_transport_error_is_a_failed_attempt() -> None:
    closed = f"http://127.0.0.1:{free_port()}/webhook"
    async with SimulatedSender(closed, KEY, compress=100_000) as sender:
        result = await sender.deliver(BODY)

    assert not result.delivered
    assert len(result.attempts) == 8
    for attempt in result.attempts:
        assert attempt.status is None
        assert attempt.error is not None
        assert "Connect" in attempt.error
    assert sender.failed == 1


async def test_a_duplicate_repeats_a_delivered_message_later(endpoint: Endpoint, url: str) -> None:
    async with SimulatedSender(url, KEY, compress=10_000, duplicate_rate=1.0) as sender:
        result = await sender.deliver(BODY)
        assert len(result.attempts) == 1
        await sender.join()

    assert [seen.headers["svix-id"] for seen in endpoint.seen] == [result.msg_id] * 2
    assert endpoint.seen[1].at - endpoint.seen[0].at >= RETRY_SCHEDULE[1] / 10_000
    assert (sender.sent, sender.succeeded, sender.duplicates_sent) == (2, 1, 1)


async def test_leaving_the_block_cancels_duplicates_not_yet_sent(
    endpoint: Endpoint, url: str
) -> None:
    started = time.monotonic()
    async with SimulatedSender(url, KEY, duplicate_rate=1.0) as sender:  # duplicate after 5 s
        await sender.deliver(BODY)

    assert time.monotonic() - started < 2
    assert len(endpoint.seen) == 1
    assert sender.duplicates_sent == 0


async def test_deliver_many_keeps_order_and_bounds_concurrency(
    endpoint: Endpoint, url: str
) -> None:
    endpoint.hold = 0.05
    bodies = [items_scanned_body([f"{n:024x}"]) for n in range(12)]
    async with SimulatedSender(url, KEY) as sender:
        results = await sender.deliver_many(bodies, concurrency=3)

    assert all(result.delivered for result in results)
    assert len({result.msg_id for result in results}) == 12
    by_id = {seen.headers["svix-id"]: seen.body for seen in endpoint.seen}
    assert [by_id[result.msg_id] for result in results] == bodies
    assert endpoint.max_in_flight <= 3


def test_items_scanned_body_and_argument_checks() -> None:
    assert json.loads(items_scanned_body(iter(["a", "b"]))) == {"item_ids": ["a", "b"]}
    for bad in ({"compress": 0}, {"timeout": 0}, {"duplicate_rate": 1.5}, {"family": "x"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SimulatedSender("http://127.0.0.1:1/webhook", KEY, **bad)


async def test_outside_the_block_deliver_refuses() -> None:
    sender = SimulatedSender("http://127.0.0.1:1/webhook", KEY)
    with pytest.raises(RuntimeError, match="async with"):
        await sender.deliver(BODY)


async def test_our_receiver_stores_one_event_for_retries_and_duplicates(db_url: str) -> None:
    app = create_app(make_settings(db_url), run_worker=False)
    with serve_in_thread(app) as base:
        async with SimulatedSender(base + "/webhook", KEY, duplicate_rate=1.0) as sender:
            first = await sender.deliver(BODY)
            again = await sender.deliver(BODY, msg_id=first.msg_id)

    assert first.delivered
    assert again.delivered
    assert [a.status for a in first.attempts + again.attempts] == [204, 204]
    rows = query(db_url, "SELECT message_id, deliveries FROM events")
    assert rows == [{"message_id": first.msg_id, "deliveries": 2}]
