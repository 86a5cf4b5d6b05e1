"""S3: hostile strings in items, event bodies and message ids never come back as markup.

Items whose fields hold ``<script>``, ``onerror=``, quotes, ``</textarea>``, a right-to-left
override and a NUL go through the whole path (Dimmy fake -> signed webhook -> worker -> item store
-> JSON API); event bodies and message ids carry them too. Every response the service gives in that
session must carry ``nosniff`` and a Content-Security-Policy; any response whose body contains a
payload unescaped must be ``application/json``, never ``text/html``; and the JSON gives the values
back exactly (text, not markup; a normalised field may drop a NUL, the raw document keeps it).
The dashboard's pages (and their live parts, and the exports) show the same values: an HTML page
may carry a payload only as inert text (:func:`inert`: no script of its own inline, no event
handler attribute, no ``javascript:`` link or image, no element a payload names), CSV and JSON
Lines exports only as data. FastAPI's ``/docs`` and ``/redoc`` are not served; if they were,
they would have to carry the same headers and work under the CSP.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.web import create_app

from ..support.builders import make_settings
from ..support.constants import ADMIN_TOKEN, API_KEY, AUTH, SECRET
from ..support.dashboard import dashboard_login
from ..support.databases import hold_item
from ..support.fakes import FakeWms
from ..support.processes import wait_until
from ..support.senders import post_signed, signed

pytestmark = pytest.mark.faults

PAYLOADS = [
    "<script>alert(1)</script>",
    '"onerror=alert(1)',
    "'\"><img src=x onerror=alert(1)>",
    "</textarea><svg onload=alert(1)>",
    "\u202eexe.gnp",  # right-to-left override
    "nul\x00byte",
]
ASCII_PAYLOADS = [p for p in PAYLOADS if p.isascii() and "\x00" not in p]  # header-safe
HTML_PAGES = ("/docs", "/redoc", "/docs/oauth2-redirect")  # FastAPI's, static (if enabled)
MARKERS = ["alert(", "\u202e", "\x00", "</textarea>"]  # in every payload, in no page of ours


class Session:
    """An HTTP client that keeps every response it got, to check them all at the end."""

    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=10)
        self.responses: list[httpx.Response] = []

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = self.client.request(method, url, **kwargs)
        self.responses.append(response)
        return response

    def api(self, url: str, **kwargs: Any) -> Any:
        response = self.request("GET", url, headers=AUTH, **kwargs)
        assert response.status_code == 200, (url, response.status_code, response.text)
        return response.json()

    def close(self) -> None:
        self.client.close()


def hostile_item(fake: FakeDimmy, payload: str) -> dict[str, Any]:
    """A realistic item (from the fake's generator) with ``payload`` in every string field the
    service reads or keeps, and in fields it only carries along."""
    [item_id] = fake.generate_items(1)
    doc = dict(fake.items[item_id])
    doc.update(
        barcode=payload,
        owner_id=payload,
        scanner_account_id=payload,
        flow_id=payload,
        note=payload,
        **{payload: payload},  # as a key too
    )
    doc["barcode_scanning"] = [{"barcodes": [{"value": payload + "-2", "format": payload}]}]
    doc["photographing"] = [{"photos": [{"url": f"javascript:alert(1)//{payload}"}]}]
    doc["dimensioning"] = [{"dimensions": {"width": 1, "height": 2, "depth": 3, "unit": payload}}]
    fake.add_item(doc)
    return doc


def wait_until_settled(session: Session, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        events: list[dict[str, Any]] = session.api("/api/events", params={"limit": 500})["events"]
        if all(e["status"] not in ("pending", "processing") for e in events):
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"events still open: {events}")
        time.sleep(0.1)


@pytest.fixture
def service(service_url: str) -> Iterator[Session]:
    session = Session(service_url)
    try:
        yield session
    finally:
        session.close()


def without_nul(text: str) -> str:
    return text.replace("\x00", "")


def unescaped(text: str) -> list[str]:
    return [marker for marker in MARKERS if marker in text]


def check_headers(response: httpx.Response) -> None:
    where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
    assert response.headers.get("x-content-type-options") == "nosniff", where
    csp = response.headers.get("content-security-policy", "")
    assert "default-src 'self'" in csp, where
    assert "unsafe-inline" not in csp, where
    assert "frame-ancestors 'none'" in csp, where


_LIVE_TAGS = frozenset({"svg", "iframe", "object", "embed", "textarea", "math", "base", "frame"})
_URL_ATTRIBUTES = frozenset({"href", "src", "action", "formaction", "xlink:href", "srcset"})


class _Markup(HTMLParser):
    """What a page would run or render as markup: what :func:`inert` refuses."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.live: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        chart = tag == "svg" and "chart" in (values.get("class") or "").split()
        if tag in _LIVE_TAGS and not chart:  # the dashboard's own charts are SVG
            self.live.append(f"<{tag}>")
        if tag == "script":
            src = values.get("src") or ""
            if not src.startswith("/ui/static/"):
                self.live.append(f"script src={src!r}")
            self.in_script = True
        for name, value in attrs:
            if name.startswith("on"):
                self.live.append(f"<{tag} {name}>")
            text = re.sub(r"[\x00-\x20]", "", value or "").lower()
            if name in _URL_ATTRIBUTES and text.startswith(("javascript:", "data:", "vbscript:")):
                self.live.append(f"<{tag} {name}={value!r}>")
        if tag == "img" and not (values.get("src") or "").startswith(("https://", "http://", "/")):
            self.live.append(f"<img src={values.get('src')!r}>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.in_script = False

    def handle_data(self, data: str) -> None:
        if self.in_script and data.strip():
            self.live.append("inline script")


def inert(page: str) -> list[str]:
    """What in ``page`` a browser would run or render as markup ([]: only text)."""
    parser = _Markup()
    parser.feed(page)
    parser.close()
    return parser.live


def check_all(responses: list[httpx.Response]) -> int:
    """Headers on every response; markup only inside JSON, exports or inert HTML. Returns how
    many carried a payload."""
    carrying = 0
    for response in responses:
        check_headers(response)
        found = unescaped(response.text)
        if found:
            carrying += 1
            kind = response.headers.get("content-type", "").split(";")[0].strip()
            where = f"{response.request.method} {response.request.url.path}"
            if kind == "text/html":
                assert inert(response.text) == [], (where, inert(response.text))
                assert "<script>alert" not in response.text, where
            elif kind == "application/x-ndjson":
                for line in response.text.splitlines():
                    json.loads(line)
            elif kind == "text/csv":
                assert response.headers["content-disposition"].startswith("attachment"), where
            else:
                assert kind == "application/json", (where, kind, found)
                json.loads(response.text)  # well-formed: the payload is inside a JSON string
    return carrying


def test_hostile_values_come_back_as_json_text(
    service: Session, fake: FakeDimmy, db_url: str
) -> None:
    payloads = PAYLOADS
    docs = {payload: hostile_item(fake, payload) for payload in payloads}
    # 1. items with hostile fields, fetched by the worker after a signed webhook
    ids = [doc["_id"] for doc in docs.values()]
    assert post_signed(service, "msg_hostile_items", ids).status_code == 204
    # 2. hostile strings as item ids (refused before any fetch, with a reason on the event)
    assert post_signed(service, "msg_hostile_ids", payloads).status_code == 204
    # 3. hostile message ids, an unknown event with hostile content, a full payload with them
    for n, payload in enumerate(ASCII_PAYLOADS):
        answer = post_signed(
            service, f"msg_{payload}", json.dumps({"comment": payload, "n": n}).encode()
        )
        assert answer.status_code == 204, answer.text
    # (a hostile _id is refused outright: tests/faults/test_item_ids.py)
    full = {
        "_id": "hostile-full-payload",
        "scanner_account_id": "<img src=x onerror=alert(2)>",
        "barcode": PAYLOADS[1] + "!",
        "note": PAYLOADS[3],
    }
    assert post_signed(service, "msg_full_payload", json.dumps(full).encode()).status_code == 204
    # 4. rejected webhooks whose message id and body are hostile
    for payload in ASCII_PAYLOADS:
        body = json.dumps({"x": payload}).encode()
        headers = signed(body, payload)
        headers["svix-signature"] = "v1,<script>alert(1)</script>"
        service.request("POST", "/webhook", content=body, headers=headers)
    service.request(
        "POST", "/webhook", content=b"<script>alert(1)</script>", headers=signed(b"<", "m")
    )
    service.request("POST", "/webhook", content=b"\x00<script>", headers={"svix-id": "x"})

    events = wait_until_settled(service)
    by_message = {e["message_id"]: e for e in events}
    for payload in ASCII_PAYLOADS:
        assert by_message[f"msg_{payload}"]["event_type"] == "unknown"

    # every item comes back exactly, as JSON text
    for payload, doc in docs.items():
        item = service.api(f"/api/items/{doc['_id']}")
        assert item["raw"] == doc, payload  # exactly as fetched, NUL included
        # a normalised field may drop a NUL (PostgreSQL text cannot hold one), nothing else
        text = payload.replace("\x00", "")
        assert without_nul(item["barcode"]) == text
        assert [without_nul(b) for b in item["barcodes"]] == [text, text + "-2"]
        assert without_nul(item["owner_id"]) == text
        assert [without_nul(u) for u in item["photo_urls"]] == [f"javascript:alert(1)//{text}"]
        assert item["dimension_unit"] is None  # an unknown unit is not echoed as a unit
        found = service.api("/api/items", params={"barcode": item["barcode"]})["items"]
        assert [i["id"] for i in found] == [doc["_id"]]
    listed = service.api("/api/items", params={"limit": 500})["items"]
    assert {doc["_id"] for doc in docs.values()} <= {i["id"] for i in listed}
    stored_full = service.api("/api/items/" + full["_id"])
    assert stored_full["raw"] == full
    assert stored_full["scanner_account_id"] == full["scanner_account_id"]

    # every read path that can echo a payload
    for event in events:
        service.api(f"/api/events/{event['id']}")
    for status in ("dead", "unknown", "done"):
        service.api("/api/events", params={"status": status})
    for payload in PAYLOADS:
        path = quote(payload, safe="")
        service.request("GET", f"/api/items/{path}", headers=AUTH)
        service.request("POST", f"/api/items/{path}/replay", headers=AUTH)
        service.request("GET", f"/{path}")
        service.request("GET", "/api/items", headers=AUTH, params={"after": payload})
        service.request("GET", "/api/events", headers=AUTH, params={"status": payload})
    for path in (
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/docs",
        "/redoc",
        "/docs/oauth2-redirect",
    ):
        service.request("GET", path)

    carrying = check_all(service.responses)
    assert carrying >= len(payloads) * 2, "the payloads should have come back in JSON"
    html = [r for r in service.responses if "text/html" in r.headers.get("content-type", "")]
    assert {r.request.url.path for r in html} <= set(HTML_PAGES)
    for response in html:
        assert not unescaped(response.text), response.request.url.path

    # the dashboard shows the same values: as text on its pages, as data in its exports
    hold_item(db_url, ids[0], reason=PAYLOADS[2])  # a hostile reason on the quarantine page
    shown = browse_dashboard(str(service.client.base_url), docs, full, events)
    assert shown >= len(payloads) * 4, "the dashboard should have shown the payloads"


def browse_dashboard(
    base_url: str, docs: dict[str, dict[str, Any]], full: dict[str, Any], events: list[Any]
) -> int:
    """Every dashboard page, live part, twin and export that can show the payloads, logged in;
    returns how many responses carried one (each checked by :func:`check_all`)."""
    dashboard = Session(base_url)
    try:
        assert dashboard_login(dashboard.client)
        pages = ["/", "/ui/events", "/ui/items", "/ui/quarantine", "/?live=1", "/ui/items?live=1"]
        for doc in [*docs.values(), full]:
            pages += [f"/ui/items/{doc['_id']}", f"/ui/items/{doc['_id']}?live=1"]
        for event in events:
            pages += [f"/ui/events/{event['id']}", f"/ui/events/{event['id']}?live=1"]
        for page in pages:
            answer = dashboard.request("GET", page)
            assert answer.status_code == 200, (page, answer.status_code)
        for payload in ASCII_PAYLOADS:
            for name in ("q", "scanner", "since", "until", "dims", "before"):
                dashboard.request("GET", "/ui/items", params={name: payload})
            for name in ("status", "type", "since"):
                dashboard.request("GET", "/ui/events", params={name: payload})
            dashboard.request("GET", "/ui/login", params={"next": payload})
            dashboard.request("GET", "/api/items.json", params={"q": payload})
        for path in ("/api/items.csv", "/api/items.jsonl", "/api/items.json", "/api/overview"):
            dashboard.request("GET", path)
        for event in events:
            dashboard.request("GET", f"/api/events/{event['id']}/work")
            dashboard.request("GET", f"/api/events/{event['id']}/body")
        first = docs[PAYLOADS[0]]
        found = dashboard.request("GET", "/ui/items", params={"q": first["barcode"]})
        assert f'href="/ui/items/{first["_id"]}"' in found.text
        return check_all(dashboard.responses)
    finally:
        dashboard.close()


def test_nul_in_one_item_does_not_lose_the_event(
    db_url: str, fake: FakeDimmy, fake_url: str
) -> None:
    """A NUL (``\\u0000`` in the JSON) in one item's field or in one id of a batch: the other
    items of the event are stored; the bad one is stored or dead with a reason. (PostgreSQL
    text cannot hold a NUL: on a store that treats the refusal as an outage, the job waits out
    its lease on every attempt and dies without a reason, and one bad id loses the batch.)"""
    [good] = fake.generate_items(1)
    nul_field = hostile_item(fake, "nul\x00byte")["_id"]
    settings = make_settings(
        db_url,
        api_key=API_KEY,
        api_url=fake_url,
        admin_token=ADMIN_TOKEN,
        retry_base_seconds=0.05,
        max_attempts=2,
        lease_seconds=1,
    )
    with serve_in_thread(create_app(settings)) as url:
        session = Session(url)
        try:
            assert post_signed(session, "m1", [good, "bad\x00id"]).status_code == 204
            assert post_signed(session, "m2", [nul_field]).status_code == 204
            events = {e["message_id"]: e for e in wait_until_settled(session)}
            stored = session.request("GET", f"/api/items/{good}", headers=AUTH)
            nul_item = session.request("GET", f"/api/items/{nul_field}", headers=AUTH)
            check_all(session.responses)
        finally:
            session.close()
    assert stored.status_code == 200, "the good item of the batch was lost"
    assert nul_item.status_code == 200 or events["m2"]["last_error"], events["m2"]


def test_html_pages_carry_the_security_headers(service: Session) -> None:
    """FastAPI's /docs and /redoc, when served, carry the headers (a 404 is fine too)."""
    for path in HTML_PAGES:
        response = service.request("GET", path)
        check_headers(response)
        assert response.headers.get("x-frame-options") == "DENY"
        if response.status_code != 200:
            assert response.headers["content-type"] == "application/json", path


def _blocked_by_own_csp(page: str) -> list[str]:
    """What a browser would refuse to run on ``page`` under ``default-src 'self'``."""
    blocked = [src for src in re.findall(r'<script[^>]+src="([^"]+)"', page) if "://" in src]
    blocked += [f"stylesheet {href}" for href in re.findall(r'href="(https?://[^"]+)"', page)]
    inline = re.findall(r"<script(?![^>]*src=)[^>]*>(.*?)</script>", page, re.S)
    blocked += ["inline script"] * sum(1 for s in inline if s.strip())
    return blocked


def test_html_pages_work_under_their_own_csp(service: Session) -> None:
    """An HTML page the service serves must work under its own CSP: FastAPI's /docs and /redoc
    load Swagger UI / ReDoc from cdn.jsdelivr.net and run an inline script, which
    ``default-src 'self'`` blocks (blank pages), so they must be off or self-hosted."""
    blocked = {}
    for path in HTML_PAGES:
        response = service.request("GET", path)
        if "text/html" in response.headers.get("content-type", ""):
            blocked[path] = _blocked_by_own_csp(response.text)
    assert {path: found for path, found in blocked.items() if found} == {}


# --- S19: a byte order mark, or UTF-16, from the API or the sender ------------------------------


class RawApi:
    """A Dimmy API on 127.0.0.1 answering ``GET /items/{id}`` with the bytes stored for that id,
    exactly as given (a BOM, UTF-16...), with ``Content-Type: application/json``."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = self.bodies.get(scope["path"].removeprefix("/items/"))
        status = 200 if body is not None else 404
        content = body if body is not None else b'{"detail":"Not Found"}'
        head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": content})


def strict_json(body: bytes) -> Any:
    """``body`` parsed as RFC 8259 JSON text exchanged between systems: UTF-8, no BOM (a
    strict WMS's reading; ``json.loads`` of a ``str`` refuses a BOM)."""
    return json.loads(body.decode("utf-8"))


BOM_ENCODINGS = {
    "utf-8 BOM": lambda text: b"\xef\xbb\xbf" + text.encode(),
    "utf-16 BOM": lambda text: text.encode("utf-16"),
    "utf-16-le": lambda text: text.encode("utf-16-le"),
    "utf-16-be": lambda text: text.encode("utf-16-be"),
    "utf-32 BOM": lambda text: text.encode("utf-32"),
}


def test_bom_and_utf16_items_are_stored_as_clean_json(
    db_url: str, fake: FakeDimmy, tmp_path: Path
) -> None:
    """Items fetched with a BOM or in UTF-16/32, and webhook bodies sent so (signed over the
    bytes as sent), are stored as UTF-8 JSON text: every read path and every delivery is valid
    JSON, with the document's values (non-ASCII included) intact."""
    api = RawApi()
    docs: dict[str, dict[str, Any]] = {}
    for name, encode in BOM_ENCODINGS.items():
        [item_id] = fake.generate_items(1)
        doc = {**fake.items[item_id], "note": f"{name}: caf\u00e9 \u2603"}
        docs[item_id] = doc
        api.bodies[item_id] = encode(json.dumps(doc, ensure_ascii=False))
    sent: dict[str, dict[str, Any]] = {}  # items that come in the webhook body itself
    for name in BOM_ENCODINGS:
        [item_id] = fake.generate_items(1)
        sent[item_id] = {**fake.items[item_id], "note": f"sent {name}: \u00fcber"}
    with (
        serve_in_thread(api, interface="asgi3") as api_url,
        FakeWms() as wms,
    ):
        settings = make_settings(
            db_url,
            api_key=API_KEY,
            api_url=api_url,
            admin_token=ADMIN_TOKEN,
            outputs=f"http:{wms.url},jsonl:{tmp_path / 'out.jsonl'}",
            forward_secret=SECRET,
        )
        with serve_in_thread(create_app(settings)) as url, httpx.Client(base_url=url) as client:
            ids_body = json.dumps({"item_ids": list(docs)})
            for n, encode in enumerate(BOM_ENCODINGS.values()):
                post_signed(url, f"ids-{n}", encode(ids_body), expect=204)
            for n, (doc, encode) in enumerate(
                zip(sent.values(), BOM_ENCODINGS.values(), strict=True)
            ):
                body = encode(json.dumps(doc, ensure_ascii=False))
                post_signed(url, f"full-{n}", body, expect=204)
            expected = {**docs, **sent}

            def delivered() -> bool:
                return len({r.headers.get("webhook-id") for r in wms.ok}) >= len(expected)

            assert wait_until(delivered, 30, 0.1), client.get("/api/events", headers=AUTH).text
            answers = {
                f"/api/items/{item_id}": client.get(f"/api/items/{item_id}", headers=AUTH)
                for item_id in expected
            }
            for path in ("/api/items", "/api/items.jsonl", "/api/events", "/api/deliveries"):
                answers[path] = client.get(path, headers=AUTH, params={"limit": 500})
            events = strict_json(answers["/api/events"].content)["events"]
            for event in events:
                path = f"/api/events/{event['id']}"
                answers[path] = client.get(path, headers=AUTH)
    for path, answer in answers.items():
        assert answer.status_code == 200, (path, answer.text)
        if path.endswith(".jsonl"):
            lines = [strict_json(line) for line in answer.content.splitlines()]
            assert {line["id"]: line["raw"] for line in lines} == expected
        else:
            strict_json(answer.content)
    for item_id, doc in expected.items():
        assert strict_json(answers[f"/api/items/{item_id}"].content)["raw"] == doc
    listed = strict_json(answers["/api/items"].content)["items"]
    assert {item["id"]: item["raw"] for item in listed} == expected
    assert all(e["status"] == "done" for e in events), events
    envelopes = [strict_json(r.body)["data"] for r in wms.ok]
    assert {data["id"]: data["raw"] for data in envelopes} == expected
    out = [strict_json(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert {record["item_id"] for record in out} == set(expected)


def test_a_signed_body_that_is_not_text_in_its_encoding_is_refused_with_the_reason(
    sqlite_url: str,
) -> None:
    with serve_in_thread(create_app(make_settings(sqlite_url))) as url:
        answer = post_signed(url, "bad-utf16", b'\xff\xfe{\x00"')  # a UTF-16 BOM, then odd bytes
        good = post_signed(url, "bom-ids", b'\xef\xbb\xbf{"item_ids": []}')
    assert answer.status_code == 400
    assert answer.json() == {"error": "body is not UTF-8, UTF-16 or UTF-32 text"}
    assert good.status_code == 204
