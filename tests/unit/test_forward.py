"""The http: output on its own: the signed envelope, the WMS-side example, destination settings,
the rate limit, answers and pauses (with a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from dimmy_webhooks.devtools.runner import free_port
from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.items import to_api_dict
from dimmy_webhooks.outputs.http import (
    DeliveryFailed,
    Destination,
    DestinationPaused,
    Filter,
    HttpOutput,
    load_destinations,
)

from ..support.builders import stored_item
from ..support.constants import FORWARD_SECRET, ROOT
from ..support.fakes import FakeWms
from ..support.tls import make_certificates
from ..support.transport import http_answer, raw_server

DOC = {
    "_id": "6592008029c8c3e4dc76256c",
    "created_at": "2026-01-05T09:00:05Z",
    "updated_at": "2026-01-05T09:00:05Z",
    "scanner_account_id": "65f0c1bb00000000000000bb",
    "dimensioning": [{"dimensions": {"width": 0.31, "height": 0.22, "depth": 0.15, "unit": "m"}}],
    "weighing": [{"weight": {"value": 1.25, "unit": "kg"}}],
    "barcode_scanning": [{"barcodes": [{"value": "8712345678906"}]}],
}


def stored(doc: dict[str, Any] = DOC, revision: int = 1) -> Any:
    # the raw text as Dimmy sent it, with its own spacing
    return stored_item(
        doc=doc, indent=1, fetched_at=1767603606.0, revision=revision, dim_weight_divisor=5000
    )


@pytest.fixture
def wms() -> Iterator[FakeWms]:
    with FakeWms() as server:
        yield server


def output(url: str, **changes: Any) -> HttpOutput:
    return HttpOutput(Destination(url=url, **changes), forward_secret=FORWARD_SECRET)


async def test_the_envelope_is_signed_and_verifies_with_standardwebhooks(wms: FakeWms) -> None:
    out = output(wms.url)
    try:
        receipt = await out.deliver(stored(), "dmy_0123456789abcdef0123456789abcdef")
    finally:
        await out.aclose()
    assert receipt.status_code == 200
    assert receipt.record_id == "wms-1"
    [request] = wms.requests
    envelope = Webhook(FORWARD_SECRET).verify(request.body, request.headers)
    assert envelope["type"] == "item.created"
    assert envelope["schema_version"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", envelope["timestamp"])
    expected = to_api_dict(stored())
    assert envelope["data"] == expected  # the item as GET /api/items/{id} gives it
    assert envelope["data"]["raw"] == DOC
    assert json.dumps(DOC, indent=1).encode() in request.body  # raw spliced in, as stored
    assert request.headers["webhook-id"] == "dmy_0123456789abcdef0123456789abcdef"
    assert request.headers["idempotency-key"] == request.headers["webhook-id"]
    assert envelope["data"]["billable_weight"] == pytest.approx(2.046)


async def test_a_later_revision_is_item_updated(wms: FakeWms) -> None:
    out = output(wms.url)
    try:
        await out.deliver(stored(revision=3), "dmy_k")
    finally:
        await out.aclose()
    envelope = json.loads(wms.requests[0].body)
    assert envelope["type"] == "item.updated"
    assert envelope["data"]["revision"] == 3


def test_the_receiving_example_in_the_docs_works(wms: FakeWms) -> None:
    """docs/forwarding.md's WMS-side code, run as written against a real forward."""
    text = (ROOT / "docs" / "forwarding.md").read_text()
    block = text.split("## Verifying us on the WMS side", 1)[1].split("```python\n", 1)[1]
    code = block.split("```", 1)[0].replace("whsec_...", FORWARD_SECRET)
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/forwarding.md", "exec"), namespace)  # noqa: S102 - our own docs
    out = output(wms.url)

    async def forward() -> None:
        try:
            await out.deliver(stored(), "dmy_docs_example")
            await out.deliver(stored(), "dmy_docs_example")  # a retry of the same delivery
        finally:
            await out.aclose()

    asyncio.run(forward())
    first, again = (namespace["handle"](r.body, r.headers) for r in wms.requests)
    assert first == (200, {"id": "wms-6592008029c8c3e4dc76256c-r1"})
    assert again == (200, {"id": "already stored"})
    tampered = namespace["handle"](wms.requests[0].body + b" ", wms.requests[0].headers)
    assert tampered[0] == 401


