"""Rendering the dashboard's pages: one Jinja2 environment, autoescaping everything.

Every value a page shows came from outside (item fields, headers, bodies, errors, output
names): templates print them with ``{{ }}`` only, which escapes, and never mark anything
``|safe``. Only ``http(s)`` URLs become links or images (:func:`http_url`); anything else is
shown as text. A page's part that refreshes itself is a template of its own, which the page
includes and ``?live=1`` (the dashboard's script) renders alone.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse

from dimmy_webhooks import __version__
from dimmy_webhooks.observe.logs import redact_urls

PAGE_CSP = (
    "default-src 'self'; img-src 'self' https:; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
"""The pages' Content-Security-Policy: the service's own, plus item photos from https hosts.
No ``'unsafe-inline'``: no inline script, no ``style`` attribute (the charts are SVG drawn
with presentation attributes)."""
_ORIGIN = re.compile(
    r"^http://[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^http://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"
)


def page_csp(api_url: str | None = None) -> str:
    """:data:`PAGE_CSP`, whose ``img-src`` also allows the origin of ``api_url`` when that is
    plain ``http`` (``https:`` is allowed already): the fake Dimmy API of the demo and of
    development serves its items' photos on loopback. Only the configured API's origin, set
    by the operator, is added; a photo URL inside an item never changes the policy."""
    if not api_url:
        return PAGE_CSP
    try:
        parts = urlsplit(api_url.strip())
    except ValueError:
        return PAGE_CSP
    origin = f"{parts.scheme.lower()}://{parts.netloc.rpartition('@')[2]}"
    if not _ORIGIN.match(origin):
        return PAGE_CSP  # https (already allowed), or nothing a policy can safely name
    return PAGE_CSP.replace("img-src 'self' https:", f"img-src 'self' https: {origin}")


def http_url(value: object) -> str | None:
    """``value`` when it is an absolute ``http``/``https`` URL with a host, else ``None``."""
    if not isinstance(value, str) or len(value) > 4000:
        return None
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    if any(ord(c) < 0x21 or c in "\\\x7f" for c in value.strip()):
        return None
    return value.strip()


def iso(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def short_time(seconds: float | None) -> str:
    """UTC, to the second (the script shows it in the browser's time zone)."""
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(seconds: float | None) -> str:
    """A duration as people say it: ``45 s``, ``12 min``, ``3.5 h``, ``2 d``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def pretty_json(text: str | bytes) -> str:
    """A JSON document indented for reading; text that is not JSON as it is."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return text


def query(params: dict[str, Any], **changes: Any) -> str:
    """``params`` with ``changes`` as a query string (``None`` and ``""`` left out)."""
    merged = {**params, **changes}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "")})


_ENV = Environment(
    loader=PackageLoader("dimmy_webhooks.web.dashboard", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(
    http_url=http_url,
    iso=iso,
    short_time=short_time,
    age=age,
    number=number,
    pretty_json=pretty_json,
    redact=redact_urls,
)
_ENV.globals.update(query=query, version=__version__)


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    live: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """The page ``name``, or for ``?live=1`` its part that refreshes itself (the template
    ``live``, which the page includes), never cached."""
    if live is not None and request.query_params.get("live") == "1":
        name = live
    body = _ENV.get_template(name).render({"request": request, **context})
    headers = {"cache-control": "no-store"}
    return HTMLResponse(body, status_code=status_code, headers=headers)
