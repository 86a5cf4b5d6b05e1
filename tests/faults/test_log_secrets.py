"""S4: no webhook secret, API key or admin token in any log or command output.

A representative session with all three configured, logging at DEBUG: ``serve --no-worker``
receives signed webhooks (good, badly signed, from a sender with another secret, malformed); a
``worker`` with a wrong API key is refused by the fake Dimmy (401) and pauses; a worker with the
right key does the work; the JSON API is called with wrong, near-miss and right tokens; the CLI
commands a user runs (``config``, ``send``, ``migrate``, ``replay``, a ``serve`` refused for a
bad secret) are run too. Then no form of the three values (nor the wrong key and near-miss tokens,
which are as sensitive) may appear in any process's log, any command's stdout/stderr, or any
response body. Unit level: the settings' ``repr``/``str``/dumps hide them.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from dimmy_webhooks.config import load_settings
from dimmy_webhooks.devtools.fake_dimmy import FakeDimmy
from dimmy_webhooks.devtools.runner import free_port, serve_in_thread
from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.observe.alerts import AlertPolicy, Notifier, conditions
from dimmy_webhooks.observe.logs import redact_urls
from dimmy_webhooks.observe.overview import Destination, Overview
from dimmy_webhooks.signatures import parse_secrets, signed_headers
from dimmy_webhooks.store import OperatorCounts, schema
from dimmy_webhooks.web import create_app

from ..support.builders import make_settings
from ..support.constants import ADMIN_TOKEN, API_KEY, CLI, KEY, SECRET
from ..support.dashboard import dashboard_login
from ..support.databases import query
from ..support.processes import clean_env, run, wait_until
from ..support.senders import post_signed, signed

pytestmark = pytest.mark.faults

WRONG_API_KEY = "wrong-api-key-789"
NEAR_MISS_TOKENS = [ADMIN_TOKEN + "0", ADMIN_TOKEN[:-1] + "X", ADMIN_TOKEN.upper()]
OTHER_SECRET = "whsec_" + base64.b64encode(b"another sender's key, 32 bytes!").decode()


def secret_forms() -> dict[str, str]:
    """Every spelling of a secret that would betray it in a log."""
    b64 = SECRET.removeprefix("whsec_")
    forms = {
        "webhook secret": SECRET,
        "webhook secret (base64 part)": b64,
        "webhook key (hex)": KEY.hex(),
        "webhook key (repr)": repr(KEY)[2:-1],
        "webhook key (urlsafe base64)": base64.urlsafe_b64encode(KEY).decode().rstrip("="),
        "other sender's secret": OTHER_SECRET.removeprefix("whsec_"),
        "API key": API_KEY,
        "wrong API key": WRONG_API_KEY,
        "admin token": ADMIN_TOKEN,
    }
    forms.update({f"near-miss token {n}": token for n, token in enumerate(NEAR_MISS_TOKENS)})
    return forms


def leaks(text: str) -> list[str]:
    return [name for name, value in secret_forms().items() if value in text]


def post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url + "/webhook", content=body, headers=headers, timeout=10)


def test_no_secret_in_any_log_or_output(
    tmp_path: Path, fake: FakeDimmy, fake_url: str, service_factory: Any
) -> None:
    db_url = f"sqlite:///{tmp_path / 'dimmy.sqlite3'}"
    schema.upgrade(db_url)
    env = {
        "DIMMY_WEBHOOK_SECRET": SECRET,
        "DIMMY_API_KEY": API_KEY,
        "DIMMY_ADMIN_TOKEN": ADMIN_TOKEN,
        "DIMMY_API_URL": fake_url,
        "DIMMY_DATABASE_URL": db_url,
        "DIMMY_LOG_LEVEL": "DEBUG",
        "DIMMY_OUTPUTS": f"console,jsonl:{tmp_path / 'out.jsonl'}",
        "DIMMY_RETRY_BASE_SECONDS": "0.05",
        "DIMMY_MAX_ATTEMPTS": "2",
    }
    outputs: dict[str, str] = {}  # what every command printed, by name
    bodies: dict[str, str] = {}  # what every HTTP answer said, by name

    def cli(name: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [CLI, *args],
            cwd=tmp_path,
            env=clean_env(**{**env, **extra}),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        outputs[name] = done.stdout + done.stderr
        return done

    receiver = service_factory(["serve", "--no-worker"], **env).start()
    url = receiver.url

    # webhooks: good, duplicate, bad signature, another sender's secret, not JSON, no headers
    ids = fake.generate_items(4)
    good = json.dumps({"item_ids": ids}).encode()
    assert post(url, good, signed(good, "msg_good")).status_code == 204
    assert post(url, good, signed(good, "msg_good")).status_code == 204
    tampered = signed(good, "msg_bad")
    tampered["svix-signature"] = "v1," + base64.b64encode(b"x" * 32).decode()
    other_key = parse_secrets(OTHER_SECRET)[0]
    answers = {
        "tampered": post(url, good, tampered),
        "other secret": post(url, good, signed_headers(other_key, "msg_other", good)),
        "not json": post(url, b"{not json", signed(b"{not json", "msg_notjson")),
        "no headers": post(url, good, {"content-type": "application/json"}),
    }
    assert [a.status_code for a in answers.values()] == [401, 401, 400, 401]
    bodies.update({f"webhook {name}": a.text for name, a in answers.items()})

    # the right worker does the work
    worker = service_factory(["worker"], **env).start()
    assert wait_until(
        lambda: query(db_url, "SELECT count(*) AS n FROM items")[0]["n"] == len(ids), 30, 0.1
    ), "timed out waiting for the items"
    assert worker.stop() == 0
    # a worker with a wrong API key: the fake answers 401, the worker pauses (a later event)
    later = json.dumps({"item_ids": fake.generate_items(2)}).encode()
    assert post(url, later, signed(later, "msg_later")).status_code == 204
    refused = service_factory(["worker"], **{**env, "DIMMY_API_KEY": WRONG_API_KEY}).start()
    assert wait_until(lambda: "fetching paused" in refused.log(), 30, 0.1), (
        "timed out waiting for the 401"
    )
    assert refused.stop() == 0

    # the JSON API: no token, wrong and near-miss tokens, other schemes, the right token
    with httpx.Client(base_url=url, timeout=10) as client:
        for n, auth in enumerate(
            ["Bearer", "Bearer wrong", *(f"Bearer {t}" for t in NEAR_MISS_TOKENS)]
        ):
            answer = client.get("/api/items", headers={"Authorization": auth})
            assert answer.status_code == 401
            bodies[f"api token {n}"] = answer.text
        answer = client.get("/api/items", headers={"Authorization": f"Basic {ADMIN_TOKEN}0"})
        assert answer.status_code == 401
        right = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for path in ("/api/items", f"/api/items/{ids[0]}", "/api/events", "/api/events/1"):
            answer = client.get(path, headers=right)
            assert answer.status_code == 200, path
            bodies[path] = answer.text
        answer = client.post("/api/events/1/replay", headers=right)
        bodies["replay"] = answer.text
        for path in ("/readyz", "/healthz", "/openapi.json"):
            bodies[path] = client.get(path).text

    # the CLI as a user runs it
    assert cli("config", "config").returncode == 0
    assert "(set, hidden)" in outputs["config"]
    assert cli("config --check-credentials", "config", "--check-credentials").returncode == 0
    assert cli("send", "send", url + "/webhook").returncode == 0
    assert cli("send again", "send", url + "/webhook", "--msg-id", "msg_good").returncode == 0
    closed = f"http://127.0.0.1:{free_port()}/webhook"
    assert cli("send unreachable", "send", closed).returncode == 1
    assert cli("send other secret", "send", url + "/webhook", DIMMY_WEBHOOK_SECRET=OTHER_SECRET)
    assert cli("migrate", "migrate").returncode == 0
    assert cli("replay", "replay", "--dead-since", "2020-01-01T00:00:00Z").returncode == 0
    bad_secret = "whsec_!" + SECRET.removeprefix("whsec_")
    assert cli("config bad secret", "config", DIMMY_WEBHOOK_SECRET=bad_secret).returncode == 2
    refused_serve = cli(
        "serve bad secret", "serve", "--port", str(free_port()), DIMMY_WEBHOOK_SECRET=bad_secret
    )
    assert refused_serve.returncode == 2
    assert receiver.stop() in (0, -15), receiver.log()[-2000:]  # uvicorn re-raises SIGTERM

    logs = {"serve": receiver.log(), "worker (wrong key)": refused.log(), "worker": worker.log()}
    assert "webhook rejected" in logs["serve"]  # the session was logged at all
    assert "refused the API key" in logs["worker (wrong key)"]
    found = {name: leaks(text) for name, text in {**logs, **outputs, **bodies}.items()}
    bad_secret_forms = [bad_secret, bad_secret.removeprefix("whsec_")]
    found.update(
        {
            f"{name} (bad secret)": [f for f in bad_secret_forms if f in text]
            for name, text in outputs.items()
        }
    )
    assert {name: hits for name, hits in found.items() if hits} == {}
    total = sum(len(text) for text in [*logs.values(), *outputs.values(), *bodies.values()])
    print(f"\nS4: {total} characters of logs, output and answers checked, no secret found")


def test_settings_hide_their_secrets() -> None:
    settings = load_settings(
        None,
        webhook_secret=SECRET,
        api_key=API_KEY,
        admin_token=ADMIN_TOKEN,
        database_url="sqlite:///x.sqlite3",
    )
    shown = [
        repr(settings),
        str(settings),
        repr(settings.model_dump()),
        settings.model_dump_json(),
        repr(settings.webhook_secret),
        f"{settings.api_key}",
        str(settings.admin_token),
    ]
    for text in shown:
        assert not leaks(text), text
    assert settings.admin_token_value() == ADMIN_TOKEN  # still usable


@pytest.mark.parametrize(
    "raw",
    [
        "whsec_!" + SECRET.removeprefix("whsec_"),
        SECRET + ",whsec_" + SECRET.removeprefix("whsec_")[:-3] + "!!!",
        SECRET.removeprefix("whsec_") + "=",
    ],
)
def test_secret_errors_do_not_echo_the_secret(raw: str) -> None:
    try:
        parse_secrets(raw)
    except ConfigError as exc:
        message = str(exc)
    else:
        return  # accepted (re-padding is allowed): nothing printed
    assert SECRET.removeprefix("whsec_")[:12] not in message, message
    assert raw not in message


# --- S22: credentials in a URL's query ------------------------------------------------------

QUERY_SECRETS = {
    "api_key": "qs-api-key-111",
    "token": "qs-token-222",
    "access_token": "qs-access-333",
    "key": "qs-key-444",
    "secret": "qs-secret-555",
    "signature": "qs-signature-666",
    "sig": "qs-sig-777",
    "password": "qs-password-888",
    "auth": "qs-auth-999",
}
SECRET_QUERY = "&".join(f"{name}={value}" for name, value in QUERY_SECRETS.items())


def query_leaks(text: str) -> list[str]:
    return [name for name, value in QUERY_SECRETS.items() if value in text]


@pytest.mark.parametrize("name", sorted(QUERY_SECRETS))
def test_redact_urls_masks_every_credential_in_a_query(name: str) -> None:
    url = f"https://wms.example/in?mode=a&{name}={QUERY_SECRETS[name]}#top"
    assert redact_urls(url) == f"https://wms.example/in?mode=a&{name}=***#top"
    first = f"http:https://wms.example/in?{name.upper()}={QUERY_SECRETS[name]}"
    assert redact_urls(first) == f"http:https://wms.example/in?{name.upper()}=***"
    assert redact_urls("items=500 msg_id=m1 reason=ok") == "items=500 msg_id=m1 reason=ok"


def test_config_masks_credentials_in_url_queries(tmp_path: Path) -> None:
    proc = run(
        [CLI, "config"],
        tmp_path,
        DIMMY_API_URL=f"https://dimmy.api.example/v1?{SECRET_QUERY}",
        DIMMY_OUTPUTS=f"http:https://wms.example/in?{SECRET_QUERY}",
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert query_leaks(out) == [], out
    assert "DIMMY_API_URL=https://dimmy.api.example/v1?api_key=***&token=***" in out


def test_alerts_mask_credentials_in_url_queries() -> None:
    output = f"http:https://wms.example/in?{SECRET_QUERY}"
    failing = Destination(
        output, backlog=3, failing_since=0.0, last_error=f"POST {output}: ConnectError"
    )
    view = Overview(
        at=10_000.0,
        day_start=0,
        counts=OperatorCounts({}, {}, 0, 0, 0, [], 0),
        destinations=[failing],
        problems=[f"destination {output} is failing: paused"],
        failures=[],
        api_key_refused=False,
    )
    policy = AlertPolicy(interval=1, repeat=600, signature_failures=5, destination_failing=300)
    found = conditions(view, policy, signature_failures=0, gap_grew_at=None)
    assert len(found) == 1
    for fmt in ("slack", "json"):
        notifier = Notifier(_no_look, _no_post, policy, fmt=fmt)
        body = json.dumps(notifier._body(found[0].key, "firing", found[0].summary, 10_000.0))
        assert query_leaks(body) == [], body
        assert "api_key=***" in body


async def _no_look() -> tuple[Overview, int]:  # pragma: no cover - never called
    raise AssertionError


async def _no_post(body: dict[str, Any]) -> None:  # pragma: no cover - never called
    raise AssertionError


def test_urls_shown_by_the_service_mask_credentials_in_their_query(
    db_url: str, fake: FakeDimmy, fake_url: str
) -> None:
    """An output whose URL carries credentials in its query fails every delivery (nothing
    listens): its name and its errors are in ``/metrics`` labels, the ledger, the overview,
    the dashboard and the unauthenticated ``/readyz``; none shows a credential."""
    ids = fake.generate_items(4)
    output = f"http:http://127.0.0.1:{free_port()}/in?{SECRET_QUERY}"
    settings = make_settings(
        db_url,
        api_key=API_KEY,
        api_url=fake_url,
        admin_token=ADMIN_TOKEN,
        outputs=output,
        forward_secret=SECRET,
        retry_base_seconds=0.05,
        max_attempts=2,
    )
    right = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with serve_in_thread(create_app(settings)) as url, httpx.Client(base_url=url) as client:
        body = json.dumps({"item_ids": ids}).encode()
        assert post_signed(url, "m-s22", body).status_code == 204

        ready: list[httpx.Response] = []

        def paused() -> bool:  # the destination's breaker opened: /readyz names it
            ready[:] = [client.get("/readyz")]
            return "failing" in ready[0].text

        assert wait_until(paused, 30, 0.1), ready[0].text
        answers = {path: client.get(path, headers=right) for path in _SHOWN_PATHS}
        answers["/readyz"] = ready[0]
        dashboard_login(client)
        answers["/"] = client.get("/")
        answers["/ui/items/{id}"] = client.get(f"/ui/items/{ids[0]}")
    for path, answer in answers.items():
        assert answer.status_code == 200, (path, answer.text)
        assert query_leaks(answer.text) == [], (path, answer.text)
    assert "api_key=***" in answers["/metrics"].text
    # the unauthenticated /readyz names problems by fixed labels (S21): no URL at all
    assert "api_key" not in answers["/readyz"].text, answers["/readyz"].text
    assert "api_key=***" in answers["/api/deliveries"].text
    assert "api_key=***" in answers["/"].text


_SHOWN_PATHS = (
    "/metrics",
    "/api/deliveries",
    "/api/overview",
    "/api/charts",
    "/api/deliveries.jsonl",
    "/api/events/1/work",
)
