"""``/metrics``: Prometheus text that its own parser reads, with the figures that happened,
behind the admin token or a metrics token; the ledger counted without reading it twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.observe.metrics import LedgerTally
from dimmy_webhooks.web import create_app

from ..support.builders import make_settings
from ..support.constants import ADMIN_TOKEN, API_KEY, AUTH
from ..support.processes import wait_until
from ..support.senders import post_signed, signed

METRICS_TOKEN = "scraper-token-789"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and labels (the parser raises on bad text)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_parse_and_count_what_happened(
    sqlite_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    ids = fake.generate_items(4)
    settings = make_settings(
        sqlite_url,
        api_key=API_KEY,
        api_url=fake_url,
        admin_token=ADMIN_TOKEN,
        metrics_token=METRICS_TOKEN,
        outputs=f"jsonl:{tmp_path / 'out.jsonl'}",
    )
    with serve_in_thread(create_app(settings)) as url:
        body = json.dumps({"item_ids": ids}).encode()
        assert post_signed(url, "m1", body).status_code == 204
        assert post_signed(url, "m1", body).status_code == 204
        for n in range(3):
            headers = signed(body, f"bad{n}")
            headers["svix-signature"] = "v1,AAAA"
            assert httpx.post(url + "/webhook", content=body, headers=headers).status_code == 401

        def stored() -> bool:
            got = httpx.get(url + "/api/items", headers=AUTH).json()["items"]
            return len(got) == len(ids)

        assert wait_until(stored, 20)
        answers = {
            "none": httpx.get(url + "/metrics"),
            "wrong": httpx.get(url + "/metrics", headers={"Authorization": "Bearer nope"}),
            "admin": httpx.get(url + "/metrics", headers=AUTH),
            "metrics": httpx.get(
                url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
            ),
        }
    assert answers["none"].status_code == 401
    assert answers["wrong"].status_code == 401
    assert METRICS_TOKEN not in answers["wrong"].text
    for name in ("admin", "metrics"):
        assert answers[name].status_code == 200, answers[name].text
        assert answers[name].headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(answers["metrics"].text)
    assert found[("dimmy_webhooks_total", (("outcome", "accepted"),))] == 1
    assert found[("dimmy_webhooks_total", (("outcome", "duplicate"),))] == 1
    assert found[("dimmy_webhooks_total", (("outcome", "rejected_signature"),))] == 3
    assert found[("dimmy_webhook_signature_failures_total", ())] == 3
    fetched = found[("dimmy_api_requests_total", (("endpoint", "item"), ("status", "200")))]
    assert fetched >= len(ids)
    assert found[("dimmy_api_request_duration_seconds_count", (("endpoint", "item"),))] >= fetched
    default = ("account", "default")
    assert found[("dimmy_items_stored", (default,))] == len(ids)
    assert found[("dimmy_quarantine_items", (default,))] == 0
    assert found[("dimmy_reconciliation_gap_items", (default,))] == 0
    assert found[("dimmy_events_open", (default, ("status", "dead")))] == 0
    assert found[("dimmy_api_key_refused", ())] == 0
    for kind in ("event", "fetch", "deliver"):
        assert ("dimmy_queue_jobs", (default, ("kind", kind), ("status", "dead"))) in found
        assert ("dimmy_queue_oldest_due_age_seconds", (default, ("kind", kind))) in found
    backlog = [k for k in found if k[0] == "dimmy_delivery_backlog"]
    assert len(backlog) == 1


def test_metrics_are_open_on_loopback_without_any_token(sqlite_url: str) -> None:
    app = create_app(make_settings(sqlite_url), run_worker=False)
    with serve_in_thread(app) as url:
        answer = httpx.get(url + "/metrics")
    assert answer.status_code == 200
    assert ("dimmy_items_stored", (("account", "default"),)) in samples(answer.text)


class LedgerRows:
    """The store's ``attempt_counts`` over rows ``(id, output, outcome)`` of the account
    ``default`` held in a list."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, str]] = []
        self.reads: list[tuple[int, int | None]] = []

    async def attempt_counts(self, *, after: int, upto: int | None = None) -> list[dict[str, Any]]:
        self.reads.append((after, upto))
        groups: dict[tuple[str, str], list[int]] = {}
        for row_id, output, outcome in self.rows:
            if row_id > after and (upto is None or row_id <= upto):
                groups.setdefault((output, outcome), []).append(row_id)
        return [
            {"account": "default", "output": o, "outcome": c, "n": len(found), "top": max(found)}
            for (o, c), found in groups.items()
        ]


async def test_the_ledger_is_added_up_once_per_row() -> None:
    now = [1000.0]
    tally = LedgerTally(settle=30, clock=lambda: now[0])
    ledger = LedgerRows()
    ledger.rows += [(1, "wms", "delivered"), (2, "wms", "failed"), (3, "wms", "delivered")]
    assert await tally.counts(ledger) == {  # type: ignore[arg-type]
        ("default", "wms", "delivered"): 2,
        ("default", "wms", "failed"): 1,
    }
    ledger.rows += [(4, "wms", "delivered"), (5, "jsonl", "dead")]
    now[0] += 10
    assert await tally.counts(ledger) == {  # type: ignore[arg-type]
        ("default", "wms", "delivered"): 3,
        ("default", "wms", "failed"): 1,
        ("default", "jsonl", "dead"): 1,
    }
    now[0] += 21  # rows up to 3 were seen 30 s ago: counted once, then never read again
    ledger.rows.append((6, "wms", "delivered"))
    result = await tally.counts(ledger)  # type: ignore[arg-type]
    assert result == {
        ("default", "wms", "delivered"): 4,
        ("default", "wms", "failed"): 1,
        ("default", "jsonl", "dead"): 1,
    }
    assert tally.after == 3
    assert ledger.reads[-1] == (3, None)
    now[0] += 31  # and the rest, seen at least 30 s ago now
    assert await tally.counts(ledger) == result  # type: ignore[arg-type]
    assert tally.after == 6


@pytest.mark.parametrize("token", [None, ADMIN_TOKEN])
def test_metrics_token_alone_is_not_the_api(sqlite_url: str, token: str | None) -> None:
    """The scraper's token opens /metrics only."""
    settings = make_settings(sqlite_url, admin_token=token, metrics_token=METRICS_TOKEN)
    with serve_in_thread(create_app(settings, run_worker=False)) as url:
        bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        assert httpx.get(url + "/metrics", headers=bearer).status_code == 200
        assert httpx.get(url + "/metrics").status_code == 401
        if token is not None:
            assert httpx.get(url + "/api/events", headers=bearer).status_code == 401
