"""What the client reads of a Dimmy API answer: at most a cap of its body, and of an error
answer only the server's explanation, short and redacted.

Used by :mod:`.client` only; kept apart so the client's module is about requests and their
classification, this one about bytes and text.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

DETAIL_LIMIT = 200
ERROR_BODY_LIMIT = 64 * 1024  # bytes of a non-2xx answer read: its detail is all we keep

__all__ = ["DETAIL_LIMIT", "ERROR_BODY_LIMIT", "detail_of", "read_capped"]


def detail_of(response: httpx.Response, redact: Callable[[str], str]) -> str:
    """The server's explanation (FastAPI ``detail``, string or list; ``message``; or the text),
    redacted, then shortened to about :data:`DETAIL_LIMIT` characters."""
    try:
        body = json.loads(response.content)
    except ValueError:
        text = response.text.strip()
    else:
        if isinstance(body, dict) and "detail" in body:
            detail = body["detail"]
            if isinstance(detail, list):
                text = "; ".join(_validation_entry(entry) for entry in detail)
            else:
                text = str(detail)
        elif isinstance(body, dict) and "message" in body:
            text = str(body["message"])
        else:
            text = response.text.strip()
    text = redact(" ".join(text.split()))
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 3] + "..."


def _validation_entry(entry: object) -> str:
    if isinstance(entry, dict):
        loc = ".".join(str(part) for part in entry.get("loc") or ())
        msg = str(entry.get("msg", ""))
        return f"{loc}: {msg}" if loc else msg
    return str(entry)


async def read_capped(response: httpx.Response, limit: int) -> httpx.Response | None:
    """The streamed ``response`` read into memory, at most ``limit`` bytes of its decoded
    body. Past that (or a ``Content-Length`` over it), a 2xx gives ``None``, the rest never
    read; any other answer is cut at :data:`ERROR_BODY_LIMIT` (only its detail is kept). The
    answer returned carries the body read, without its content encoding."""
    ok = 200 <= response.status_code < 300
    if not ok:
        limit = min(limit, ERROR_BODY_LIMIT)
    declared = response.headers.get("content-length", "")
    if ok and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if ok:
                return None
            break
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    body = b"".join(chunks)
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=body[:limit] if size > limit else body,
        request=response.request,
    )
