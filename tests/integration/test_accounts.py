"""Several Dimmy accounts in one installation, end to end on both backends (issue 19's "done
when"): three accounts from ``DIMMY_ACCOUNTS_FILE`` plus ``default`` from the single-account
settings, all on one fake Dimmy API that answers each key only for its own items.

- every item is stored under its account exactly as served, fetched with that account's key,
  and handed only to that account's outputs;
- a signature of one account is refused at another's URL, an unknown account's URL is a 404;
- a live scan of one account is stored within 5 s while another drains a 3,000-id upload;
- a revoked key degrades only its account, and the overview names it;
- an upgrade of a single-account database keeps every item, event and pending job (which then
  run), message ids become unique per account, and the downgrade works only while every row
  is ``default``'s.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError
from starlette.responses import JSONResponse

from dimmy_webhooks.devtools.fake_dimmy import MAIN_OWNER, FakeDimmy
from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.items import normalise, version_of
from dimmy_webhooks.models import IncomingEvent, InsertOutcome
from dimmy_webhooks.services import Services
from dimmy_webhooks.signatures import parse_secrets
from dimmy_webhooks.store import create_store, schema
from dimmy_webhooks.web import create_app

from ..support.builders import make_settings, scanned_event
from ..support.constants import ADMIN_TOKEN, API_KEY, AUTH, KEY, STORE_BACKENDS
from ..support.databases import db_state, query, rows, scalar, work_left
from ..support.processes import wait_until
from ..support.senders import post_signed

ACCOUNTS = ("acme", "globex", "initech")
EVERY = (MAIN_OWNER, *ACCOUNTS)  # the fake's main key is the installation's ``default``
UPLOAD = 3000
LIVE_BOUND = 5.0  # seconds: the "within 5 s"


def secret_of(name: str) -> str:
    return "whsec_" + base64.b64encode(f"{name}-signing-secret-0123456789".encode()).decode()


def key_of(name: str) -> bytes:
    """The signing key of ``name``'s webhooks (``default``: the settings' secret)."""
    return KEY if name == MAIN_OWNER else parse_secrets(secret_of(name))[0]


def api_key_of(name: str) -> str:
    return API_KEY if name == MAIN_OWNER else f"{name}-dimmy-api-key"


def path_of(name: str) -> str:
    return "/webhook" if name == MAIN_OWNER else f"/webhook/{name}"


def served(doc: dict[str, Any]) -> str:
    """The body the fake answers for ``doc``, as text."""
    return JSONResponse(doc).body.decode()


@dataclass
class Installation:
    url: str
    db_url: str
    outputs: dict[str, Path]  # account -> its jsonl output

    def post(self, name: str, msg_id: str, ids: list[str], **kwargs: Any) -> httpx.Response:
        """A webhook of account ``name`` naming ``ids``, signed with its secret, at its URL."""
        kwargs.setdefault("key", key_of(name))
        kwargs.setdefault("path", path_of(name))
        return post_signed(self.url, msg_id, ids, **kwargs)

    def stored(self) -> dict[str, tuple[str, str]]:
        """Item id -> (account, raw) as the store holds them."""
        found = query(self.db_url, "SELECT id, account, raw FROM items")
        return {row["id"]: (row["account"], row["raw"]) for row in found}

    def stored_of(self, name: str) -> int:
        return int(scalar(self.db_url, f"SELECT count(*) FROM items WHERE account = '{name}'"))

    def delivered(self, name: str) -> list[dict[str, Any]]:
        """The records of ``name``'s jsonl output (none yet: empty)."""
        path = self.outputs[name]
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def installation(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path, **overrides: Any
) -> Iterator[Installation]:
    """The service (receiver, workers, API) in a thread on ``db_url``: ``default`` from the
    settings (with ``overrides``) and the three accounts from a file, each with its own
    secret, API key and jsonl output, every API URL the fake's; the fake knows each account's
    key."""
    fake.config.keys = {api_key_of(name): name for name in ACCOUNTS}
    outputs = {name: tmp_path / f"{name}.jsonl" for name in EVERY}
    tables = []
    for name in ACCOUNTS:
        table = {
            "name": name,
            "webhook_secret": secret_of(name),
            "api_key": api_key_of(name),
            "api_url": fake_url,
            "outputs": f"jsonl:{outputs[name]}",
        }
        lines = [f"{key} = {json.dumps(value)}" for key, value in table.items()]
        tables.append("[[account]]\n" + "\n".join(lines) + "\n")
    accounts_file = tmp_path / "accounts.toml"
    accounts_file.write_text("\n".join(tables))
    settings = make_settings(
        db_url,
        api_key=API_KEY,
        api_url=fake_url,
        admin_token=ADMIN_TOKEN,
        outputs=f"jsonl:{outputs[MAIN_OWNER]}",
        accounts_file=str(accounts_file),
        retry_base_seconds=0.05,
        **overrides,
    )
    with serve_in_thread(create_app(settings)) as url:
        yield Installation(url, db_url, outputs)


