"""S10: payloads nested hundreds to thousands of levels deep.

The receiver decides the limit (``DIMMY_MAX_JSON_DEPTH``, 64 by default) with a 400 and the
reason, since retrying cannot help (a 503 made the sender retry a poison message for 27 hours);
an item that deep from the Dimmy API is dead with the reason; and every read path answers
without a 5xx for what was stored before the limit existed.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.intake.receiver import BodyRejected, parse_event
from dimmy_webhooks.models import FULL_PAYLOAD, IncomingEvent, nested_deeper_than, nesting_bound
from dimmy_webhooks.store import create_store

from ..support.constants import AUTH
from ..support.databases import query
from ..support.processes import wait_until
from ..support.senders import post_signed

pytestmark = pytest.mark.faults


def nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for n in range(depth - 1):
        value = [value] if n % 2 else {"k": value}
    return value


def deep_text(depth: int) -> str:
    """``depth`` levels as text, built without recursion (the json module cannot dump it)."""
    return '{"k":[' * (depth // 2) + "1" + "]}" * (depth // 2)


def full_payload(item_id: str, depth: int) -> bytes:
    return (
        f'{{"_id":"{item_id}","updated_at":"2026-01-05T09:00:00Z","custom_inputs":'
        f"{deep_text(depth)}}}"
    ).encode()


@pytest.mark.parametrize("depth", [66, 300, 1_000, 5_000, 200_000])
def test_too_deep_a_webhook_is_a_400_with_the_reason(
    service_url: str, db_url: str, depth: int
) -> None:
    answer = post_signed(
        service_url, f"msg_deep_{depth}", full_payload("deepitem1", depth), timeout=30
    )
    assert answer.status_code == 400, answer.text
    assert answer.json() == {"error": "JSON nested deeper than 64 levels"}
    items_scanned = (
        b'{"item_ids":["6592008029c8c3e4dc76256c"],"extra":' + deep_text(depth).encode() + b"}"
    )
    assert (
        post_signed(service_url, f"msg_deep_ids_{depth}", items_scanned, timeout=30).status_code
        == 400
    )
    assert query(db_url, "SELECT count(*) AS n FROM events")[0]["n"] == 0


def depth_of(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


_json = st.recursive(
    st.none() | st.integers() | st.text("[]{}ab"),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("[{a"), inner, max_size=3),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=_json, encoding=st.sampled_from(["utf-8", "utf-16-le", "utf-16-be", "utf-32"]))
def test_the_bracket_count_never_underestimates_the_depth(value: object, encoding: str) -> None:
    """The receiver skips the depth walk when the count of ``[`` and ``{`` is within the limit:
    sound only because no body can nest deeper than that count, in any encoding json reads."""
    body = json.dumps(value, ensure_ascii=False).encode(encoding)
    assert nesting_bound(body) >= depth_of(value)
    assert nested_deeper_than(json.loads(body), nesting_bound(body)) is False


@pytest.mark.parametrize("depth", [64, 100, 2_000])
def test_one_level_over_the_limit_is_refused_however_few_brackets_it_has_to_spare(
    depth: int,
) -> None:
    # 64: 65 levels with the item object, one over the limit, and 65 brackets: none to spare
    body = full_payload("overthelimit", depth)
    with pytest.raises(BodyRejected, match="JSON nested deeper than 64 levels"):
        parse_event(body, 64)
    assert parse_event(full_payload("atthelimit", 62), 64) == (FULL_PAYLOAD, None)


def test_a_payload_at_the_limit_is_stored(service_url: str, db_url: str) -> None:
    body = full_payload("atthelimit", 62)  # 62 levels inside the item object and its field
    assert not nested_deeper_than(json.loads(body), 64)
    assert post_signed(service_url, "msg_at_limit", body, timeout=30).status_code == 204
    assert wait_until(lambda: bool(query(db_url, "SELECT id FROM items")), 15)
    item = httpx.get(f"{service_url}/api/items/atthelimit", headers=AUTH).json()
    assert item["raw"] == json.loads(body)


def test_an_item_too_deep_from_the_api_is_dead_with_the_reason(
    service_url: str, db_url: str, fake: FakeDimmy
) -> None:
    (item_id,) = fake.generate_items(1)
    fake.add_item({**fake.items[item_id], "custom_inputs": nested(300)})
    body = json.dumps({"item_ids": [item_id]}).encode()
    assert post_signed(service_url, "msg_deep_fetch", body, timeout=30).status_code == 204
    assert wait_until(lambda: query(db_url, "SELECT status FROM events")[0]["status"] == "dead", 15)
    job = query(db_url, "SELECT attempts, last_error FROM jobs WHERE kind = 'fetch'")[0]
    assert job["attempts"] == 1  # permanent: retrying cannot make it shallower
    assert "nested deeper than 64 levels" in job["last_error"]
    assert query(db_url, "SELECT count(*) AS n FROM items")[0]["n"] == 0


def test_every_read_path_serves_what_was_stored_before_the_limit(
    service_url: str, db_url: str
) -> None:
    """An item 500 levels deep, stored the way an earlier version stored it (straight into the
    inbox, past today's receiver): the API answers it exactly, and lists pages holding it."""
    body = full_payload("legacydeep", 500)

    async def insert() -> None:
        store = create_store(db_url)
        await store.open()
        try:
            event = IncomingEvent("msg_legacy_deep", FULL_PAYLOAD, body, {}, time.time())
            await store.insert_event(event)
        finally:
            await store.close()

    asyncio.run(insert())
    # the running service's worker picks it up (a poll, at most half a second)
    assert wait_until(lambda: bool(query(db_url, "SELECT id FROM items")), 15)
    with httpx.Client(base_url=service_url, headers=AUTH, timeout=10) as http:
        item = http.get("/api/items/legacydeep")
        assert item.status_code == 200, item.text[:300]
        assert item.content.endswith(body + b"}")  # raw spliced in, byte for byte
        listed = http.get("/api/items")
        assert listed.status_code == 200
        assert b'"id":"legacydeep"' in listed.content
        for path in ("/api/events", "/api/events/1", "/readyz"):
            assert http.get(path).status_code == 200, path