async def test_fields_are_selected_and_renamed(wms: FakeWms) -> None:
    out = output(
        wms.url,
        include=("id", "depth", "width", "billable_weight"),
        rename={"depth": "length_cm", "width": "width_cm"},
    )
    try:
        await out.deliver(stored(), "dmy_k")
    finally:
        await out.aclose()
    data = json.loads(wms.requests[0].body)["data"]
    assert data == {
        "id": DOC["_id"],
        "length_cm": 15.0,
        "width_cm": 31.0,
        "billable_weight": pytest.approx(2.046),
    }


async def test_filters_skip_items_without_a_request(wms: FakeWms) -> None:
    out = output(wms.url, filter=Filter(scanner_accounts=frozenset({"someone-else"})))
    try:
        receipt = await out.deliver(stored(), "dmy_k")
    finally:
        await out.aclose()
    assert receipt.note == "filtered out: another scanner account"
    assert not wms.requests


async def test_the_rate_limit_is_never_exceeded(wms: FakeWms) -> None:
    """40 deliveries at once to a destination limited to 10 per second: no second (any
    window of one second) ever holds more than 10 requests. Those that would wait long are
    sent back (a pause the worker waits out, uncounted), as a worker retries them here."""
    out = output(wms.url, rate=10.0, concurrency=8)
    paused = 0

    async def deliver(n: int) -> None:
        nonlocal paused
        while True:
            try:
                await out.deliver(stored(), f"dmy_{n}")
                return
            except DestinationPaused as exc:
                paused += 1
                await asyncio.sleep(max(0.0, exc.until - time.time()))

    try:
        await asyncio.gather(*(deliver(n) for n in range(40)))
    finally:
        await out.aclose()
    assert paused > 0  # 40 at once would have waited up to 4 s: most were sent back
    times = sorted(r.at for r in wms.requests)
    assert len(times) == 40
    most = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert most <= 10, (most, " ".join(f"{t - times[0]:.3f}" for t in times))
    assert times[-1] - times[0] >= 3.0  # 40 at 10 a second: three seconds at least


async def test_how_many_may_wait_follows_how_fast_the_destination_answers(wms: FakeWms) -> None:
    """A worker hands a burst of deliveries to one destination of concurrency 2. While it
    answers at once, the whole burst waits its turn here (sending deliveries back to the queue
    for a while would cut a fast WMS's throughput to a trickle); once it takes 0.45 s a request,
    only what it answers within two seconds may wait, the rest are sent back as a pause."""

    async def burst(out: HttpOutput, n: int, tag: str) -> int:
        results = await asyncio.gather(
            *(out.deliver(stored(), f"dmy_{tag}{i}") for i in range(n)), return_exceptions=True
        )
        assert all(
            r is None or isinstance(r, DestinationPaused) or r.status_code == 200 for r in results
        ), results
        return sum(isinstance(r, DestinationPaused) for r in results)

    out = output(wms.url, concurrency=2)
    try:
        await burst(out, 2, "warm")  # it has answered: now its latency is known
        for _ in range(10):
            await burst(out, 2, "warm")
        assert await burst(out, 60, "fast") == 0
        wms.delay = 0.45
        for _ in range(12):  # its latency rises to what it now takes
            await burst(out, 2, "slow")
        # 2 in flight, and 2 s / 0.45 s = 4 whole turns of 2 waiting: 10 of 20 may go
        assert await burst(out, 20, "late") == 10
    finally:
        await out.aclose()


async def test_a_destination_that_turns_slow_holds_no_delivery_past_the_wait(
    wms: FakeWms,
) -> None:
    """Let in by how fast it was, a burst meets a destination that now takes 1.5 s a request:
    a delivery waits at most two seconds for a connection, then goes back to the queue
    (uncounted), so no worker's place is held for the whole burst's time."""
    out = output(wms.url, concurrency=2)
    try:
        for i in range(10):
            await asyncio.gather(*(out.deliver(stored(), f"dmy_w{i}{n}") for n in range(2)))
        wms.delay = 1.5

        async def timed(n: int) -> tuple[float, bool]:
            started = time.monotonic()
            try:
                await out.deliver(stored(), f"dmy_s{n}")
                return time.monotonic() - started, False
            except DestinationPaused:
                return time.monotonic() - started, True

        results = await asyncio.gather(*(timed(n) for n in range(20)))
    finally:
        await out.aclose()
    paused = [took for took, was_paused in results if was_paused]
    delivered = [took for took, was_paused in results if not was_paused]
    assert len(delivered) == 4, results  # 2 slots: two turns of 1.5 s start within 2 s
    assert len(paused) == 16, results
    assert max(paused) < 3.0, results  # given back after the two seconds, not 15
    assert max(delivered) < 5.0, results


