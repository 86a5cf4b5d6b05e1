"""DimmyClient: classification with a fake transport (in-process), behaviour against the fake API
and bare servers on loopback, TLS included."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dimmy_webhooks import outbound
from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy, FakeDimmyConfig, create_app
from dimmy_webhooks.devtools.runner import free_port, serve_in_thread
from dimmy_webhooks.errors import (
    PermanentUpstream,
    TransientUpstream,
    UpstreamAuthError,
    UpstreamError,
)
from dimmy_webhooks.ratelimit import backoff_delay, parse_retry_after
from dimmy_webhooks.upstream.client import DEFAULT_429_PAUSE, ERROR_BODY_LIMIT, DimmyClient

from ..support.fakes import FakeTime, reset_fake
from ..support.tls import make_certificates
from ..support.transport import Canned, FakeTransport, Sent, http_answer, raw_server

KEY = "s3cret-key-0123456789"
ITEM_ID = "6592008029c8c3e4dc76256c"
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

Handler = Callable[[Sent], Canned]


def mock_client(handler: Handler, **options: Any) -> DimmyClient:
    return DimmyClient("https://dimmy.test", KEY, transport=FakeTransport(handler), **options)


def item_response(request: Sent | None = None) -> Canned:
    return Canned.json(200, {"_id": ITEM_ID, "weighing": None})


# -- classification (a fake transport) ------------------------------------------------------


async def test_get_item_returns_the_raw_body_and_sends_the_key() -> None:
    raw = b'{"_id": "6592008029c8c3e4dc76256c",  "weighing": null, "x": 1.50}'
    seen: list[Sent] = []

    def handler(request: Sent) -> Canned:
        seen.append(request)
        return Canned(200, raw)

    async with mock_client(handler) as client:
        assert await client.get_item(ITEM_ID) == raw
    (request,) = seen
    assert (request.method, request.path) == ("GET", f"/items/{ITEM_ID}")
    assert request.headers["x-api-key"] == KEY
    assert request.headers["accept"] == "application/json"
    assert KEY not in repr(client)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, TransientUpstream),
        (502, TransientUpstream),
        (503, TransientUpstream),
        (504, TransientUpstream),
        (408, TransientUpstream),
        (429, TransientUpstream),
        (400, PermanentUpstream),
        (404, PermanentUpstream),
        (409, PermanentUpstream),
        (422, PermanentUpstream),
        (301, PermanentUpstream),
        (401, UpstreamAuthError),
        (403, UpstreamAuthError),
    ],
)
async def test_status_classification_with_one_request_per_call(
    status: int, error: type[UpstreamError]
) -> None:
    calls = 0

    def handler(request: Sent) -> Canned:
        nonlocal calls
        calls += 1
        return Canned.json(status, {"detail": f"echo {request.headers['x-api-key']}"})

    async with mock_client(handler, sleep=FakeTime().sleep) as client:
        with pytest.raises(error) as caught:
            await client.get_item(ITEM_ID)
    assert type(caught.value) is error
    assert caught.value.status == status
    assert calls == 1
    assert KEY not in str(caught.value)
    assert f"HTTP {status}" in str(caught.value)
    assert "echo ***" in str(caught.value)


@pytest.mark.parametrize(
    ("exc", "said"),
    [
        (aiohttp.ServerDisconnectedError(), "connection error (ServerDisconnectedError"),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), "connection error (ClientOSError"),
        (aiohttp.ClientPayloadError("Response payload is not completed"), "connection error"),
        (aiohttp.ServerTimeoutError("Timeout on reading data from socket"), "timed out"),
        (aiohttp.ConnectionTimeoutError("Connection timeout to host"), "timed out"),
        (TimeoutError(), "timed out (TimeoutError)"),
        (ConnectionResetError(104, "Connection reset by peer"), "connection error"),
    ],
)
async def test_transport_errors_are_transient(exc: Exception, said: str) -> None:
    def handler(request: Sent) -> Canned:
        raise exc

    async with mock_client(handler) as client:
        with pytest.raises(TransientUpstream) as caught:
            await client.get_item(ITEM_ID)
    assert caught.value.status is None
    assert caught.value.retry_after is None
    assert caught.value.__cause__ is exc
    assert str(caught.value).startswith(f"GET /items/{ITEM_ID}: {said}")


@pytest.mark.parametrize(
    "body",
    [b"<html>hello</html>", b"", b"[]", b'"text"', b'{"_id": "aaaaaaaaaaaaaaaaaaaaaaaa"}', b"{}"],
)
async def test_an_unexpected_200_body_is_permanent(body: bytes) -> None:
    async with mock_client(lambda request: Canned(200, body)) as client:
        with pytest.raises(PermanentUpstream) as caught:
            await client.get_item(ITEM_ID)
    assert caught.value.status == 200


async def test_detail_lists_and_long_details_are_summarised() -> None:
    detail = [{"loc": ["path", "item_id"], "msg": "bad " + "x" * 500, "type": "t"}]
    async with mock_client(lambda r: Canned.json(422, {"detail": detail})) as client:
        with pytest.raises(PermanentUpstream) as caught:
            await client.get_item("nope")
    assert "path.item_id: bad xxx" in str(caught.value)
    assert str(caught.value).endswith("...")
    assert len(str(caught.value)) < 300


async def test_auth_failure_is_remembered_until_a_request_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers = [Canned.json(401, {"message": "Unauthorized"}), item_response()]
    caplog.set_level(logging.DEBUG)
    async with mock_client(lambda request: answers.pop(0)) as client:
        assert client.auth_failed is None
        with pytest.raises(UpstreamAuthError, match="Unauthorized"):
            await client.get_item(ITEM_ID)
        assert client.auth_failed is not None
        assert "401" in client.auth_failed
        await client.get_item(ITEM_ID)
        assert client.auth_failed is None
    assert caplog.records
    assert KEY not in caplog.text


async def test_429_pauses_every_request_of_the_client() -> None:
    clock = FakeTime()
    sent_at: list[float] = []
    answers = [
        Canned(429, headers={"Retry-After": "30"}),
        item_response(),
        item_response(),
    ]

    def handler(request: Sent) -> Canned:
        sent_at.append(clock.now)
        return answers.pop(0)

    async with mock_client(handler, clock=clock.clock, sleep=clock.sleep) as client:
        with pytest.raises(TransientUpstream) as caught:
            await client.get_item(ITEM_ID)
        assert caught.value.status == 429
        assert caught.value.retry_after == 30
        assert client.pause_remaining == 30
        await asyncio.gather(client.get_item(ITEM_ID), client.get_item(ITEM_ID))
    assert sent_at[0] == 1000.0
    assert min(sent_at[1:]) >= 1030.0
    assert client.pause_remaining == 0


@pytest.mark.parametrize(
    ("header", "expected_retry_after", "expected_pause"),
    [
        (None, None, DEFAULT_429_PAUSE),
        ("soon", None, DEFAULT_429_PAUSE),
        ("86400", 900.0, 900.0),  # capped by max_retry_after
        ("0", 0.0, 0.0),
    ],
)
async def test_429_without_a_usable_retry_after(
    header: str | None, expected_retry_after: float | None, expected_pause: float
) -> None:
    clock = FakeTime()
    headers = {"Retry-After": header} if header is not None else {}
    async with mock_client(
        lambda request: Canned(429, headers=headers), clock=clock.clock
    ) as client:
        with pytest.raises(TransientUpstream) as caught:
            await client.list_items()
        assert caught.value.retry_after == expected_retry_after
        assert client.pause_remaining == expected_pause


async def test_429_with_an_http_date() -> None:
    wall = 1_800_000_000.0
    date = email.utils.formatdate(wall + 45, usegmt=True)
    async with mock_client(
        lambda request: Canned(429, headers={"Retry-After": date}),
        wall_clock=lambda: wall,
    ) as client:
        with pytest.raises(TransientUpstream) as caught:
            await client.get_item(ITEM_ID)
    assert caught.value.retry_after == pytest.approx(45)


def test_parse_retry_after() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("2", now=now) == 2.0
    assert parse_retry_after(" 5 ", now=now) == 5.0
    assert parse_retry_after("1.5", now=now) == 1.5
    assert parse_retry_after("-3", now=now) == 0.0
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT", now=now) is not None
    for junk in (None, "", "soon", "nan", "inf", "Wed, 99 Foo"):
        assert parse_retry_after(junk, now=now) is None


async def test_query_encoding() -> None:
    seen: list[Sent] = []

    def handler(request: Sent) -> Canned:
        seen.append(request)
        return Canned.json(200, [])

    async with mock_client(handler) as client:
        cet = timezone(timedelta(hours=1))
        await client.list_items(
            start_date=datetime(2026, 1, 5, 10, 0, tzinfo=cet),
            end_date=datetime(2026, 1, 5, 12, 0, 0, 500000),
            skip=20,
            limit=10,
        )
    params = seen[0].params
    assert params["start_date"] == "2026-01-05T09:00:00Z"
    assert params["end_date"] == "2026-01-05T12:00:00.500000Z"
    assert (params["skip"], params["limit"]) == ("20", "10")


async def test_list_rejects_a_non_array() -> None:
    async with mock_client(lambda request: Canned.json(200, {"items": []})) as client:
        with pytest.raises(PermanentUpstream):
            await client.list_items()


async def test_rate_limit_spaces_requests() -> None:
    async with mock_client(item_response, rate_limit=20) as client:
        started = time.monotonic()
        await asyncio.gather(*(client.get_item(ITEM_ID) for _ in range(30)))
        # a burst of 20, then 20 per second
        assert time.monotonic() - started >= 0.4


# -- backoff -------------------------------------------------------------------------------


@given(
    attempt=st.integers(1, 2000),
    base=st.floats(0.001, 100),
    cap=st.floats(0.001, 100_000),
    seed=st.integers(0, 2**32),
)
def test_backoff_stays_between_half_and_the_full_delay(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    full = min(cap, base * 2.0 ** min(attempt - 1, 1023))
    delay = backoff_delay(attempt, base=base, cap=cap, rng=random.Random(seed))
    assert full / 2 <= delay <= full
    assert delay <= cap


@given(attempt=st.integers(1, 30), base=st.floats(0.001, 10), seed=st.integers(0, 2**32))
def test_backoff_grows_until_the_cap(attempt: int, base: float, seed: int) -> None:
    rng = random.Random(seed)
    now = backoff_delay(attempt, base=base, cap=float("inf"), rng=rng)
    after = backoff_delay(attempt + 1, base=base, cap=float("inf"), rng=rng)
    assert after >= now  # equal jitter: the next delay's floor is this one's ceiling


@given(
    attempt=st.integers(1, 50),
    retry_after=st.floats(0, 100_000),
    seed=st.integers(0, 2**32),
)
def test_backoff_never_undercuts_retry_after(attempt: int, retry_after: float, seed: int) -> None:
    delay = backoff_delay(attempt, base=1, cap=60, rng=random.Random(seed), retry_after=retry_after)
    assert delay >= retry_after
    assert delay <= max(60, retry_after)


def test_backoff_is_reproducible_and_rejects_attempt_zero() -> None:
    first = [backoff_delay(a, base=2, cap=900, rng=random.Random(5)) for a in range(1, 12)]
    second = [backoff_delay(a, base=2, cap=900, rng=random.Random(5)) for a in range(1, 12)]
    assert first == second
    assert 1 <= backoff_delay(1, base=2, cap=900) <= 2
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(0, base=1, cap=10)


# -- against the fake over loopback --------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeDimmy, str]]:
    fake = FakeDimmy(FakeDimmyConfig(api_key=KEY, seed=21))
    with serve_in_thread(create_app(fake)) as url:
        yield fake, url


@pytest.fixture
def fake(served: tuple[FakeDimmy, str]) -> FakeDimmy:
    return reset_fake(served[0], FakeDimmyConfig(api_key=KEY, seed=21))


@pytest.fixture
def url(served: tuple[FakeDimmy, str], fake: FakeDimmy) -> str:
    return served[1]


async def test_fetch_over_http(fake: FakeDimmy, url: str) -> None:
    ids = fake.generate_items(30)
    async with DimmyClient(url, KEY) as client:
        bodies = await asyncio.gather(*(client.get_item(i) for i in ids))
        assert [json.loads(body) for body in bodies] == [fake.items[i] for i in ids]
        assert b":null" in b"".join(bodies)
    assert fake.counts == dict.fromkeys(ids, 1)


async def test_missing_and_invalid_ids_are_permanent(fake: FakeDimmy, url: str) -> None:
    async with DimmyClient(url, KEY) as client:
        with pytest.raises(PermanentUpstream, match="Item not found") as missing:
            await client.get_item("f" * 24)
        assert missing.value.status == 404
        with pytest.raises(PermanentUpstream, match="item_id: String should match") as bad:
            await client.get_item("not-an-id")
        assert bad.value.status == 422


async def test_a_refused_key_is_an_auth_error(fake: FakeDimmy, url: str) -> None:
    wrong = "wrong-" + KEY
    async with DimmyClient(url, wrong) as client:
        with pytest.raises(UpstreamAuthError) as caught:
            await client.get_item(ITEM_ID)
    assert caught.value.status == 401
    assert client.auth_failed is not None
    for text in (str(caught.value), repr(caught.value), client.auth_failed):
        assert wrong not in text
        assert KEY not in text


async def test_503_is_transient(fake: FakeDimmy, url: str) -> None:
    (item_id,) = fake.generate_items(1)
    fake.config.error_rate = 1.0
    async with DimmyClient(url, KEY) as client:
        with pytest.raises(TransientUpstream) as caught:
            await client.get_item(item_id)
        assert caught.value.status == 503
        fake.config.error_rate = 0.0
        assert json.loads(await client.get_item(item_id))["_id"] == item_id
    assert fake.attempts[item_id] == 2


async def test_a_hang_beyond_the_timeout_is_transient(fake: FakeDimmy, url: str) -> None:
    fake.config.hang_rate = 1.0
    fake.config.hang_seconds = 2
    async with DimmyClient(url, KEY, timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(TransientUpstream, match="timed out") as caught:
            await client.list_items()
    assert 0.25 <= time.monotonic() - started < 1.5
    assert caught.value.status is None


async def test_nothing_listening_is_transient_and_said_to_be_refused() -> None:
    async with DimmyClient(f"http://127.0.0.1:{free_port()}", KEY, timeout=1) as client:
        with pytest.raises(TransientUpstream) as caught:
            await client.list_items()
    assert caught.value.status is None
    assert str(caught.value).startswith("GET /items: connection refused (ClientConnectorError)")
    assert "timed out" not in str(caught.value)


async def test_a_redirect_is_permanent_and_never_followed() -> None:
    moved = http_answer(301, b"", {"location": "/elsewhere"})
    async with (
        raw_server(lambda n, head: moved) as server,
        DimmyClient(server.url, KEY) as client,
    ):
        with pytest.raises(PermanentUpstream, match="HTTP 301") as caught:
            await client.get_item(ITEM_ID)
    assert caught.value.status == 301
    assert len(server.heads) == 1


def test_aiohttp_still_has_the_hidden_retry_we_turn_off() -> None:
    """aiohttp resends a GET on a new connection when a reused one fails, unless the private
    ``ClientSession._retry_connection`` is false: if a release renames or drops it, this fails
    (and so does :func:`outbound.session`) instead of the retry coming back unnoticed."""

    async def check() -> None:
        async with (
            aiohttp.ClientSession() as plain,
            outbound.session(url="http://127.0.0.1:9", concurrency=2, timeout=1) as made,
        ):
            assert getattr(plain, outbound.RETRY_ATTRIBUTE) is True
            assert getattr(made, outbound.RETRY_ATTRIBUTE) is False

    asyncio.run(check())


async def test_one_request_per_call_when_a_reused_connection_is_dropped() -> None:
    """R10's contract at the client: the second GET on a kept-alive connection is dropped
    unanswered; the server sees it once (no hidden retry) and the call is a transient error."""
    body = json.dumps({"_id": ITEM_ID}).encode()
    async with (
        raw_server(lambda n, head: http_answer(200, body) if n == 1 else None) as server,
        DimmyClient(server.url, KEY, concurrency=1) as client,
    ):
        await client.get_item(ITEM_ID)
        with pytest.raises(TransientUpstream) as caught:
            await client.get_item(ITEM_ID)
    assert len(server.heads) == 2
    assert server.connections == 1
    assert "connection error (ServerDisconnectedError" in str(caught.value)


async def test_tls_with_an_unknown_authority_is_refused_and_trusted_with_its_ca(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    certificates = make_certificates(tmp_path)
    body = json.dumps({"_id": ITEM_ID}).encode()
    tls = certificates.server_context()
    async with raw_server(lambda n, head: http_answer(200, body), tls=tls) as server:
        assert server.url.startswith("https://127.0.0.1:")
        async with DimmyClient(server.url, KEY, timeout=5) as client:
            with pytest.raises(TransientUpstream) as caught:
                await client.get_item(ITEM_ID)
        assert "TLS certificate refused" in str(caught.value)
        assert not server.heads
        monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca))  # as an operator would
        async with DimmyClient(server.url, KEY, timeout=5) as client:
            assert await client.get_item(ITEM_ID) == body
    assert len(server.heads) == 1


async def test_an_answer_dripping_slower_than_the_whole_bound_times_out() -> None:
    """Each byte comes well within the per-phase timeout, the whole never within three times
    it: bounded all the same."""

    handlers: list[asyncio.Task[None]] = []

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
            for _ in range(100):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.1)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, DimmyClient(f"http://127.0.0.1:{port}", KEY, timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises(TransientUpstream, match="timed out"):
            await client.get_item(ITEM_ID)
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers)
        assert 1.4 <= time.monotonic() - started < 3


async def test_429_holds_the_next_request_for_retry_after(fake: FakeDimmy, url: str) -> None:
    first, second = fake.generate_items(2)
    fake.config.rate_limit_every = 1
    fake.config.retry_after_seconds = 2
    async with DimmyClient(url, KEY) as client:
        with pytest.raises(TransientUpstream) as caught:
            await client.get_item(first)
        limited_at = time.monotonic()
        assert caught.value.status == 429
        assert caught.value.retry_after == 2
        fake.config.rate_limit_every = None
        pending = asyncio.create_task(client.get_item(second))
        await asyncio.sleep(1.0)
        assert fake.requests_total == 1  # still held
        await pending
        assert time.monotonic() - limited_at >= 1.9
    requests = list(fake.requests)
    assert [r.status for r in requests] == [429, 200]
    assert requests[1].at - requests[0].at >= 1.9


async def test_concurrency_cap(fake: FakeDimmy, url: str) -> None:
    ids = fake.generate_items(20)
    fake.config.latency_seconds = 0.2
    async with DimmyClient(url, KEY, concurrency=4) as client:
        await asyncio.gather(*(client.get_item(i) for i in ids))
    assert fake.max_in_flight == 4
    assert fake.requests_total == 20


async def test_list_items_window_and_paging(fake: FakeDimmy, url: str) -> None:
    ids = fake.generate_items(40, start=START)
    created = [datetime.fromisoformat(fake.items[i]["created_at"]) for i in ids]
    async with DimmyClient(url, KEY) as client:
        window = await client.list_items(start_date=created[5], end_date=created[14])
        assert [item["_id"] for item in window] == ids[5:15]
        naive = created[30].replace(tzinfo=None)
        assert [i["_id"] for i in await client.list_items(start_date=naive)] == ids[30:]
        page = await client.list_items(skip=10, limit=5)
        assert [item["_id"] for item in page] == ids[10:15]
        with pytest.raises(PermanentUpstream, match="422"):
            await client.list_items(skip=-1)


# -- answer size caps and text encodings (S16, S19) -------------------------------------------


class Streamed:
    """An answer body streamed in ``chunk``-byte pieces up to ``total`` bytes, counting what was
    pulled from it (a body that is never read whole)."""

    def __init__(self, head: bytes, total: int, chunk: int = 64 * 1024) -> None:
        self.head, self.total, self.chunk = head, total, chunk
        self.pulled = 0

    async def __aiter__(self) -> Any:
        yield self.head
        self.pulled = len(self.head)
        while self.pulled < self.total:
            self.pulled += self.chunk
            yield b" " * self.chunk


@pytest.mark.parametrize("declared", [False, True])
async def test_an_item_over_the_cap_is_permanent_and_read_no_further(declared: bool) -> None:
    cap = 256 * 1024
    body = Streamed(b'{"_id": "' + ITEM_ID.encode() + b'", "blob": "', total=200 * 1024 * 1024)

    def handler(request: Sent) -> Canned:
        headers = {"content-length": str(body.total)} if declared else {}
        return Canned(200, body, headers)

    async with mock_client(handler, max_item_bytes=cap) as client:
        with pytest.raises(PermanentUpstream) as caught:
            await client.get_item(ITEM_ID)
    assert caught.value.reason == (
        f"GET /items/{ITEM_ID}: answer larger than {cap} bytes (the cap: DIMMY_MAX_ITEM_BYTES)"
    )
    assert body.pulled <= (0 if declared else cap + body.chunk)


async def test_a_page_over_the_cap_is_permanent_and_read_no_further() -> None:
    cap = 1024 * 1024
    body = Streamed(b"[", total=200 * 1024 * 1024)

    def handler(request: Sent) -> Canned:
        return Canned(200, body)

    async with mock_client(handler, max_page_bytes=cap) as client:
        with pytest.raises(PermanentUpstream, match="DIMMY_MAX_PAGE_BYTES"):
            await client.list_items(start_date=START, end_date=START + timedelta(hours=1))
    assert body.pulled <= cap + body.chunk


async def test_an_item_at_the_cap_is_read_and_a_compressed_one_counts_decoded() -> None:
    doc = {"_id": ITEM_ID, "blob": "x" * 4000}
    raw = json.dumps(doc).encode()
    gzipped = http_answer(200, gzip.compress(raw), {"content-encoding": "gzip"})
    async with (
        raw_server(lambda n, head: http_answer(200, raw)) as server,
        DimmyClient(server.url, KEY, max_item_bytes=len(raw)) as client,
    ):
        assert await client.get_item(ITEM_ID) == raw
    async with raw_server(lambda n, head: gzipped) as server:
        async with DimmyClient(server.url, KEY, max_item_bytes=len(raw)) as client:
            assert await client.get_item(ITEM_ID) == raw
        async with DimmyClient(server.url, KEY, max_item_bytes=len(raw) - 1) as client:
            with pytest.raises(PermanentUpstream, match="larger than"):
                await client.get_item(ITEM_ID)  # 4 KB on the wire, over the cap once decoded


async def test_a_huge_error_answer_is_read_only_for_its_detail() -> None:
    body = Streamed(b'{"detail": "overloaded', total=200 * 1024 * 1024)

    def handler(request: Sent) -> Canned:
        return Canned(503, body)

    async with mock_client(handler) as client:
        with pytest.raises(TransientUpstream) as caught:
            await client.get_item(ITEM_ID)
    assert caught.value.status == 503
    assert caught.value.reason.startswith(f'GET /items/{ITEM_ID}: HTTP 503 {{"detail": "overloaded')
    assert body.pulled <= ERROR_BODY_LIMIT + body.chunk


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: b"\xef\xbb\xbf" + text.encode(),
        lambda text: text.encode("utf-16"),
        lambda text: text.encode("utf-16-le"),
        lambda text: text.encode("utf-16-be"),
        lambda text: text.encode("utf-32"),
    ],
    ids=["utf-8 BOM", "utf-16 BOM", "utf-16-le", "utf-16-be", "utf-32 BOM"],
)
async def test_an_item_with_a_bom_or_in_utf16_comes_back_as_utf8(
    encode: Callable[[str], bytes],
) -> None:
    text = json.dumps({"_id": ITEM_ID, "note": "caf\u00e9 \u2603"}, ensure_ascii=False)

    def handler(request: Sent) -> Canned:
        return Canned(200, encode(text))

    async with mock_client(handler) as client:
        raw = await client.get_item(ITEM_ID)
    assert raw == text.encode()
    assert json.loads(raw.decode("utf-8"))["note"] == "caf\u00e9 \u2603"  # a str: no BOM allowed


async def test_an_item_that_is_not_text_in_its_encoding_is_permanent() -> None:
    # UTF-16 with a lone surrogate escaped by json.loads' lenient decoding: not storable text
    body = '{"_id": "ID", "x": "\ud800"}'.replace("ID", ITEM_ID).encode(
        "utf-16-le", "surrogatepass"
    )

    def handler(request: Sent) -> Canned:
        return Canned(200, body)

    async with mock_client(handler) as client:
        with pytest.raises(PermanentUpstream, match="not UTF-8, UTF-16 or UTF-32"):
            await client.get_item(ITEM_ID)


async def test_the_proxy_of_the_environment_is_used_unless_no_proxy_names_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the previous client did: ``HTTP_PROXY`` carries the fetch (the proxy gets the whole
    URL in the request line), and ``NO_PROXY`` naming the API's host sends it direct."""
    body = json.dumps({"_id": ITEM_ID}).encode()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with (
        raw_server(lambda n, head: http_answer(200, body)) as proxy,
        raw_server(lambda n, head: http_answer(200, body)) as api,
    ):
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        async with DimmyClient(api.url, KEY) as client:
            await client.get_item(ITEM_ID)
        assert proxy.heads[0].startswith(f"GET {api.url}/items/{ITEM_ID} ".encode())
        assert api.heads == []
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        async with DimmyClient(api.url, KEY) as client:
            await client.get_item(ITEM_ID)
        assert len(proxy.heads) == 1
        assert api.heads[0].startswith(f"GET /items/{ITEM_ID} ".encode())
