"""Operator tokens are isolated on every route: another account's anything is a 404.

Three accounts from an accounts file (``alpha``, ``beta``, ``gamma``, each with an event, an
item and a held item), the app on each backend. Every route of the app is in :data:`ROUTES`
(how to call it) or in :data:`NO_ACCOUNT_DATA` (it shows nothing of any account): a route added
without an entry fails :func:`test_every_route_is_in_the_table`, so a new route cannot forget
the check. Then each is called with another account's operator token (as a bearer token, and
for the pages with a dashboard session): what is asked by id answers exactly as for something
that does not exist; lists, exports, the overview and ``/metrics`` show nothing of ``alpha``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import Mount

from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.models import IncomingEvent, Source
from dimmy_webhooks.store import create_store
from dimmy_webhooks.web import create_app

from ..support.builders import make_settings, stored_item
from ..support.constants import ADMIN_TOKEN, FORWARD_SECRET
from ..support.dashboard import dashboard_login
from ..support.databases import execute, hold_item

ACCOUNTS = ("alpha", "beta", "gamma")
TOKENS = {name: f"operator-token-of-{name}-0123456789abcdefghij" for name in ACCOUNTS}
MISSING_ITEM = "6592008029c8c3e4dc76ffff"
MISSING_EVENT = 987654321


@dataclass(frozen=True)
class Seeded:
    """An account's rows: an event, a stored item and a held item, and its barcodes."""

    event_id: int
    message_id: str
    item_id: str
    held_id: str
    barcode: str

    @property
    def marks(self) -> tuple[str, ...]:
        """Strings only this account's rows carry: none may reach another account's view."""
        return (self.message_id, self.item_id, self.held_id, self.barcode)


@dataclass(frozen=True)
class Call:
    """How to call a route: ``kind`` ``item``, ``held`` or ``event`` (asked by id: compared
    with the answer for a missing one), ``list`` (shows rows: none of another account's) or
    ``page`` (a dashboard page, with a session)."""

    kind: str
    body: dict[str, str] | None = None


