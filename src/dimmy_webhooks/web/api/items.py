"""The API's items: one item, the lists, its versions and ledger, asking for it again.

``GET /api/items/{id}`` returns the stored item with ``raw`` exactly as fetched; ``/api/items``
pages in id order with ``after``, ``/api/items.json`` (the items page's twin) most recent first
with ``before``: cursors keep pages stable while data arrives.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import HTTPException, Query, Response
from pydantic import BaseModel, Field

from dimmy_webhooks.items import to_api_json
from dimmy_webhooks.models import StoredItem
from dimmy_webhooks.store import ReplayMode, Store
from dimmy_webhooks.web.api.common import (
    NOT_FOUND,
    AttemptOut,
    AttemptPage,
    ItemId,
    ItemOut,
    ItemWhere,
    Limit,
    RowCursor,
    api_router,
    attempt_dict,
    attempt_page,
    invalid_query,
    iso,
    item_page,
    json_response,
    or_404,
    timestamp,
)
from dimmy_webhooks.web.deps import AccountDep, ServicesDep, StoreDep, ViewerDep
from dimmy_webhooks.web.principal import Viewer

router = api_router()


class HoldOut(BaseModel):
    state: str = Field(description="held, released or rejected")
    reason: str | None
    note: str | None


class ItemDetail(ItemOut):
    hold: HoldOut | None = Field(description="quarantine: null when never held")
    deliveries: list[AttemptOut] = Field(description="the delivery ledger, newest first")


class ItemPage(BaseModel):
    items: list[ItemOut]
    next: str | None = Field(description="pass back as `after` for the next page")


@router.get(
    "/items/{item_id}",
    response_model=None,
    responses={200: {"model": ItemDetail}, **NOT_FOUND},
)
async def get_item(item_id: ItemId, store: StoreDep, viewer: ViewerDep) -> Response:
    """One stored item: ``raw`` exactly as fetched, its ``account``, normalised fields,
    ``fetched_at``, whether it is held in quarantine (``hold``), and its delivery ledger
    (``deliveries``, newest first). Another account's item, for an operator, is not found."""
    item = await stored_item(store, viewer, item_id)
    ledger = await store.attempts(item_id=item_id, limit=100, account=item.account)
    extra = {"hold": _hold(item), "deliveries": [attempt_dict(a) for a in ledger]}
    return json_response(to_api_json(item, extra))


async def stored_item(
    store: Store, viewer: Viewer, item_id: str, detail: str = "item not found"
) -> StoredItem:
    """The stored item ``item_id`` if ``viewer`` may see it; else 404 with ``detail``, the
    same answer whether it is missing or another account's."""
    item = await store.get_item(item_id)
    if item is None or not viewer.owns(item.account):
        raise HTTPException(status_code=404, detail=detail)
    return item


def _hold(item: StoredItem) -> dict[str, Any] | None:
    if item.hold_state is None:
        return None
    return {"state": item.hold_state, "reason": item.hold_reason, "note": item.hold_note}


@router.get("/items", response_model=None, responses={200: {"model": ItemPage}})
async def list_items(
    store: StoreDep,
    account: AccountDep,
    since: Annotated[
        str | None,
        Query(
            max_length=64,
            description="ISO-8601 date-time: items fetched at or after it",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    barcode: Annotated[str | None, Query(max_length=200)] = None,
    limit: Limit = 50,
    after: Annotated[str | None, Query(max_length=64, description="cursor: last id seen")] = None,
) -> Response:
    """Stored items in id order; pass ``next`` back as ``after`` for the next page."""
    items = await store.list_items(
        since=timestamp(since), barcode=barcode, limit=limit, after=after, account=account
    )
    following = items[-1].id if len(items) == limit else None
    return item_page([to_api_json(item) for item in items], following)


@router.post("/items/{item_id}/replay", responses=NOT_FOUND)
async def replay_item(
    item_id: ItemId,
    services: ServicesDep,
    viewer: ViewerDep,
    mode: ReplayMode = ReplayMode.REFETCH,
) -> dict[str, Any]:
    """Fetch one item again, or deliver its stored version to the outputs again (an
    operator: only an item of its account that is stored)."""
    if not viewer.admin:
        await stored_item(services.store, viewer, item_id)
    queued = await or_404(services.replay_item(item_id, mode), "item not found")
    return {"item_id": item_id, "mode": mode.value, "queued": queued}


class ItemBrowsePage(BaseModel):
    items: list[ItemOut]
    next: str | None = Field(description="pass back as `before` for the next page")


_CURSOR = r"^-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,2})?:[A-Za-z0-9_-]{1,128}$"


@router.get("/items.json", response_model=None, responses={200: {"model": ItemBrowsePage}})
async def browse_items(
    store: StoreDep,
    where: ItemWhere,
    account: AccountDep,
    limit: Limit = 50,
    before: Annotated[
        str | None, Query(max_length=200, pattern=_CURSOR, description="cursor")
    ] = None,
) -> Response:
    """The items page: items most recently stored first (``fetched_at`` in ``[since,
    until)``), found by id or barcode (``q``), scanner account, with or without dimensions."""
    cursor = None
    if before is not None:
        at, _, item_id = before.partition(":")
        try:
            cursor = (float(at), item_id)
        except ValueError:
            message = "not a cursor: pass back the `next` of the previous page"
            raise invalid_query("before", before, message, "value_error") from None
    items = await store.browse_items(replace(where, account=account), limit=limit, before=cursor)
    last = items[-1] if len(items) == limit else None
    following = f"{last.fetched_at!r}:{last.id}" if last is not None else None
    return item_page([to_api_json(item) for item in items], following)


class RevisionOut(BaseModel):
    revision: int
    version: str
    first_queued: str = Field(description="when its deliveries were first queued")
    deliveries: int = Field(description="deliveries queued for it (one per output)")


class VersionsOut(BaseModel):
    """An item's versions: the stored one, and every revision handed to the outputs."""

    item_id: str
    current: dict[str, Any] = Field(description="revision, version, fetched_at, hold")
    revisions: list[RevisionOut] = Field(description="newest first")
    event_ids: list[int] = Field(description="inbox events that named the item, newest first")


@router.get("/items/{item_id}/versions", response_model=VersionsOut, responses=NOT_FOUND)
async def item_versions(item_id: ItemId, store: StoreDep, viewer: ViewerDep) -> dict[str, Any]:
    """The item's revisions (the stored document is the newest; earlier ones are known by
    the deliveries queued for them) and the events that named it."""
    item = await stored_item(store, viewer, item_id)
    revisions, event_ids = await store.item_history(item_id)
    return {
        "item_id": item_id,
        "current": {
            "revision": item.revision,
            "version": item.version,
            "fetched_at": iso(item.fetched_at),
            "hold": item.hold_state,
        },
        "revisions": [
            {
                "revision": r.revision,
                "version": r.version,
                "first_queued": iso(r.first_queued),
                "deliveries": r.deliveries,
            }
            for r in revisions
        ],
        "event_ids": event_ids,
    }


@router.get("/items/{item_id}/deliveries", response_model=AttemptPage, responses=NOT_FOUND)
async def item_deliveries(
    item_id: ItemId,
    store: StoreDep,
    viewer: ViewerDep,
    limit: Limit = 100,
    before: RowCursor = None,
) -> dict[str, Any]:
    """The item's delivery ledger, newest first (the same rows as
    ``/api/deliveries?item=ID``)."""
    item = await stored_item(store, viewer, item_id)
    rows = await store.attempts(item_id=item_id, before=before, limit=limit, account=item.account)
    return attempt_page(rows, limit)
