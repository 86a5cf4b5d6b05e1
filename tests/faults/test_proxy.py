"""Unit tests of the fault proxy (tests/faults/proxy.py): each mode does what it says, quickly."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ..support.constants import API_KEY
from .proxy import FaultProxy

pytestmark = pytest.mark.faults


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Any = self.server
        server.connections += 1
        self.request.settimeout(5)
        try:
            while data := self.request.recv(65536):
                server.received += data
                self.request.sendall(data)
        except OSError:
            pass


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.received = b""
        self.connections = 0


@pytest.fixture
def echo() -> Iterator[_EchoServer]:
    server = _EchoServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _proxy(echo: _EchoServer, **options: Any) -> FaultProxy:
    return FaultProxy("127.0.0.1", echo.server_address[1], **options)


def _connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _wait(predicate: Any, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()  # type: ignore[no-any-return]


def test_pass_through_both_ways_and_counts(echo: _EchoServer) -> None:
    with _proxy(echo) as proxy, _connect(proxy) as sock:
        assert proxy.url == f"http://127.0.0.1:{proxy.port}"
        request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
        sock.sendall(request)
        assert _recv_exactly(sock, len(request)) == request
        sock.sendall(b"second")
        assert _recv_exactly(sock, 6) == b"second"
        sock.shutdown(socket.SHUT_WR)  # a half-close is passed on; the rest still arrives
        assert sock.recv(10) == b""
        assert _wait(lambda: proxy.counters()["bytes_down"] == len(request) + 6)
        counters = proxy.counters()
        assert counters["connections"] == 1
        assert counters["bytes_up"] == len(request) + 6
        assert counters["resets"] == counters["blackholed"] == 0
        heads = [(r.head, r.action) for r in proxy.records()]
        assert heads == [("GET /x HTTP/1.1", "forwarded"), ("second", "forwarded")]
    assert echo.received == b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nsecond"


def test_latency_is_added_per_chunk_each_way(echo: _EchoServer) -> None:
    with _proxy(echo) as proxy, _connect(proxy) as sock:
        sock.sendall(b"warm")
        assert _recv_exactly(sock, 4) == b"warm"
        started = time.monotonic()
        sock.sendall(b"fast")
        assert _recv_exactly(sock, 4) == b"fast"
        fast = time.monotonic() - started
        proxy.set(latency=0.1)  # switched at run time, on a live connection
        started = time.monotonic()
        sock.sendall(b"slow")
        assert _recv_exactly(sock, 4) == b"slow"
        slow = time.monotonic() - started
    print(f"round trip {fast * 1000:.1f} ms -> {slow * 1000:.1f} ms with latency=0.1 s")
    assert 0.2 <= slow < 1.5
    assert fast < 0.1


def test_reset_sends_rst_before_forwarding(echo: _EchoServer) -> None:
    with _proxy(echo, reset_rate=1.0) as proxy, _connect(proxy) as sock:
        sock.sendall(b"GET /items/abc HTTP/1.1\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
        assert proxy.resets == 1
        assert [(r.head, r.action) for r in proxy.records()] == [
            ("GET /items/abc HTTP/1.1", "reset")
        ]
    assert echo.received == b""  # the upstream never saw the request that was cut


def test_reset_rate_is_a_fraction_of_connections_and_seeded(echo: _EchoServer) -> None:
    n, rate = 200, 0.25

    def run(seed: int) -> list[bool]:
        outcomes = []
        with _proxy(echo, reset_rate=rate, seed=seed) as proxy:
            for _ in range(n):
                with _connect(proxy) as sock:
                    sock.sendall(b"ping")
                    try:
                        outcomes.append(_recv_exactly(sock, 4) != b"ping")
                    except ConnectionResetError:
                        outcomes.append(True)
            assert proxy.resets == sum(outcomes)
            assert proxy.connections == n
        return outcomes

    first = run(seed=11)
    print(f"reset_rate={rate}: {sum(first)} of {n} connections reset")
    assert 0.15 * n <= sum(first) <= 0.35 * n
    assert run(seed=11) == first  # the same seed makes the same draws


def test_request_scope_resets_keep_alive_connections(echo: _EchoServer) -> None:
    def ping_until_cut(sock: socket.socket) -> int:
        for sent in range(64):  # P(no reset in 64 draws at 0.5) = 2**-64
            sock.sendall(b"ping")
            try:
                if _recv_exactly(sock, 4) != b"ping":
                    return sent  # closed without the answer
            except ConnectionResetError:
                return sent
        raise AssertionError("never reset")

    with _proxy(echo, reset_rate=0.5, reset_scope="request", seed=3) as proxy:
        with _connect(proxy) as sock:
            sent = ping_until_cut(sock)
        assert proxy.resets == 1
        assert proxy.connections == 1
        actions = [r.action for r in proxy.records()]
        assert actions == ["forwarded"] * sent + ["reset"]


def test_blackhole_accepts_and_never_answers_then_recovers(echo: _EchoServer) -> None:
    with _proxy(echo, blackhole=True) as proxy:
        with _connect(proxy, timeout=0.3) as sock:
            sock.sendall(b"anyone there?")
            with pytest.raises(TimeoutError):
                sock.recv(10)
        assert echo.received == b""
        assert echo.connections == 0  # not even a connection upstream
        assert proxy.blackholed == 1
        proxy.set(blackhole=False)
        with _connect(proxy) as sock:
            sock.sendall(b"back")
            assert _recv_exactly(sock, 4) == b"back"


def test_blackhole_switched_on_breaks_a_live_connection_for_good(echo: _EchoServer) -> None:
    with _proxy(echo) as proxy, _connect(proxy, timeout=0.3) as sock:
        sock.sendall(b"one")
        assert _recv_exactly(sock, 3) == b"one"
        proxy.set(blackhole=True)
        sock.sendall(b"two")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        proxy.set(blackhole=False)  # this stream lost bytes: it stays silent
        sock.sendall(b"three")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        assert echo.received == b"one"
        assert [r.action for r in proxy.records()] == ["forwarded", "blackholed", "blackholed"]


def test_http_through_the_proxy(fake: Any, fake_url: str) -> None:
    (item_id,) = fake.generate_items(1)
    with FaultProxy.to_url(fake_url) as proxy:
        response = httpx.get(f"{proxy.url}/items/{item_id}", headers={"X-API-KEY": API_KEY})
        assert response.status_code == 200
        assert response.json()["_id"] == item_id
        assert proxy.records()[0].head == f"GET /items/{item_id} HTTP/1.1"
    assert fake.counts[item_id] == 1


def test_close_cuts_open_connections(echo: _EchoServer) -> None:
    proxy = _proxy(echo, blackhole=True).start()
    sock = _connect(proxy, timeout=2)
    try:
        sock.sendall(b"x")
        assert _wait(lambda: proxy.chunks_up == 1)
        started = time.monotonic()
        proxy.close()
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(10) == b""
        assert time.monotonic() - started < 2
        with pytest.raises(ConnectionRefusedError):
            _connect(proxy, timeout=0.5).close()
    finally:
        sock.close()


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("10.0.0.1", 80)
    proxy = FaultProxy("127.0.0.1", 1)
    with pytest.raises(ValueError, match="reset_rate"):
        proxy.set(reset_rate=1.5)
    with pytest.raises(ValueError, match="latency"):
        proxy.set(latency=-1)
