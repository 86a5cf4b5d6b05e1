"""The HTTP client of the service's two outbound paths: the Dimmy API fetch
(:mod:`dimmy_webhooks.upstream.client`) and the ``http:`` hand-off
(:mod:`dimmy_webhooks.outputs.http`). Both use aiohttp sessions made here, one way:

- TLS verified against ``SSL_CERT_FILE`` (or ``SSL_CERT_DIR``) when set, else certifi's bundle
  (:func:`tls_context`);
- each phase (connecting, TLS included; each read) bounded by ``timeout``, the whole exchange by
  three times it;
- one request per call: aiohttp's hidden retry of an idempotent request on a new connection
  (:data:`RETRY_ATTRIBUTE`, private, no public switch) is turned off, because the durable queue
  retries and counts attempts; callers pass ``allow_redirects=False`` (a redirect is an answer);
- no cookies kept; a proxy from ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` unless
  ``NO_PROXY`` names the host, as the previous client (httpx) read them, but looked up once per
  session (:func:`env_proxy`), not on every request as aiohttp's ``trust_env`` would.

A failure is described for an operator by :func:`failure`: "timed out" only for a timeout,
"connection refused" or "connection error" otherwise, and never the URL (a query or user-info
may hold a secret).
"""

from __future__ import annotations

import errno
import os
import re
import ssl
import urllib.parse
import urllib.request
from collections.abc import Mapping

import aiohttp
import certifi

RETRY_ATTRIBUTE = "_retry_connection"
"""The :class:`aiohttp.ClientSession` attribute that, when true (aiohttp's default), sends a GET
once more on a new connection when a reused one fails. ``tests/unit/test_client.py`` fails if an
aiohttp release renames or removes it."""

REASON_LIMIT = 300
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")


def tls_context() -> ssl.SSLContext:
    """A verifying client context: the CA bundle of ``SSL_CERT_FILE`` or the directory of
    ``SSL_CERT_DIR`` when set (as the previous client, httpx, read them), else certifi's."""
    cafile = os.environ.get("SSL_CERT_FILE")
    if cafile:
        return ssl.create_default_context(cafile=cafile)
    capath = os.environ.get("SSL_CERT_DIR")
    if capath:
        return ssl.create_default_context(capath=capath)
    return ssl.create_default_context(cafile=certifi.where())


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``<scheme>_PROXY``, else ``ALL_PROXY``),
    or ``None``: none set, or ``NO_PROXY`` covers its host."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or not parts.hostname:
        return None
    if urllib.request.proxy_bypass(parts.hostname):  # NO_PROXY, read from the environment
        return None
    return proxy


def session(
    *,
    url: str,
    concurrency: int,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    base_url: str | None = None,
    auto_decompress: bool = True,
    trace_configs: list[aiohttp.TraceConfig] | None = None,
) -> aiohttp.ClientSession:
    """A session of at most ``concurrency`` connections to ``url``'s host (through the proxy
    the environment names for it); call inside the running loop."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, ssl=tls_context())
    http = aiohttp.ClientSession(
        base_url=base_url,
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=3 * timeout, sock_connect=timeout, sock_read=timeout),
        headers=dict(headers) if headers is not None else None,
        auto_decompress=auto_decompress,
        trace_configs=trace_configs,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        proxy=env_proxy(url),
    )
    no_retry(http)
    return http


def no_retry(http: aiohttp.ClientSession) -> None:
    """Turn off aiohttp's hidden retry of idempotent requests (:data:`RETRY_ATTRIBUTE`)."""
    if not isinstance(getattr(http, RETRY_ATTRIBUTE, None), bool):
        raise RuntimeError(
            f"aiohttp {aiohttp.__version__} has no ClientSession.{RETRY_ATTRIBUTE}: its hidden "
            "retry cannot be turned off (see dimmy_webhooks/outbound.py)"
        )
    setattr(http, RETRY_ATTRIBUTE, False)


def timed_out(exc: BaseException) -> bool:
    """A timeout (ours, or one of aiohttp's phases), as opposed to any other failure."""
    return isinstance(exc, TimeoutError)


def failure(exc: BaseException) -> str:
    """What went wrong with an exchange, short and without the URL: ``timed out (...)``,
    ``connection refused (...)``, ``TLS ...`` or ``connection error (...)``."""
    name = type(exc).__name__
    if timed_out(exc):
        text = f"timed out ({name})"
    elif isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = exc.certificate_error
        detail = getattr(cause, "verify_message", None) or type(cause).__name__
        text = f"TLS certificate refused ({name}: {detail})"
    elif isinstance(exc, aiohttp.ClientSSLError):
        text = f"TLS error ({name}: {_os_reason(exc.os_error)})"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, ConnectionRefusedError) or os_error.errno == errno.ECONNREFUSED:
            text = f"connection refused ({name})"
        else:
            text = f"connection error ({name}: {_os_reason(os_error)})"
    elif isinstance(exc, aiohttp.ClientResponseError):  # its str() holds the URL
        text = f"connection error ({name}: {exc.status}, {exc.message})"
    elif isinstance(exc, aiohttp.InvalidURL):  # its str() is the URL
        text = f"connection error ({name})"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        text = f"connection error ({name}: the server closed the connection)"
    else:
        detail = str(exc)
        text = f"connection error ({name}{': ' + detail if detail else ''})"
    text = _URL.sub("<url>", text)  # some messages name the URL: its query may hold a secret
    return " ".join(text.split())[:REASON_LIMIT]


def _os_reason(error: OSError) -> str:
    return error.strerror or type(error).__name__
