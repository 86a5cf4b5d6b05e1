"""Item documents for the fake Dimmy API: varied as real scans are, reproducible from a seed.

:class:`ItemFactory` makes items shaped like Dimmy's (owner, scanner account, flow and its
steps: photos, dimensions in one of several units, barcodes, weight, custom inputs), with steps
absent, ``null`` or empty now and then, and fields the service does not know. Times are written
in the fake's one format (:func:`iso`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

PHOTO_HOST = "https://media.fake-dimmy.test"
"""Where photos are said to be unless the fake is told its own address (``photo_base``)."""
DEFAULT_START = datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)

_PER_METRE = {"m": 1.0, "cm": 100.0, "mm": 1000.0, "in": 1 / 0.0254}
_LENGTH_DIGITS = {"m": 3, "cm": 1, "mm": 0, "in": 2}
_PER_KG = {"kg": 1.0, "g": 1000.0, "lb": 1 / 0.45359237}
_WEIGHT_DIGITS = {"kg": 3, "g": 0, "lb": 2}
_STEP_KINDS = ("photographing", "dimensioning", "barcode_scanning", "weighing", "custom_inputs")


def iso(moment: datetime) -> str:
    """``2026-01-05T09:00:05.123Z``: UTC, milliseconds, ``Z`` (the fake's one time format)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond // 1000:03d}Z"


def parse_time(value: str) -> datetime:
    """A time the fake wrote (or was given), in UTC; a naive one is taken as UTC."""
    return as_utc(datetime.fromisoformat(value))


def as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def created_at(item: dict[str, Any]) -> datetime | None:
    """An item's ``created_at``, ``None`` when absent or unreadable."""
    value = item.get("created_at")
    try:
        return parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None


class ItemFactory:
    """Makes item documents from ``rng`` (seed it for the same items every run); ``taken``
    says whether an id is in use already (ids are never reused); photo URLs start with
    ``photo_base`` (the fake API serves them: :mod:`.fake_photos`).

    The owners, scanner accounts and flows the items name are drawn once, when it is built.
    """

    def __init__(
        self, rng: random.Random, taken: Callable[[str], bool], photo_base: str = PHOTO_HOST
    ) -> None:
        self.rng = rng
        self.taken = taken
        self.photo_base = photo_base.rstrip("/")  # photos at {photo_base}/photos/{id}/{n}.png
        self.owner_ids = [self.object_id(DEFAULT_START) for _ in range(2)]
        self.scanner_account_ids = [self.object_id(DEFAULT_START) for _ in range(4)]
        self.flow_ids = [self.object_id(DEFAULT_START) for _ in range(3)]
        self._step_ids = {
            flow: {kind: self.object_id(DEFAULT_START) for kind in _STEP_KINDS}
            for flow in self.flow_ids
        }

    def object_id(self, moment: datetime) -> str:
        while True:
            candidate = f"{int(moment.timestamp()):08x}{self.rng.getrandbits(64):016x}"
            if not self.taken(candidate):
                return candidate

    def new_item(self, created: datetime) -> dict[str, Any]:
        """A new item document created at ``created``, with the steps of one of the flows."""
        rng = self.rng
        item_id = self.object_id(created)
        flow = rng.choice(self.flow_ids)
        started = created - timedelta(seconds=rng.uniform(10, 120))
        ended = created - timedelta(seconds=rng.uniform(0.5, 5))
        span = (ended - started) / len(_STEP_KINDS)
        windows = {
            kind: (started + span * i, started + span * (i + 0.8))
            for i, kind in enumerate(_STEP_KINDS)
        }
        item: dict[str, Any] = {
            "_id": item_id,
            "created_at": iso(created),
            "updated_at": iso(created),
            "owner_id": rng.choice(self.owner_ids),
            "scanner_account_id": rng.choice(self.scanner_account_ids),
            "started_at": iso(started),
            "ended_at": iso(ended),
            "flow_id": flow,
        }
        builders = {
            "photographing": self._photos,
            "dimensioning": self._dimensions,
            "barcode_scanning": self._barcodes,
            "weighing": self._weights,
        }
        for kind, build in builders.items():
            roll = rng.random()
            if roll < 0.07:
                continue  # the flow has no such step: the key is absent
            step = {
                "flow_step_id": self._step_ids[flow][kind],
                "started_at": iso(windows[kind][0]),
                "ended_at": iso(windows[kind][1]),
            }
            item[kind] = None if roll < 0.14 else [] if roll < 0.2 else build(item_id, step)
        if rng.random() < 0.25:
            item["custom_inputs"] = [
                {
                    "flow_step_id": self._step_ids[flow]["custom_inputs"],
                    "label": "Damaged?",
                    "value": rng.choice(["no", "no", "yes", None]),
                }
            ]
        else:
            item["custom_inputs"] = []
        self._add_unknown_fields(item)
        return item

    def _photos(self, item_id: str, step: dict[str, Any]) -> list[dict[str, Any]]:
        rng = self.rng
        taken = parse_time(step["started_at"])
        photos = []
        for n in range(rng.randint(1, 3)):
            uploaded = rng.random() > 0.05  # a photo still uploading has no URL yet
            url = f"{self.photo_base}/photos/{item_id}/{n + 1}.png" if uploaded else None
            photos.append({"date": iso(taken + timedelta(seconds=n * 0.7)), "url": url})
        return [{**step, "photos": photos}]

    def _dimensions(self, item_id: str, step: dict[str, Any]) -> list[dict[str, Any]]:
        rng = self.rng
        pallet = rng.random() < 0.1
        scale = 1.2 if pallet else 0.6
        unit = rng.choice(["m", "m", "cm", "cm", "mm", "in"])
        size = [rng.uniform(0.04, scale) for _ in range(3)]
        width, height, depth = (round(v * _PER_METRE[unit], _LENGTH_DIGITS[unit]) for v in size)
        shown = parse_time(step["started_at"]) + timedelta(seconds=rng.uniform(0.5, 2))
        confirmed = None if rng.random() < 0.05 else iso(shown + timedelta(seconds=1.5))
        dimensions = {
            "prediction_shown_at": iso(shown),
            "confirmed_at": confirmed,
            "width": width,
            "height": height,
            "depth": depth,
            "unit": unit,
        }
        mode = "pallet" if pallet else rng.choice(["box", "box", "box", "manual", None])
        return [{**step, "mode": mode, "dimensions": dimensions}]

    def _barcodes(self, item_id: str, step: dict[str, Any]) -> list[dict[str, Any]]:
        rng = self.rng
        barcodes = []
        for fmt in rng.sample(["EAN_13", "EAN_13", "CODE_128", "QR"], rng.choice([1, 1, 2])):
            if fmt == "EAN_13":
                digits = rng.choice(["871", "540", "400"]) + f"{rng.randrange(10**9):09d}"
                value = digits + _ean_check_digit(digits)
            elif fmt == "CODE_128":
                value = rng.choice(["PKG-", "JJD", "SSCC"]) + f"{rng.randrange(10**10):010d}"
            else:
                value = f"https://track.fake-carrier.test/p/{item_id[-10:]}"
            barcodes.append({"value": value, "format": fmt})
        return [{**step, "barcodes": barcodes}]

    def _weights(self, item_id: str, step: dict[str, Any]) -> list[dict[str, Any]]:
        unit = self.rng.choice(["kg", "kg", "kg", "g", "lb"])
        value = round(self.rng.uniform(0.05, 25.0) * _PER_KG[unit], _WEIGHT_DIGITS[unit])
        return [{**step, "weight": {"value": value, "unit": unit}}]

    def _add_unknown_fields(self, item: dict[str, Any]) -> None:
        rng = self.rng
        if rng.random() < 0.4:
            model = rng.choice(["iPhone15,3", "iPhone16,2", "iPad14,5"])
            item["device"] = {"model": model, "app_version": "5.3.0", "lidar": rng.random() < 0.7}
        if rng.random() < 0.3:
            item["location"] = None
        if rng.random() < 0.2:
            item["reference"] = {"external_id": None, "tags": ["inbound"]}


def _ean_check_digit(digits: str) -> str:
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits))
    return str((10 - total % 10) % 10)
