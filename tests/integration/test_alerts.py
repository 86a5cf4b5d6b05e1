"""Alerts: one message when something needs a person, rate-limited, and one when it clears;
posted to a local HTTP server that records what it gets."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.observe import health
from dimmy_webhooks.observe.alerts import AlertPolicy, HttpPoster, Notifier, conditions
from dimmy_webhooks.observe.health import public_label
from dimmy_webhooks.observe.overview import Destination, Overview
from dimmy_webhooks.store import OperatorCounts, QueueDepth
from dimmy_webhooks.web import create_app

from ..support.builders import make_settings
from ..support.constants import API_KEY
from ..support.processes import wait_until
from ..support.senders import post_signed


class Recorder:
    """A local incoming-webhook endpoint: keeps every JSON body posted to it; answers
    ``status`` (500 to play an outage)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        self.lock = threading.Lock()

    async def receive(self, request: Request) -> Response:
        body = json.loads(await request.body())
        with self.lock:
            self.bodies.append(body)
        return Response(status_code=self.status)

    def texts(self) -> list[str]:
        with self.lock:
            return [str(b.get("text") or b.get("summary")) for b in self.bodies]


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    record = Recorder()
    app = Starlette(routes=[Route("/hook", record.receive, methods=["POST"])])
    with serve_in_thread(app) as url:
        yield record, url + "/hook"


def overview(
    *, dead: int = 0, refused: bool = False, gap: int = 0, at: float = 10_000.0, **extra: Any
) -> Overview:
    queue = [QueueDepth("fetch", None, "dead", dead, None)] if dead else []
    counts = OperatorCounts({}, {}, 0, 0, 0, queue, gap)
    problems = ["Dimmy API refused the key: GET /items/x: HTTP 401"] if refused else []
    problems = extra.get("problems", problems)
    return Overview(
        at=at,
        day_start=0,
        counts=counts,
        destinations=extra.get("destinations", []),
        problems=problems,
        failures=[],
        api_key_refused=refused,
    )


POLICY = AlertPolicy(interval=1, repeat=600, signature_failures=5, destination_failing=300)


def test_conditions_name_what_needs_a_person() -> None:
    failing = Destination(
        "http:https://wms.test/in", backlog=7, failing_since=9_000, last_error="HTTP 503"
    )
    found = conditions(
        overview(dead=2, refused=True, destinations=[failing]),
        POLICY,
        signature_failures=6,
        gap_grew_at=9_990,
    )
    keys = [c.key for c in found]
    assert keys == [
        "api_key",
        "dead_work",
        "signature_failures",
        "destination:http:https://wms.test/in",
        "reconciliation_gap",
    ]
    assert "HTTP 401" in found[0].summary
    assert "2 jobs" in found[1].summary
    assert "failing for 17 min" in found[3].summary
    assert conditions(overview(), POLICY, signature_failures=4, gap_grew_at=None) == []
    # failing, but not yet for long enough
    recent = Destination("x", failing_since=9_900)
    assert (
        conditions(overview(destinations=[recent]), POLICY, signature_failures=0, gap_grew_at=None)
        == []
    )


async def test_a_condition_is_told_once_then_resolved_and_flapping_is_held_back() -> None:
    now = [10_000.0]
    state: dict[str, Any] = {"dead": 1}
    posted: list[dict[str, Any]] = []

    async def look() -> tuple[Overview, int]:
        return overview(dead=state["dead"], at=now[0]), 0

    async def post(body: dict[str, Any]) -> None:
        posted.append(body)

    notifier = Notifier(
        look, post, POLICY, fmt="json", link="https://dimmy.test", clock=lambda: now[0]
    )
    await notifier.check()
    assert [(b["condition"], b["state"]) for b in posted] == [("dead_work", "firing")]
    assert posted[0]["dashboard"] == "https://dimmy.test"
    state["dead"] = 3  # worse, within the repeat window: not told again yet
    now[0] += 60
    await notifier.check()
    assert len(posted) == 1
    now[0] += 600
    await notifier.check()
    assert [b["state"] for b in posted] == ["firing", "firing"]
    assert "3 jobs" in posted[-1]["summary"]
    await notifier.check()  # unchanged: nothing
    assert len(posted) == 2
    state["dead"] = 0
    now[0] += 1
    await notifier.check()
    assert posted[-1]["state"] == "resolved"
    state["dead"] = 1  # back at once: held until the window after the resolved message
    now[0] += 1
    await notifier.check()
    assert len(posted) == 3
    now[0] += 600
    await notifier.check()
    assert posted[-1]["state"] == "firing"


async def test_a_message_that_cannot_be_posted_is_tried_again(
    recorder: tuple[Recorder, str],
) -> None:
    record, url = recorder
    record.status = 500
    poster = HttpPoster(url)
    assert url not in repr(poster)

    async def look() -> tuple[Overview, int]:
        return overview(refused=True), 0

    notifier = Notifier(look, poster, POLICY)
    try:
        assert await notifier.check() == []
        record.status = 200
        sent = await notifier.check()
    finally:
        await poster.aclose()
    assert len(record.bodies) == 2
    assert [b["text"] for b in sent] == [record.bodies[-1]["text"]]
    assert record.bodies[-1]["text"].startswith("[dimmy-webhooks] ALERT: Dimmy API refused the key")


