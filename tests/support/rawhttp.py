"""Raw HTTP/1.1 on a socket, for what an HTTP client library will not send."""

from __future__ import annotations

import socket


def raw_connection(url: str, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to ``url``'s host and port (``http://127.0.0.1:PORT``)."""
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def raw_request(url: str, head: str) -> socket.socket:
    """A connection to ``url`` on which ``head`` (request line and headers) was sent."""
    sock = raw_connection(url)
    sock.sendall(head.encode())
    return sock


def read_status(sock: socket.socket) -> int:
    """The status of the next response on ``sock`` (raises ``ValueError`` or ``IndexError``
    when the connection closed without one)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed ``sock``, without waiting (what was sent to it is read and
    dropped)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True
    finally:
        sock.settimeout(timeout)


def webhook_head(body: bytes, headers: dict[str, str], *, length: int | None = None) -> str:
    """The head of ``POST /webhook`` with ``headers`` and a ``Content-Length`` of ``length``
    (default: ``len(body)``)."""
    return (
        f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: "
        f"{len(body) if length is None else length}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    )
