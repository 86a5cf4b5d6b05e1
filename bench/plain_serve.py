"""``dimmy-webhooks`` with one thing changed: ``serve`` runs on uvicorn's own httptools protocol
instead of :mod:`dimmy_webhooks.intake.httpserver`'s, which adds the head and connection limits.

``python bench/plain_serve.py serve --no-worker ...`` is the baseline of ``ack.py
--http-baseline``: the same command, settings and code path as ``dimmy-webhooks serve``, so
the difference between the two rows is what the limits cost. Not for production.
"""

from __future__ import annotations

import sys
from typing import Any

from dimmy_webhooks import cli
from dimmy_webhooks.intake import httpserver


def _uvicorns_own(limits: Any) -> Any:
    return "httptools"


# intake.serving.server_config looks up httpserver.protocol when serve runs: it picks this up
httpserver.protocol = _uvicorns_own  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(cli.main())