def test_every_item_is_stored_under_its_account_exactly_as_served(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    owned = {name: fake.generate_items(4, owner=name) for name in EVERY}
    with installation(db_url, fake, fake_url, tmp_path) as site:
        for name, ids in owned.items():
            # the same message id at every account: each account's sender numbers its own
            site.post(name, "msg_1", ids, expect=204)
        total = sum(map(len, owned.values()))
        assert wait_until(lambda: len(site.stored()) == total and work_left(db_url) == 0, 30), (
            db_state(db_url)
        )
        stored = site.stored()
        with httpx.Client(base_url=site.url, headers=AUTH, timeout=5) as api:
            for name, ids in owned.items():
                for item_id in ids:
                    assert stored[item_id] == (name, served(fake.items[item_id]))
                    shown = api.get(f"/api/items/{item_id}").json()
                    assert shown["raw"] == fake.items[item_id]
                    assert shown.get("account", name) == name
    assert rows(db_url, "SELECT account, message_id FROM events ORDER BY account") == [
        (name, "msg_1") for name in sorted(EVERY)
    ]
    assert set(rows(db_url, "SELECT status, account FROM jobs")) == {
        ("done", name) for name in EVERY
    }
    # each account's fetches used its own key: each item once, by its owner's key only
    assert fake.fetched_by == {name: Counter(dict.fromkeys(ids, 1)) for name, ids in owned.items()}
    item_requests = [r for r in fake.requests if r.path.startswith("/items/")]
    assert [(r.owner, r.status) for r in item_requests] == [
        (fake.owner_of(r.path.removeprefix("/items/")), 200) for r in item_requests
    ]
    # each account's output got its items and nothing else
    for name, ids in owned.items():
        records = site.delivered(name)
        assert sorted(r["item_id"] for r in records) == sorted(ids), name
        assert all(r["item"].get("account", name) == name for r in records)


def test_a_signature_of_one_account_is_refused_at_another(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    [item] = fake.generate_items(1, owner="globex")
    with installation(db_url, fake, fake_url, tmp_path) as site:
        for signer, at in (
            ("acme", "globex"),
            ("acme", MAIN_OWNER),
            (MAIN_OWNER, "acme"),
            ("initech", "acme"),
        ):
            answer = site.post(at, f"msg_{signer}_at_{at}", [item], key=key_of(signer))
            assert answer.status_code == 401, (signer, at, answer.text)
        unknown = site.post("acme", "msg_nobody", [item], path="/webhook/nobody")
        assert unknown.status_code == 404
        assert "account" in unknown.json()["error"]
        assert scalar(db_url, "SELECT count(*) FROM events") == 0
        assert fake.requests_total == 0
        # the right secret at the right URL is taken
        site.post("globex", "msg_globex", [item], expect=204)
        assert wait_until(lambda: item in site.stored(), 20), db_state(db_url)
    assert rows(db_url, "SELECT account, message_id FROM events") == [("globex", "msg_globex")]
    assert site.stored() == {item: ("globex", served(fake.items[item]))}


def test_an_item_of_another_account_is_not_fetched_or_taken_over(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    [theirs] = fake.generate_items(1, owner="globex")
    with installation(db_url, fake, fake_url, tmp_path) as site:
        # acme names globex's item: acme's key does not see it, so it is not acme's to store
        site.post("acme", "msg_guess", [theirs], expect=204)
        assert wait_until(lambda: work_left(db_url) == 0, 20), db_state(db_url)
        assert site.stored() == {}
        site.post("globex", "msg_own", [theirs], expect=204)
        assert wait_until(lambda: work_left(db_url) == 0 and theirs in site.stored(), 20)
        site.post("acme", "msg_guess_again", [theirs], expect=204)
        assert wait_until(lambda: work_left(db_url) == 0, 20), db_state(db_url)
        stored = site.stored()
    assert stored == {theirs: ("globex", served(fake.items[theirs]))}
    dead = rows(db_url, "SELECT account, last_error FROM jobs WHERE status = 'dead'")
    assert [account for account, _ in dead] == ["acme", "acme"]
    assert all("404" in str(reason) for _, reason in dead), dead
    assert fake.fetched_by == {"globex": {theirs: 1}}
    assert site.delivered("acme") == []
    assert [r["item_id"] for r in site.delivered("globex")] == [theirs]


@pytest.mark.timing
def test_a_live_scan_is_stored_within_5_s_while_another_account_drains_3000_ids(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    # the fake answers in 30 ms; each key is held to the default 100 requests per second, so
    # acme's upload needs 30 s at least: far more than the bound the live scan must meet
    fake.config.latency_seconds = 0.03
    upload = fake.generate_items(UPLOAD, owner="acme")
    [live] = fake.generate_items(1, owner="globex")
    with installation(db_url, fake, fake_url, tmp_path) as site:
        site.post("acme", "msg_upload", upload, expect=204, timeout=30)
        assert wait_until(lambda: fake.fetched_by["acme"].total() >= 50, 30), db_state(db_url)
        sent = time.monotonic()
        site.post("globex", "msg_live", [live], expect=204)
        assert wait_until(lambda: site.stored_of("globex") == 1, 2 * LIVE_BOUND, 0.02)
        waited = time.monotonic() - sent
        drained = site.stored_of("acme")
        open_jobs = scalar(
            db_url,
            "SELECT count(*) FROM jobs WHERE account = 'acme' AND status IN ('pending', 'running')",
        )
    # the upload was still draining when the live scan was stored (else this proves nothing)
    assert drained < UPLOAD, (drained, open_jobs, waited)
    assert open_jobs > 0, (drained, open_jobs, waited)
    assert waited < LIVE_BOUND, (waited, drained)
    assert fake.fetched_by["globex"] == {live: 1}
    assert site.stored()[live] == ("globex", served(fake.items[live]))


@pytest.mark.timing
def test_an_account_whose_answers_hang_cannot_take_every_worker(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    # Dimmy holds each of acme's requests 20 s: every job of acme's upload keeps its worker
    # slot all that time, so a live scan of globex is stored in time only if acme cannot take
    # every slot (a queue order that puts the live scan first does not help here)
    fake.config.owner_latency = {"acme": 20.0}
    upload = fake.generate_items(300, owner="acme")
    [live] = fake.generate_items(1, owner="globex")
    slots = 16  # a worker's: twice the API concurrency
    with installation(
        db_url, fake, fake_url, tmp_path, api_concurrency=slots // 2, shutdown_grace_seconds=0.5
    ) as site:
        site.post("acme", "msg_upload", upload, expect=204)
        running = "SELECT count(*) FROM jobs WHERE account = 'acme' AND status = 'running'"
        # acme has taken what it may take (its share of the slots) and waits on every one
        assert wait_until(lambda: scalar(db_url, running) >= slots * 3 // 4, 20)
        time.sleep(0.5)
        held = scalar(db_url, running)
        sent = time.monotonic()
        site.post("globex", "msg_live", [live], expect=204)
        assert wait_until(lambda: site.stored_of("globex") == 1, 2 * LIVE_BOUND, 0.02)
        waited = time.monotonic() - sent
        assert site.stored_of("acme") == 0  # acme's answers are still on their way
    assert waited < LIVE_BOUND, (waited, held)
    assert held < slots, held
    assert fake.fetched_by["globex"] == {live: 1}


def test_a_revoked_key_degrades_only_its_account(
    db_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    owned = {name: fake.generate_items(3, owner=name) for name in ACCOUNTS}
    fake.config.revoked = frozenset({"globex"})
    with installation(db_url, fake, fake_url, tmp_path) as site:
        for name, ids in owned.items():
            site.post(name, f"msg_{name}", ids, expect=204)

        def others_delivered() -> bool:
            return all(len(site.delivered(name)) == 3 for name in ("acme", "initech"))

        assert wait_until(others_delivered, 30), db_state(db_url)
        assert wait_until(lambda: fake.requests_by["globex"] > 0, 10)
        with httpx.Client(base_url=site.url, headers=AUTH, timeout=5) as api:

            def globex_named() -> list[str]:
                problems: list[str] = api.get("/api/overview").json()["problems"]
                return [p for p in problems if "refused the key" in p]

            assert wait_until(lambda: bool(globex_named()), 10)
            refused = globex_named()
            assert api.get("/readyz").json()["status"] == "degraded"
        stored = site.stored()
    assert refused == [p for p in refused if p.startswith("account globex:")], refused
    assert {stored[i][0] for name in ("acme", "initech") for i in owned[name]} == {
        "acme",
        "initech",
    }
    assert not any(i in stored for i in owned["globex"])
    assert site.delivered("globex") == []
    # globex's work waits for a working key, its attempts not burnt
    assert (
        scalar(db_url, "SELECT count(*) FROM jobs WHERE account = 'globex' AND status = 'dead'")
        == 0
    )
    assert not fake.fetched_by["globex"]


# -- the upgrade of a single-account database ---------------------------------------------


@pytest.fixture(params=STORE_BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database of each backend without any schema."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_empty_url")
        return url
    return f"sqlite:///{tmp_path / 'before-accounts.sqlite3'}"


@dataclass(frozen=True)
class OldData:
    """What a single-account installation (schema 0004) held: a finished event whose item
    waits for its delivery and whose second fetch waits, and an event not yet expanded."""

    delivered: str  # stored, its delivery pending
    fetch_pending: str  # a pending fetch of the first event
    in_new_event: str  # named by the pending event
    output: str


def at_0004_with_data(url: str, fake: FakeDimmy, output: str) -> OldData:
    command.upgrade(schema._config(url), "0004")
    first, second, third = fake.generate_items(3)
    doc = fake.items[first]
    raw = served(doc)
    version = version_of(json.loads(raw), normalise(doc))
    now = time.time() - 60
    events = [
        (1, "msg_old_1", [first, second], "processing"),
        (2, "msg_old_2", [third], "pending"),
    ]
    jobs = [
        ("event", 1, None, None, None, None, "e:1", "done"),
        ("fetch", 1, first, None, None, None, f"f:1:{first}", "done"),
        ("fetch", 1, second, None, None, None, f"f:1:{second}", "pending"),
        ("deliver", 1, first, output, version, 1, f"d:{output}:{first}:r1", "pending"),
        ("event", 2, None, None, None, None, "e:2", "pending"),
    ]
    engine = create_engine(schema.sqlalchemy_url(url))
    with engine.begin() as conn:
        for event_id, msg_id, ids, status in events:
            conn.execute(
                text(
                    "INSERT INTO events (id, message_id, event_type, body, headers, received_at, "
                    "status, item_count, updated_at) VALUES (:id, :m, 'items.scanned', :b, '{}', "
                    ":now, :s, :n, :now)"
                ),
                {
                    "id": event_id,
                    "m": msg_id,
                    "b": json.dumps({"item_ids": ids}).encode(),
                    "s": status,
                    "n": len(ids),
                    "now": now,
                },
            )
        conn.execute(
            text(
                "INSERT INTO items (id, raw, version, updated_at, barcodes, photo_urls, "
                "fetched_at, first_seen_at, revision) VALUES (:id, :raw, :v, :u, '[]', '[]', "
                ":now, :now, 1)"
            ),
            {"id": first, "raw": raw, "v": version, "u": doc.get("updated_at"), "now": now},
        )
        for kind, event_id, item_id, out, ver, revision, key, status in jobs:
            conn.execute(
                text(
                    "INSERT INTO jobs (kind, event_id, item_id, output, version, revision, "
                    "dedupe_key, status, attempts, max_attempts, run_at, created_at, updated_at) "
                    "VALUES (:kind, :e, :i, :o, :v, :r, :k, :s, 0, 8, :now, :now, :now)"
                ),
                {
                    "kind": kind,
                    "e": event_id,
                    "i": item_id,
                    "o": out,
                    "v": ver,
                    "r": revision,
                    "k": key,
                    "s": status,
                    "now": now,
                },
            )
        if url.startswith("postgresql"):  # the rows above chose their ids
            for table in ("events", "jobs"):
                conn.execute(
                    text(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))")
                )
    engine.dispose()
    return OldData(first, second, third, output)


def table_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "events": rows(url, "SELECT id, message_id, status, body FROM events ORDER BY id"),
        "items": rows(url, "SELECT id, raw, version, revision FROM items ORDER BY id"),
        "jobs": rows(url, "SELECT id, kind, item_id, dedupe_key, status FROM jobs ORDER BY id"),
    }


def accounts_of(url: str) -> set[str]:
    return {
        row[0]
        for table in ("events", "items", "jobs")
        for row in rows(url, f"SELECT DISTINCT account FROM {table}")
    }


def test_an_upgraded_single_account_database_keeps_everything_and_works_on(
    empty_url: str, fake: FakeDimmy, fake_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    old = at_0004_with_data(empty_url, fake, f"jsonl:{out}")
    before = table_rows(empty_url)
    assert schema.upgrade(empty_url).up_to_date
    assert table_rows(empty_url) == before  # every row, its status and its body as it was
    assert accounts_of(empty_url) == {MAIN_OWNER}
    settings = make_settings(empty_url, api_key=API_KEY, api_url=fake_url, outputs=f"jsonl:{out}")
    with serve_in_thread(create_app(settings)):
        assert wait_until(lambda: work_left(empty_url) == 0, 30), db_state(empty_url)
    # the pending work ran, under default: both waiting fetches and the waiting delivery
    assert set(rows(empty_url, "SELECT status, account FROM jobs")) == {("done", MAIN_OWNER)}
    assert set(rows(empty_url, "SELECT status FROM events")) == {("done",)}
    every = [old.delivered, old.fetch_pending, old.in_new_event]
    assert {
        row["id"]: (row["account"], row["raw"])
        for row in query(empty_url, "SELECT id, account, raw FROM items")
    } == {item_id: (MAIN_OWNER, served(fake.items[item_id])) for item_id in every}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["item_id"] for line in lines) == sorted(every)
    assert fake.counts == Counter({old.fetch_pending: 1, old.in_new_event: 1})
    assert asyncio.run(message_ids_per_account(empty_url)) == [
        InsertOutcome.DUPLICATE,  # default's old message, sent again
        InsertOutcome.ACCEPTED,  # the same id from another account's sender
        InsertOutcome.DUPLICATE,
    ]


async def message_ids_per_account(url: str) -> list[InsertOutcome]:
    store = create_store(url)
    await store.open()
    try:
        again = scanned_event("msg_old_1", ["x"])
        other = IncomingEvent("msg_old_1", again.event_type, again.body, {}, time.time(), 1, "acme")
        return [
            await store.insert_event(again),
            await store.insert_event(other),
            await store.insert_event(other),
        ]
    finally:
        await store.close()


def test_the_downgrade_keeps_default_rows_and_refuses_other_accounts(
    empty_url: str, fake: FakeDimmy, tmp_path: Path
) -> None:
    at_0004_with_data(empty_url, fake, f"jsonl:{tmp_path / 'out.jsonl'}")
    before = table_rows(empty_url)
    schema.upgrade(empty_url)
    command.downgrade(schema._config(empty_url), "0004")
    assert schema.status(empty_url).current == "0004"
    assert table_rows(empty_url) == before
    # message ids are unique again, as the schema without accounts had them
    engine = create_engine(schema.sqlalchemy_url(empty_url))
    try:
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO events (message_id, event_type, body, headers, received_at, "
                    "status, updated_at) VALUES ('msg_old_1', 'x', :b, '{}', 0, 'done', 0)"
                ),
                {"b": b"{}"},
            )
    finally:
        engine.dispose()
    state = schema.upgrade(empty_url)
    asyncio.run(message_ids_per_account(empty_url))  # acme's msg_old_1 is in the inbox now
    with pytest.raises(RuntimeError, match="accounts other than 'default'"):
        command.downgrade(schema._config(empty_url), "0004")
    assert schema.status(empty_url) == state  # nothing was changed
    assert accounts_of(empty_url) == {MAIN_OWNER, "acme"}


# -- an account removed from the file ------------------------------------------------------------


def test_a_removed_accounts_work_waits_is_reported_and_never_run_as_another(
    empty_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its rows stay, its pending work is not claimed by the accounts still configured, the
    start says what is kept, and /readyz names it while its work waits."""
    schema.upgrade(empty_url)
    settings = make_settings(empty_url, api_key=API_KEY, api_url="http://127.0.0.1:9")

    async def go() -> list[str]:
        store = create_store(empty_url)
        await store.open()
        try:
            await store.insert_event(replace(scanned_event("msg_gone", ["x"]), account="gone"))
        finally:
            await store.close()
        services = Services.from_settings(settings)
        with caplog.at_level("WARNING", logger="dimmy_webhooks.services"):
            async with services.running():
                await asyncio.sleep(1.0)  # the worker looks for due work meanwhile
                await services.readiness()
                return services.problems()

    problems = asyncio.run(go())
    assert any(
        "account gone is no longer configured: its 1 open jobs wait" in p for p in problems
    ), problems
    assert any(
        "account gone is no longer configured: its 1 events, 0 items and 1 open jobs are kept"
        in r.getMessage()
        for r in caplog.records
    )
    assert rows(empty_url, "SELECT status FROM jobs WHERE account = 'gone'") == [("pending",)]
