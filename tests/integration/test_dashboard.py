"""The dashboard over HTTP as a browser's script uses it: login, pages, live parts, actions,
CSRF, and the JSON twins and exports behind them (the browser itself: test_browser.py)."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.web import create_app

from ..support.builders import make_settings
from ..support.constants import ADMIN_TOKEN, AUTH
from ..support.dashboard import csrf_of, dashboard_login
from ..support.databases import hold_item
from ..support.processes import wait_until
from ..support.senders import post_signed

PAGES = ["/", "/ui/events", "/ui/items", "/ui/quarantine"]


COLUMNS_BEFORE_ACCOUNTS = [
    "id", "barcode", "barcodes", "width", "height", "depth", "dimension_unit", "volume",
    "volume_unit", "weight", "weight_unit", "dim_weight", "billable_weight",
    "scanner_account_id", "owner_id", "flow_id", "created_at", "updated_at", "started_at",
    "ended_at", "fetched_at", "version", "revision", "hold_state", "photo_urls",
]  # fmt: skip
"""The items CSV's header as scripts read it before there were accounts."""


def stored(url: str, ids: list[str]) -> bool:
    listed = httpx.get(url + "/api/items", headers=AUTH, params={"limit": 500}).json()["items"]
    return set(ids) <= {item["id"] for item in listed}


@pytest.fixture
def scanned(service_url: str, fake: FakeDimmy) -> Iterator[tuple[str, list[str]]]:
    """The service with 6 items fetched and stored (one webhook), and the event of an id the
    fake does not know (dead: 404)."""
    ids = fake.generate_items(6)
    post_signed(service_url, "msg_items", ids, expect=204)
    post_signed(service_url, "msg_missing", ["6592008029c8c3e4dc76ffff"], expect=204)
    assert wait_until(lambda: stored(service_url, ids), 20)
    events = httpx.get(service_url + "/api/events", headers=AUTH).json()["events"]
    assert wait_until(
        lambda: any(
            e["status"] == "dead"
            for e in httpx.get(service_url + "/api/events", headers=AUTH).json()["events"]
        ),
        20,
    ), events
    return service_url, ids


@pytest.fixture
def client(scanned: tuple[str, list[str]]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=scanned[0], timeout=10) as session:
        yield session


def test_without_a_session_pages_send_to_the_login_and_the_api_refuses(
    client: httpx.Client,
) -> None:
    for path in [*PAGES, "/ui/events/1", "/ui/items/6592008029c8c3e4dc76ffff"]:
        answer = client.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/ui/login?next=")
        assert client.get(path, params={"live": "1"}).status_code == 401
    for path in ("/api/overview", "/api/items.json", "/api/items.csv", "/metrics"):
        assert client.get(path).status_code == 401, path
    login = client.get("/ui/login")
    assert login.status_code == 200
    assert 'id="login"' in login.text
    assert "open-warning" not in login.text
    # a login never sends the browser to another site
    assert 'data-next="/"' in client.get("/ui/login", params={"next": "//evil.test/"}).text


def test_login_sets_a_strict_session_cookie_and_a_wrong_token_is_throttled(
    client: httpx.Client,
) -> None:
    client.get("/ui/login")
    nonce = client.cookies.get("dimmy_login", path="/ui/login")
    assert nonce
    # without the login form's token, or with another: refused
    assert client.post("/ui/login", json={"token": ADMIN_TOKEN}).status_code == 403
    refused = client.post(
        "/ui/login", json={"token": ADMIN_TOKEN}, headers={"x-csrf-token": "x" + nonce}
    )
    assert refused.status_code == 403
    wrong = client.post("/ui/login", json={"token": "nope"}, headers={"x-csrf-token": nonce})
    assert wrong.status_code == 401
    answer = client.post(
        "/ui/login",
        json={"token": ADMIN_TOKEN, "next": "/ui/items"},
        headers={"x-csrf-token": nonce},
    )
    assert answer.status_code == 200
    assert answer.json() == {"next": "/ui/items"}
    cookie = next(v for k, v in answer.headers.multi_items() if v.startswith("dimmy_session="))
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= flags
    assert "samesite=strict" in cookie.lower()
    assert "secure" not in flags  # plain http on loopback; https gets Secure
    assert ADMIN_TOKEN not in cookie
    for path in PAGES:
        page = client.get(path)
        assert page.status_code == 200, path
        assert csrf_of(page.text)
        assert page.headers["cache-control"] == "no-store"
    # ten wrong tokens from one address: the next wrong one waits; the right one never does
    # (the address may be every client of a proxy, the operator's included: S24)
    with httpx.Client(base_url=client.base_url, timeout=10) as other:
        other.get("/ui/login")
        nonce = other.cookies.get("dimmy_login", path="/ui/login")
        for _ in range(10):
            other.post("/ui/login", json={"token": "nope"}, headers={"x-csrf-token": nonce})
        throttled = other.post("/ui/login", json={"token": "nope"}, headers={"x-csrf-token": nonce})
        right = other.post(
            "/ui/login", json={"token": ADMIN_TOKEN}, headers={"x-csrf-token": nonce}
        )
    assert throttled.status_code == 429
    assert "retry-after" in throttled.headers
    assert right.status_code == 200, right.text