async def test_what_each_answer_means(wms: FakeWms) -> None:
    out = output(wms.url, timeout=0.5)
    try:
        wms.answer = lambda request: (422, {"detail": "width missing"}, {})
        with pytest.raises(DeliveryFailed) as refused:
            await out.deliver(stored(), "dmy_k")
        assert refused.value.permanent
        assert refused.value.receipt.status_code == 422
        assert "width missing" in (refused.value.receipt.excerpt or "")
        wms.answer = lambda request: (503, {}, {"retry-after": "7"})
        with pytest.raises(DeliveryFailed) as busy:
            await out.deliver(stored(), "dmy_k")
        assert not busy.value.permanent
        assert busy.value.retry_after == pytest.approx(7, abs=1)
        wms.answer = lambda request: (302, {}, {"location": "https://elsewhere.example/"})
        with pytest.raises(DeliveryFailed, match="not followed"):
            await out.deliver(stored(), "dmy_k")
        assert all(r.path == "/hook" for r in wms.requests)  # never went anywhere else
        wms.delay = 2.0
        with pytest.raises(DeliveryFailed, match="timed out"):
            await out.deliver(stored(), "dmy_k")
    finally:
        await out.aclose()


async def test_failures_in_a_row_pause_the_destination_then_it_recovers(wms: FakeWms) -> None:
    now = [1_000.0]
    out = HttpOutput(Destination(url=wms.url), forward_secret=FORWARD_SECRET, clock=lambda: now[0])
    try:
        wms.answer = lambda request: (500, {}, {})
        for _ in range(5):
            with pytest.raises(DeliveryFailed):
                await out.deliver(stored(), "dmy_k")
        with pytest.raises(DestinationPaused) as paused:
            await out.deliver(stored(), "dmy_k")
        assert paused.value.until == pytest.approx(1_010.0)
        [problem] = out.problems()
        assert "paused" in problem
        assert len(wms.requests) == 5  # paused: no request
        now[0] = 1_011.0
        wms.answer = None
        assert (await out.deliver(stored(), "dmy_k")).status_code == 200
        assert out.problems() == []
    finally:
        await out.aclose()


