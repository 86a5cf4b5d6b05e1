"""S13: passwords inside URLs are masked wherever a URL is printed or logged, and nothing a
client sends can forge a log line (control characters are escaped in every logged value).
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import httpx
import pytest

from dimmy_webhooks.observe.logs import JsonFormatter, KeyValueFormatter, redact_urls

from ..support.constants import ADMIN_TOKEN, CLI, SECRET
from ..support.processes import ServiceProcess, clean_env, run, wait_until

pytestmark = pytest.mark.faults

DB_PASSWORD = "pg-Pa55word-never-shown"
API_PASSWORD = "api-Pa55word-never-shown"
LINE_START = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ [A-Z]+ ")
FORGED = "2026-01-01T00:00:00Z WARNING worker job dead job=1 reason=forged"


def test_config_masks_passwords_inside_urls(tmp_path: Path) -> None:
    proc = run(
        [CLI, "config"],
        tmp_path,
        DIMMY_DATABASE_URL=f"postgresql://dimmy:{DB_PASSWORD}@127.0.0.1:9/dimmy",
        DIMMY_API_URL=f"https://integrator:{API_PASSWORD}@dimmy.api.example",
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert DB_PASSWORD not in out
    assert API_PASSWORD not in out
    assert "DIMMY_DATABASE_URL=postgresql://dimmy:***@127.0.0.1:9/dimmy" in out
    assert "DIMMY_API_URL=https://integrator:***@dimmy.api.example" in out


def test_an_unreachable_database_url_is_reported_without_its_password(tmp_path: Path) -> None:
    for url in (
        f"postgresql://dimmy:{DB_PASSWORD}@127.0.0.1:9/dimmy",
        f"postgresql://127.0.0.1:9/dimmy?user=dimmy&password={DB_PASSWORD}",
    ):
        proc = run([CLI, "migrate"], tmp_path, DIMMY_DATABASE_URL=url)
        assert proc.returncode == 2, proc.stderr
        assert DB_PASSWORD not in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://u:secret@db/x", "postgresql://u:***@db/x"),
        ("https://user:p@ss@host/a", "https://user:***@host/a"),
        ("see http://a:b@c and https://d:e@f", "see http://a:***@c and https://d:***@f"),
        ("host=db password=secret dbname=x", "host=db password=*** dbname=x"),
        (
            "postgresql://db/x?sslmode=require&password=secret",
            "postgresql://db/x?sslmode=require&password=***",
        ),
        ("postgresql://u@db/x", "postgresql://u@db/x"),
        ("no url at all", "no url at all"),
    ],
)
def test_redact_urls(text: str, shown: str) -> None:
    assert redact_urls(text) == shown


def _record(
    message: str, fields: dict[str, object], exc: BaseException | None = None
) -> logging.LogRecord:
    record = logging.LogRecord(
        "dimmy_webhooks.web.api", logging.WARNING, __file__, 1, message, None, None
    )
    record.fields = fields
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    return record


def test_one_record_is_one_line_whatever_the_values() -> None:
    hostile = f"x\n{FORGED}\r\x1b[2K\u2028end"
    try:
        raise ValueError(f"bad value\n{FORGED}")
    except ValueError as exc:
        record = _record(f"refused {hostile}", {"path": hostile, hostile: 1}, exc)
    text = KeyValueFormatter().format(record)
    lines = text.splitlines()
    assert LINE_START.match(lines[0])
    assert all(line.startswith("  | ") for line in lines[1:]), lines
    assert not any(line.startswith(FORGED[:20]) for line in lines)
    for control in ("\r", "\x1b", "\u2028"):
        assert control not in text
    assert "\\n2026-01-01T00:00:00Z WARNING" in lines[0]
    parsed = JsonFormatter().format(record)
    assert "\n" not in parsed


def test_a_path_with_newlines_cannot_forge_a_log_line(tmp_path: Path) -> None:
    """The probe's case: a refused API call logs its path; a path carrying ``%0A`` and a fake
    timestamp must stay inside the one line of the refusal."""
    service = ServiceProcess(
        tmp_path,
        clean_env(
            DIMMY_WEBHOOK_SECRET=SECRET,
            DIMMY_ADMIN_TOKEN=ADMIN_TOKEN,
            DIMMY_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
            DIMMY_OUTPUTS="",
        ),
        ["serve", "--no-worker"],
    ).start()
    try:
        forged = FORGED.replace(" ", "%20")
        for method, path in (
            ("POST", f"/api/items/x%0A{forged}/replay"),
            ("GET", f"/api/items/x%0D%0A{forged}"),
            ("GET", f"/api/events?status=%0A{forged}"),
        ):
            answer = httpx.request(
                method, service.url + path, headers={"Authorization": "Bearer wrong"}
            )
            assert answer.status_code in (401, 422, 429), (path, answer.text)
        assert wait_until(lambda: service.log().count("API request refused") >= 3, 10)
    finally:
        service.stop()
    log = service.log()
    for line in log.splitlines():
        assert not line.startswith("2026-01-01T00:00:00Z"), line
        ours = LINE_START.match(line) or line.startswith(("  | ", "dimmy-webhooks "))
        assert ours or not line.strip(), line


def test_the_log_format_is_one_line_per_record_in_json_too(tmp_path: Path) -> None:
    proc = run(
        [
            sys.executable,
            "-c",
            "import logging; from dimmy_webhooks.observe import logs; "
            "logs.configure('json'); logging.getLogger('dimmy_webhooks.x').warning("
            "'a\\nb', extra={'fields': {'url': 'postgresql://u:pw-secret@h/d'}})",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "pw-secret" not in proc.stderr