def test_serve_alerts_when_work_dies_and_says_when_it_is_replayed(
    sqlite_url: str, fake: FakeDimmy, fake_url: str, recorder: tuple[Recorder, str]
) -> None:
    record, hook = recorder
    settings = make_settings(
        sqlite_url,
        api_key=API_KEY,
        api_url=fake_url,
        alert_url=hook,
        alert_interval_seconds=1,
        public_url="https://dimmy.warehouse.test",
    )
    missing = "6592008029c8c3e4dc76aaaa"
    with serve_in_thread(create_app(settings)) as url:
        body = json.dumps({"item_ids": [missing]}).encode()
        assert post_signed(url, "m1", body).status_code == 204
        assert wait_until(lambda: any("work went dead" in t for t in record.texts()), 20), (
            record.texts()
        )
        [item_id] = fake.generate_items(1)
        fake.add_item({**fake.items[item_id], "_id": missing})
        assert httpx.post(url + "/api/events/1/replay").status_code == 200
        assert wait_until(lambda: any("RESOLVED" in t for t in record.texts()), 20), record.texts()
    texts = record.texts()
    assert len([t for t in texts if "work went dead" in t]) == 2  # the alert and its resolution
    assert "<https://dimmy.warehouse.test|open the dashboard>" in texts[0]


# S21: text from outside reaches the channel escaped, and /readyz tells none of it ------------

HOSTILE = (
    "<!channel> your key expired, <@U024BE7LH> <https://evil.example/login|re-enter your key> "
    "or [sign in](https://evil.example/teams) & <b>now</b>\n\x1b[31mpoof"
)


def _hostile_api(detail: str) -> Starlette:
    """A Dimmy API that refuses every key with ``detail`` as its reason."""

    async def refuse(request: Request) -> Response:
        return Response(json.dumps({"detail": detail}), 401, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", refuse, methods=["GET"])])


def _assert_no_markup_from_outside(text: str) -> None:
    for markup in ("<!channel>", "<@U024BE7LH>", "<https://evil", "](https://evil", "<b>", "\x1b"):
        assert markup not in text, (markup, text)


async def test_alert_text_from_outside_is_escaped_for_the_chat_and_bounded() -> None:
    """S21: Slack's control characters (``&``, ``<``, ``>``) from upstream are escaped, a Markdown
    link is broken, control characters become spaces; the service's own dashboard link stays a
    link. The ``json`` format carries the same bounded text as a plain JSON string."""
    refused = f"Dimmy API refused the key: GET /items/x: HTTP 401 {HOSTILE}" + "x" * 2000
    posted: list[dict[str, Any]] = []

    async def look() -> tuple[Overview, int]:
        return overview(refused=True, problems=[refused]), 0

    async def post(body: dict[str, Any]) -> None:
        posted.append(body)

    await Notifier(look, post, POLICY, link="https://dimmy.test").check()
    [slack] = posted
    text = slack["text"]
    _assert_no_markup_from_outside(text)
    assert "&lt;!channel&gt;" in text
    assert "&lt;https://evil.example/login|re-enter your key&gt;" in text
    assert "[sign in] (https://evil.example/teams) &amp; &lt;b&gt;now&lt;/b&gt;" in text
    assert text.endswith("... <https://dimmy.test|open the dashboard>")  # ours stays a link
    assert len(text) < 1000

    posted.clear()
    await Notifier(look, post, POLICY, fmt="json").check()
    [body] = posted
    assert "<!channel> your key expired" in body["summary"]  # a JSON string: data, not markup
    assert "\n" not in body["summary"]
    assert "\x1b" not in body["summary"]
    assert len(body["summary"]) <= 600


def test_a_refused_key_reason_is_escaped_in_the_alert_and_absent_from_readyz(
    db_url: str, recorder: tuple[Recorder, str]
) -> None:
    """S21 end to end: the Dimmy API refuses the key with a reason full of Slack markup. The
    alert posted by ``serve`` carries it escaped; the unauthenticated ``/readyz`` names the
    problem with a fixed label and none of the reason; the authenticated overview keeps it."""
    record, hook = recorder
    with serve_in_thread(_hostile_api(HOSTILE)) as api_url:
        settings = make_settings(
            db_url, api_key=API_KEY, api_url=api_url, alert_url=hook, alert_interval_seconds=1
        )
        with serve_in_thread(create_app(settings)) as url:
            post_signed(url, "msg_s21", json.dumps({"item_ids": ["0" * 24]}).encode(), expect=204)
            assert wait_until(lambda: any("refused" in t for t in record.texts()), 20), (
                record.texts()
            )
            ready = httpx.get(url + "/readyz")
            detail = httpx.get(url + "/api/overview").json()["problems"]
    [alert] = [t for t in record.texts() if "refused" in t]
    _assert_no_markup_from_outside(alert)
    assert "&lt;!channel&gt;" in alert
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "degraded",
        "problems": ["Dimmy API refused the key (DIMMY_API_KEY)"],
    }
    for word in ("channel", "evil", "sign in", "401", "/items"):
        assert word not in ready.text
    assert any("<!channel>" in problem for problem in detail), detail


@pytest.mark.parametrize(
    "problem",
    [
        "store unreachable: ",
        "sqlite writer thread stopped: writes cannot commit ",
        "Dimmy API refused the key: GET /items/x: HTTP 401 ",
        "GET /items/x: HTTP 403 ",
        "destination http:https://wms.test/in?token=s3cret is failing (HTTP 500 ",
        "python:x:y: 8 of 8 threads stuck in calls that timed out ",
        "poller: GET /items: HTTP 500 ",
        "notifier stopped: RuntimeError: ",
        "",  # a problem nobody taught the labels
    ],
)
def test_readyz_labels_repeat_nothing_of_a_problem(problem: str) -> None:
    """S21: whatever a problem's text carries after its fixed start, its public label is one of
    a fixed set and carries none of it."""
    label = public_label(problem + HOSTILE)
    assert label in {label for _, label in health._LABELS} | {health.UNKNOWN_PROBLEM}
    for part in ("channel", "evil", "s3cret", "wms.test", "HTTP", "/items", "python:"):
        assert part not in label, (problem, label)
