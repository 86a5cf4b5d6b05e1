"""Plain value objects passed between the parts. No IO, no imports from this package."""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any

ITEM_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
"""What an item id may be: letters, digits, ``_`` and ``-``, 1 to 128 of them. Dimmy's ids are
24-hex ObjectIds; the rule is wider so that another id format still works, and narrow enough that
an id can never change the path of a request made with it (no ``.``, ``/``, ``%``, ``?``, ``#``:
``GET /items/{id}`` stays that one item's URL)."""
_ITEM_ID = re.compile(ITEM_ID_PATTERN)

ITEMS_SCANNED = "items.scanned"
FULL_PAYLOAD = "item.scanned.full_payload"
UNKNOWN = "unknown"


def valid_item_id(value: object) -> bool:
    """Whether ``value`` is a string that :data:`ITEM_ID_PATTERN` accepts."""
    return isinstance(value, str) and _ITEM_ID.match(value) is not None


def nested_deeper_than(value: object, limit: int) -> bool:
    """Whether the JSON value ``value`` (as :func:`json.loads` gives it) nests arrays and
    objects more than ``limit`` levels deep. Iterative: any depth is safe to ask about."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def nesting_bound(text: bytes) -> int:
    """An upper bound of how deep the JSON text ``text`` nests arrays and objects: how many
    ``[`` and ``{`` bytes it holds.

    Every level opens with one of those characters, and in each encoding :func:`json.loads`
    reads (UTF-8, -16, -32) each of them is a byte of that value of its own; those inside strings
    only raise the count. A text whose bound is within a limit is therefore never nested deeper
    than it, and :func:`nested_deeper_than` need not walk its parsed value (the walk visits
    every value in Python; the count is two passes in C over the bytes).
    """
    return text.count(b"[") + text.count(b"{")


def classify_event(payload: object) -> str:
    """Tell the event type from the body's shape (no header carries it).

    ``{"item_ids": [...]}`` is ``items.scanned``; an object with ``_id`` is the full item;
    anything else is ``unknown`` (kept, acknowledged, never processed).
    """
    if isinstance(payload, dict):
        ids = payload.get("item_ids")
        if isinstance(ids, list):
            return ITEMS_SCANNED
        if isinstance(payload.get("_id"), str):
            return FULL_PAYLOAD
    return UNKNOWN


class InsertOutcome(enum.Enum):
    """What the inbox did with a webhook."""

    ACCEPTED = "accepted"  # new message id, stored
    DUPLICATE = "duplicate"  # seen before, nothing added
    REQUEUED = "requeued"  # seen before and its work had ended dead: put back in the queue


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """A verified webhook, as it goes into the inbox."""

    message_id: str
    event_type: str
    body: bytes
    headers: dict[str, str]
    received_at: float
    item_count: int | None = None
    account: str = "default"


class Source(enum.StrEnum):
    """How an item first reached the store."""

    WEBHOOK = "webhook"  # fetched for an items.scanned event, or a full payload
    REPLAY = "replay"  # fetched because an operator asked (replay --item)
    POLL = "poll"  # read by the poller from GET /items
    BACKFILL = "backfill"  # read by dimmy-webhooks backfill


class JobKind(enum.StrEnum):
    """The kinds of work in the queue."""

    EVENT = "event"  # expand one inbox event (fan out ids, store a full payload)
    FETCH = "fetch"  # GET /items/{id} and store it
    DELIVER = "deliver"  # hand one item version to one output


class Lane(enum.IntEnum):
    """Which work is claimed first: a lower lane before a higher one, whatever their age."""

    LIVE = 0  # a webhook's work as it arrives: someone on the dock may be waiting for it
    POLL = 1  # deliveries of what the poller or a backfill read
    REPLAY = 2  # put back by an operator's replay or a sender's resend of dead work


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed unit of work. ``lease_token`` must accompany every write about it."""

    id: int
    kind: JobKind
    event_id: int | None
    item_id: str | None
    output: str | None
    version: str | None
    attempts: int
    lease_token: str
    revision: int | None = None  # deliveries: the item revision they hand on
    lane: Lane = Lane.LIVE
    seq: int = 0  # a fetch's position in its event; its deliveries take it over
    account: str = "default"  # the Dimmy account whose work it is


@dataclass(frozen=True, slots=True)
class NormalisedItem:
    """Fields derived from an item's raw JSON; every field ``None``/empty when absent."""

    id: str
    created_at: str | None = None
    updated_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    owner_id: str | None = None
    scanner_account_id: str | None = None
    flow_id: str | None = None
    width: float | None = None
    height: float | None = None
    depth: float | None = None
    dimension_unit: str | None = None
    volume: float | None = None
    volume_unit: str | None = None
    weight: float | None = None
    weight_unit: str | None = None
    dim_weight: float | None = None
    billable_weight: float | None = None
    barcode: str | None = None
    barcodes: tuple[str, ...] = ()
    photo_urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredItem:
    """An item as kept in the item store: the raw JSON text as fetched plus normalised fields."""

    item: NormalisedItem
    raw: str
    version: str
    fetched_at: float
    revision: int = 0
    """How many stored changes led to this version (1: the first); 0 before it is stored."""
    hold_state: str | None = None
    """``None``, or ``held`` (quarantined: no output gets it), ``released`` or ``rejected``."""
    hold_reason: str | None = None
    hold_note: str | None = None
    account: str = "default"
    """The Dimmy account the item was fetched for (``config.accounts``)."""

    @property
    def held(self) -> bool:
        return self.hold_state == "held"

    @property
    def id(self) -> str:
        return self.item.id

    def raw_json(self) -> Any:
        """The raw document parsed (the exact value Dimmy returned)."""
        return json.loads(self.raw)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An inbox event as listed by the JSON API."""

    id: int
    message_id: str
    event_type: str
    status: str
    received_at: float
    item_count: int | None = None
    last_error: str | None = None
    jobs: dict[str, int] = field(default_factory=dict)
    account: str = "default"


class ReplayMode(enum.StrEnum):
    """What a replay does with work that already ran."""

    REFETCH = "refetch"  # fetch the items from Dimmy again (or re-expand the event)
    REDELIVER = "redeliver"  # hand the stored item to the outputs again


@dataclass(frozen=True, slots=True)
class Lease:
    """Who takes new work on the spot, and for how long (see ``Store.save_item``)."""

    owner: str
    seconds: float


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What ``Store.save_item`` did: whether the item changed, and the delivery jobs it queued
    already leased to the caller (empty unless a lease was asked for)."""

    changed: bool
    deliveries: list[Job]
    revision: int = 0  # the item's revision now (0: unknown, the item was not changed)


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the receiving side answered to one delivery (kept in the ledger); ``note`` says why
    nothing was sent (a destination's filter)."""

    status_code: int | None = None
    latency_ms: float | None = None
    excerpt: str | None = None
    record_id: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One attempt to hand one item revision to one output, as the ledger keeps it.

    ``outcome`` is ``delivered``, ``filtered`` (the destination does not take such items),
    ``superseded`` (a newer revision exists: not sent), ``failed`` (will be retried) or ``dead``.
    """

    item_id: str
    output: str
    idempotency_key: str
    attempt: int
    started_at: float
    outcome: str
    revision: int | None = None
    version: str | None = None
    latency_ms: float | None = None
    status_code: int | None = None
    error: str | None = None
    response_excerpt: str | None = None
    record_id: str | None = None
    job_id: int = 0
    id: int = 0
    account: str = "default"


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts of the whole queue: events and jobs by status, stored items, and the age in
    seconds of the oldest pending job (``None``: none pending)."""

    events: dict[str, int]
    jobs: dict[str, int]
    items: int
    oldest_pending_age: float | None