def test_a_session_reads_the_api_and_posts_only_with_its_csrf_token(
    client: httpx.Client, scanned: tuple[str, list[str]]
) -> None:
    csrf = dashboard_login(client)
    assert client.get("/api/overview").status_code == 200
    dead = client.get("/api/events", params={"status": "dead"}).json()["events"]
    assert len(dead) == 1
    replay = f"/api/events/{dead[0]['id']}/replay"
    json_post = {"content-type": "application/json"}
    assert client.post(replay, headers=json_post).status_code == 403
    assert client.post(replay, headers={**json_post, "x-csrf-token": "forged"}).status_code == 403
    # a page of another site: refused before the route whatever it carries
    cross = client.post(
        replay,
        headers={**json_post, "x-csrf-token": csrf, "origin": "https://evil.test"},
    )
    assert cross.status_code == 403
    form = client.post(
        "/ui/login",
        content=f"token={ADMIN_TOKEN}",
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "origin": "https://evil.test",
        },
    )
    assert form.status_code == 403
    done = client.post(replay, headers={**json_post, "x-csrf-token": csrf})
    assert done.status_code == 200, done.text
    assert done.json()["queued"] >= 1
    # logging out needs the token too, and ends the session in this browser
    assert client.post("/ui/logout", headers=json_post).status_code == 403
    out = client.post("/ui/logout", headers={**json_post, "x-csrf-token": csrf})
    assert out.status_code == 200
    assert client.get("/").status_code == 303


def test_pages_show_what_arrived_and_what_died(
    client: httpx.Client, scanned: tuple[str, list[str]], fake: FakeDimmy
) -> None:
    _, ids = scanned
    dashboard_login(client)
    overview = client.get("/").text
    assert re.search(r'id="items-total">6<', overview), overview
    assert re.search(r'id="dead">1<', overview)
    assert 'href="/api/overview"' in overview  # its JSON twin
    events = client.get("/ui/events", params={"status": "dead"}).text
    assert "msg_missing" in events
    assert "msg_items" not in events
    dead_id = re.search(r'href="/ui/events/(\d+)"', events).group(1)  # type: ignore[union-attr]
    event = client.get(f"/ui/events/{dead_id}").text
    assert "HTTP 404" in event  # the fetch's error
    assert "svix-signature" in event
    assert "Signature verified" in event
    assert "6592008029c8c3e4dc76ffff" in event  # the raw body
    assert "Replay" in event
    live = client.get(f"/ui/events/{dead_id}", params={"live": "1"})
    assert live.status_code == 200
    assert "<html" not in live.text
    assert "s-dead" in live.text
    # items: a thumbnail per item with a photo, and the search by barcode and by id
    doc = fake.items[ids[0]]
    item = httpx.get(f"{client.base_url}/api/items/{ids[0]}", headers=AUTH).json()
    listed = client.get("/ui/items").text
    for item_id in ids:
        assert f'href="/ui/items/{item_id}"' in listed
    if item["barcode"]:
        found = client.get("/ui/items", params={"q": item["barcode"]}).text
        assert f'href="/ui/items/{ids[0]}"' in found
    found = client.get("/ui/items", params={"q": ids[1]}).text
    assert f'href="/ui/items/{ids[1]}"' in found
    assert f'href="/ui/items/{ids[2]}"' not in found
    page = client.get(f"/ui/items/{ids[0]}").text
    for url in item["photo_urls"]:
        assert f'<img src="{url}"' in page
    assert 'id="raw-json"' in page
    assert doc["_id"] in page
    assert f'href="/api/items/{ids[0]}"' in page
    assert client.get("/ui/items/6592008029c8c3e4dc760000").status_code == 404


