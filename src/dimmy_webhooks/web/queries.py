"""Query strings the web layer reads: no control characters in any parameter (S25).

A NUL cannot be stored in or compared with PostgreSQL text, and no filter, cursor or date of
the API or the dashboard has a use for control characters: :class:`QueryGuard` answers ``400``
naming the parameter before a route (or a streamed export that has already sent its head) sees
the request, the same on every backend.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""C0 controls (tab, CR and LF included), DEL and C1 controls."""


def control_character_in(query_string: bytes) -> str | None:
    """Why a query string is refused (the first parameter carrying a control character, in
    its name or its value, once percent-decoded), or ``None``."""
    if not query_string:
        return None
    for name, value in QueryParams(query_string).multi_items():
        found = CONTROL.search(name) or CONTROL.search(value)
        if found is not None:
            shown = CONTROL.sub("?", name)[:64]
            return (
                f"query parameter {shown!r} contains a control character "
                f"(U+{ord(found.group()):04X}): not accepted"
            )
    return None


NO_CONTROLS = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"
"""The rule as a JSON Schema ``pattern``, for the OpenAPI document (:func:`document`)."""


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (an OpenAPI document) with the rule written into every string query
    parameter that has no pattern of its own (one that has names its values: none is a
    control character), so a client generated from it knows what is refused."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") != "query":
                    continue
                spec = parameter.get("schema", {})
                for variant in [spec, *spec.get("anyOf", [])]:
                    if variant.get("type") == "string" and "pattern" not in variant:
                        variant["pattern"] = NO_CONTROLS
    return schema


class QueryGuard:
    """ASGI middleware refusing (``400``) a request whose query string carries a control
    character (:func:`control_character_in`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = None
        if scope["type"] == "http":
            reason = control_character_in(scope.get("query_string", b""))
        if reason is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"detail": reason}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
