"""S11 and S14: the JSON API's access rules as an attacker tries them.

S11: a weak admin token is refused at start-up for a non-loopback bind; repeated wrong tokens are
slowed down per client (429 with Retry-After), others are not. S14: with no admin token on
loopback (the default), a foreign ``Host`` (DNS rebinding) and a cross-site form POST are refused
before they reach ``/api/*``; the webhook (signature-protected) and programs still work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dimmy_webhooks.config import MIN_TOKEN_LENGTH
from dimmy_webhooks.devtools.runner import serve_in_thread
from dimmy_webhooks.web import create_app
from dimmy_webhooks.web.auth import FailureThrottle

from ..support.builders import ITEM_ID, make_settings
from ..support.constants import ADMIN_TOKEN, CLI, SECRET
from ..support.dashboard import dashboard_login
from ..support.databases import query
from ..support.processes import run
from ..support.senders import post_signed

pytestmark = pytest.mark.faults


@pytest.fixture
def open_service(sqlite_url: str) -> Iterator[str]:
    """The service with no admin token on loopback, as it ships, plus one allowed host."""
    settings = make_settings(sqlite_url, allowed_hosts="dimmy.warehouse.example")
    with serve_in_thread(create_app(settings, run_worker=False)) as url:
        yield url


@pytest.fixture
def guarded_service(sqlite_url: str) -> Iterator[str]:
    # strong: its test tells a client another address forwarded for (S18)
    settings = make_settings(sqlite_url, admin_token=STRONG_TOKEN)
    with serve_in_thread(create_app(settings, run_worker=False)) as url:
        yield url


def jobs(db_url: str) -> int:
    return int(query(db_url, "SELECT count(*) AS n FROM jobs")[0]["n"])


def store_an_event(url: str, host: str | None = None) -> None:
    headers = None if host is None else {"host": host}
    post_signed(url, f"msg_{host or 'plain'}", [ITEM_ID], headers=headers, expect=204)


# S14 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["attacker.example", "attacker.example:5000", "127.0.0.1.attacker.example", ""]
)
def test_a_foreign_host_is_refused_without_a_token(open_service: str, host: str) -> None:
    for path in ("/api/events", "/api/items", "/readyz", "/openapi.json"):
        answer = httpx.get(open_service + path, headers={"host": host})
        assert answer.status_code == 400, (path, answer.text)
        assert "unknown Host" in answer.json()["detail"]
        assert answer.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost:5000", "[::1]:5000", "LOCALHOST", "dimmy.warehouse.example"]
)
def test_loopback_names_and_configured_hosts_are_answered(open_service: str, host: str) -> None:
    assert httpx.get(open_service + "/api/events", headers={"host": host}).status_code == 200


def test_webhooks_answer_whatever_the_host(open_service: str, sqlite_url: str) -> None:
    """A reverse proxy on this machine may pass its public name: the signature decides."""
    store_an_event(open_service, host="dimmy.public.example")
    assert len(query(sqlite_url, "SELECT id FROM events")) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "text/plain", "origin": "https://attacker.example"},
        {"content-type": "text/plain"},  # a form with enctype=text/plain, Origin stripped
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "multipart/form-data; boundary=x"},
        {"origin": "https://attacker.example"},
        {"origin": "null"},
        {"sec-fetch-site": "cross-site"},
    ],
)
def test_a_cross_site_post_is_refused(
    open_service: str, sqlite_url: str, headers: dict[str, str]
) -> None:
    store_an_event(open_service)
    before = jobs(sqlite_url)
    answer = httpx.post(
        f"{open_service}/api/events/1/replay?mode=refetch", headers=headers, content=b"x=1"
    )
    assert answer.status_code == 403, answer.text
    assert "refused" in answer.json()["detail"]
    assert jobs(sqlite_url) == before
    assert query(sqlite_url, "SELECT status FROM jobs")[0]["status"] == "pending"


def test_programs_and_same_origin_pages_may_post(open_service: str, sqlite_url: str) -> None:
    store_an_event(open_service)
    for headers in (
        {},  # curl -X POST
        {"content-type": "application/json"},
        {"origin": open_service, "sec-fetch-site": "same-origin"},
    ):
        answer = httpx.post(f"{open_service}/api/events/1/replay", headers=headers)
        assert answer.status_code == 200, (headers, answer.text)
        assert answer.json()["event_id"] == 1


# S11 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("weak", ["x", "a" * 40, "short-token-123", "0123456789" * 3])
def test_a_weak_token_is_refused_for_a_public_bind(tmp_path: Path, weak: str) -> None:
    proc = run(
        [CLI, "serve", "--host", "0.0.0.0", "--port", "9"],
        tmp_path,
        DIMMY_WEBHOOK_SECRET=SECRET,
        DIMMY_ADMIN_TOKEN=weak,
        DIMMY_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
    )
    assert proc.returncode == 2, proc.stderr
    assert "DIMMY_ADMIN_TOKEN is too weak" in proc.stderr
    assert "dimmy-webhooks token" in proc.stderr
    assert weak not in proc.stderr
    assert not (tmp_path / "db.sqlite3").exists()


def test_the_token_command_makes_a_token_strong_enough(tmp_path: Path) -> None:
    from dimmy_webhooks.config import require_loopback_or_token

    made = {run([CLI, "token"], tmp_path).stdout.strip() for _ in range(3)}
    assert len(made) == 3
    for token in made:
        assert len(token) >= MIN_TOKEN_LENGTH
        settings = make_settings(f"sqlite:///{tmp_path / 'x.sqlite3'}", admin_token=token)
        require_loopback_or_token(settings, "0.0.0.0")  # does not raise


def test_repeated_wrong_tokens_are_slowed_down_per_client(guarded_service: str) -> None:
    limit = FailureThrottle().limit
    wrong = {"Authorization": "Bearer wrong-guess"}
    right = {"Authorization": f"Bearer {STRONG_TOKEN}"}
    with httpx.Client(base_url=guarded_service) as http:
        assert http.get("/api/events", headers=right).status_code == 200
        codes = [http.get("/api/events", headers=wrong).status_code for _ in range(limit)]
        assert codes == [401] * limit
        throttled = http.get("/api/events", headers=wrong)
        assert throttled.status_code == 429
        assert 1 <= int(throttled.headers["retry-after"]) <= 60
        # another client (its address as a loopback proxy reports it) is not held back
        elsewhere = {**right, "x-forwarded-for": "203.0.113.7"}
        assert http.get("/api/events", headers=elsewhere).status_code == 200


# S24 ---------------------------------------------------------------------------------------

METRICS_TOKEN = "metrics-token-abcdefghijklmnopqrstuvwxyz-0123456789"  # strong
STRONG_TOKEN = "admin-token-ZYXWVUTSRQPONMLKJIHGFEDCBA-9876543210"


@pytest.fixture
def shared_address_service(sqlite_url: str) -> Iterator[str]:
    """The service behind a proxy that does not forward addresses: every client is one."""
    settings = make_settings(sqlite_url, admin_token=ADMIN_TOKEN, metrics_token=METRICS_TOKEN)
    with serve_in_thread(create_app(settings, run_worker=False)) as url:
        yield url


def test_wrong_guesses_never_lock_the_operator_out(shared_address_service: str) -> None:
    limit = FailureThrottle().limit
    wrong = {"Authorization": "Bearer wrong-guess"}
    right = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    metrics = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    with (
        httpx.Client(base_url=shared_address_service) as operator,
        httpx.Client(base_url=shared_address_service) as guesser,
    ):
        dashboard_login(operator)
        codes = [guesser.get("/api/events", headers=wrong).status_code for _ in range(limit)]
        assert codes == [401] * limit
        # the guesser is slowed down, on /api, /metrics and the login alike
        for path in ("/api/events", "/metrics"):
            throttled = guesser.get(path, headers=wrong)
            assert throttled.status_code == 429, path
            assert 1 <= int(throttled.headers["retry-after"]) <= 60
        # the operator, from the same address, is not: its token, its session, the scraper
        assert guesser.get("/api/events", headers=right).status_code == 200
        assert guesser.get("/metrics", headers=right).status_code == 200
        assert guesser.get("/metrics", headers=metrics).status_code == 200
        assert operator.get("/api/events").status_code == 200
        assert operator.get("/ui/events").status_code == 200
        fresh = httpx.Client(base_url=shared_address_service)
        with fresh:
            dashboard_login(fresh)  # logging in with the right token works too
            assert fresh.get("/api/events").status_code == 200
        # and every further wrong guess is still refused
        assert guesser.get("/api/events", headers=wrong).status_code == 429


@pytest.mark.parametrize("weak", ["1", "metrics", "m" * 40, "0123456789" * 3])
def test_a_weak_metrics_token_is_refused_for_a_public_bind(tmp_path: Path, weak: str) -> None:
    from dimmy_webhooks.config import require_loopback_or_token
    from dimmy_webhooks.errors import ConfigError

    settings = make_settings(
        f"sqlite:///{tmp_path / 'x.sqlite3'}", admin_token=STRONG_TOKEN, metrics_token=weak
    )
    require_loopback_or_token(settings, "127.0.0.1")  # loopback: any token
    with pytest.raises(ConfigError, match="DIMMY_METRICS_TOKEN is too weak") as refused:
        require_loopback_or_token(settings, "0.0.0.0")
    assert "dimmy-webhooks token" in str(refused.value)
    strong = make_settings(
        f"sqlite:///{tmp_path / 'x.sqlite3'}", admin_token=STRONG_TOKEN, metrics_token=METRICS_TOKEN
    )
    require_loopback_or_token(strong, "0.0.0.0")


def test_the_throttle_forgets_after_its_window_and_stays_bounded() -> None:
    now = [0.0]
    throttle = FailureThrottle(limit=3, window=60, max_clients=100, clock=lambda: now[0])
    for _ in range(3):
        throttle.failed("a")
    assert throttle.retry_after("a") == pytest.approx(60)
    now[0] = 30
    assert throttle.retry_after("a") == pytest.approx(30)
    now[0] = 61
    assert throttle.retry_after("a") is None
    for n in range(1000):
        throttle.failed(f"client-{n}")
    assert len(throttle._failures) <= 100


# S17 ---------------------------------------------------------------------------------------


def test_logout_ends_the_session_in_every_process_at_once(db_url: str) -> None:
    """Two ``serve`` processes on one store: a session cookie and its CSRF token, copied
    before the logout, are refused by both right after it; a new login works again."""
    settings = make_settings(db_url, admin_token=ADMIN_TOKEN)
    with (
        serve_in_thread(create_app(settings, run_worker=False)) as one,
        serve_in_thread(create_app(settings, run_worker=False)) as two,
    ):
        store_an_event(one)
        with httpx.Client(base_url=one) as browser:
            csrf = dashboard_login(browser)
            cookie = browser.cookies.get("dimmy_session") or ""
            assert cookie
            stolen = {"cookie": f"dimmy_session={cookie}", "x-csrf-token": csrf}
            for url in (one, two):  # the copy works everywhere while the session lasts
                assert httpx.get(f"{url}/api/events", headers=stolen).status_code == 200
                replay = httpx.post(f"{url}/api/events/1/replay", headers=stolen)
                assert replay.status_code == 200, replay.text
            out = browser.post("/ui/logout", headers={"x-csrf-token": csrf})
            assert out.status_code == 200, out.text
        for url in (one, two):
            assert httpx.get(f"{url}/api/events", headers=stolen).status_code == 401
            replay = httpx.post(f"{url}/api/events/1/replay", headers=stolen)
            assert replay.status_code == 401, replay.text
            page = httpx.get(f"{url}/ui/events", headers=stolen)
            assert page.status_code == 303
            assert page.headers["location"].startswith("/ui/login")
        with httpx.Client(base_url=two) as again:
            dashboard_login(again)
            assert again.get("/api/events").status_code == 200


# S18 ---------------------------------------------------------------------------------------

REMOTE_HEADERS = [
    {"x-forwarded-for": "203.0.113.5"},
    {"x-forwarded-for": "127.0.0.1, 203.0.113.5"},
    {"forwarded": "for=203.0.113.5;proto=https"},
    {"forwarded": 'for="[2001:db8::1]:4711"'},
    {"forwarded": "for=_hidden"},  # an obfuscated client is not this machine
    {"x-real-ip": "198.51.100.9"},
]
LOCAL_HEADERS = [{}, {"x-forwarded-for": "127.0.0.1"}, {"forwarded": 'for="[::1]"'}]
OPEN_PATHS = ("/healthz", "/readyz")
GUARDED = [
    ("GET", "/api/items.csv"),
    ("GET", "/api/events"),
    ("POST", "/api/events/1/replay"),
    ("GET", "/"),
    ("GET", "/ui/items"),
    ("GET", "/ui/login"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
]


def _serve(url: str, **overrides: str) -> Iterator[str]:
    with serve_in_thread(create_app(make_settings(url, **overrides), run_worker=False)) as base:
        yield base


@pytest.mark.parametrize("forwarded", REMOTE_HEADERS)
def test_no_token_serves_nothing_but_the_webhook_and_health_to_a_forwarded_client(
    sqlite_url: str, forwarded: dict[str, str]
) -> None:
    """A local reverse proxy (its own ``Host``) forwarding a remote client, no admin token."""
    with contextlib.contextmanager(_serve)(sqlite_url) as url:
        store_an_event(url)
        before = jobs(sqlite_url)
        for method, path in GUARDED:
            answer = httpx.request(method, url + path, headers=forwarded)
            assert answer.status_code == 401, (method, path, answer.text)
            assert "DIMMY_ADMIN_TOKEN" in answer.json()["detail"]
        assert jobs(sqlite_url) == before  # the replay did not happen
        for path in OPEN_PATHS:
            assert httpx.get(url + path, headers=forwarded).status_code == 200, path
        post_signed(url, "msg_forwarded", [ITEM_ID], headers=forwarded, expect=204)
        # this machine's own programs, through the proxy or not, are served as before
        for local in LOCAL_HEADERS:
            for method, path in (("GET", "/api/items.csv"), ("GET", "/ui/items")):
                answer = httpx.request(method, url + path, headers=local)
                assert answer.status_code == 200, (local, path, answer.text)


@pytest.mark.parametrize("weak", ["admin", ADMIN_TOKEN, "ab" * 20])
def test_a_weak_token_serves_no_forwarded_client(sqlite_url: str, weak: str) -> None:
    """The strength rule of a public bind holds behind a proxy: ``admin`` is not a token for
    the network, even given right."""
    with contextlib.contextmanager(_serve)(sqlite_url, admin_token=weak) as url:
        right = {"authorization": f"Bearer {weak}"}
        forwarded = {"x-forwarded-for": "203.0.113.5", **right}
        for method, path in GUARDED:
            answer = httpx.request(method, url + path, headers=forwarded)
            assert answer.status_code == 403, (method, path, answer.text)
            assert "too weak" in answer.json()["detail"]
            assert weak not in answer.text
        assert httpx.get(url + "/readyz", headers=forwarded).status_code == 200
        # on this machine the token is what it was
        assert httpx.get(url + "/api/events", headers=right).status_code == 200


def test_a_strong_token_serves_a_forwarded_client_that_gives_it(sqlite_url: str) -> None:
    weak_metrics = "scrape"
    with contextlib.contextmanager(_serve)(
        sqlite_url, admin_token=STRONG_TOKEN, metrics_token=weak_metrics
    ) as url:
        forwarded = {"x-forwarded-for": "203.0.113.5"}
        right = {**forwarded, "authorization": f"Bearer {STRONG_TOKEN}"}
        assert httpx.get(url + "/api/events", headers=forwarded).status_code == 401
        assert httpx.get(url + "/api/events", headers=right).status_code == 200
        assert httpx.get(url + "/metrics", headers=right).status_code == 200
        # a weak metrics token is for this machine only
        scraper = {"authorization": f"Bearer {weak_metrics}"}
        assert httpx.get(url + "/metrics", headers={**forwarded, **scraper}).status_code == 401
        assert httpx.get(url + "/metrics", headers=scraper).status_code == 200