def test_quarantine_lists_held_items_and_a_release_queues_them(
    client: httpx.Client, scanned: tuple[str, list[str]], db_url: str
) -> None:
    _, ids = scanned
    csrf = dashboard_login(client)
    assert 'id="quarantine-empty"' in client.get("/ui/quarantine").text
    hold_item(db_url, ids[0])
    page = client.get("/ui/quarantine").text
    assert f'href="/ui/items/{ids[0]}"' in page
    assert "side over 100 cm" in page
    assert "Release" in client.get(f"/ui/items/{ids[0]}").text
    released = client.post(
        f"/api/quarantine/{ids[0]}/release",
        json={"note": "measured again by hand"},
        headers={"x-csrf-token": csrf},
    )
    assert released.status_code == 200, released.text
    assert 'id="quarantine-empty"' in client.get("/ui/quarantine").text
    assert "measured again by hand" in client.get(f"/ui/items/{ids[0]}").text


def test_item_filters_twins_and_exports(scanned: tuple[str, list[str]]) -> None:
    url, ids = scanned
    with httpx.Client(base_url=url, headers=AUTH, timeout=10) as api:
        everything = api.get("/api/items.json", params={"limit": 500}).json()
        assert {i["id"] for i in everything["items"]} == set(ids)
        fetched = [i["fetched_at"] for i in everything["items"]]
        assert fetched == sorted(fetched, reverse=True)  # newest first
        page = api.get("/api/items.json", params={"limit": 4}).json()
        rest = api.get("/api/items.json", params={"limit": 4, "before": page["next"]}).json()
        assert [i["id"] for i in page["items"] + rest["items"]] == [
            i["id"] for i in everything["items"]
        ]
        measured = {i["id"] for i in everything["items"] if i["width"] is not None}
        with_dims = api.get("/api/items.json", params={"has_dimensions": "true"}).json()
        assert {i["id"] for i in with_dims["items"]} == measured
        one = everything["items"][0]
        if one["scanner_account_id"]:
            by_scanner = api.get("/api/items.json", params={"scanner": one["scanner_account_id"]})
            assert one["id"] in {i["id"] for i in by_scanner.json()["items"]}
        future = api.get("/api/items.json", params={"since": "2999-01-01T00:00:00Z"}).json()
        assert future["items"] == []

        exported = api.get("/api/items.csv")
        assert exported.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(exported.text)))
        assert sorted(row["id"] for row in table) == sorted(ids)
        assert [row["id"] for row in table] == sorted(row["id"] for row in table)  # id order
        lines = api.get("/api/items.jsonl").text.splitlines()
        assert sorted(json.loads(line)["id"] for line in lines) == sorted(ids)
        assert all("raw" in json.loads(line) for line in lines)
        none = api.get("/api/items.csv", params={"until": "2000-01-01T00:00:00Z"}).text
        assert none.count("\n") == 1  # the header alone
        # the columns of the version before accounts keep their places; account comes last
        assert none.splitlines()[0].split(",") == [*COLUMNS_BEFORE_ACCOUNTS, "account"]
        assert {row["account"] for row in table} == {"default"}
        assert api.get("/api/items.csv", params={"since": "yesterday"}).status_code == 422

        versions = api.get(f"/api/items/{ids[0]}/versions").json()
        assert versions["current"]["revision"] == 1
        assert versions["revisions"][0]["revision"] == 1
        assert len(versions["event_ids"]) == 1
        deliveries = api.get(f"/api/items/{ids[0]}/deliveries").json()
        assert "deliveries" in deliveries
        assert api.get("/api/items/6592008029c8c3e4dc760000/versions").status_code == 404

        dead = api.get("/api/events.json", params={"status": "dead"}).json()["events"]
        assert [e["message_id"] for e in dead] == ["msg_missing"]
        full = api.get("/api/events.json", params={"type": "item.scanned.full_payload"}).json()
        assert full["events"] == []
        work = api.get(f"/api/events/{dead[0]['id']}/work").json()
        assert work["jobs"][-1]["status"] == "dead"
        assert "404" in work["jobs"][-1]["last_error"]
        assert "svix-id" in work["headers"]
        body = api.get(f"/api/events/{dead[0]['id']}/body")
        assert body.json() == {"item_ids": ["6592008029c8c3e4dc76ffff"]}
        ledger = api.get("/api/deliveries.jsonl")
        assert ledger.headers["content-type"].startswith("application/x-ndjson")


def test_without_a_token_the_dashboard_is_open_on_loopback_and_says_so(
    sqlite_url: str, tmp_path: Path
) -> None:
    settings = make_settings(sqlite_url)
    with serve_in_thread(create_app(settings, run_worker=False)) as url:
        for path in PAGES:
            page = httpx.get(url + path)
            assert page.status_code == 200, path
            assert 'id="open-warning"' in page.text
        assert httpx.get(url + "/ui/login").status_code == 303
        # another Host (DNS rebinding) is refused, pages too
        assert httpx.get(url + "/", headers={"host": "attacker.test"}).status_code == 400


