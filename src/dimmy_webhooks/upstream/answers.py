"""What the client reads of a Dimmy API answer: at most a cap of its body, and of an error
answer only the server's explanation, short and redacted.

Used by :mod:`.client` only; kept apart so the client's module is about requests and their
classification, this one about bytes and text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dimmy_webhooks.upstream.transport import Reply

DETAIL_LIMIT = 200
ERROR_BODY_LIMIT = 64 * 1024  # bytes of a non-2xx answer read: its detail is all we keep

__all__ = ["DETAIL_LIMIT", "ERROR_BODY_LIMIT", "Answer", "detail_of", "read_capped"]


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer read into memory: its status, headers (case-insensitive) and body."""

    status: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        """The body as text: the charset of its ``Content-Type``, else UTF-8, never failing."""
        charset = "utf-8"
        for part in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.lower() == "charset" and value:
                charset = value.strip('"').strip()
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")


def detail_of(response: Answer, redact: Callable[[str], str]) -> str:
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


async def read_capped(reply: Reply, limit: int) -> Answer | None:
    """The ``reply`` read into memory, at most ``limit`` bytes of its decoded body. Past that
    (or a ``Content-Length`` over it), a 2xx gives ``None``, the rest never read; any other
    answer is cut at :data:`ERROR_BODY_LIMIT` (only its detail is kept)."""
    status = reply.status
    ok = 200 <= status < 300
    if not ok:
        limit = min(limit, ERROR_BODY_LIMIT)
    declared = reply.headers.get("content-length", "")
    if ok and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in reply.chunks():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if ok:
                return None
            break
    body = b"".join(chunks)
    return Answer(status, reply.headers, body[:limit] if size > limit else body)
