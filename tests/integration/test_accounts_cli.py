"""The operator's commands with several accounts (issue 19), in subprocesses as a user runs
them: ``accounts list|check`` and ``--account`` on send, replay, poll, backfill and quarantine,
against two fake Dimmy APIs that each answer one key."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy, FakeDimmyConfig, create_app
from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.store import create_store

from ..support.builders import scanned_event
from ..support.constants import CLI, FORWARD_SECRET, T0
from ..support.databases import hold_item, migrated_sqlite_url, query
from ..support.processes import run

KEY_A = "key-of-acme-and-gamma-aaaaaaaa"
KEY_B = "key-of-beta-bbbbbbbbbbbbbbbbbbb"
WRONG_KEY = "revoked-key-of-gamma-ccccccccc"
SECRETS = {
    "acme": "whsec_" + "QUNNRS1zZWNyZXQtYWNtZS1zZWNyZXQtYWNtZS0xMjM=",
    "beta": "whsec_" + "QkVUQS1zZWNyZXQtYmV0YS1zZWNyZXQtYmV0YS0xMjM=",
    "gamma": "whsec_" + "R0FNTUEtc2VjcmV0LWdhbW1hLXNlY3JldC1nYW1tYTE=",
}
CONFIGURED = "configured: acme, beta, gamma"


@dataclass
class Site:
    """An installation of three accounts on one SQLite file: ``acme`` and ``gamma`` on fake
    API ``a`` (gamma with a revoked key), ``beta`` on fake API ``b``."""

    tmp_path: Path
    db_url: str
    accounts_file: Path
    a: FakeDimmy
    b: FakeDimmy
    a_url: str
    b_url: str

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        values = {
            "DIMMY_ACCOUNTS_FILE": str(self.accounts_file),
            "DIMMY_DATABASE_URL": self.db_url,
            "DIMMY_OUTPUTS": "",
            "DIMMY_API_TIMEOUT_SECONDS": "2",
            **env,
        }
        return run([CLI, *args], self.tmp_path, **values)

    def write_accounts(self, *tables: tuple[str, str, str]) -> None:
        text = ""
        for name, url, key in tables:
            text += (
                f'[[account]]\nname = "{name}"\nwebhook_secret = "{SECRETS.get(name, "")}"\n'
                f'api_key = "{key}"\napi_url = "{url}"\n\n'
            )
        self.accounts_file.write_text(text)

    def items_of(self) -> dict[str, str]:
        return {row["id"]: row["account"] for row in query(self.db_url, "SELECT * FROM items")}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    recent = datetime.now(UTC) - timedelta(hours=2)
    a = FakeDimmy(FakeDimmyConfig(api_key=KEY_A, seed=11))
    b = FakeDimmy(FakeDimmyConfig(api_key=KEY_B, seed=22))
    a.generate_items(3, start=recent)
    b.generate_items(2, start=recent)
    with serve_in_thread(create_app(a)) as a_url, serve_in_thread(create_app(b)) as b_url:
        made = Site(
            tmp_path,
            migrated_sqlite_url(tmp_path / "site.sqlite3"),
            tmp_path / "accounts.toml",
            a,
            b,
            a_url,
            b_url,
        )
        made.write_accounts(
            ("acme", a_url, KEY_A), ("beta", b_url, KEY_B), ("gamma", a_url, WRONG_KEY)
        )
        yield made


def no_secret_in(result: subprocess.CompletedProcess[str]) -> None:
    shown = result.stdout + result.stderr
    for secret in (KEY_A, KEY_B, WRONG_KEY, *SECRETS.values()):
        assert secret not in shown
    assert "Traceback" not in shown


def test_accounts_check_says_which_keys_work(site: Site) -> None:
    result = site.cli("accounts", "check")
    assert result.returncode == 1, result.stderr  # gamma's key is refused
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["acme"] == "ok"
    assert lines["beta"] == "ok"
    assert lines["gamma"].startswith("refused: GET /items: HTTP 401")
    no_secret_in(result)
    as_json = json.loads(site.cli("accounts", "check", "--json").stdout)
    assert [(a["name"], a["result"]) for a in as_json["accounts"]] == [
        ("acme", "ok"),
        ("beta", "ok"),
        ("gamma", "refused"),
    ]
    assert as_json["ok"] is False
    site.write_accounts(("acme", site.a_url, KEY_A), ("beta", site.b_url, KEY_B))
    assert site.cli("accounts", "check").returncode == 0


def test_accounts_check_tries_a_shared_key_once_and_names_the_unreachable(site: Site) -> None:
    site.write_accounts(
        ("acme", site.a_url, KEY_A),
        ("acme-eu", site.a_url, KEY_A),
        ("down", "http://127.0.0.1:9", KEY_B),
    )
    site.a.reset_stats()
    result = site.cli("accounts", "check")
    assert result.returncode == 1
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["acme"] == "ok"
    assert lines["acme-eu"] == "ok (same key as acme)"
    assert lines["down"].startswith("unreachable: GET /items: connection refused")
    assert len([r for r in site.a.requests if r.path == "/items"]) == 1
    no_secret_in(result)


def test_poll_once_per_account_and_for_every_account(site: Site) -> None:
    one = site.cli("poll", "--once", "--account", "acme")
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith("account acme: read 3 items")
    assert site.items_of() == dict.fromkeys(site.a.items, "acme")
    every = site.cli("poll", "--once")
    assert every.returncode == 1  # gamma's key is refused; the others are polled all the same
    assert "account acme: read 0 items" in every.stdout  # from acme's own watermark
    assert "account beta: read 2 items" in every.stdout
    assert "error: poller of gamma: GET /items: HTTP 401" in every.stderr
    assert site.items_of() == {
        **dict.fromkeys(site.a.items, "acme"),
        **dict.fromkeys(site.b.items, "beta"),
    }
    no_secret_in(every)


def test_backfill_reads_one_account_into_that_account(site: Site) -> None:
    since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    refused = site.cli("backfill", "--since", since)
    assert refused.returncode == 2
    assert "give --account NAME" in refused.stderr
    assert CONFIGURED in refused.stderr
    done = site.cli("backfill", "--since", since, "--account", "beta")
    assert done.returncode == 0, done.stderr
    assert "account beta: backfill" in done.stdout
    assert "2 items read" in done.stdout
    assert site.items_of() == dict.fromkeys(site.b.items, "beta")


def test_accounts_list_shows_config_counts_and_removed_accounts(site: Site) -> None:
    assert site.cli("poll", "--once", "--account", "acme").returncode == 0
    assert site.cli("poll", "--once", "--account", "beta").returncode == 0
    listed = site.cli("accounts", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "WEBHOOK", "API"]
    acme = rows[0].split()
    assert acme[:3] == ["acme", "/webhook/acme", site.a_url]
    assert acme[5:8] == ["0", "3", "0"]  # events, items, open jobs
    as_json = json.loads(site.cli("accounts", "list", "--json").stdout)["accounts"]
    assert [row["name"] for row in as_json] == ["acme", "beta", "gamma"]
    assert as_json[1] | {"outputs": []} == {
        "name": "beta",
        "configured": True,
        "webhook_path": "/webhook/beta",
        "api_url": site.b_url,
        "api_key": True,
        "webhook_secret": True,
        "operator_token": False,
        "poll": False,
        "outputs": [],
        "events": 0,
        "items": 2,
        "open_jobs": 0,
    }
    # beta leaves the file: its data is kept, and listed as such
    site.write_accounts(("acme", site.a_url, KEY_A), ("gamma", site.a_url, WRONG_KEY))
    after = site.cli("accounts", "list")
    assert after.returncode == 0, after.stderr
    [beta] = [line for line in after.stdout.splitlines() if line.startswith("beta")]
    assert "removed: data kept" in beta
    assert beta.split()[-4:] == ["0", "2", "0", "-"]
    removed = json.loads(site.cli("accounts", "list", "--json").stdout)["accounts"][-1]
    assert removed == {
        "name": "beta",
        "configured": False,
        "note": "removed: data kept",
        "events": 0,
        "items": 2,
        "open_jobs": 0,
    }
    no_secret_in(after)


def test_accounts_list_masks_the_passwords_of_urls(site: Site) -> None:
    text = site.accounts_file.read_text()
    site.accounts_file.write_text(
        text.replace(
            f'api_url = "{site.b_url}"',
            f'api_url = "{site.b_url.replace("http://", "http://beta:hunter2@")}"\n'
            'outputs = "http:https://wms:s3cret@wms.example/dimmy"',
        )
    )
    listed = site.cli("accounts", "list", "--json", DIMMY_FORWARD_SECRET=FORWARD_SECRET)
    assert listed.returncode == 0, listed.stderr
    assert "hunter2" not in listed.stdout
    assert "s3cret" not in listed.stdout
    beta = json.loads(listed.stdout)["accounts"][1]
    assert beta["api_url"] == site.b_url.replace("http://", "http://beta:***@")
    assert beta["outputs"] == ["http:https://wms.example/dimmy"]  # an output's name has none


def dead_jobs(db_url: str, *accounts: str) -> dict[str, int]:
    """An event per account whose job is dead, inserted through the store."""

    async def go() -> None:
        store = create_store(db_url)
        await store.open()
        try:
            for account in accounts:
                await store.insert_event(
                    replace(scanned_event(f"m_{account}", ["a"]), account=account)
                )
            for job in await store.claim("w", 10, 30.0, T0):
                await store.fail(job, "gave up", None, T0)
        finally:
            await store.close()

    asyncio.run(go())
    found = query(
        db_url, "SELECT account, count(*) AS n FROM jobs WHERE status = 'dead' GROUP BY account"
    )
    return {row["account"]: int(row["n"]) for row in found}


def test_replay_keeps_to_the_account(site: Site) -> None:
    assert site.cli("poll", "--once", "--account", "acme").returncode == 0
    acme_item = next(iter(site.a.items))
    other = site.cli("replay", "--item", acme_item, "--account", "beta")
    assert other.returncode == 2
    assert f"item {acme_item} is not stored in account beta" in other.stderr
    own = site.cli("replay", "--item", acme_item, "--account", "acme", "--mode", "redeliver")
    assert own.returncode == 0, own.stderr
    assert dead_jobs(site.db_url, "acme", "beta") == {"acme": 1, "beta": 1}
    [acme_event] = query(site.db_url, "SELECT id FROM events WHERE account = 'acme'")
    not_beta = site.cli("replay", "--event", str(acme_event["id"]), "--account", "beta")
    assert not_beta.returncode == 2
    assert f"event {acme_event['id']} does not exist" in not_beta.stderr
    since = datetime.fromtimestamp(T0 - 60, UTC).isoformat()
    beta_only = site.cli("replay", "--dead-since", since, "--account", "beta")
    assert beta_only.returncode == 0, beta_only.stderr
    assert "queued 1 job(s)" in beta_only.stdout
    still_dead = query(site.db_url, "SELECT account FROM jobs WHERE status = 'dead'")
    assert [row["account"] for row in still_dead] == ["acme"]
    mine = site.cli("replay", "--event", str(acme_event["id"]), "--account", "acme")
    assert mine.returncode == 0, mine.stderr


def test_quarantine_keeps_to_the_account(site: Site) -> None:
    assert site.cli("poll", "--once", "--account", "acme").returncode == 0
    assert site.cli("poll", "--once", "--account", "beta").returncode == 0
    acme_item, beta_item = next(iter(site.a.items)), next(iter(site.b.items))
    for item_id in (acme_item, beta_item):
        hold_item(site.db_url, item_id)
    every = site.cli("quarantine", "list")
    assert every.returncode == 0, every.stderr
    assert sorted(line.split()[:2] for line in every.stdout.splitlines()) == sorted(
        [["acme", acme_item], ["beta", beta_item]]
    )
    only = site.cli("quarantine", "list", "--account", "beta")
    assert [line.split()[0] for line in only.stdout.splitlines()] == [beta_item]
    other = site.cli("quarantine", "release", acme_item, "--note", "ok", "--account", "beta")
    assert other.returncode == 2
    assert f"item {acme_item} is not held in quarantine" in other.stderr
    own = site.cli("quarantine", "reject", acme_item, "--note", "no", "--account", "acme")
    assert own.returncode == 0, own.stderr
    assert f"{acme_item} rejected" in own.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["poll", "--once"],
        ["poll"],
        ["backfill", "--since", "2026-01-01T00:00:00Z"],
        ["replay", "--dead-since", "2026-01-01T00:00:00Z"],
        ["quarantine", "list"],
        ["quarantine", "release", "6592008029c8c3e4dc76256c", "--note", "x"],
        ["send", "http://127.0.0.1:9/webhook"],
    ],
)
def test_an_unknown_account_is_a_usage_error_naming_the_configured(
    site: Site, args: list[str]
) -> None:
    result = site.cli(*args, "--account", "nobody")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "'--account'" in result.stderr
    assert f"no account 'nobody'; {CONFIGURED}" in result.stderr
    no_secret_in(result)


def test_send_posts_to_the_account_url_signed_with_its_secret(
    site: Site, service_factory: Any
) -> None:
    service = service_factory(
        ["serve"],
        DIMMY_ACCOUNTS_FILE=str(site.accounts_file),
        DIMMY_DATABASE_URL=site.db_url,
        DIMMY_OUTPUTS="",
        DIMMY_WORKER_ENABLED="false",
    ).start()
    sent = site.cli("send", service.url + "/webhook", "--account", "beta", "--msg-id", "msg_b")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "msg_b -> HTTP 204" in sent.stdout
    # the service's address alone: the account's path is added
    bare = site.cli("send", service.url, "--account", "acme", "--msg-id", "msg_a")
    assert "msg_a -> HTTP 204" in bare.stdout, bare.stdout + bare.stderr
    stored = query(site.db_url, "SELECT message_id, account FROM events ORDER BY id")
    assert [(row["message_id"], row["account"]) for row in stored] == [
        ("msg_b", "beta"),
        ("msg_a", "acme"),
    ]
    # a secret typed on the command line wins: acme's secret at beta's URL is refused
    crossed = site.cli(
        "send", service.url + "/webhook", "--account", "beta", "--secret", SECRETS["acme"]
    )
    assert crossed.returncode == 1
    assert "HTTP 401" in crossed.stdout
    assert SECRETS["acme"] not in service.log()
