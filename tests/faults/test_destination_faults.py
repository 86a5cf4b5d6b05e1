"""A hostile destinations file and a hostile WMS (S16, S20, S26): what the http: output refuses at
start-up, how much of an answer it reads, and what becomes of a destination's backlog when its
URL changes or it is removed."""

from __future__ import annotations

import gzip
import json
import logging
import re
import socket
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.outputs import OutputContext, parse_outputs
from dimmy_webhooks.outputs.http import DeliveryFailed, Destination, HttpOutput, load_destinations
from dimmy_webhooks.web import create_app

from ..support.builders import make_settings, stored_item
from ..support.constants import API_KEY, CLI, FORWARD_SECRET, SECRET
from ..support.databases import query
from ..support.fakes import FakeWms, WmsRequest
from ..support.processes import run, wait_until
from ..support.senders import post_signed
from ..support.transport import http_answer, raw_server

HEAD = "[[destination]]\nurl = 'https://wms.example/in'\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('headers = { "X-Name" = "Zoë" }\n', "headers.X-Name must be printable ASCII"),
        ('headers = { "X-Tab" = "a\\tb" }\n', "headers.X-Tab must be printable ASCII"),
        ('headers = { "X Bad" = "v" }\n', "headers.X Bad is not a header name"),
        ('headers = { "X-Bad:" = "v" }\n', "headers.X-Bad: is not a header name"),
        ('headers = { "" = "v" }\n', "headers. is not a header name"),
        ('headers = { "Transfer-Encoding" = "chunked" }\n', "is set by the service itself"),
        ('headers = { "content-length" = "3" }\n', "is set by the service itself"),
        ('headers = { "Host" = "other.example" }\n', "is set by the service itself"),
        ('headers = { "Connection" = "close" }\n', "is set by the service itself"),
        ('headers = { "Keep-Alive" = "5" }\n', "is set by the service itself"),
        ('headers = { "TE" = "trailers" }\n', "is set by the service itself"),
        ('headers = { "Upgrade" = "h2c" }\n', "is set by the service itself"),
        ('headers = { "Idempotency-Key" = "x" }\n', "is set by the service itself"),
        ('headers = { "X-A" = "1", "x-a" = "2" }\n', "headers.x-a is given twice"),
        (
            'basic_auth = "u:p"\nheaders = { "authorization" = "Bearer x" }\n',
            "headers.authorization is given twice (basic_auth sets it)",
        ),
        (
            "[destination.fields]\nrename = { id = 'barcode', width = 'raw' }\n",
            "fields.rename.id: 'barcode' is the name of another field",
        ),
        (
            "[destination.fields]\nrename = { width = 'raw' }\n",
            "fields.rename.width: 'raw' is the name of another field",
        ),
        (
            "[destination.fields]\nrename = { width = 'w', depth = 'w' }\n",
            "fields.rename.width: 'w' is the name of another field",
        ),
        (
            "[destination.fields]\nrename = { width = 'id' }\n",
            "fields.rename.width: 'id' is the name of another field",
        ),
    ],
)
def test_s26_a_destinations_file_that_would_break_later_is_refused_in_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    bad = tmp_path / "destinations.toml"
    bad.write_text(HEAD + text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_destinations(bad)
    line = str(raised.value)
    assert line.startswith(f"{bad}: destination #1 (http:https://wms.example/in): ")
    assert message in line
    assert "\n" not in line


def test_s26_a_bad_destination_secret_names_the_files_key(tmp_path: Path) -> None:
    bad = tmp_path / "destinations.toml"
    bad.write_text(HEAD + "secret = 'whsec_!!'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_destinations(bad)
    line = str(raised.value)
    assert line.startswith(f"{bad}: destination #1 (http:https://wms.example/in): secret ")
    assert "DIMMY_WEBHOOK_SECRET" not in line
    assert "\n" not in line


def test_s26_renames_that_swap_or_move_names_stay_allowed(tmp_path: Path) -> None:
    good = tmp_path / "destinations.toml"
    good.write_text(
        HEAD + "[destination.fields]\nrename = { width = 'depth', depth = 'width', id = 'ref' }\n"
        "include = ['id', 'width', 'depth']\n",
        encoding="utf-8",
    )
    (destination,) = load_destinations(good)
    assert destination.rename == {"width": "depth", "depth": "width", "id": "ref"}


async def test_s26_their_user_agent_replaces_ours(tmp_path: Path) -> None:
    good = tmp_path / "destinations.toml"
    good.write_text(HEAD + 'headers = { "User-Agent" = "acme-gateway/2" }\n', encoding="utf-8")
    (destination,) = load_destinations(good)
    answer = http_answer(200, b'{"id": "r1"}')
    async with raw_server(lambda n, head: answer) as wms:
        output = HttpOutput(
            replace(destination, url=wms.url + "/in"), forward_secret=FORWARD_SECRET
        )
        try:
            await output.deliver(stored_item(), "dmy_k")
        finally:
            await output.aclose()
    (head,) = wms.heads
    agents = [line for line in head.split(b"\r\n") if line.lower().startswith(b"user-agent:")]
    assert agents == [b"User-Agent: acme-gateway/2"]


# -- S16: a WMS answering hundreds of MB -----------------------------------------------------------

STREAMED = 200 * 1024 * 1024


class StreamingWms:
    """A WMS on 127.0.0.1 that answers every POST with ``status`` and a 200 MiB body, sent as
    fast as the connection takes it; ``sent`` counts the body bytes that left."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.sent = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/hook"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> StreamingWms:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        self._thread.join(10)

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(
                f"HTTP/1.1 {self.status} X\r\ncontent-type: application/json\r\n"
                f"location: /records/r1\r\ncontent-length: {STREAMED}\r\n\r\n".encode()
            )
            chunk = b'{"id":"r1","pad":"' + b"x" * (1024 * 1024 - 18)
            try:
                while self.sent < STREAMED:
                    conn.sendall(chunk)
                    self.sent += len(chunk)
            except OSError:
                pass  # the reader hung up: what we want


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("status", [200, 503])
async def test_s16_a_wms_streaming_hundreds_of_mb_is_read_no_further_than_the_cap(
    traced: None, status: int
) -> None:
    with StreamingWms(status) as wms:
        output = HttpOutput(Destination(url=wms.url), forward_secret=FORWARD_SECRET)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        try:
            if status == 200:
                receipt = await output.deliver(stored_item(), "dmy_k")
            else:
                with pytest.raises(DeliveryFailed) as failed:
                    await output.deliver(stored_item(), "dmy_k")
                receipt = failed.value.receipt
        finally:
            await output.aclose()
        peak = tracemalloc.get_traced_memory()[1] - before
    # counted by its status, which came before the body; the excerpt and the record id kept
    assert receipt.status_code == status
    assert receipt.excerpt is not None
    assert receipt.excerpt.startswith('{"id":"r1","pad":"xxx')
    assert len(receipt.excerpt) == 500
    assert receipt.record_id == "/records/r1"
    # the answer was not read beyond the cap: memory and the bytes that left the WMS show it
    assert peak < 8 * 1024 * 1024, f"{peak / 1e6:.1f} MB held while reading the answer"
    assert wms.sent < STREAMED // 4, f"{wms.sent / 1e6:.1f} MB sent before we hung up"


async def test_s16_a_compressed_answer_is_inflated_no_further_than_the_cap(traced: None) -> None:
    inflated = b'{"id":"r2","pad":"' + b" " * (100 * 1024 * 1024)
    bomb = gzip.compress(inflated, compresslevel=9)
    answer = http_answer(200, bomb, {"content-encoding": "gzip"})
    del inflated
    async with raw_server(lambda n, head: answer) as wms:
        output = HttpOutput(Destination(url=wms.url + "/in"), forward_secret=FORWARD_SECRET)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        try:
            receipt = await output.deliver(stored_item(), "dmy_k")
        finally:
            await output.aclose()
        peak = tracemalloc.get_traced_memory()[1] - before
    (head,) = wms.heads
    asked = [
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"accept-encoding:")
    ]
    assert peak < 8 * 1024 * 1024, f"{peak / 1e6:.1f} MB held while inflating the answer"
    assert receipt.status_code == 200
    assert receipt.excerpt is not None
    assert receipt.excerpt.startswith('{"id":"r2","pad":"   ')
    assert asked == ["identity"]  # and we asked for no compression


# -- S20: a destination's backlog when its URL changes or it is removed -------------------------

TOKEN = "t" * 40


def start(db_url: str, fake_url: str, **settings: Any) -> Any:
    values: dict[str, Any] = {
        "api_key": API_KEY,
        "api_url": fake_url,
        "admin_token": TOKEN,
        "forward_secret": FORWARD_SECRET,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.5,
        **settings,
    }
    return serve_in_thread(create_app(make_settings(db_url, **values)))


def down(request: WmsRequest) -> Any:
    return 503, {"error": "down for maintenance"}, {}


def deliveries(db_url: str) -> list[dict[str, Any]]:
    return query(db_url, "SELECT output, status, last_error FROM jobs WHERE kind = 'deliver'")


def delivered_ids(wms: FakeWms) -> set[str]:
    return {json.loads(r.body)["data"]["id"] for r in wms.ok}


def test_s20_a_named_destination_keeps_its_backlog_when_its_url_changes(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    ids = fake.generate_items(3)
    destinations = tmp_path / "destinations.toml"
    with FakeWms() as wms:

        def configure(token: str) -> None:
            destinations.write_text(
                f'[[destination]]\nname = "wms-main"\nurl = "{wms.url}?token={token}"\n'
                "pause_seconds = 0.1\n"
            )

        configure("one")
        wms.answer = down
        with start(db_url, fake_url, outputs="", destinations_file=str(destinations)) as url:
            post_signed(url, "msg_s20_rotate", ids, expect=204)
            assert wait_until(lambda: len(wms.requests) >= 3, 30)
        # the token in the query rotated while the WMS was down: the backlog follows the name
        configure("two")
        wms.answer = None
        with start(db_url, fake_url, outputs="", destinations_file=str(destinations)):
            assert wait_until(lambda: delivered_ids(wms) == set(ids), 30), deliveries(db_url)
    rows = deliveries(db_url)
    assert {(row["output"], row["status"]) for row in rows} == {("wms-main", "done")}, rows


def test_s20_a_removed_destination_keeps_its_backlog_reports_it_and_moves_in_one_command(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = fake.generate_items(3)
    with FakeWms() as old, FakeWms() as new:
        old.answer = down
        with start(db_url, fake_url, outputs=f"http:{old.url}") as url:
            post_signed(url, "msg_s20_removed", ids, expect=204)
            assert wait_until(lambda: len(old.requests) >= 3, 30)
        gone = f"http:{old.url}"

        def kept() -> bool:
            rows = deliveries(db_url)
            return all(
                row["status"] == "pending" and "not configured" in (row["last_error"] or "")
                for row in rows
            )

        with (
            caplog.at_level(logging.WARNING, logger="dimmy_webhooks.services"),
            start(db_url, fake_url, outputs=f"http:{new.url}") as url,
        ):
            # kept, not killed, however often a worker looks at them; said at start and in /readyz.
            # A delivery the first run postponed for the destination's pause (10 s after five
            # failures in a row) is looked at again only when that pause ends: wait past it
            assert wait_until(kept, 30), deliveries(db_url)
            assert any(
                "3 deliveries wait for output" in r.getMessage() and gone in r.getMessage()
                for r in caplog.records
                if r.levelno == logging.WARNING
            )
            ready = httpx.get(f"{url}/readyz").json()
            assert ready["status"] == "degraded", ready
            assert any("deliveries wait for an output" in p for p in ready["problems"]), ready
            # the unauthenticated /readyz names no output (S21); the overview names it and counts
            overview = httpx.get(
                f"{url}/api/overview", headers={"Authorization": f"Bearer {TOKEN}"}
            ).json()
            waiting = f"3 deliveries wait for output {gone}"
            assert any(waiting in p for p in overview["problems"]), overview
            # one command hands them to the new destination, while the service runs
            env = {
                "DIMMY_DATABASE_URL": db_url,
                "DIMMY_WEBHOOK_SECRET": SECRET,
                "DIMMY_FORWARD_SECRET": FORWARD_SECRET,
                "DIMMY_OUTPUTS": f"http:{new.url}",
            }
            moved = run(
                [CLI, "move-deliveries", "--from", gone, "--to", f"http:{new.url}"], tmp_path, **env
            )
            assert moved.returncode == 0, moved.stderr
            assert f"moved 3 delivery(ies) of {gone}" in moved.stdout
            assert wait_until(lambda: delivered_ids(new) == set(ids), 30), deliveries(db_url)

            def ready_again() -> bool:
                return httpx.get(f"{url}/readyz").json()["status"] == "ready"

            assert wait_until(ready_again, 15)
    assert not [row for row in deliveries(db_url) if row["status"] != "done"]


def test_s20_a_removed_destinations_backlog_can_be_dropped_deliberately(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    ids = fake.generate_items(2)
    with FakeWms() as old:
        old.answer = down
        with start(db_url, fake_url, outputs=f"http:{old.url}") as url:
            post_signed(url, "msg_s20_drop", ids, expect=204)
            assert wait_until(lambda: len(old.requests) >= 2, 30)
    gone = f"http:{old.url}"
    env = {"DIMMY_DATABASE_URL": db_url, "DIMMY_WEBHOOK_SECRET": SECRET, "DIMMY_OUTPUTS": ""}
    both = run([CLI, "move-deliveries", "--from", gone, "--to", "x", "--drop"], tmp_path, **env)
    assert both.returncode == 2, both.stdout
    elsewhere = run([CLI, "move-deliveries", "--from", gone, "--to", "console"], tmp_path, **env)
    assert elsewhere.returncode != 0
    assert "not a configured output" in elsewhere.stderr
    dropped = run([CLI, "move-deliveries", "--from", gone, "--drop"], tmp_path, **env)
    assert dropped.returncode == 0, dropped.stderr
    assert f"dropped 2 delivery(ies) of {gone}" in dropped.stdout
    rows = deliveries(db_url)
    assert [row["status"] for row in rows] == ["done", "done"]
    assert all("dropped by the operator" in row["last_error"] for row in rows)


def test_s20_a_destination_is_named_in_the_file_or_in_dimmy_outputs(tmp_path: Path) -> None:
    file = tmp_path / "destinations.toml"
    file.write_text(
        "[[destination]]\nname = 'wms-main'\nurl = 'https://wms.example/in?token=two'\n"
        "[[destination]]\nurl = 'https://erp.example/in'\n"
    )
    destinations = load_destinations(file)
    assert [d.name for d in destinations] == ["wms-main", "http:https://erp.example/in"]
    context = OutputContext(forward_secret=FORWARD_SECRET, destinations=destinations)
    # http:URL of a named destination takes its name; NAME=http:URL names one in DIMMY_OUTPUTS
    names = [
        output.name
        for output in parse_outputs(
            "http:https://wms.example/in?token=two, shop=http:https://shop.example/x?k=1", context
        )
    ]
    assert names == ["wms-main", "shop", "http:https://erp.example/in"]
    # the name of old, written out, keeps a backlog queued under it
    file.write_text(
        "[[destination]]\nname = 'http:https://wms.example/in?token=one'\n"
        "url = 'https://wms.example/in?token=two'\n"
    )
    assert load_destinations(file)[0].name == "http:https://wms.example/in?token=one"
    refused = {
        "[[destination]]\nname = 'a b'\nurl = 'https://x/1'\n": "name is 1-300 characters",
        "[[destination]]\nname = 'a'\nurl = 'https://x/1'\n"
        "[[destination]]\nname = 'a'\nurl = 'https://x/2'\n": "name a is also destination #1's",
    }
    for text, message in refused.items():
        file.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_destinations(file)
    for spec, message in {
        "a=jsonl:/tmp/x": "only http:URL takes a name",
        "a=http:https://x/1, a=http:https://x/2": "listed twice",
    }.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_outputs(spec, context)
