"""One builder per model the tests make by hand: an inbox event, a stored item, settings, and
batches of ``items.scanned`` messages."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from dimmy_webhooks.config import Settings, load_settings
from dimmy_webhooks.devtools.sender import items_scanned_body
from dimmy_webhooks.items import normalise, version_of
from dimmy_webhooks.models import ITEMS_SCANNED, IncomingEvent, NormalisedItem, StoredItem

from .constants import SECRET, T0

ITEM_ID = "6592008029c8c3e4dc76256c"


def scanned_event(
    msg_id: str,
    ids: Sequence[str],
    *,
    at: float | None = None,
    headers: dict[str, str] | None = None,
    event_type: str = ITEMS_SCANNED,
) -> IncomingEvent:
    """A verified ``items.scanned`` webhook naming ``ids`` as the receiver puts it in the inbox:
    received ``at`` (default: now), with ``headers`` (default: its ``svix-id``)."""
    return IncomingEvent(
        msg_id,
        event_type,
        json.dumps({"item_ids": list(ids)}).encode(),
        {"svix-id": msg_id} if headers is None else headers,
        time.time() if at is None else at,
        len(ids),
    )


def stored_item(
    item_id: str = ITEM_ID,
    updated_at: str | None = None,
    content: str = "x",
    *,
    doc: Mapping[str, Any] | None = None,
    indent: int | None = None,
    barcode: str = "",
    version: str | None = None,
    fetched_at: float = T0,
    revision: int | None = None,
    dim_weight_divisor: float | None = None,
    **fields: Any,
) -> StoredItem:
    """An item as the store keeps it.

    Without ``doc``: fields given directly (``barcode`` and ``fields`` of
    :class:`NormalisedItem`), the raw text a small document with ``content`` in it, the version
    ``"<updated_at>#<content>"`` unless ``version`` is given. With ``doc``: an item document
    as Dimmy sends it, its raw text that document as JSON (``indent``), its fields and version
    derived as the worker derives them.
    """
    if doc is not None:
        raw = json.dumps(doc, indent=indent, ensure_ascii=False)
        normalised = normalise(doc, dim_weight_divisor=dim_weight_divisor)
        item = StoredItem(
            item=normalised,
            raw=raw,
            version=version_of(json.loads(raw), normalised),
            fetched_at=fetched_at,
        )
    else:
        values: dict[str, Any] = {
            "barcode": barcode or None,
            "barcodes": (barcode,) if barcode else (),
        }
        values.update(fields)
        normalised = NormalisedItem(id=item_id, updated_at=updated_at, **values)
        raw = json.dumps({"_id": item_id, "updated_at": updated_at, "c": content})
        item = StoredItem(
            item=normalised,
            raw=raw,
            version=f"{updated_at}#{content}" if version is None else version,
            fetched_at=fetched_at,
        )
    return item if revision is None else replace(item, revision=revision)


def make_settings(db_url: str, **overrides: Any) -> Settings:
    """The service's settings on ``db_url``: our webhook secret, no outputs, ``overrides``."""
    values: dict[str, Any] = {
        "webhook_secret": SECRET,
        "database_url": db_url,
        "outputs": "",
        "log_level": "INFO",
    }
    values.update(overrides)
    return load_settings(None, **values)


def make_events(
    rng: random.Random,
    ids: Sequence[str],
    n: int,
    per_event: int | tuple[int, int],
    prefix: str = "msg",
) -> list[tuple[str, bytes]]:
    """``n`` (message id, ``items.scanned`` body) pairs, each naming ``per_event`` distinct ids
    (a number, or a ``(low, high)`` range drawn per event) drawn from ``ids`` (so ids repeat
    across events)."""

    def size() -> int:
        return per_event if isinstance(per_event, int) else rng.randint(*per_event)

    return [
        (f"{prefix}_{index:06d}", items_scanned_body(rng.sample(list(ids), size())))
        for index in range(n)
    ]


def fetch_pairs(messages: Sequence[tuple[str, bytes]]) -> Counter[str]:
    """Per item id, how many events name it: the fetch jobs the workers must run (one per event
    and id, the same id in two events is fetched twice)."""
    pairs: Counter[str] = Counter()
    for _, body in messages:
        pairs.update(set(json.loads(body)["item_ids"]))
    return pairs
