"""The dashboard in headless Chromium (Debian's ``chromium``, driven by Playwright), as a
person uses it on a running demo: log in, watch items arrive, search a barcode, look at an
item's photos, replay a dead event, release a quarantined item. Screenshots go to
``out/screenshots/``. Payloads full of markup stay text in the browser too.

Skipped with the reason when Chromium or Playwright is missing; ``.ci/run`` installs them and
sets ``DIMMY_TEST_REQUIRE_BROWSER=1``, which turns the skip into a failure. No traffic leaves
the machine: every request for another host is answered by the test (photos) or refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.devtools.runner import free_port

from ..faults.test_hostile_payloads import PAYLOADS, hostile_item
from ..support.constants import ADMIN_TOKEN, AUTH, CLI, ROOT
from ..support.processes import clean_env, wait_until
from ..support.senders import post_signed

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("DIMMY_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "out" / "screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # no name is ever looked up: everything but loopback is "not found"
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
LOOPBACK = re.compile(r"^https?://127\.0\.0\.1[:/]")
LIVE_MARKUP = """() => ({
    inline: Array.from(document.scripts).filter(s => !s.src).length,
    handlers: Array.from(document.querySelectorAll('*')).flatMap(e =>
        Array.from(e.attributes).filter(a => a.name.startsWith('on')).map(a => a.name)),
    jsUrls: Array.from(document.querySelectorAll('[href],[src]'))
        .map(e => e.getAttribute('href') || e.getAttribute('src'))
        .filter(v => /^\\s*javascript:/i.test(v)),
    foreign: Array.from(document.querySelectorAll(
        'svg:not(.chart), iframe, object, embed, textarea')).length,
})"""
"""What on a page runs or renders as markup besides the dashboard's own (its charts are SVG)."""


