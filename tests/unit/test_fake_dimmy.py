"""The fake Dimmy API over real loopback HTTP: endpoints, auth, data shape, injected faults."""

from __future__ import annotations

import asyncio
import json
import re
import struct
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from dimmy_webhooks.devtools.fake_dimmy import MAIN_OWNER, FakeDimmy, FakeDimmyConfig, create_app
from dimmy_webhooks.devtools.fake_items import iso
from dimmy_webhooks.devtools.fake_photos import HEIGHT, WIDTH, dimensions_of, photo_png
from dimmy_webhooks.devtools.runner import serve_in_thread

from ..support.fakes import reset_fake

KEY = "test-key"
HEX24 = re.compile(r"^[0-9a-f]{24}$")
START = datetime(2026, 2, 1, 8, 0, tzinfo=UTC)
KINDS = ("photographing", "dimensioning", "barcode_scanning", "weighing")


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeDimmy, str]]:
    fake = FakeDimmy(FakeDimmyConfig(api_key=KEY, seed=7))
    with serve_in_thread(create_app(fake)) as url:
        yield fake, url


@pytest.fixture
def fake(served: tuple[FakeDimmy, str]) -> FakeDimmy:
    return reset_fake(served[0], FakeDimmyConfig(api_key=KEY, seed=7))


@pytest.fixture
def http(served: tuple[FakeDimmy, str], fake: FakeDimmy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[1], headers={"X-API-KEY": KEY}, timeout=5) as client:
        yield client


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


def all_barcodes(item: dict[str, Any]) -> list[dict[str, Any]]:
    return [code for step in item.get("barcode_scanning") or () for code in step["barcodes"]]


# -- generated data ------------------------------------------------------------------------


def test_generated_items_are_reproducible_with_a_seed() -> None:
    first, second = FakeDimmy(FakeDimmyConfig(seed=3)), FakeDimmy(FakeDimmyConfig(seed=3))
    assert first.generate_items(50) == second.generate_items(50)
    assert first.items == second.items
    assert FakeDimmy(FakeDimmyConfig(seed=4)).generate_items(5) != list(first.items)[:5]


def test_generated_items_are_varied_and_well_formed() -> None:
    fake = FakeDimmy(FakeDimmyConfig(seed=11))
    ids = fake.generate_items(300, start=START)
    items = [fake.items[item_id] for item_id in ids]
    assert len(set(ids)) == 300
    assert all(HEX24.match(item_id) for item_id in ids)
    assert items[0]["created_at"] == iso(START)
    created = [parse(item["created_at"]) for item in items]
    assert created == sorted(created)
    for item in items:
        for key in ("created_at", "updated_at", "started_at", "ended_at"):
            assert item[key].endswith("Z")
            parse(item[key])
        assert parse(item["started_at"]) < parse(item["ended_at"]) <= parse(item["created_at"])
        for key in ("owner_id", "scanner_account_id", "flow_id"):
            assert HEX24.match(item[key])
    for kind in KINDS:  # each kind of step is sometimes present, absent, null and empty
        assert any(item.get(kind) for item in items)
        assert any(kind not in item for item in items)
        assert any(kind in item and item[kind] is None for item in items)
        assert any(item.get(kind) == [] for item in items)
    dimensions = [step["dimensions"] for i in items for step in i.get("dimensioning") or ()]
    assert {d["unit"] for d in dimensions} == {"m", "cm", "mm", "in"}
    assert all(d[k] > 0 for d in dimensions for k in ("width", "height", "depth"))
    weights = [step["weight"] for item in items for step in item.get("weighing") or ()]
    assert {w["unit"] for w in weights} == {"kg", "g", "lb"}
    codes = [code for item in items for code in all_barcodes(item)]
    assert {code["format"] for code in codes} == {"EAN_13", "CODE_128", "QR"}
    for code in codes:
        if code["format"] == "EAN_13":
            digits = [int(d) for d in code["value"]]
            assert len(digits) == 13
            assert sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10 == 0
    urls = [p["url"] for i in items for s in i.get("photographing") or () for p in s["photos"]]
    assert all(u.startswith("https://media.fake-dimmy.test/") for u in urls if u is not None)
    assert None in urls  # a photo still uploading
    known = {"_id", "owner_id", "scanner_account_id", "flow_id", "custom_inputs", *KINDS}
    known |= {"created_at", "updated_at", "started_at", "ended_at"}
    assert any(set(item) - known for item in items)  # fields we have never seen


