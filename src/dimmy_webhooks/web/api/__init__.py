"""The JSON API under ``/api`` (OpenAPI at ``/openapi.json``), one router per resource.

:mod:`.items`, :mod:`.events`, :mod:`.deliveries` (the ledger), :mod:`.quarantine`,
:mod:`.overview` (the overview and reconciliation) and :mod:`.exports` (CSV and JSON Lines,
streamed); :mod:`.common` holds what they share. Every route is behind the admin token, an
account's operator token or a dashboard session
(:func:`~dimmy_webhooks.web.auth.require_viewer`), and shows only the accounts its viewer may
see (:mod:`dimmy_webhooks.web.principal`); each dashboard page has its JSON twin here.

May import: :mod:`dimmy_webhooks.web.deps` and what it serves (services, store, models).
"""

from __future__ import annotations

from fastapi import APIRouter

from dimmy_webhooks.web.api import deliveries, events, exports, items, overview, quarantine

router = APIRouter()
for _module in (items, events, deliveries, exports, quarantine, overview):
    router.include_router(_module.router)

__all__ = ["router"]
