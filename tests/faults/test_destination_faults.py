"""A hostile destinations file and a hostile WMS (S16, S20, S26): what the http: output refuses at
start-up, how much of an answer it reads, and what becomes of a destination's backlog when its
URL changes or it is removed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.outputs.http import HttpOutput, load_destinations

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