def test_generate_items_continues_after_the_last_one() -> None:
    fake = FakeDimmy(FakeDimmyConfig(seed=1))
    first = fake.generate_items(3)
    later = fake.generate_items(3)
    assert fake.items[later[0]]["created_at"] > fake.items[first[-1]]["created_at"]


def test_add_update_remove(fake: FakeDimmy, http: httpx.Client) -> None:
    (item_id,) = fake.generate_items(1)
    before = http.get(f"/items/{item_id}").json()
    updated = fake.update_item(item_id, weighing=None)
    after = http.get(f"/items/{item_id}").json()
    assert after == updated
    assert after["weighing"] is None
    assert parse(after["updated_at"]) == parse(before["updated_at"]) + timedelta(seconds=1)
    assert fake.update_item(item_id, updated_at="2030-01-01T00:00:00.000Z")["updated_at"] == (
        "2030-01-01T00:00:00.000Z"
    )
    fake.remove_item(item_id)
    assert http.get(f"/items/{item_id}").status_code == 404
    with pytest.raises(ValueError, match="_id"):
        fake.add_item({"created_at": "x"})


# -- endpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-API-KEY": "wrong"}, {"X-API-KEY": ""}])
def test_the_key_is_checked_before_anything_else(
    fake: FakeDimmy, http: httpx.Client, headers: dict[str, str]
) -> None:
    fake.config.error_rate = 1.0
    http.headers.pop("X-API-KEY")
    for response in (
        http.get("/items/not-an-id", headers=headers),
        http.get("/items", params={"skip": -1}, headers=headers),
        http.get("/items/count", headers=headers),
    ):
        assert response.status_code == 401
        assert response.json() == {"message": "Unauthorized"}
    assert fake.requests_total == 3
    assert not fake.attempts


