"""The API's delivery ledger: every attempt to hand an item to an output, newest first.

Filtered by item, barcode, output, outcome (``status``, as the README names it, or
``outcome``) and time; the same rows as CSV and JSON Lines are in :mod:`.exports`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from dimmy_webhooks.models import ITEM_ID_PATTERN
from dimmy_webhooks.web.api.common import (
    BAD_STATUS,
    AttemptPage,
    LedgerWhere,
    Limit,
    RowCursor,
    api_router,
    attempt_page,
)
from dimmy_webhooks.web.deps import AccountDep, StoreDep

router = api_router()


@router.get("/deliveries", response_model=AttemptPage, responses=BAD_STATUS)
async def list_deliveries(
    store: StoreDep,
    where: LedgerWhere,
    account: AccountDep,
    item: Annotated[str | None, Query(pattern=ITEM_ID_PATTERN, description="an item id")] = None,
    barcode: Annotated[str | None, Query(max_length=200)] = None,
    limit: Limit = 100,
    before: RowCursor = None,
) -> dict[str, Any]:
    """The delivery ledger, newest first: every attempt to hand an item to an output, with its
    outcome, HTTP status, latency, an excerpt of the answer and the record id. "We never got
    parcel X" is ``?barcode=X`` (or ``?item=ID``)."""
    if where.matches_none:
        return attempt_page([], limit)
    rows = await store.attempts(
        item_id=item,
        barcode=barcode,
        before=before,
        limit=limit,
        account=account,
        **where.params(),
    )
    return attempt_page(rows, limit)