ROUTES: dict[tuple[str, str], Call] = {
    ("GET", "/api/items/{item_id}"): Call("item"),
    ("GET", "/api/items/{item_id}/versions"): Call("item"),
    ("GET", "/api/items/{item_id}/deliveries"): Call("item"),
    ("POST", "/api/items/{item_id}/replay"): Call("item"),
    ("GET", "/api/items"): Call("list"),
    ("GET", "/api/items.json"): Call("list"),
    ("GET", "/api/items.csv"): Call("list"),
    ("GET", "/api/items.jsonl"): Call("list"),
    ("GET", "/api/events"): Call("list"),
    ("GET", "/api/events.json"): Call("list"),
    ("GET", "/api/events/{event_id}"): Call("event"),
    ("GET", "/api/events/{event_id}/work"): Call("event"),
    ("GET", "/api/events/{event_id}/body"): Call("event"),
    ("POST", "/api/events/{event_id}/replay"): Call("event"),
    ("GET", "/api/deliveries"): Call("list"),
    ("GET", "/api/deliveries.csv"): Call("list"),
    ("GET", "/api/deliveries.jsonl"): Call("list"),
    ("GET", "/api/quarantine"): Call("list"),
    ("POST", "/api/quarantine/{item_id}/release"): Call("held", {"note": "looks right"}),
    ("POST", "/api/quarantine/{item_id}/reject"): Call("held", {"note": "looks wrong"}),
    ("GET", "/api/overview"): Call("list"),
    ("GET", "/api/reconciliation"): Call("list"),
    ("GET", "/api/charts"): Call("list"),
    ("GET", "/metrics"): Call("list"),
    ("GET", "/"): Call("page"),
    ("GET", "/ui/events"): Call("page"),
    ("GET", "/ui/items"): Call("page"),
    ("GET", "/ui/quarantine"): Call("page"),
    ("GET", "/ui/events/{event_id}"): Call("page"),
    ("GET", "/ui/items/{item_id}"): Call("page"),
}
COUNTS_ONLY = ("/api/overview", "/api/reconciliation", "/api/charts")  # no id to look for
NO_ACCOUNT_DATA = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/ui/login"),
    ("POST", "/ui/login"),
    ("POST", "/ui/logout"),
    ("MOUNT", "/ui/static"),  # the dashboard's stylesheet and script
}
"""Routes that show nothing of any account (the webhook paths are not routes: the receiver
answers them before the app, and their signature is their access control)."""


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every ``(method, path)`` the app serves (``HEAD`` aside), mounts as ``MOUNT``."""
    found: set[tuple[str, str]] = set()

    def walk(routes: Sequence[Any], prefix: str) -> None:
        for route in routes:
            included = getattr(route, "original_router", None)  # a router included lazily
            if included is not None:
                walk(included.routes, prefix + route.include_context.prefix)
            elif isinstance(route, Mount):
                found.add(("MOUNT", prefix + route.path))
            else:
                path = prefix + str(route.path)
                found.update((m, path) for m in (route.methods or ()) if m != "HEAD")

    walk(app.routes, "")
    return found


def accounts_file(tmp_path: Path) -> Path:
    path = tmp_path / "accounts.toml"
    path.write_text(
        "".join(
            f'[[account]]\nname = "{name}"\nwebhook_secret = "{FORWARD_SECRET}"\n'
            f'api_key = "key-of-{name}"\noperator_token = "{TOKENS[name]}"\n\n'
            for name in ACCOUNTS
        )
    )
    return path


def record_delivery(db_url: str, item_id: str) -> None:
    """A delivered attempt of ``item_id`` in the ledger (its record id names the item)."""
    sql = (
        "INSERT INTO delivery_attempts (job_id, item_id, revision, version, output,"
        " idempotency_key, attempt, started_at, latency_ms, outcome, status_code, error,"
        " response_excerpt, record_id, account)"
        " SELECT id, item_id, 1, 'v', output, 'key-' || item_id, 1, 1800000000.0, 5.0,"
        " 'delivered', 200, NULL, 'ok', 'REC-' || item_id, account"
        f" FROM jobs WHERE item_id = '{item_id}' AND kind = 'deliver'"
    )
    execute(db_url, sql)


def seed(db_url: str) -> dict[str, Seeded]:
    """An event, an item and a held item of each account, straight into the store."""

    async def go() -> dict[str, Seeded]:
        store = create_store(db_url)
        await store.open()
        try:
            seeded = {}
            for n, name in enumerate(ACCOUNTS):
                item_id, held_id = f"6592008029c8c3e4dc7600{n}a", f"6592008029c8c3e4dc7600{n}b"
                message_id = f"msg_{name}_1"
                body = json.dumps({"item_ids": [item_id]}).encode()
                event = IncomingEvent(
                    message_id, "items.scanned", body, {"svix-id": message_id}, 1.8e9, 1, name
                )
                await store.insert_event(event)
                barcode = f"BARCODE-{name.upper()}"
                items = [
                    replace(stored_item(item_id, "2026-01-01", barcode=barcode), account=name),
                    replace(
                        stored_item(held_id, "2026-01-01", barcode=barcode + "-H"), account=name
                    ),
                ]
                await store.save_polled(items, Source.POLL, ["wms"], 1.8e9)
                listed = await store.list_events(account=name)
                seeded[name] = Seeded(listed[0].id, message_id, item_id, held_id, barcode)
            return seeded
        finally:
            await store.close()

    seeded = asyncio.run(go())
    for rows in seeded.values():
        hold_item(db_url, rows.held_id)
        record_delivery(db_url, rows.item_id)
    return seeded


@pytest.fixture
def service(db_url: str, tmp_path: Path) -> Iterator[tuple[str, FastAPI, dict[str, Seeded]]]:
    seeded = seed(db_url)
    settings = make_settings(db_url, admin_token=ADMIN_TOKEN, accounts_file=accounts_file(tmp_path))
    app = create_app(settings, run_worker=False)
    with serve_in_thread(app) as url:
        yield url, app, seeded


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def path_of(template: str, item_id: str, event_id: int) -> str:
    return template.replace("{item_id}", item_id).replace("{event_id}", str(event_id))


def answer(client: httpx.Client, method: str, path: str, call: Call) -> httpx.Response:
    if method == "POST":
        return client.post(path, json=call.body or {})
    return client.get(path)


def test_every_route_is_in_the_table(
    service: tuple[str, FastAPI, dict[str, Seeded]],
) -> None:
    """A new route without an entry here fails: add it to ROUTES (and make it check the
    viewer) or, when it shows nothing of any account, to NO_ACCOUNT_DATA."""
    _, app, _ = service
    assert app_routes(app) == set(ROUTES) | NO_ACCOUNT_DATA


def _same_answer(got: httpx.Response, missing: httpx.Response, asked: str, absent: str) -> None:
    assert got.status_code == 404 == missing.status_code
    assert _named(got.text, asked) == _named(missing.text, absent)


def _named(text: str, name: str) -> str:
    """``text`` with ``name`` (an id or an account) written ``ID`` where a path or a sentence
    names it: the one difference allowed between the two answers."""
    return re.sub(rf"(?<=[/ ]){re.escape(name)}(?=[/\"?. <]|$)", "ID", text)


@pytest.mark.parametrize("viewer", ["beta", "gamma"])
def test_another_accounts_anything_is_not_found(
    service: tuple[str, FastAPI, dict[str, Seeded]], viewer: str
) -> None:
    url, _, seeded = service
    alpha, own = seeded["alpha"], seeded[viewer]
    with (
        httpx.Client(base_url=url, headers=bearer(TOKENS[viewer]), timeout=10) as api,
        httpx.Client(base_url=url, headers=bearer(ADMIN_TOKEN), timeout=10) as admin,
        httpx.Client(base_url=url, timeout=10) as browser,
    ):
        dashboard_login(browser, TOKENS[viewer])
        for (method, template), call in ROUTES.items():
            client = browser if call.kind == "page" else api
            if "{" in template:
                item = alpha.held_id if call.kind == "held" else alpha.item_id
                asked = path_of(template, item, alpha.event_id)
                absent = path_of(template, MISSING_ITEM, MISSING_EVENT)
                got = answer(client, method, asked, call)
                missing = answer(client, method, absent, call)
                shown = str(alpha.event_id) if "{event_id}" in template else item
                hidden = str(MISSING_EVENT) if "{event_id}" in template else MISSING_ITEM
                _same_answer(got, missing, shown, hidden)
                if template.endswith("/reject"):
                    continue  # its own held item was released by the route before
                own_item = own.held_id if call.kind == "held" else own.item_id
                mine = path_of(template, own_item, own.event_id)
                assert answer(client, method, mine, call).status_code == 200, mine
                continue
            listed = answer(client, method, template, call)
            assert listed.status_code == 200, (template, listed.text)
            for mark in alpha.marks:
                assert mark not in listed.text, (template, mark)
            assert 'account="alpha"' not in listed.text
            # naming another account answers as naming one that does not exist
            sep = "&" if "?" in template else "?"
            other = client.get(f"{template}{sep}account=alpha")
            unknown = client.get(f"{template}{sep}account=nobody")
            _same_answer(other, unknown, "alpha", "nobody")
            # and the admin does see alpha's rows there (so the check above means something)
            if call.kind == "list" and template not in COUNTS_ONLY:
                seen = admin.get(template).text
                assert any(mark in seen for mark in alpha.marks) or 'account="alpha"' in seen, (
                    template
                )


def test_lists_and_counts_are_the_operators_own(
    service: tuple[str, FastAPI, dict[str, Seeded]],
) -> None:
    url, _, seeded = service
    with httpx.Client(base_url=url, headers=bearer(TOKENS["beta"]), timeout=10) as api:
        items = api.get("/api/items").json()["items"]
        assert {item["id"] for item in items} == {seeded["beta"].item_id, seeded["beta"].held_id}
        assert {item["account"] for item in items} == {"beta"}
        assert api.get("/api/items", params={"account": "beta"}).json()["items"] == items
        overview = api.get("/api/overview").json()
        assert (overview["account"], overview["items"], overview["quarantine"]) == ("beta", 2, 1)
        metrics = api.get("/metrics").text
        assert re.search(r'dimmy_items_stored\{account="beta"\} 2\.0', metrics)
        assert "dimmy_webhooks_total" not in metrics  # the process's counters: the admin's
    with httpx.Client(base_url=url, headers=bearer(ADMIN_TOKEN), timeout=10) as admin:
        everything = admin.get("/api/items", params={"limit": 500}).json()["items"]
        assert {item["account"] for item in everything} == set(ACCOUNTS)
        gamma = admin.get("/api/items", params={"account": "gamma"}).json()["items"]
        assert {item["account"] for item in gamma} == {"gamma"}
        assert admin.get("/api/overview", params={"account": "gamma"}).json()["items"] == 2
        metrics = admin.get("/metrics").text
        for name in ACCOUNTS:
            assert re.search(rf'dimmy_items_stored\{{account="{name}"\}} 2\.0', metrics)


def test_an_operator_session_sees_its_account_and_logs_out_alone(
    service: tuple[str, FastAPI, dict[str, Seeded]],
) -> None:
    url, _, seeded = service
    with (
        httpx.Client(base_url=url, timeout=10) as beta,
        httpx.Client(base_url=url, timeout=10) as admin,
    ):
        beta_csrf = dashboard_login(beta, TOKENS["beta"])
        dashboard_login(admin)
        page = beta.get("/ui/items")
        assert 'id="account-name"' in page.text
        assert "beta" in page.text
        assert seeded["beta"].item_id in page.text
        assert seeded["alpha"].item_id not in page.text
        assert 'id="account-switch"' not in page.text
        switcher = admin.get("/ui/items").text
        assert 'id="account-switch"' in switcher
        assert all(f'<option value="{name}"' in switcher for name in ACCOUNTS)
        assert seeded["alpha"].item_id in switcher
        assert seeded["beta"].item_id in switcher
        only_gamma = admin.get("/ui/items", params={"account": "gamma"}).text
        assert seeded["gamma"].item_id in only_gamma
        assert seeded["alpha"].item_id not in only_gamma
        # the operator's session on the API: its account only
        assert beta.get(f"/api/items/{seeded['alpha'].item_id}").status_code == 404
        assert beta.get(f"/api/items/{seeded['beta'].item_id}").json()["account"] == "beta"
        # logging out ends beta's sessions, not the admin's
        out = beta.post("/ui/logout", headers={"x-csrf-token": beta_csrf})
        assert out.status_code == 200
        assert beta.get("/api/items").status_code == 401
        assert admin.get("/api/items").status_code == 200