def test_destinations_file_is_checked_with_errors_a_person_can_act_on(tmp_path: Path) -> None:
    good = tmp_path / "destinations.toml"
    good.write_text(
        """
[[destination]]
url = "https://wms.example.com/api/dimmy"
headers = { "X-Api-Key" = "k" }
rate_per_second = 5
[destination.filter]
require_dimensions = true
[destination.fields]
rename = { depth = "length_cm" }

[[destination]]
url = "http://erp.local:8080/in"
basic_auth = "user:pw"
"""
    )
    first, second = load_destinations(good)
    assert first.name == "http:https://wms.example.com/api/dimmy"
    assert first.rate == 5
    assert first.filter.require_dimensions
    assert second.headers["Authorization"].startswith("Basic ")
    cases = {
        "[[destination]]\nurl = 'ftp://x'\n": "not an http:// or https:// URL",
        "[[destination]]\nurl = 'https://x'\ntimeout = 3\n": "unknown key(s) ['timeout']",
        "[[destination]]\nurl = 'https://x'\nrate_per_second = 0\n": "rate_per_second must be",
        "[[destination]]\nheaders = {}\n": "url is missing",
        "[[destination]]\nurl = 'https://x'\n[destination.fields]\ninclude = ['nope']\n": (
            "'nope' is not an item field"
        ),
        "[[destination]]\nurl = 'https://x'\nheaders = { webhook-id = 'x' }\n": (
            "is set by the service itself"
        ),
        "[[destination]]\nurl = 'https://x'\nsecret = 'whsec_!!'\n": "secret",
        "[[destination]\n": "is not TOML",
        "[destinations]\n": "unknown table(s)",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_destinations(bad)


def test_a_destinations_error_is_one_line_naming_file_destination_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    head = "[[destination]]\nurl = 'https://user:pw@wms.example/in'\n"
    where = f"{bad}: destination #1 (http:https://wms.example/in)"
    cases = {
        "concurrency = 0\n": f"{where}: concurrency must be a number from 1 to 256",
        "[destination.filter]\nowners = 'x'\n": f"{where}: filter.owners is a list of ids",
        "[destination.filter]\nwho = 1\n": f"{where}: unknown filter key(s) ['who']; valid: [",
        'headers = { X = "a\\nb" }\n': f"{where}: headers.X must be one line",
        "basic_auth = 'nopass'\n": f"{where}: basic_auth is 'user:password'",
        "[destination.fields]\ninclude = []\n": (
            f"{where}: fields.include is a non-empty list of field names"
        ),
        "[destination.fields]\nrename = { nope = 'x' }\n": (
            f"{where}: fields.rename: 'nope' is not an item field; fields: ["
        ),
        "timeout = 3\n": f"{bad}: destination #1: unknown key(s) ['timeout']; valid: [",
    }
    for text, message in cases.items():
        bad.write_text(head + text)
        with pytest.raises(ConfigError) as raised:
            load_destinations(bad)
        assert str(raised.value).startswith(message)
        assert "\n" not in str(raised.value)


def test_a_forward_needs_a_secret() -> None:
    with pytest.raises(ConfigError, match="DIMMY_FORWARD_SECRET"):
        HttpOutput(Destination(url="https://wms.example/x"), forward_secret=None)


def test_the_output_name_never_holds_credentials() -> None:
    destination = Destination(url="https://user:pw@wms.example:8443/in?x=1")
    assert destination.name == "http:https://wms.example:8443/in?x=1"


def test_time_is_measured(wms: FakeWms) -> None:
    wms.delay = 0.2
    out = output(wms.url)

    async def go() -> Any:
        try:
            return await out.deliver(stored(), "dmy_k")
        finally:
            await out.aclose()

    started = time.monotonic()
    receipt = asyncio.run(go())
    assert receipt.latency_ms is not None
    assert 150 <= receipt.latency_ms <= (time.monotonic() - started) * 1000 + 1


async def test_a_refused_connection_is_said_to_be_refused() -> None:
    out = output(f"http://127.0.0.1:{free_port()}/hook?token=s3cret", timeout=1)
    try:
        with pytest.raises(DeliveryFailed) as failed:
            await out.deliver(stored(), "dmy_k")
    finally:
        await out.aclose()
    assert not failed.value.permanent
    assert "connection refused (ClientConnectorError)" in str(failed.value)
    assert "timed out" not in str(failed.value)
    assert "s3cret" not in str(failed.value).replace(out.name, "")


async def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_named() -> None:
    answer = http_answer(503, b"{}")
    async with raw_server(lambda n, head: answer) as wms:
        url = wms.url.replace("://", "://acme:p%40ss@") + "/hook"
        out = output(url)
        try:
            with pytest.raises(DeliveryFailed) as failed:
                await out.deliver(stored(), "dmy_k")
        finally:
            await out.aclose()
    (head,) = wms.heads
    token = base64.b64encode(b"acme:p@ss").decode()
    assert f"authorization: basic {token}".lower().encode() in head.lower()
    assert b"p%40ss" not in head.split(b"\r\n")[0]
    assert "p%40ss" not in str(failed.value)
    assert "p@ss" not in str(failed.value)


async def test_tls_with_an_unknown_authority_is_refused_and_trusted_with_its_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certificates = make_certificates(tmp_path)
    answer = http_answer(200, b'{"id": "r1"}')
    async with raw_server(lambda n, head: answer, tls=certificates.server_context()) as wms:
        assert wms.url.startswith("https://127.0.0.1:")
        out = output(wms.url + "/hook", timeout=5)
        try:
            with pytest.raises(DeliveryFailed) as failed:
                await out.deliver(stored(), "dmy_k")
        finally:
            await out.aclose()
        assert "TLS certificate refused" in str(failed.value)
        assert not wms.heads
        monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca))  # as an operator would
        out = output(wms.url + "/hook", timeout=5)
        try:
            receipt = await out.deliver(stored(), "dmy_k")
        finally:
            await out.aclose()
    assert receipt.status_code == 200
    assert receipt.record_id == "r1"
    assert len(wms.heads) == 1
