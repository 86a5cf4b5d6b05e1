"""Fairness, end to end on both backends: a scan made while a device's big upload drains is
stored long before the upload is done, at the rate limit the upload is held to.

A correctness test with a generous bound; how fast, measured, is ``bench/fairness.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.web import create_app

from ..support.builders import make_settings
from ..support.constants import API_KEY
from ..support.databases import scalar
from ..support.processes import wait_until
from ..support.senders import post_signed

RATE = 40.0  # requests per second: the 400-id upload takes 10 s on its own


def stored(db_url: str, like: str | None = None) -> int:
    where = "" if like is None else f" WHERE id IN ({like})"
    return int(scalar(db_url, "SELECT count(*) FROM items" + where))


@pytest.mark.timing
def test_a_live_scan_is_not_held_behind_a_big_upload(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    upload = fake.generate_items(400)
    [live] = fake.generate_items(1)
    settings = make_settings(
        db_url,
        api_key=API_KEY,
        api_url=fake_url,
        outputs=f"jsonl:{tmp_path / 'out.jsonl'}",
        api_rate_limit=RATE,
    )
    with serve_in_thread(create_app(settings)) as url:
        post_signed(url, "msg_upload", upload, expect=204)
        assert wait_until(lambda: stored(db_url) >= 20, 30)  # the upload is draining
        sent = time.monotonic()
        post_signed(url, "msg_live", [live], expect=204)
        assert wait_until(lambda: stored(db_url, f"'{live}'") == 1, 30)
        waited = time.monotonic() - sent
        left = len(upload) - stored(db_url) + 1
        # behind the upload it would have waited for all of it (~9 s at this rate); it waited
        # for what was already on its way, a few seconds on a loaded machine at most
        assert left > len(upload) // 2, (left, waited)
        assert waited < len(upload) / RATE / 2, (left, waited)
        # and the upload is not slowed down for it: it still completes
        out = tmp_path / "out.jsonl"
        assert wait_until(lambda: stored(db_url) == len(upload) + 1, 60)
        assert wait_until(lambda: len(out.read_text().splitlines()) == len(upload) + 1, 30)
