"""Plausibility rules applied to every stored item version before it is handed to any output.

Dimensional weight drives shipping cost: a wrong unit or a 0 x 0 x 0 box reaching the
warehouse system costs money. An item version that breaks a rule is stored (the raw document is
kept, as always) but held in quarantine with its reasons: no output sees it until an operator
releases it, with a note (``dimmy-webhooks quarantine release``, ``POST
/api/quarantine/{id}/release``), or rejects it. A newer version of the item is checked again on
its own.

The rules are settings (``DIMMY_VALIDATE_*``), in the stored units (``DIMMY_DIMENSION_UNIT``,
``DIMMY_WEIGHT_UNIT``). One rule always holds: measured sides are larger than 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from dimmy_webhooks.config import Settings
from dimmy_webhooks.items import to_stored_item
from dimmy_webhooks.models import NormalisedItem, StoredItem


@dataclass(frozen=True, slots=True)
class Rules:
    """What a deliverable item version must satisfy; ``None`` bounds are not checked."""

    min_side: float | None = None
    max_side: float | None = None
    min_weight: float | None = None
    max_weight: float | None = None
    require_dimensions: bool = False
    require_weight: bool = False
    require_barcode: bool = False
    require_photo: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Rules:
        """Each rule is the setting of its name, ``DIMMY_VALIDATE_<RULE>``."""
        return cls(
            **{rule.name: getattr(settings, f"validate_{rule.name}") for rule in fields(cls)}
        )

    def check(self, item: NormalisedItem) -> str | None:
        """Why ``item`` must be held (every broken rule, ``; ``-separated), or ``None``."""
        reasons = [*self._dimensions(item), *self._weight(item)]
        if self.require_barcode and item.barcode is None:
            reasons.append("no barcode")
        if self.require_photo and not item.photo_urls:
            reasons.append("no photo")
        return "; ".join(reasons) or None

    def _dimensions(self, item: NormalisedItem) -> list[str]:
        sides = [side for side in (item.width, item.height, item.depth) if side is not None]
        if not sides:
            return ["no dimensions"] if self.require_dimensions else []
        unit, smallest, largest = item.dimension_unit or "", min(sides), max(sides)
        reasons = []
        if smallest <= 0:
            reasons.append(f"a side of {smallest:g} {unit}".rstrip())
        elif self.min_side is not None and smallest < self.min_side:
            reasons.append(f"a side of {smallest:g} {unit} is under {self.min_side:g}")
        if self.max_side is not None and largest > self.max_side:
            reasons.append(f"a side of {largest:g} {unit} is over {self.max_side:g}")
        return reasons

    def _weight(self, item: NormalisedItem) -> list[str]:
        if item.weight is None:
            return ["no weight"] if self.require_weight else []
        weight, unit = item.weight, item.weight_unit or ""
        if self.min_weight is not None and weight < self.min_weight:
            return [f"weight {weight:g} {unit} is under {self.min_weight:g}"]
        if self.max_weight is not None and weight > self.max_weight:
            return [f"weight {weight:g} {unit} is over {self.max_weight:g}"]
        return []


@dataclass(frozen=True, slots=True)
class Intake:
    """How a document read from the Dimmy API becomes a stored item version: the stored units,
    the dimensional-weight divisor and the plausibility rules (the worker and the poller share
    one)."""

    dimension_unit: str = "cm"
    weight_unit: str = "kg"
    dim_weight_divisor: float | None = None
    rules: Rules = field(default_factory=Rules)
    max_item_bytes: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Intake:
        return cls(
            dimension_unit=settings.dimension_unit,
            weight_unit=settings.weight_unit,
            dim_weight_divisor=settings.dim_weight_divisor,
            rules=Rules.from_settings(settings),
            max_item_bytes=settings.max_item_bytes,
        )

    def prepare(
        self, doc: Mapping[str, Any], raw: str, *, fetched_at: float, account: str = "default"
    ) -> StoredItem:
        """The item version of ``account`` to store (held, with the reasons, when it breaks a
        rule). Raises ``ValueError`` for a document that is not an item, or whose text ``raw``
        is longer than ``max_item_bytes`` in UTF-8 (``DIMMY_MAX_ITEM_BYTES``)."""
        cap = self.max_item_bytes
        if (
            cap is not None
            and len(raw) * 4 > cap
            and (size := len(raw.encode(errors="surrogatepass"))) > cap
        ):
            raise ValueError(f"item of {size} bytes, larger than DIMMY_MAX_ITEM_BYTES ({cap})")
        item = to_stored_item(
            doc,
            raw,
            fetched_at=fetched_at,
            dimension_unit=self.dimension_unit,
            weight_unit=self.weight_unit,
            dim_weight_divisor=self.dim_weight_divisor,
            account=account,
        )
        reason = self.rules.check(item.item)
        return replace(item, hold_reason=reason) if reason is not None else item