def test_a_refused_api_key_is_the_first_thing_the_overview_shows(
    sqlite_url: str, fake: FakeDimmy, fake_url: str
) -> None:
    ids = fake.generate_items(1)
    settings = make_settings(
        sqlite_url, api_key="wrong-key", api_url=fake_url, admin_token=ADMIN_TOKEN
    )
    with serve_in_thread(create_app(settings)) as url, httpx.Client(base_url=url) as client:
        post_signed(url, "msg_refused", ids, expect=204)
        assert wait_until(
            lambda: httpx.get(url + "/api/overview", headers=AUTH).json()["api_key_refused"], 20
        )
        dashboard_login(client)
        page = client.get("/").text
        assert "Dimmy API refused the key" in page
        assert page.index("Dimmy API refused the key") < page.index("<main>")
        assert 'class="status bad"' in page
        started = time.monotonic()
        client.get("/")
        assert time.monotonic() - started < 1.0


def test_the_overview_draws_its_charts_and_api_charts_has_their_series(
    client: httpx.Client, scanned: tuple[str, list[str]]
) -> None:
    dashboard_login(client)

    def charts() -> dict[str, Any]:
        answer = httpx.get(f"{client.base_url}/api/charts", headers=AUTH)
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()
        return data

    assert wait_until(lambda: charts()["delivery_latency"]["outputs"], 20)
    data = charts()
    scans = data["scans_per_hour"]
    assert scans["hours"] == 72
    assert len(scans["points"]) == 72
    assert sum(p["items"] for p in scans["points"]) == 6
    assert scans["points"][-1]["items"] == 6  # stored just now: the current hour
    [jsonl] = data["delivery_latency"]["outputs"]
    assert jsonl["output"].startswith("jsonl:")
    assert jsonl["attempts"] >= 6
    assert 0 <= jsonl["p50_ms"] <= jsonl["p95_ms"] <= jsonl["max_ms"]
    assert jsonl["per_hour"][-1]["attempts"] >= 1
    backlog = data["backlog"]
    assert backlog["sampled_since"] is not None
    assert backlog["every_seconds"] == 60
    assert backlog["points"]
    assert set(backlog["points"][0]) == {"at", "due", "running", "dead"}

    page = client.get("/").text
    for chart in ("chart-scans", "chart-latency", "chart-backlog"):
        figure = re.search(rf'id="{chart}">.*?(<svg .*?</svg>)', page, re.S)
        assert figure is not None, chart
        ElementTree.fromstring(figure.group(1))  # noqa: S314 - our own page: well-formed
    assert "<rect" in page  # bars
    assert "<circle" in page  # the points of the lines
    assert 'id="latency-table"' in page
    assert 'href="/api/charts"' in page
    assert "<svg" not in client.get("/", params={"live": "1"}).text  # charts are not live


def test_photos_the_fake_api_serves_are_shown_and_allowed_by_the_pages_policy(
    service_url: str, fake: FakeDimmy, fake_url: str
) -> None:
    fake.config.photo_base = fake_url  # as the demo does
    ids = fake.generate_items(8)
    post_signed(service_url, "msg_photos", ids, expect=204)
    assert wait_until(lambda: stored(service_url, ids), 20)
    with_photos = [
        item
        for item in (httpx.get(f"{service_url}/api/items/{i}", headers=AUTH).json() for i in ids)
        if item["photo_urls"]
    ]
    assert with_photos
    with httpx.Client(base_url=service_url, timeout=10) as client:
        dashboard_login(client)
        answer = client.get(f"/ui/items/{with_photos[0]['id']}")
    csp = answer.headers["content-security-policy"]
    # the configured API's own (loopback, plain http) origin; https photo hosts as before
    assert f"img-src 'self' https: {fake_url};" in csp
    assert "unsafe-inline" not in csp
    for url in with_photos[0]["photo_urls"]:
        assert url.startswith(f"{fake_url}/photos/")
        assert f'<img src="{url}"' in answer.text
        photo = httpx.get(url)
        assert photo.headers["content-type"] == "image/png"
        assert photo.content.startswith(b"\x89PNG\r\n\x1a\n")
    # everything but the pages keeps the strict policy, without any image host
    api = httpx.get(f"{service_url}/api/overview", headers=AUTH)
    assert "img-src" not in api.headers["content-security-policy"]