def test_get_item_serves_the_document_with_explicit_nulls(
    fake: FakeDimmy, http: httpx.Client
) -> None:
    ids = fake.generate_items(40)
    with_null = next(i for i in ids if any(fake.items[i].get(k, 0) is None for k in KINDS))
    response = http.get(f"/items/{with_null}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content) == fake.items[with_null]
    assert re.search(
        rb'"(photographing|dimensioning|barcode_scanning|weighing)":null', response.content
    )
    assert fake.counts == {with_null: 1}
    assert fake.attempts == {with_null: 1}


def test_unknown_and_invalid_ids(fake: FakeDimmy, http: httpx.Client) -> None:
    missing = http.get("/items/" + "a" * 24)
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Item not found"}
    invalid = http.get("/items/not-an-object-id")
    assert invalid.status_code == 422
    (entry,) = invalid.json()["detail"]
    assert entry["loc"] == ["path", "item_id"]
    assert "pattern" in entry["msg"]
    assert not fake.counts


def test_fail_ids_always_answer_500(fake: FakeDimmy, http: httpx.Client) -> None:
    bad, good = fake.generate_items(2)
    fake.fail_ids.add(bad)
    assert [http.get(f"/items/{bad}").status_code for _ in range(3)] == [500, 500, 500]
    assert http.get(f"/items/{good}").status_code == 200
    assert fake.attempts[bad] == 3
    assert fake.counts[bad] == 0


def test_each_key_sees_only_its_own_items(fake: FakeDimmy, http: httpx.Client) -> None:
    fake.config = FakeDimmyConfig(api_key=KEY, keys={"acme-key": "acme", "globex-key": "globex"})
    mine = fake.generate_items(2, start=START)
    acme = fake.generate_items(3, owner="acme")
    globex = fake.generate_items(1, owner="globex")
    assert fake.ids_of("acme") == acme
    assert [fake.owner_of(i) for i in (*mine, globex[0])] == [MAIN_OWNER, MAIN_OWNER, "globex"]
    as_acme = {"X-API-KEY": "acme-key"}
    assert http.get(f"/items/{acme[0]}", headers=as_acme).json() == fake.items[acme[0]]
    # another account's item is as unknown as a missing one, to either other key
    for other, headers in ((mine[0], as_acme), (globex[0], as_acme), (globex[0], {})):
        answer = http.get(f"/items/{other}", headers=headers)
        assert (answer.status_code, answer.json()) == (404, {"detail": "Item not found"})
    assert http.get(f"/items/{mine[1]}").status_code == 200  # the main key: its own items
    listed = {
        key: [i["_id"] for i in http.get("/items", headers=h).json()]
        for key, h in (("main", {}), ("acme", as_acme), ("globex", {"X-API-KEY": "globex-key"}))
    }
    assert listed == {"main": mine, "acme": acme, "globex": globex}
    assert fake.fetched_by == {"acme": {acme[0]: 1}, MAIN_OWNER: {mine[1]: 1}}
    assert fake.requests_by == {MAIN_OWNER: 3, "acme": 4, "globex": 1}
    assert [r.owner for r in list(fake.requests)[:2]] == ["acme", "acme"]
    fake.remove_item(acme[0])
    assert fake.ids_of("acme") == acme[1:]


def test_a_revoked_key_is_refused_and_counted(fake: FakeDimmy, http: httpx.Client) -> None:
    fake.config = FakeDimmyConfig(api_key=KEY, keys={"acme-key": "acme"})
    [item] = fake.generate_items(1, owner="acme")
    fake.config.revoked = frozenset({"acme"})
    answer = http.get(f"/items/{item}", headers={"X-API-KEY": "acme-key"})
    assert (answer.status_code, answer.json()) == (401, {"message": "Unauthorized"})
    assert http.get("/items").status_code == 200  # the other keys keep working
    assert fake.requests_by == {"acme": 1, MAIN_OWNER: 1}
    assert not fake.fetched_by
    fake.config.revoked = frozenset()
    assert http.get(f"/items/{item}", headers={"X-API-KEY": "acme-key"}).status_code == 200


def test_one_account_can_be_slowed_down(fake: FakeDimmy, http: httpx.Client) -> None:
    fake.config = FakeDimmyConfig(
        api_key=KEY, keys={"acme-key": "acme"}, owner_latency={"acme": 0.3}
    )
    started = time.monotonic()
    assert http.get("/items").status_code == 200
    assert time.monotonic() - started < 0.25
    started = time.monotonic()
    assert http.get("/items", headers={"X-API-KEY": "acme-key"}).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_list_items_window_is_inclusive_and_paged(fake: FakeDimmy, http: httpx.Client) -> None:
    ids = fake.generate_items(120, start=START)
    created = [fake.items[i]["created_at"] for i in ids]
    page = http.get("/items", params={"start_date": created[5], "end_date": created[14]})
    assert [item["_id"] for item in page.json()] == ids[5:15]
    assert len(http.get("/items").json()) == 100
    assert len(http.get("/items", params={"limit": 0}).json()) == 120  # 0 means no limit
    paged = http.get("/items", params={"skip": 110, "limit": 5, "group_by": "flow_id"}).json()
    assert [item["_id"] for item in paged] == ids[110:115]
    naive = created[100].removesuffix("Z")
    assert [i["_id"] for i in http.get("/items", params={"start_date": naive}).json()] == ids[100:]
    for params in ({"skip": -1}, {"limit": -1}, {"start_date": "yesterday"}):
        assert http.get("/items", params=params).status_code == 422


def test_error_rate_follows_the_config_at_run_time(fake: FakeDimmy, http: httpx.Client) -> None:
    (item_id,) = fake.generate_items(1)
    fake.config.error_rate = 1.0
    failed = http.get(f"/items/{item_id}")
    assert failed.status_code == 503
    fake.config.error_rate = 0.0
    assert http.get(f"/items/{item_id}").status_code == 200
    assert fake.attempts[item_id] == 2
    assert fake.counts[item_id] == 1
    assert [(r.method, r.status) for r in fake.requests] == [("GET", 503), ("GET", 200)]


def test_every_nth_request_is_rate_limited(fake: FakeDimmy, http: httpx.Client) -> None:
    fake.config.rate_limit_every = 3
    fake.config.retry_after_seconds = 7
    responses = [http.get("/items") for _ in range(6)]
    assert [r.status_code for r in responses] == [200, 200, 429, 200, 200, 429]
    assert responses[2].headers["retry-after"] == "7"


def test_a_hidden_rate_limit_refuses_what_goes_over_it(fake: FakeDimmy, http: httpx.Client) -> None:
    (item_id,) = fake.generate_items(1)
    fake.config.hidden_rate_limit = 10
    fake.config.retry_after_seconds = 2
    started = time.monotonic()
    responses = [http.get(f"/items/{item_id}") for _ in range(40)]
    took = time.monotonic() - started
    statuses = [r.status_code for r in responses]
    # a second's worth (10) at once, then 10 per second: however slow this machine is, what
    # got through is bounded by the time the 40 requests took
    assert 10 <= statuses.count(200) <= 10 + 10 * took + 1
    assert statuses.count(429) == fake.throttled == 40 - statuses.count(200)
    assert {r.headers.get("retry-after") for r in responses if r.status_code == 429} == {"2"}
    fake.config.hidden_rate_limit = None
    assert http.get(f"/items/{item_id}").status_code == 200
    time.sleep(0.3)
    fake.config.hidden_rate_limit = 10
    assert http.get(f"/items/{item_id}").status_code == 200  # refilled meanwhile


def test_latency_and_hang_delay_the_answer(fake: FakeDimmy, http: httpx.Client) -> None:
    fake.config.latency_seconds = 0.2
    started = time.monotonic()
    assert http.get("/items").status_code == 200
    assert time.monotonic() - started >= 0.2
    fake.config = FakeDimmyConfig(api_key=KEY, hang_rate=1.0, hang_seconds=0.3)
    started = time.monotonic()
    assert http.get("/items").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_a_hang_ends_when_the_client_leaves(fake: FakeDimmy, http: httpx.Client) -> None:
    fake.config.hang_rate = 1.0
    fake.config.hang_seconds = 30
    with pytest.raises(httpx.ReadTimeout):
        http.get("/items", timeout=0.2)
    deadline = time.monotonic() + 2
    while fake.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.in_flight == 0
    assert [r.status for r in fake.requests] == [0]


async def test_max_in_flight_is_recorded(served: tuple[FakeDimmy, str], fake: FakeDimmy) -> None:
    fake.config.latency_seconds = 0.2
    async with httpx.AsyncClient(base_url=served[1], headers={"X-API-KEY": KEY}) as client:
        responses = await asyncio.gather(*(client.get("/items") for _ in range(10)))
    assert {r.status_code for r in responses} == {200}
    assert fake.max_in_flight == 10
    assert fake.requests_total == 10


def png_size(body: bytes) -> tuple[int, int]:
    assert body[:8] == b"\x89PNG\r\n\x1a\n"
    assert body[12:16] == b"IHDR"
    width, height = struct.unpack(">II", body[16:24])
    return width, height


def test_photos_are_served_at_the_urls_the_items_carry(
    served: tuple[FakeDimmy, str], fake: FakeDimmy
) -> None:
    _, url = served
    fake.config.photo_base = url
    items = [fake.items[i] for i in fake.generate_items(30, start=START)]
    urls = [p["url"] for i in items for s in i.get("photographing") or () for p in s["photos"]]
    urls = [u for u in urls if u is not None]
    assert urls
    assert all(re.fullmatch(rf"{re.escape(url)}/photos/[0-9a-f]{{24}}/[1-3]\.png", u) for u in urls)
    bodies = {}
    for photo in urls[:6]:
        answer = httpx.get(photo)  # no API key: a browser's <img> sends none
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "image/png"
        assert png_size(answer.content) == (WIDTH, HEIGHT)
        assert len(answer.content) < 20_000  # small
        assert httpx.get(photo).content == answer.content  # deterministic
        bodies[photo] = answer.content
    assert len(set(bodies.values())) == len(bodies)  # a picture per item and photo


def test_a_photo_of_an_unknown_item_or_number_is_404_or_422(
    served: tuple[FakeDimmy, str], fake: FakeDimmy
) -> None:
    _, url = served
    [item_id] = fake.generate_items(1)
    assert httpx.get(f"{url}/photos/{'0' * 24}/1.png").status_code == 404
    assert httpx.get(f"{url}/photos/{item_id}/0.png").status_code == 422
    assert httpx.get(f"{url}/photos/{item_id}/10.png").status_code == 422
    assert httpx.get(f"{url}/photos/not-an-id/1.png").status_code == 422
    assert httpx.get(f"{url}/items/{item_id}").status_code == 401  # the API still wants its key


def test_a_photo_shows_the_box_in_proportion_and_its_dimensions() -> None:
    flat = photo_png("a" * 24, 1, (0.5, 0.05, 0.5, "m"))
    tall = photo_png("a" * 24, 1, (0.05, 0.5, 0.05, "m"))
    assert flat != tall
    assert png_size(flat) == png_size(tall) == (WIDTH, HEIGHT)
    assert photo_png("b" * 24, 1, None) != photo_png("c" * 24, 1, None)  # colours by id
    assert photo_png("b" * 24, 1, None) == photo_png("b" * 24, 1, None)
    item = {"dimensioning": [{"dimensions": {"width": 1, "height": 2, "depth": 3, "unit": "cm"}}]}
    assert dimensions_of(item) == (1.0, 2.0, 3.0, "cm")
    for broken in ({}, {"dimensioning": None}, {"dimensioning": [{"dimensions": {"width": "x"}}]}):
        assert dimensions_of(broken) is None
    raw = zlib.decompress(flat[flat.index(b"IDAT") + 4 : flat.index(b"IEND") - 8])
    assert len(raw) == HEIGHT * (1 + WIDTH * 3)  # one filter byte and RGB per row
