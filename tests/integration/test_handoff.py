"""The hand-off to warehouse systems, end to end, on both backends: webhooks in, items fetched
from the fake Dimmy API, signed forwards out to fake WMS endpoints on 127.0.0.1."""

from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.web import create_app

from ..support.builders import make_settings
from ..support.constants import API_KEY, FORWARD_SECRET
from ..support.databases import query
from ..support.fakes import FakeWms, WmsRequest
from ..support.processes import wait_until
from ..support.senders import post_signed

TOKEN = "t" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def wms() -> Iterator[tuple[FakeWms, FakeWms]]:
    with FakeWms() as first, FakeWms() as second:
        yield first, second


def start(db_url: str, fake_url: str, tmp_path: Path, outputs: str, **settings: Any) -> Any:
    values: dict[str, Any] = {
        "api_key": API_KEY,
        "api_url": fake_url,
        "admin_token": TOKEN,
        "outputs": outputs,
        "forward_secret": FORWARD_SECRET,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.5,
    }
    values.update(settings)
    return serve_in_thread(create_app(make_settings(db_url, **values)))


def envelopes(requests: list[WmsRequest]) -> list[dict[str, Any]]:
    """Every request, verified with the standardwebhooks package, as the WMS parses it."""
    verifier = Webhook(FORWARD_SECRET)
    return [verifier.verify(r.body, r.headers) for r in requests]


def one_id_per_revision(requests: list[WmsRequest]) -> dict[tuple[str, int], str]:
    """(item, revision) -> its webhook-id, checking there is exactly one per revision."""
    ids: dict[tuple[str, int], set[str]] = defaultdict(set)
    for request, envelope in zip(requests, envelopes(requests), strict=True):
        data = envelope["data"]
        ids[(data["id"], data["revision"])].add(request.headers["webhook-id"])
    assert all(len(seen) == 1 for seen in ids.values()), ids
    return {key: next(iter(seen)) for key, seen in ids.items()}


def test_every_item_reaches_every_destination_signed_with_a_ledger(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path, wms: tuple[FakeWms, FakeWms]
) -> None:
    first, second = wms
    ids = fake.generate_items(12)
    destinations = tmp_path / "destinations.toml"
    destinations.write_text(
        f'[[destination]]\nurl = "{second.url}"\nrate_per_second = 4\n'
        'headers = { "X-Api-Key" = "wms-key" }\n'
        '[destination.fields]\ninclude = ["id", "revision", "barcode", "billable_weight"]\n'
    )
    with start(
        db_url, fake_url, tmp_path, f"http:{first.url}", destinations_file=str(destinations)
    ) as url:
        post_signed(url, "msg_handoff", ids, expect=204)
        assert wait_until(lambda: len(first.ok) >= 12 and len(second.ok) >= 12, 30)
        ledger = httpx.get(f"{url}/api/deliveries", headers=AUTH, params={"limit": 500}).json()
        item = httpx.get(f"{url}/api/items/{ids[0]}", headers=AUTH).json()
        by_barcode = httpx.get(
            f"{url}/api/deliveries", headers=AUTH, params={"barcode": item["barcode"]}
        ).json()
        csv_text = httpx.get(f"{url}/api/deliveries.csv", headers=AUTH).text
    for destination in wms:
        delivered = one_id_per_revision(destination.ok)
        assert set(delivered) == {(i, 1) for i in ids}
        assert sorted(e["data"]["id"] for e in envelopes(destination.ok)) == sorted(ids)
    assert all(r.headers["x-api-key"] == "wms-key" for r in second.requests)
    assert set(envelopes(second.ok)[0]["data"]) == {"id", "revision", "barcode", "billable_weight"}
    full = envelopes(first.ok)[0]["data"]
    assert full["raw"] == fake.items[full["id"]]  # exactly as Dimmy returned it
    # the ledger: one delivered row per item and destination, with the WMS's record id
    delivered_rows = [d for d in ledger["deliveries"] if d["outcome"] == "delivered"]
    assert len(delivered_rows) == 24
    assert all(
        d["status_code"] == 200 and d["record_id"].startswith("wms-") for d in delivered_rows
    )
    assert {d["output"] for d in delivered_rows} == {f"http:{first.url}", f"http:{second.url}"}
    assert len(item["deliveries"]) == 2
    assert item["hold"] is None
    assert len(by_barcode["deliveries"]) >= 2
    assert csv_text.count("\n") == len(ledger["deliveries"]) + 1
    # the rate limit of the second destination, measured where it arrives
    times = sorted(r.at for r in second.requests)
    assert max(sum(1 for t in times if s <= t < s + 1) for s in times) <= 4


