"""S25: NUL and other control characters in a query parameter, on every backend.

PostgreSQL text cannot hold a NUL: ``?barcode=%00`` was a 503 "store unavailable" there, and a
streamed export a 200 cut short with an ASGI exception in the log (SQLite answered 200). Every
query parameter of every API operation (read from the app's own OpenAPI document) and of the
dashboard's pages is tried with each: the answer is a 4xx naming the parameter, never a 5xx,
never a broken stream; the same parameters without the control character are still served.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.web import create_app

from ..support.builders import ITEM_ID, make_settings
from ..support.constants import ADMIN_TOKEN, AUTH
from ..support.dashboard import dashboard_login

pytestmark = pytest.mark.faults

CONTROLS = ["\x00", "a\x00b", "\x01", "x\x1fy", "\x7f", "\x1b[31m"]
DASHBOARD = {
    "/ui/events": ["status", "type", "since", "until", "before"],
    "/ui/items": ["q", "since", "until", "scanner", "dims", "before"],
    "/ui/login": ["next"],
}


@pytest.fixture
def service(db_url: str) -> Iterator[tuple[str, dict[str, Any]]]:
    app = create_app(make_settings(db_url, admin_token=ADMIN_TOKEN), run_worker=False)
    with serve_in_thread(app) as url:
        yield url, app.openapi()


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, list[str]]]:
    """(method, path with its path parameters filled in, query parameter names)."""
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            params = operation.get("parameters", [])
            query = [p["name"] for p in params if p["in"] == "query"]
            if query:
                filled = path.replace("{item_id}", ITEM_ID).replace("{event_id}", "1")
                yield method.upper(), filled, query


def _refused(answer: httpx.Response, name: str, where: str) -> None:
    assert 400 <= answer.status_code < 500, (where, answer.status_code, answer.text)
    assert "control character" in answer.text, (where, answer.text)
    assert name in answer.text, (where, answer.text)


def test_every_api_query_parameter_refuses_control_characters(
    service: tuple[str, dict[str, Any]],
) -> None:
    url, spec = service
    operations = list(_operations(spec))
    assert len(operations) >= 12  # the spec was read, not an empty list
    with httpx.Client(base_url=url, headers=AUTH, timeout=10) as http:
        for method, path, names in operations:
            for name in names:
                for value in CONTROLS:
                    answer = http.request(method, path, params={name: value})
                    _refused(answer, name, f"{method} {path}?{name}={value!r}")


def test_the_exports_stay_whole_without_control_characters(
    service: tuple[str, dict[str, Any]],
) -> None:
    """The same parameters, harmless: every list and export answers, each stream complete."""
    url, _ = service
    plain = {"q": "abc", "barcode": "abc", "output": "jsonl:x", "scanner": "s", "after": "a"}
    with httpx.Client(base_url=url, headers=AUTH, timeout=10) as http:
        for path in ("/api/items", "/api/items.json", "/api/deliveries", "/api/items.csv"):
            keep = {k: v for k, v in plain.items() if k in ("q", "barcode", "scanner", "after")}
            assert http.get(path, params=keep).status_code == 200, path
        for path in ("/api/deliveries.csv", "/api/deliveries.jsonl", "/api/items.jsonl"):
            with http.stream("GET", path, params={"output": plain["output"]}) as answer:
                assert answer.status_code == 200, path
                answer.read()  # a broken chunked answer raises here


def test_every_dashboard_query_parameter_refuses_control_characters(
    service: tuple[str, dict[str, Any]],
) -> None:
    url, _ = service
    with httpx.Client(base_url=url, timeout=10) as http:
        dashboard_login(http)
        for path, names in DASHBOARD.items():
            for name in names:
                for value in CONTROLS:
                    answer = http.get(path, params={name: value})
                    _refused(answer, name, f"{path}?{name}={value!r}")
