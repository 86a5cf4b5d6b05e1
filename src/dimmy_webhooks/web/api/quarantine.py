"""The API's quarantine: item versions held by the plausibility rules, released or rejected.

Held versions reach no output until an operator decides; the decision's note is kept with
the item.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from dimmy_webhooks.items import to_api_json
from dimmy_webhooks.services import Services
from dimmy_webhooks.web.api.common import NOT_FOUND, ItemId, ItemOut, Limit, api_router, or_404
from dimmy_webhooks.web.api.items import stored_item
from dimmy_webhooks.web.deps import AccountDep, ServicesDep, StoreDep, ViewerDep
from dimmy_webhooks.web.principal import Viewer

router = api_router()


class HeldOut(BaseModel):
    id: str
    revision: int
    reason: str | None
    barcode: str | None
    item: ItemOut


class Decision(BaseModel):
    note: str = Field(min_length=1, max_length=1000, description="why: kept with the item")


@router.get("/quarantine")
async def list_quarantine(
    store: StoreDep, account: AccountDep, limit: Limit = 50
) -> dict[str, list[HeldOut]]:
    """Item versions held by the plausibility rules (``DIMMY_VALIDATE_*``): no output gets
    them until released."""
    held = await store.held_items(limit=limit, account=account)
    return {
        "items": [
            HeldOut(
                id=item.id,
                revision=item.revision,
                reason=item.hold_reason,
                barcode=item.item.barcode,
                item=ItemOut.model_validate_json(to_api_json(item)),
            )
            for item in held
        ]
    }


@router.post("/quarantine/{item_id}/release", responses=NOT_FOUND)
async def release_held(
    item_id: ItemId, decision: Decision, services: ServicesDep, viewer: ViewerDep
) -> dict[str, Any]:
    """Release a held item: its deliveries are queued, with the operator's note kept."""
    return await _decide(services, viewer, item_id, decision, release=True)


@router.post("/quarantine/{item_id}/reject", responses=NOT_FOUND)
async def reject_held(
    item_id: ItemId, decision: Decision, services: ServicesDep, viewer: ViewerDep
) -> dict[str, Any]:
    """Reject a held item: it is never delivered (a newer version is checked again)."""
    return await _decide(services, viewer, item_id, decision, release=False)


_NOT_HELD = "item is not held in quarantine"


async def _decide(
    services: Services, viewer: Viewer, item_id: str, decision: Decision, *, release: bool
) -> dict[str, Any]:
    if not viewer.admin:  # another account's item is answered as one that is not held
        await stored_item(services.store, viewer, item_id, _NOT_HELD)
    decided = services.decide_hold(item_id, release=release, note=decision.note)
    queued = await or_404(decided, _NOT_HELD)
    return {"item_id": item_id, "state": "released" if release else "rejected", "queued": queued}
