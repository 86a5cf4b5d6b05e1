"""End to end in one process: signed webhook -> worker -> fake Dimmy -> item store -> JSON API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.outputs import JsonlOutput
from dimmy_webhooks.web import create_app

from ..support.builders import make_settings
from ..support.constants import AUTH
from ..support.processes import wait_until
from ..support.senders import post_signed


def events(url: str, **params: Any) -> list[dict[str, Any]]:
    response = httpx.get(url + "/api/events", params=params, headers=AUTH)
    assert response.status_code == 200
    result: list[dict[str, Any]] = response.json()["events"]
    return result


def test_scan_to_item_through_the_api(service_url: str, fake: FakeDimmy, tmp_path: Path) -> None:
    ids = fake.generate_items(3)
    post_signed(service_url, "msg_e2e", ids, expect=204)
    assert wait_until(lambda: [e["status"] for e in events(service_url)] == ["done"], 15)
    response = httpx.get(f"{service_url}/api/items/{ids[0]}", headers=AUTH)
    assert response.status_code == 200
    data = response.json()
    assert data["id"] == ids[0]
    assert data["raw"] == fake.items[ids[0]]  # exactly as Dimmy returned it
    assert data["dimension_unit"] in {"cm", None}
    assert "fetched_at" in data
    listed = httpx.get(service_url + "/api/items", params={"limit": 2}, headers=AUTH).json()
    assert len(listed["items"]) == 2
    rest = httpx.get(service_url + "/api/items", params={"after": listed["next"]}, headers=AUTH)
    assert len(rest.json()["items"]) == 1
    assert sorted(line["item_id"] for line in JsonlOutput.read(tmp_path / "out.jsonl")) == sorted(
        ids
    )


def test_dead_work_listed_and_replayed(service_url: str, fake: FakeDimmy, tmp_path: Path) -> None:
    [item_id] = fake.generate_items(1)
    fake.fail_ids.add(item_id)
    post_signed(service_url, "msg_dead", [item_id], expect=204)
    assert wait_until(lambda: [e["status"] for e in events(service_url)] == ["dead"], 15)
    [dead] = events(service_url, status="dead")
    assert "500" in dead["last_error"]
    detail = httpx.get(f"{service_url}/api/events/{dead['id']}", headers=AUTH).json()
    assert detail["jobs"] == {"event:done": 1, "fetch:dead": 1}
    fake.fail_ids.clear()
    replay = httpx.post(f"{service_url}/api/events/{dead['id']}/replay", headers=AUTH)
    assert replay.status_code == 200
    assert replay.json()["queued"] >= 1
    assert wait_until(lambda: [e["status"] for e in events(service_url)] == ["done"], 15)
    assert httpx.get(f"{service_url}/api/items/{item_id}", headers=AUTH).status_code == 200
    redeliver = httpx.post(
        f"{service_url}/api/items/{item_id}/replay", params={"mode": "redeliver"}, headers=AUTH
    )
    assert redeliver.json()["queued"] == 1
    assert wait_until(lambda: len(JsonlOutput.read(tmp_path / "out.jsonl")) == 2, 15)


def test_api_errors_are_clear_and_never_500(service_url: str) -> None:
    assert httpx.get(service_url + "/api/items/nope").status_code == 401
    wrong = httpx.get(service_url + "/api/items/nope", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.get(service_url + "/api/items/nope", headers=AUTH).json() == {
        "detail": "item not found"
    }
    assert httpx.get(service_url + "/api/events/123", headers=AUTH).status_code == 404
    assert httpx.post(service_url + "/api/events/123/replay", headers=AUTH).status_code == 404
    bad = [
        httpx.get(service_url + "/api/events", params={"status": "<script>"}, headers=AUTH),
        httpx.get(service_url + "/api/events", params={"limit": "-1"}, headers=AUTH),
        httpx.get(service_url + "/api/events/abc", headers=AUTH),
        httpx.post(service_url + "/api/events/1/replay", params={"mode": "x"}, headers=AUTH),
        httpx.get(service_url + "/api/items", params={"since": "yesterday"}, headers=AUTH),
    ]
    assert [r.status_code for r in bad] == [422] * 5
    assert all(r.headers["x-content-type-options"] == "nosniff" for r in bad)


def test_refused_api_key_shows_in_readyz(db_url: str, fake_url: str, fake: FakeDimmy) -> None:
    settings = make_settings(db_url, api_key="wrong", api_url=fake_url)
    with serve_in_thread(create_app(settings)) as url:
        post_signed(url, "msg_badkey", fake.generate_items(1), expect=204)

        def degraded() -> bool:
            body = httpx.get(url + "/readyz").json()
            return body["status"] == "degraded"

        assert wait_until(degraded, 15)
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 200  # the receiver still takes webhooks
        assert any("refused" in p for p in ready.json()["problems"])
        assert "wrong" not in ready.text


def test_the_ledger_filters_by_status_as_documented(service_url: str, fake: FakeDimmy) -> None:
    """The README's ``/api/deliveries?status=`` filters by outcome (``outcome`` too); a value
    that is no outcome is a 400 naming the valid ones, never the whole ledger."""
    ids = fake.generate_items(2)
    post_signed(service_url, "msg_ledger", ids, expect=204)

    def ledger(**params: str) -> httpx.Response:
        return httpx.get(service_url + "/api/deliveries", params=params, headers=AUTH)

    assert wait_until(lambda: len(ledger(status="delivered").json()["deliveries"]) == 2, 15)
    assert ledger(status="delivered").json() == ledger(outcome="delivered").json()
    assert ledger(status="dead").json()["deliveries"] == []
    assert ledger(status="dead", outcome="dead").json()["deliveries"] == []
    for path in ("/api/deliveries", "/api/deliveries.csv", "/api/deliveries.jsonl"):
        bad = httpx.get(service_url + path, params={"status": "DEAD"}, headers=AUTH)
        assert bad.status_code == 400, (path, bad.text)
        assert "delivered, failed, dead, filtered, superseded" in bad.json()["detail"]
    assert ledger(status="delivered", outcome="dead").json()["deliveries"] == []  # both apply
    assert ledger(outcome="nope").status_code == 422  # as it always was
    assert (
        httpx.get(
            service_url + "/api/deliveries.csv", params={"status": "dead"}, headers=AUTH
        ).text.count("\n")
        == 1
    )