def test_an_outage_random_5xx_and_slow_answers_lose_nothing(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path, wms: tuple[FakeWms, FakeWms]
) -> None:
    """The first WMS is down for a while (connection resets, then 503s), then answers 5xx at
    random and sometimes slowly (past the timeout: those are sent again, same webhook-id); the
    second is healthy and must not wait for the first."""
    first, second = wms
    ids = fake.generate_items(20)
    rng = random.Random(3)
    lock = threading.Lock()
    phase = {"down": True}

    def flaky(request: WmsRequest) -> tuple[Any, ...]:
        with lock:
            if phase["down"]:
                return 503, {"detail": "maintenance"}, {"retry-after": "1"}
            roll = rng.random()
        if roll < 0.25:
            return rng.choice([500, 502, 504]), {}, {}
        if roll < 0.4:
            return 200, {"id": "slow"}, {}, 0.8  # past the 0.5 s timeout: sent again
        return 200, {"id": "ok"}, {}

    first.answer = flaky
    destinations = tmp_path / "destinations.toml"
    destinations.write_text(
        f'[[destination]]\nurl = "{first.url}"\ntimeout_seconds = 0.5\npause_seconds = 0.5\n'
    )
    with start(
        db_url,
        fake_url,
        tmp_path,
        f"http:{second.url}",
        destinations_file=str(destinations),
    ) as url:
        post_signed(url, "msg_outage", ids, expect=204)
        assert wait_until(lambda: len(second.ok) == 20, 20)  # the healthy one is not held up
        assert not first.ok
        with lock:
            phase["down"] = False
        done = wait_until(lambda: set(one_id_per_revision(first.ok)) >= {(i, 1) for i in ids}, 60)
        assert done, query(db_url, "SELECT status, attempts, last_error FROM jobs")
        dead = httpx.get(f"{url}/api/deliveries", headers=AUTH, params={"outcome": "dead"})
        failed = httpx.get(f"{url}/api/deliveries", headers=AUTH, params={"outcome": "failed"})
    assert dead.json()["deliveries"] == []
    assert any(d["status_code"] == 503 for d in failed.json()["deliveries"])
    one_id_per_revision(first.requests)  # every attempt of a revision carried its one id
    # answered after the timeout: the WMS got those twice, under the same id (it drops one)
    assert len(first.ok) >= 20
    assert Counter(e["data"]["id"] for e in envelopes(second.ok)) == Counter(dict.fromkeys(ids, 1))


def test_a_destination_never_gets_an_older_revision_after_a_newer_one(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path, wms: tuple[FakeWms, FakeWms]
) -> None:
    """An item changes while its first revision is still on its way to a slow WMS, and again;
    the WMS sees revisions in order and ends with the current one (A -> B -> A included)."""
    first, _ = wms
    (item_id,) = fake.generate_items(1)
    first.delay = 0.4
    with start(db_url, fake_url, tmp_path, f"http:{first.url}") as url:
        original = dict(fake.items[item_id])
        contents = [{"note": "b"}, {"note": None}, {"note": "c"}]
        post_signed(url, "msg_rev_0", [item_id], expect=204)
        for n, change in enumerate(contents, 1):
            assert wait_until(lambda n=n: len(first.requests) >= 1, 10)
            fake.add_item({**original, **change})  # same updated_at: content flips
            replay = httpx.post(f"{url}/api/items/{item_id}/replay", headers=AUTH)
            assert replay.status_code == 200
        stored = lambda: query(db_url, "SELECT revision FROM items")[0]["revision"]  # noqa: E731
        assert wait_until(lambda: stored() >= 3, 20)
        final = stored()
        assert wait_until(
            lambda: envelopes(first.ok)[-1]["data"]["revision"] == final if first.ok else False,
            30,
        )
        ledger = httpx.get(f"{url}/api/items/{item_id}", headers=AUTH).json()["deliveries"]
    revisions = [e["data"]["revision"] for e in envelopes(first.ok)]
    assert revisions == sorted(revisions), revisions  # never older after newer
    assert revisions[-1] == final
    assert {d["outcome"] for d in ledger} <= {"delivered", "superseded"}


def test_quarantined_items_reach_no_destination_until_released(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path, wms: tuple[FakeWms, FakeWms]
) -> None:
    first, _ = wms
    ids = fake.generate_items(10)
    with start(
        db_url,
        fake_url,
        tmp_path,
        f"http:{first.url}",
        validate_require_dimensions=True,
        validate_max_side=80,
    ) as url:
        post_signed(url, "msg_quarantine", ids, expect=204)
        stored = lambda: len(query(db_url, "SELECT id FROM items"))  # noqa: E731
        assert wait_until(lambda: stored() == 10, 20)
        held = httpx.get(f"{url}/api/quarantine", headers=AUTH).json()["items"]
        held_ids = {h["id"] for h in held}
        assert held_ids, "the fake's items include some without dimensions or over 80 cm"
        assert wait_until(lambda: len(first.ok) == 10 - len(held_ids), 20)
        assert not held_ids & {e["data"]["id"] for e in envelopes(first.ok)}
        assert all(h["reason"] for h in held)
        release, *rest = sorted(held_ids)
        answer = httpx.post(
            f"{url}/api/quarantine/{release}/release",
            headers=AUTH,
            json={"note": "re-measured by hand"},
        )
        assert answer.json() == {"item_id": release, "state": "released", "queued": 1}
        for other in rest:
            httpx.post(f"{url}/api/quarantine/{other}/reject", headers=AUTH, json={"note": "no"})
        assert wait_until(lambda: release in {e["data"]["id"] for e in envelopes(first.ok)}, 20)
        item = httpx.get(f"{url}/api/items/{release}", headers=AUTH).json()
        again = httpx.post(
            f"{url}/api/quarantine/{release}/release", headers=AUTH, json={"note": "twice"}
        )
        missing_note = httpx.post(
            f"{url}/api/quarantine/{rest[0] if rest else release}/release", headers=AUTH, json={}
        )
    assert item["hold"] == {
        "state": "released",
        "reason": item["hold"]["reason"],
        "note": "re-measured by hand",
    }
    assert again.status_code == 404
    assert missing_note.status_code == 422
    assert not set(rest) & {e["data"]["id"] for e in envelopes(first.ok)}
