"""A hostile destinations file and a hostile WMS (S16, S20, S26): what the http: output refuses at
start-up, how much of an answer it reads, and what becomes of a destination's backlog when its
URL changes or it is removed."""

from __future__ import annotations

import gzip
import socket
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.outputs.http import DeliveryFailed, Destination, HttpOutput, load_destinations

from ..support.builders import stored_item
from ..support.constants import FORWARD_SECRET

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
    sent: list[list[str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get_list("user-agent"))
        return httpx.Response(200, json={"id": "r1"})

    transport = httpx.MockTransport(answer)
    output = HttpOutput(destination, forward_secret=FORWARD_SECRET, transport=transport)
    try:
        await output.deliver(stored_item(), "dmy_k")
    finally:
        await output.aclose()
    assert sent == [["acme-gateway/2"]]


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
    asked: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("accept-encoding"))
        return httpx.Response(
            200, headers={"content-encoding": "gzip"}, stream=httpx.ByteStream(bomb)
        )

    output = HttpOutput(
        Destination(url="https://wms.example/in"),
        forward_secret=FORWARD_SECRET,
        transport=httpx.MockTransport(answer),
    )
    del inflated
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        receipt = await output.deliver(stored_item(), "dmy_k")
    finally:
        await output.aclose()
    peak = tracemalloc.get_traced_memory()[1] - before
    assert peak < 8 * 1024 * 1024, f"{peak / 1e6:.1f} MB held while inflating the answer"
    assert receipt.status_code == 200
    assert receipt.excerpt is not None
    assert receipt.excerpt.startswith('{"id":"r2","pad":"   ')
    assert asked == ["identity"]  # and we asked for no compression