def _png(width: int = 48, height: int = 36) -> bytes:
    """A small solid PNG (the photos the fake's URLs name, served by the test)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" + b"\x2b\x71\xb1" * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


PHOTO = _png()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    required = os.environ.get("DIMMY_TEST_REQUIRE_BROWSER") == "1"
    reason = None
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        reason = (
            f"Chromium not found at {CHROMIUM}: apt-get install chromium "
            "(or set DIMMY_TEST_CHROMIUM)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = reason or "Playwright is not installed: pip install -e '.[dev]'"
    if reason is not None:
        if required:
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


def new_page(browser: Any, problems: list[str]) -> Any:
    """A page in a fresh context: photos from other hosts answered here, anything else off
    the machine refused; console errors and dialogs collected in ``problems``."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})

    def route(route: Any) -> None:
        if LOOPBACK.match(route.request.url):
            route.continue_()
        elif route.request.resource_type == "image":
            route.fulfill(status=200, content_type="image/png", body=PHOTO)
        else:
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.on(
        "console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    return page


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """``dimmy-webhooks demo`` with an admin token, as a user starts it; yields its URL, its
    database and its output."""
    port = free_port()
    database = tmp_path / "demo.sqlite3"
    log = tmp_path / "demo.log"
    args = [
        CLI, "demo", "--port", str(port), "--database", str(database), "--duration", "240",
        "--speed", "600", "--big-batch", "40", "--items", "12", "--admin-token", ADMIN_TOKEN,
        "--no-browser",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=tmp_path, env=clean_env(), stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _up(url) or proc.poll() is not None, 30), log.read_text()
        assert proc.poll() is None, log.read_text()
        assert log.read_text().splitlines()[0] == f"dashboard: {url}/"
        yield url, database, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def api(url: str, path: str, **params: Any) -> Any:
    answer = httpx.get(url + path, headers=AUTH, params=params, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_an_operator_works_the_demo_in_a_browser(
    browser: Any, demo: tuple[str, Path, Path]
) -> None:
    url, _database, log = demo
    problems: list[str] = []
    page = new_page(browser, problems)
    timings: dict[str, float] = {}

    # 1. the dashboard wants the token, then shows the overview
    page.goto(url + "/")
    assert "/ui/login" in page.url
    shot(page, "01-login")
    page.fill("#token", "not the token")
    page.click("#login button[type=submit]")
    page.wait_for_selector("#login-error:not([hidden])")
    assert "wrong admin token" in page.inner_text("#login-error")
    page.fill("#token", ADMIN_TOKEN)
    page.click("#login button[type=submit]")
    page.wait_for_url(url + "/")
    page.wait_for_selector("#items-total")
    assert page.locator("#open-warning").count() == 0
    for chart in ("#chart-scans", "#chart-latency", "#chart-backlog"):
        assert page.locator(f"{chart} svg.chart").is_visible()
    shot(page, "02-overview")

    # 2. items arrive without a reload
    started = time.monotonic()
    page.goto(url + "/ui/items")
    timings["items page"] = time.monotonic() - started
    page.wait_for_selector("#items tbody tr")
    page.evaluate("window.__notReloaded = true")
    first = set(
        page.eval_on_selector_all("#items tbody tr", "rows => rows.map(r => r.dataset.key)")
    )
    page.wait_for_function(
        "known => Array.from(document.querySelectorAll('#items tbody tr'))"
        ".some(r => !known.includes(r.dataset.key))",
        arg=list(first),
        timeout=30_000,
    )
    assert page.evaluate("window.__notReloaded") is True
    assert page.locator("#items tr.fresh").count() >= 1
    shot(page, "03-items-arriving")

    # 3. search a barcode
    items = api(url, "/api/items.json", limit=500)["items"]
    wanted = next(
        i
        for i in items
        if i["barcode"] and [u for u in i["photo_urls"] if u.startswith(("http://", "https://"))]
    )
    page.fill("#item-search", wanted["barcode"])
    page.press("#item-search", "Enter")
    page.wait_for_selector(f'#items tr[data-key="{wanted["id"]}"]')
    barcodes = page.eval_on_selector_all(
        "#items tbody td.barcode", "cells => cells.map(c => c.textContent)"
    )
    assert barcodes, "no result"
    assert all(b == wanted["barcode"] for b in barcodes), barcodes
    shot(page, "04-barcode-search")

    # 4. an item with its photos
    started = time.monotonic()
    page.click(f'#items tr[data-key="{wanted["id"]}"] a.mono')
    page.wait_for_selector("#photos img")
    timings["item page"] = time.monotonic() - started
    photos = [u for u in wanted["photo_urls"] if u.startswith(("http://", "https://"))]
    assert page.locator("#photos img").count() == len(photos)
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#photos img'))"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    assert wanted["id"] in page.inner_text("#raw-json")
    # the demo's fake API draws them: a picture of the box, from its own loopback address
    assert all(u.startswith("http://127.0.0.1:") and u.endswith(".png") for u in photos), photos
    assert page.evaluate(
        "Array.from(document.querySelectorAll('#photos img')).map(i => i.naturalWidth)"
    ) == [320] * len(photos)
    shot(page, "05-item-photos")

    # 5. the dead event, replayed once its item can be read, succeeds in front of us
    assert wait_until(lambda: "is now readable" in log.read_text(), 60), log.read_text()
    dead = api(url, "/api/events", status="dead")["events"]
    assert len(dead) == 1, dead
    page.goto(url + "/ui/events?status=dead")
    page.click(f'a[href="/ui/events/{dead[0]["id"]}"]')
    page.wait_for_selector("#event-status .s-dead")
    shot(page, "06-dead-event")
    page.once("dialog", lambda dialog: dialog.accept())
    page.evaluate("window.__notReloaded = true")
    page.click("text=Replay (fetch again)")
    page.wait_for_selector("#flash:not([hidden])")
    page.wait_for_selector("#event-status .s-done", timeout=30_000)
    assert page.evaluate("window.__notReloaded") is True
    shot(page, "07-replayed-event")

    # 6. an item the demo's plausibility rule held (a side over 100 cm) released with a note
    assert wait_until(lambda: api(url, "/api/quarantine")["items"], 60)
    held = api(url, "/api/quarantine")["items"][0]["id"]
    page.goto(url + "/ui/quarantine")
    row = page.locator(f'#quarantine tr[data-key="{held}"]')
    assert "over 100" in row.inner_text()
    row.locator('input[name="note"]').fill("checked by hand: a pallet")
    shot(page, "08-quarantine")
    row.locator("button", has_text="Release").click()
    page.wait_for_selector(f'#quarantine tr[data-key="{held}"]', state="detached")
    released = api(url, f"/api/items/{held}")["hold"]
    assert released["state"] == "released"
    assert released["note"] == "checked by hand: a pallet"
    shot(page, "09-released")

    print(f"\npage timings: { {k: round(v, 3) for k, v in timings.items()} }")
    csp = [p for p in problems if "Content Security Policy" in p]
    assert not csp, csp
    assert not [p for p in problems if p.startswith("page error")], problems


def test_hostile_payloads_stay_text_in_the_browser(
    browser: Any, service_url: str, fake: FakeDimmy
) -> None:
    """Items, message ids and bodies full of markup, quotes and ``javascript:`` URLs: no
    dialog opens, no element or attribute they carry becomes live."""
    ids = [hostile_item(fake, payload)["_id"] for payload in PAYLOADS]
    body = json.dumps({"item_ids": ids}).encode()
    assert post_signed(service_url, "m_hostile", body).status_code == 204
    for n, payload in enumerate(p for p in PAYLOADS if p.isascii() and "\x00" not in p):
        doc = json.dumps({"comment": payload, "n": n}).encode()
        post_signed(service_url, f"m_{payload}", doc)

    def settled() -> bool:
        events = api(service_url, "/api/events", limit=500)["events"]
        return all(e["status"] not in ("pending", "processing") for e in events)

    assert wait_until(settled, 30)
    problems: list[str] = []
    page = new_page(browser, problems)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(service_url + "/ui/login")
    page.fill("#token", ADMIN_TOKEN)
    page.click("#login button[type=submit]")
    page.wait_for_url(service_url + "/")
    visited = ["/ui/items", "/ui/events", "/ui/quarantine", "/", *[f"/ui/items/{i}" for i in ids]]
    visited += [
        f"/ui/events/{e['id']}" for e in api(service_url, "/api/events", limit=500)["events"]
    ]
    for path in visited:
        page.goto(service_url + path)
        page.wait_for_load_state("load")
        live = page.evaluate(LIVE_MARKUP)
        assert live == {"inline": 0, "handlers": [], "jsUrls": [], "foreign": 0}, (path, live)
        if path.startswith("/ui/items/"):
            assert "alert(1)" in page.inner_text("main"), path  # shown, as text
    page.goto(service_url + f"/ui/items/{ids[0]}")
    shot(page, "10-hostile-item")
    assert dialogs == []
    assert not [p for p in problems if p.startswith("page error")], problems
