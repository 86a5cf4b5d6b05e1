"""The real command line in subprocesses: start-up checks, send, and SIGKILL right after a 204."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from dimmy_webhooks.store import schema

from ..support.constants import ADMIN_TOKEN, CLI, SECRET
from ..support.processes import clean_env
from ..support.senders import post_signed


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        cwd=tmp_path,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "DIMMY_WEBHOOK_SECRET is not set"),
        ({"DIMMY_WEBHOOK_SECRET": ""}, "DIMMY_WEBHOOK_SECRET"),
        ({"DIMMY_WEBHOOK_SECRET": "whsec_"}, "DIMMY_WEBHOOK_SECRET"),
        ({"DIMMY_WEBHOOK_SECRET": "whsec_!!!!"}, "DIMMY_WEBHOOK_SECRET"),
        ({"DIMMY_WEBHOOK_SECRET": SECRET, "DIMMY_PORT": "99999"}, "DIMMY_PORT"),
        ({"DIMMY_WEBHOOK_SECRET": SECRET, "DIMMY_API_URL": "ftp://x"}, "DIMMY_API_URL"),
        (
            {"DIMMY_WEBHOOK_SECRET": SECRET, "DIMMY_MAX_HEADER_BYTES": "100"},
            "DIMMY_MAX_HEADER_BYTES",
        ),
        (
            {"DIMMY_WEBHOOK_SECRET": SECRET, "DIMMY_HEADER_TIMEOUT_SECONDS": "0"},
            "DIMMY_HEADER_TIMEOUT_SECONDS",
        ),
        # more connections than the open-file limit leaves room for
        (
            {"DIMMY_WEBHOOK_SECRET": SECRET, "DIMMY_MAX_CONNECTIONS": "100000000"},
            "DIMMY_MAX_CONNECTIONS=100000000 is more than the open-file limit allows",
        ),
        # less than one body of the largest size (4 MiB by default)
        (
            {"DIMMY_WEBHOOK_SECRET": SECRET, "DIMMY_UNVERIFIED_BODY_BYTES": "2000000"},
            "DIMMY_UNVERIFIED_BODY_BYTES",
        ),
    ],
)
def test_serve_refuses_unusable_settings_with_a_clear_line(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result = run_cli(tmp_path, "serve", **env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "!!!!" not in result.stderr or "whsec_!!!!" not in result.stderr


def test_serve_refuses_public_host_without_admin_token(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "serve", "--host", "0.0.0.0", DIMMY_WEBHOOK_SECRET=SECRET)
    assert result.returncode == 2
    assert "DIMMY_ADMIN_TOKEN" in result.stderr


def test_env_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DIMMY_WEBHOOK_SECRET={SECRET}\nDIMMY_API_KEY=k\n")
    result = run_cli(tmp_path, "config")
    assert result.returncode == 0, result.stderr
    assert "DIMMY_WEBHOOK_SECRET=(set, hidden)" in result.stdout
    assert SECRET not in result.stdout
    assert run_cli(tmp_path, "config", "--check-credentials").returncode == 0


def test_send_and_kill_after_204_keeps_every_event(tmp_path: Path, service_factory: Any) -> None:
    """SIGKILL the receiver right after each 204: on restart every answered event is there."""
    db = tmp_path / "kill.sqlite3"
    env = {
        "DIMMY_WEBHOOK_SECRET": SECRET,
        "DIMMY_DATABASE_URL": f"sqlite:///{db}",
        "DIMMY_OUTPUTS": "",
        "DIMMY_WORKER_ENABLED": "false",
    }
    answered = []
    rng = random.Random(1234)
    print("seed 1234")
    for round_ in range(5):
        service = service_factory(["serve"], **env).start()
        burst = rng.randint(1, 5)
        for i in range(burst):
            msg_id = f"msg_kill_{round_}_{i}"
            body = json.dumps({"item_ids": [f"{rng.getrandbits(96):024x}"]}).encode()
            response = post_signed(service.url, msg_id, body, timeout=10)
            assert response.status_code == 204
            answered.append(msg_id)
        service.kill()  # SIGKILL immediately after the last 204
    conn = sqlite3.connect(db)
    stored = {row[0] for row in conn.execute("SELECT message_id FROM events")}
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert stored == set(answered)


def test_send_command_prints_the_answer(tmp_path: Path, service_factory: Any) -> None:
    db = tmp_path / "send.sqlite3"
    service = service_factory(
        ["serve"],
        DIMMY_WEBHOOK_SECRET=SECRET,
        DIMMY_DATABASE_URL=f"sqlite:///{db}",
        DIMMY_WORKER_ENABLED="false",
        DIMMY_ADMIN_TOKEN=ADMIN_TOKEN,
    ).start()
    ok = run_cli(
        tmp_path, "send", service.url + "/webhook", "--secret", SECRET, "--msg-id", "msg_cli"
    )
    assert ok.returncode == 0, ok.stderr
    assert "msg_cli -> HTTP 204" in ok.stdout
    wrong = run_cli(
        tmp_path, "send", service.url + "/webhook", "--secret", "whsec_plJ3nmyCDGBKInavdOK15jsl"
    )
    assert wrong.returncode == 1
    assert "HTTP 401" in wrong.stdout
    assert "no matching signature" in wrong.stdout
    body_file = tmp_path / "ping.json"
    body_file.write_text('{"event_type": "ping"}')
    from_file = run_cli(
        tmp_path,
        "send",
        service.url + "/webhook",
        "--file",
        str(body_file),
        DIMMY_WEBHOOK_SECRET=SECRET,
    )
    assert from_file.returncode == 0, from_file.stderr
    nowhere = run_cli(tmp_path, "send", "http://127.0.0.1:9/webhook", "--secret", SECRET)
    assert nowhere.returncode == 1
    assert "could not reach" in nowhere.stderr
    # the JSON API is protected once a token is set
    assert httpx.get(service.url + "/api/events").status_code == 401
    events = httpx.get(
        service.url + "/api/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json()["events"]
    assert {e["message_id"] for e in events} >= {"msg_cli"}
    assert ADMIN_TOKEN not in service.log()
    assert SECRET not in service.log()


def test_replay_command(tmp_path: Path, db_url: str) -> None:
    env = {"DIMMY_DATABASE_URL": db_url, "DIMMY_OUTPUTS": ""}
    missing = run_cli(tmp_path, "replay", "--event", "999", **env)
    assert missing.returncode == 2
    assert "event 999 does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    both = run_cli(tmp_path, "replay", "--event", "1", "--item", "x", **env)
    assert both.returncode == 2
    assert "exactly one" in both.stderr
    bad_time = run_cli(tmp_path, "replay", "--dead-since", "yesterday", **env)
    assert bad_time.returncode == 2
    assert "ISO-8601" in bad_time.stderr
    ok = run_cli(tmp_path, "replay", "--dead-since", "2026-01-01T00:00:00Z", **env)
    assert ok.returncode == 0, ok.stderr
    assert "queued 0 job(s)" in ok.stdout


@pytest.mark.postgres
def test_serve_refuses_a_postgres_schema_that_is_behind(tmp_path: Path, pg_empty_url: str) -> None:
    env = {"DIMMY_WEBHOOK_SECRET": SECRET, "DIMMY_DATABASE_URL": pg_empty_url}
    refused = run_cli(tmp_path, "serve", **env)
    assert refused.returncode == 2
    assert "dimmy-webhooks migrate" in refused.stderr
    migrated = run_cli(tmp_path, "migrate", **env)
    assert migrated.returncode == 0, migrated.stderr
    head = schema.status(pg_empty_url).head
    assert f"schema at {head} (latest {head})" in migrated.stdout
