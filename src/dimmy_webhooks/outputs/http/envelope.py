"""What a forward sends and what it keeps of the answer.

The body is a JSON envelope (docs/forwarding.md has its schema)::

    {"type": "item.created" | "item.updated", "schema_version": 1,
     "timestamp": "<when this attempt was made, ISO-8601 UTC>",
     "data": <the item as GET /api/items/{id} returns it: id, version, revision, the
              normalised fields and raw exactly as fetched>}

signed with the Standard Webhooks scheme (:func:`signed_request_headers`). Of the answer, the
ledger keeps an excerpt and the record id the WMS gave (:func:`read_answer`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from dimmy_webhooks.items import api_fields, format_timestamp
from dimmy_webhooks.models import StoredItem
from dimmy_webhooks.signatures import signed_headers

ENVELOPE_SCHEMA_VERSION = 1
EXCERPT_LIMIT = 500
"""Characters of a WMS answer kept in the ledger."""
ANSWER_LIMIT = 65_536
"""Bytes of a WMS answer read at most: the excerpt and the record id come from them. The rest
is never read (the connection is closed instead); the status, which came first, counts."""


def envelope(
    item: StoredItem,
    now: float,
    *,
    include: tuple[str, ...] | None = None,
    rename: Mapping[str, str] | None = None,
) -> bytes:
    """The JSON body of one forward: the fields ``include`` keeps (all when ``None``), named as
    ``rename`` says; ``raw`` written as stored, never re-serialised."""
    rename = rename or {}
    data = api_fields(item)
    if include is not None:
        data = {k: v for k, v in data.items() if k in include}
    renamed = {rename.get(k, k): v for k, v in data.items()}
    head = {
        "type": "item.created" if item.revision <= 1 else "item.updated",
        "schema_version": ENVELOPE_SCHEMA_VERSION,
        "timestamp": format_timestamp(now),
    }
    fields = json.dumps(renamed, ensure_ascii=False, separators=(",", ":"))
    if include is None or "raw" in include:
        raw_key = json.dumps(rename.get("raw", "raw"))
        fields = f"{fields[:-1]}{',' if renamed else ''}{raw_key}:{item.raw}}}"
    text = json.dumps(head, separators=(",", ":"))
    return f'{text[:-1]},"data":{fields}}}'.encode()


def signed_request_headers(
    key: bytes, idempotency_key: str, body: bytes, now: float
) -> dict[str, str]:
    """``webhook-id`` (the delivery's idempotency key, also sent as ``Idempotency-Key``),
    ``webhook-timestamp``, ``webhook-signature`` and the content type."""
    headers = signed_headers(key, idempotency_key, body, timestamp=int(now), family="webhook")
    headers["idempotency-key"] = idempotency_key
    headers["content-type"] = "application/json"
    return headers


def read_answer(
    content: bytes, headers: Mapping[str, str], key: str
) -> tuple[str | None, str | None]:
    """An excerpt of the answer, and the record id the WMS gave: ``key`` of a JSON object
    answer, else ``Location``."""
    return _excerpt(content), _record_id(content, headers, key)


def _excerpt(content: bytes) -> str | None:
    if not content:
        return None
    text = content[: EXCERPT_LIMIT * 4].decode("utf-8", errors="replace")
    return text[:EXCERPT_LIMIT]


def _record_id(content: bytes, headers: Mapping[str, str], key: str) -> str | None:
    if content and len(content) <= ANSWER_LIMIT:
        try:
            value = json.loads(content)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict) and isinstance(value.get(key), str | int):
            return str(value[key])[:200]
    location = headers.get("location")
    return location[:200] if location else None
