"""The client's one seam to the network: :class:`Transport` sends a request and hands back the
answer as a stream (:class:`Reply`); :class:`AiohttpTransport` is the real one. Tests answer
in-process with a fake of their own (``tests/support/transport.py``).

A transport raises :class:`aiohttp.ClientError`, :class:`TimeoutError` or :class:`OSError`; the
client maps them (:func:`dimmy_webhooks.outbound.failure`: a timeout is "timed out", anything else
a connection error). A reply's body is read at most as far as the client asks
(:func:`~dimmy_webhooks.upstream.answers.read_capped`); leaving the ``send`` block before its
end drops the connection rather than reading the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import aiohttp

from dimmy_webhooks import outbound

__all__ = ["AiohttpTransport", "Reply", "Transport"]


class Reply(Protocol):
    """An answer whose head has arrived: the body is still to be read."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive names."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body, without its content encoding, as it arrives."""
        ...


class Transport(Protocol):
    def send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str],
    ) -> AbstractAsyncContextManager[Reply]:
        """One request to ``path`` (below the base URL), no retry, no redirect followed."""
        ...

    async def aclose(self) -> None: ...


class _AiohttpReply:
    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    def chunks(self) -> AsyncIterator[bytes]:
        return self._response.content.iter_any()


class AiohttpTransport:
    """One :class:`aiohttp.ClientSession` (:func:`dimmy_webhooks.outbound.session`: at most
    ``concurrency`` connections, ``timeout`` per phase and three times it in all), opened on the
    first request, inside the running loop."""

    def __init__(self, base_url: str, *, concurrency: int, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._concurrency = concurrency
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str],
    ) -> AsyncIterator[Reply]:
        http = self._session
        if http is None:
            http = self._session = outbound.session(
                url=self.base_url, concurrency=self._concurrency, timeout=self._timeout
            )
        async with http.request(
            method, self.base_url + path, params=params, headers=headers, allow_redirects=False
        ) as response:
            try:
                yield _AiohttpReply(response)
            finally:
                if not response.content.at_eof():
                    response.close()  # the rest is never read: drop the connection

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
