"""S12: an item id can never make us request another upstream path.

Ids ``.``, ``..``, ``../x``, slashes, percent escapes, NUL and very long ones, in a webhook, a
full payload and the replay API and CLI: the fake Dimmy API only ever sees ``GET /items/<id>`` of
a valid id (httpx resolves dot segments, so ``..`` used to become ``GET /`` and ``.`` the list
endpoint, both with the API key); the bad ids are refused with a reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.errors import PermanentUpstream
from dimmy_webhooks.upstream.client import DimmyClient

from ..support.constants import ADMIN_TOKEN, API_KEY, AUTH, CLI, SECRET
from ..support.databases import query
from ..support.processes import run, wait_until
from ..support.senders import post_signed
from ..support.transport import Canned, FakeTransport, Sent

pytestmark = pytest.mark.faults

BAD_IDS = [
    ".",
    "..",
    "../x",
    "x/..",
    "a/b",
    "%2e%2e",
    "x?y=1",
    "x#y",
    "a b",
    "\x00",
    "x" * 3000,
    "",
]
ONE_ITEM_PATH = re.compile(r"^/items/[A-Za-z0-9_-]{1,128}$")


def test_bad_ids_in_a_webhook_never_reach_another_path(
    service_url: str, fake: FakeDimmy, db_url: str
) -> None:
    (good,) = fake.generate_items(1)
    body = json.dumps({"item_ids": [*BAD_IDS, good]}).encode()
    assert post_signed(service_url, "msg_bad_ids", body, timeout=10).status_code == 204
    assert wait_until(lambda: bool(query(db_url, "SELECT id FROM items")), 15)
    assert wait_until(lambda: query(db_url, "SELECT status FROM events")[0]["status"] == "done", 15)

    paths = [request.path for request in fake.requests]
    assert paths == [f"/items/{good}"], paths
    event = query(db_url, "SELECT last_error FROM events")[0]
    assert f"{len(BAD_IDS)} item id(s) refused" in event["last_error"]
    assert "'..'" in event["last_error"]
    assert [row["id"] for row in query(db_url, "SELECT id FROM items")] == [good]
    answer = httpx.get(f"{service_url}/api/events", headers=AUTH).json()["events"][0]
    assert "refused" in answer["last_error"]


def test_a_full_payload_with_a_bad_id_is_dead_with_the_reason(
    service_url: str, fake: FakeDimmy, db_url: str
) -> None:
    body = json.dumps({"_id": "../../items", "updated_at": "2026-01-05T09:00:00Z"}).encode()
    assert post_signed(service_url, "msg_bad_full", body, timeout=10).status_code == 204
    assert wait_until(lambda: query(db_url, "SELECT status FROM events")[0]["status"] == "dead", 15)
    event = query(db_url, "SELECT last_error FROM events")[0]
    assert "not a valid item id" in event["last_error"]
    assert query(db_url, "SELECT count(*) AS n FROM items")[0]["n"] == 0
    assert not fake.requests


@pytest.mark.parametrize("raw", ["..", "%2E%2E", ".", "a%2Fb", "%00", "x" * 3000, "a%0Ab"])
def test_the_replay_api_refuses_bad_ids(
    service_url: str, fake: FakeDimmy, db_url: str, raw: str
) -> None:
    # a raw path (httpx would resolve "..") with the id percent-encoded as a client may send it
    with httpx.Client(base_url=service_url, headers=AUTH) as http:
        request = http.build_request("POST", "/api/items/ID/replay")
        request.url = request.url.copy_with(raw_path=f"/api/items/{raw}/replay".encode())
        answer = http.send(request)
        assert answer.status_code in (404, 405, 422), answer.text
        request = http.build_request("GET", "/api/items/ID")
        request.url = request.url.copy_with(raw_path=f"/api/items/{raw}".encode())
        assert http.send(request).status_code < 500  # "." may resolve to the list: harmless
    assert query(db_url, "SELECT count(*) AS n FROM jobs")[0]["n"] == 0
    assert not fake.requests


def test_the_replay_command_refuses_a_bad_id(tmp_path: Path) -> None:
    for bad in ("..", "a/b", "x" * 200):
        proc = run(
            [CLI, "replay", "--item", bad],
            tmp_path,
            DIMMY_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
            DIMMY_WEBHOOK_SECRET=SECRET,
            DIMMY_ADMIN_TOKEN=ADMIN_TOKEN,
        )
        assert proc.returncode == 2, proc.stderr
        assert "item id" in proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_the_client_refuses_a_bad_id_without_a_request(bad: str) -> None:
    seen: list[Sent] = []

    def answer(request: Sent) -> Canned:
        seen.append(request)
        return Canned.json(200, [])

    transport = FakeTransport(answer)
    async with DimmyClient("http://127.0.0.1:9", API_KEY, transport=transport) as client:
        with pytest.raises(PermanentUpstream, match="not a valid item id"):
            await client.get_item(bad)
    assert not seen
