"""A service killed with SIGKILL in the middle of its forwards to a WMS, on both backends: after
a restart every item revision reaches the WMS, and every attempt of one revision (before the kill
and after) carried the same ``webhook-id``."""

from __future__ import annotations

import json
import signal
from collections import defaultdict
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy

from ..support.constants import API_KEY, FORWARD_SECRET, SECRET
from ..support.fakes import FakeWms
from ..support.processes import ServiceProcess, clean_env, wait_until
from ..support.senders import post_signed

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_sigkill_mid_delivery_loses_nothing_and_keeps_one_id_per_revision(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    ids = fake.generate_items(30)
    with FakeWms() as wms:
        wms.delay = 0.3  # deliveries in flight when the kill comes
        env = clean_env(
            DIMMY_WEBHOOK_SECRET=SECRET,
            DIMMY_API_KEY=API_KEY,
            DIMMY_API_URL=fake_url,
            DIMMY_DATABASE_URL=db_url,
            DIMMY_OUTPUTS=f"http:{wms.url}",
            DIMMY_FORWARD_SECRET=FORWARD_SECRET,
            DIMMY_LEASE_SECONDS="2",
            DIMMY_RETRY_BASE_SECONDS="0.1",
        )
        service = ServiceProcess(tmp_path, env, ["serve"]).start()
        body = json.dumps({"item_ids": ids}).encode()
        answer = post_signed(service.url, "m", body)
        assert answer.status_code == 204
        assert wait_until(lambda: len(wms.requests) >= 8, 30), service.log()
        service.kill(signal.SIGKILL)
        before = len(wms.requests)
        assert before < 30 + 5, "the kill came after the work: nothing was in flight"
        wms.delay = 0.0
        service.start()  # the same database: what was leased comes back after its lease
        try:

            def delivered() -> set[str]:
                verify = Webhook(FORWARD_SECRET).verify
                return {verify(r.body, r.headers)["data"]["id"] for r in wms.ok}

            assert wait_until(lambda: delivered() >= set(ids), 60), service.log()[-3000:]
        finally:
            service.stop()
        requests = list(wms.requests)
    by_revision: dict[tuple[str, int], set[str]] = defaultdict(set)
    for request in requests:
        data = Webhook(FORWARD_SECRET).verify(request.body, request.headers)["data"]
        by_revision[(data["id"], data["revision"])].add(request.headers["webhook-id"])
    assert set(by_revision) == {(item, 1) for item in ids}
    assert all(len(keys) == 1 for keys in by_revision.values()), by_revision
    print(
        f"\nhand-off SIGKILL: {before} requests before the kill, {len(requests)} in all for "
        f"{len(ids)} items ({len(requests) - len(ids)} sent again, same webhook-id)"
    )
