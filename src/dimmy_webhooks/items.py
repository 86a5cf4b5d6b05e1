"""Items: from Dimmy's raw JSON to the normalised fields we store, version keys and the API shape.

Pure functions, no IO. The raw document stays the source of truth; everything derived here is best
effort: a field that is missing, ``null``, of the wrong type or in an unknown unit gives ``None``
(or an empty tuple), never an exception. Only a document without a string ``_id`` is refused,
because without an id there is nothing to store it under.

Versions: an item's document can change after the first event (photos finish uploading and
``updated_at`` moves). :func:`version_of` names one version of one item; the rule the item store
applies when a fetch meets a stored version is the ``upsert_item`` block of
:mod:`dimmy_webhooks.store.sql`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from dimmy_webhooks.models import NormalisedItem, StoredItem, valid_item_id

# Length units, in metres. Keys are the canonical names; aliases map onto them.
_LENGTH_IN_METRES: dict[str, float] = {
    "m": 1.0,
    "cm": 0.01,
    "mm": 0.001,
    "in": 0.0254,
    "ft": 0.3048,
}
_LENGTH_ALIASES: dict[str, str] = {
    "meter": "m",
    "meters": "m",
    "metre": "m",
    "metres": "m",
    "centimeter": "cm",
    "centimeters": "cm",
    "centimetre": "cm",
    "centimetres": "cm",
    "millimeter": "mm",
    "millimeters": "mm",
    "millimetre": "mm",
    "millimetres": "mm",
    "inch": "in",
    "inches": "in",
    '"': "in",
    "foot": "ft",
    "feet": "ft",
    "'": "ft",
}
# Mass units, in kilograms (international pound and avoirdupois ounce, both exact).
_MASS_IN_KG: dict[str, float] = {
    "kg": 1.0,
    "g": 0.001,
    "lb": 0.45359237,
    "oz": 0.028349523125,
}
_MASS_ALIASES: dict[str, str] = {
    "kilogram": "kg",
    "kilograms": "kg",
    "kgs": "kg",
    "gram": "g",
    "grams": "g",
    "gr": "g",
    "lbs": "lb",
    "pound": "lb",
    "pounds": "lb",
    "ounce": "oz",
    "ounces": "oz",
}

APP_DIMENSION_UNIT = "m"
"""Unit of ``dimensions`` when the document does not name one (the app measures in metres)."""
DEFAULT_WEIGHT_UNIT = "kg"
"""Unit of ``weight`` when the document does not name one."""
SIGNIFICANT_DIGITS = 9
"""Converted values are rounded to this many significant digits: far finer than any camera or
scale measures, coarse enough to drop float noise (``31.000000000000004`` becomes ``31.0``)."""

_MAIN_BARCODE_KEYS = ("barcode", "code")
_PHOTO_URL_KEYS = ("url", "photo_url", "uri", "link")
_EPOCH_MILLISECONDS_ABOVE = 1e11  # as seconds this would be past the year 5000


def normalise(
    doc: Mapping[str, Any],
    *,
    dimension_unit: str = "cm",
    weight_unit: str = "kg",
    dim_weight_divisor: float | None = None,
) -> NormalisedItem:
    """Derive the stored fields of one Dimmy item document (REST shape, snake_case).

    - Dimensions come from the last ``dimensioning[]`` step whose ``dimensions`` has numeric
      ``width``, ``height`` and ``depth`` (``length`` is accepted for a missing ``depth``); their
      unit is ``dimensions.unit`` (m, cm, mm, in/inch, ft and spelled-out forms; missing means
      metres, the app's unit). They are converted to ``dimension_unit``; ``volume`` is
      width x height x depth in ``dimension_unit`` cubed (``volume_unit`` like ``"cm3"``). If that
      step names a unit we do not know, all dimension fields are ``None``: an older step is not
      used instead, since it no longer describes the item.
    - Weight comes from the last ``weighing[]`` step with a numeric ``weight.value`` (a bare
      number is read as kilograms) in kg, g, lb or oz (missing unit: kg), converted to
      ``weight_unit``; an unknown unit gives ``None``.
    - Booleans, strings, NaN and infinities are not numbers here; values are rounded to
      :data:`SIGNIFICANT_DIGITS` significant digits.
    - ``barcodes`` lists every ``barcode_scanning[].barcodes[].value`` in order, without
      duplicates. A top-level ``barcode`` or ``code`` string (the main code a caller can inject;
      Dimmy's field name is unknown) is the main ``barcode`` and comes first in ``barcodes``;
      otherwise the first scanned value is the main one.
    - ``photo_urls`` lists every ``photographing[].photos[]`` URL (keys ``url``, ``photo_url``,
      ``uri`` or ``link``) in order, without duplicates.
    - Timestamps become ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC (see :func:`normalise_timestamp`),
      so comparing the strings compares the instants; unparseable ones are ``None``.
    - ``owner_id``, ``scanner_account_id`` and ``flow_id`` are strings or ``None``.
    - With ``dim_weight_divisor`` (``dimension_unit`` cubed per ``weight_unit``, e.g. 5000
      cm³/kg), ``dim_weight`` is ``volume / dim_weight_divisor`` in ``weight_unit``, and
      ``billable_weight`` the larger of it and ``weight`` (whichever is known).

    Raises ``ValueError`` only when ``_id`` is missing or not a string, or when ``dimension_unit``
    / ``weight_unit`` is not a unit listed above (a configuration mistake, not a data one).
    """
    item_id = doc.get("_id")
    if not isinstance(item_id, str):
        raise ValueError("item document has no string _id")
    target_length = _canonical(dimension_unit, _LENGTH_IN_METRES, _LENGTH_ALIASES)
    if target_length is None:
        raise ValueError(f"unknown dimension unit {dimension_unit!r}")
    target_mass = _canonical(weight_unit, _MASS_IN_KG, _MASS_ALIASES)
    if target_mass is None:
        raise ValueError(f"unknown weight unit {weight_unit!r}")

    dims = _dimensions(doc.get("dimensioning"), target_length)
    weight = _weight(doc.get("weighing"), target_mass)
    barcode, barcodes = _barcodes(doc)
    width, height, depth, volume = dims if dims is not None else (None, None, None, None)
    dim_weight = None
    if volume is not None and dim_weight_divisor:
        dim_weight = _round(volume / dim_weight_divisor)
    known = [w for w in (weight, dim_weight) if w is not None]
    return NormalisedItem(
        id=item_id,
        created_at=normalise_timestamp(doc.get("created_at")),
        updated_at=normalise_timestamp(doc.get("updated_at")),
        started_at=normalise_timestamp(doc.get("started_at")),
        ended_at=normalise_timestamp(doc.get("ended_at")),
        owner_id=_id_string(doc.get("owner_id")),
        scanner_account_id=_id_string(doc.get("scanner_account_id")),
        flow_id=_id_string(doc.get("flow_id")),
        width=width,
        height=height,
        depth=depth,
        dimension_unit=target_length if dims is not None else None,
        volume=volume,
        volume_unit=f"{target_length}3" if volume is not None else None,
        weight=weight,
        weight_unit=target_mass if known else None,
        dim_weight=dim_weight,
        billable_weight=max(known) if known else None,
        barcode=barcode,
        barcodes=barcodes,
        photo_urls=_photo_urls(doc.get("photographing")),
    )


def json_text(body: bytes) -> str:
    """The JSON text of ``body`` as it came from outside, without a byte order mark: decoded as
    :func:`json.loads` reads bytes (UTF-8, or UTF-16/UTF-32 told by a BOM or by the zero bytes
    of the first characters; RFC 8259 section 8.1). Stored and spliced into our own JSON answers,
    a BOM or an undecoded UTF-16 body would make them invalid. Raises ``ValueError``
    (:class:`UnicodeDecodeError`) when ``body`` is not text in that encoding."""
    return body.decode(json.detect_encoding(body)).removeprefix("\ufeff")


def clean_json_bytes(body: bytes) -> bytes:
    """``body`` as UTF-8 JSON text without a BOM (:func:`json_text`); the same object when it
    already is (no BOM, not UTF-16/32), so the common case costs no copy. Raises
    ``ValueError`` as :func:`json_text` does."""
    if body[:1] not in (b"\xef", b"\xfe", b"\xff", b"\x00") and b"\x00" not in body[1:4]:
        return body
    return json_text(body).encode()


def to_stored_item(
    doc: Mapping[str, Any],
    raw: str,
    *,
    fetched_at: float,
    dimension_unit: str = "cm",
    weight_unit: str = "kg",
    dim_weight_divisor: float | None = None,
    account: str = "default",
) -> StoredItem:
    """An item document (``raw``: its text as read) of ``account`` made ready for the item
    store: normalised fields and version key. Raises ``ValueError`` (with the reason) for a
    document that is not an item, including one whose ``_id`` is not a valid item id
    (:func:`valid_item_id`)."""
    fields = normalise(
        doc,
        dimension_unit=dimension_unit,
        weight_unit=weight_unit,
        dim_weight_divisor=dim_weight_divisor,
    )
    if not valid_item_id(fields.id):
        raise ValueError(f"_id {fields.id[:80]!r} is not a valid item id")
    raw = raw.removeprefix("\ufeff")  # spliced into JSON answers as it is: never with a BOM
    version = version_of(doc, fields)
    return StoredItem(item=fields, raw=raw, version=version, fetched_at=fetched_at, account=account)


def normalise_timestamp(value: object) -> str | None:
    """``value`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC, fixed width), or ``None``.

    Accepts ISO-8601 strings (``Z`` or an offset; no offset means UTC), numbers as Unix time
    (seconds, or milliseconds when larger than 1e11) and MongoDB's ``{"$date": ...}``.
    """
    moment = _parse_moment(value)
    return format_timestamp(moment) if moment is not None else None


def format_timestamp(moment: datetime | float) -> str:
    """A datetime (naive means UTC) or Unix time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, tz=UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    m = moment.astimezone(UTC)
    return (
        f"{m.year:04d}-{m.month:02d}-{m.day:02d}T"
        f"{m.hour:02d}:{m.minute:02d}:{m.second:02d}.{m.microsecond:06d}Z"
    )


def version_of(document: Any, normalised: NormalisedItem) -> str:
    """The key of this version of this item: ``"<updated_at or ->#<sha256[:16]>"``.

    ``updated_at`` (normalised, fixed width) orders versions of one item; the hash of the
    document's canonical JSON (sorted keys, compact, UTF-8) tells apart two documents with the
    same ``updated_at``. The same document always gives the same key however it was written, so
    ``GET /items/{id}`` and the poller's ``GET /items`` agree on it.
    """
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"{normalised.updated_at or '-'}#{digest}"


def to_api_dict(item: StoredItem) -> dict[str, Any]:
    """The JSON body of ``GET /api/items/{id}``.

    ``id``, ``account``, every normalised field (tuples as lists), ``version``, ``fetched_at``
    (ISO-8601 UTC) and ``raw``: the document parsed from the text exactly as fetched. A new
    dict every call.
    """
    out = api_fields(item)
    out["raw"] = item.raw_json()
    return out


def to_api_json(item: StoredItem, extra: Mapping[str, Any] | None = None) -> bytes:
    """:func:`to_api_dict` (and ``extra`` keys) as JSON bytes, with ``raw`` written as the
    stored text itself: never parsed and serialised again, so it is exactly as fetched and no
    nesting depth can make a read fail."""
    values = api_fields(item)
    values.update(extra or {})
    fields = json.dumps(values, ensure_ascii=False, separators=(",", ":"))
    return f'{fields[:-1]},"raw":{item.raw}}}'.encode()


def to_api_json_line(item: StoredItem) -> bytes:
    """:func:`to_api_json` on one line (JSON Lines): the raw document may be indented, and a
    line break there can only be whitespace between tokens (inside a string it is escaped), so
    each becomes a space."""
    return to_api_json(item).replace(b"\n", b" ").replace(b"\r", b" ")


def api_fields(item: StoredItem) -> dict[str, Any]:
    """:func:`to_api_dict` without ``raw``: the fields as JSON-ready values, ``account`` (the
    Dimmy account the item belongs to) among them."""
    out: dict[str, Any] = {"id": item.id, "account": item.account}
    fields = item.item
    for name in _NORMALISED_FIELDS:
        value = getattr(fields, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    out["version"] = item.version
    out["revision"] = item.revision
    out["fetched_at"] = format_timestamp(item.fetched_at)
    return out


# --- helpers -------------------------------------------------------------------------------

_NORMALISED_FIELDS = tuple(f.name for f in dataclasses.fields(NormalisedItem))
"""What :func:`api_fields` writes of an item's normalised fields, in order."""


def _canonical(unit: object, table: Mapping[str, float], aliases: Mapping[str, str]) -> str | None:
    if not isinstance(unit, str):
        return None
    key = unit.strip().lower().rstrip(".")
    if key in table:
        return key
    return aliases.get(key)


def _unit_named(
    unit: object, default: str, table: Mapping[str, float], aliases: Mapping[str, str]
) -> str | None:
    """The canonical unit a document names, ``default`` when it names none, ``None`` when it
    names one we do not know."""
    return default if unit is None else _canonical(unit, table, aliases)


def _number(value: object) -> float | None:
    """A finite float from an int or float; ``None`` for bools, strings, NaN, inf, huge ints."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _round(value: float) -> float | None:
    if not math.isfinite(value):
        return None
    rounded = float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    return rounded + 0.0  # turn -0.0 into 0.0


def _steps(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list | tuple):
        return []
    return [step for step in value if isinstance(step, Mapping)]


def _dimensions(steps: object, target: str) -> tuple[float, float, float, float | None] | None:
    for step in reversed(_steps(steps)):
        dims = step.get("dimensions")
        sides = _raw_sides(dims) if isinstance(dims, Mapping) else None
        if isinstance(dims, Mapping) and sides is not None:
            break
    else:
        return None
    source = _unit_named(dims.get("unit"), APP_DIMENSION_UNIT, _LENGTH_IN_METRES, _LENGTH_ALIASES)
    if source is None:
        return None
    factor = _LENGTH_IN_METRES[source] / _LENGTH_IN_METRES[target]
    w, h, d = (_round(side * factor) for side in sides)
    if w is None or h is None or d is None:
        return None
    return w, h, d, _round(w * h * d)


def _raw_sides(dims: Mapping[str, Any]) -> tuple[float, float, float] | None:
    width = _number(dims.get("width"))
    height = _number(dims.get("height"))
    depth = _number(dims.get("depth"))
    if depth is None and dims.get("depth") is None:
        depth = _number(dims.get("length"))
    if width is None or height is None or depth is None:
        return None
    return width, height, depth


def _weight(steps: object, target: str) -> float | None:
    for step in reversed(_steps(steps)):
        weight = step.get("weight")
        if isinstance(weight, Mapping):
            value = _number(weight.get("value"))
            unit_value = weight.get("unit")
        else:
            value, unit_value = _number(weight), None
        if value is None:
            continue
        source = _unit_named(unit_value, DEFAULT_WEIGHT_UNIT, _MASS_IN_KG, _MASS_ALIASES)
        if source is None:
            return None
        return _round(value * _MASS_IN_KG[source] / _MASS_IN_KG[target])
    return None


def _text(value: object) -> str | None:
    """A non-blank string, or the string under ``value`` of an object like ``{"value": ...}``."""
    if isinstance(value, Mapping):
        value = value.get("value")
    if isinstance(value, str) and value.strip():
        return value
    return None


def _barcodes(doc: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    main = next(
        (text for key in _MAIN_BARCODE_KEYS if (text := _text(doc.get(key))) is not None), None
    )
    scanned = (
        text
        for step in _steps(doc.get("barcode_scanning"))
        for entry in _list(step.get("barcodes"))
        if (text := _text(entry)) is not None
    )
    barcodes = _unique([main, *scanned] if main is not None else scanned)
    return (barcodes[0] if barcodes else None), barcodes


def _photo_urls(steps: object) -> tuple[str, ...]:
    def urls() -> Iterator[str]:
        for step in _steps(steps):
            for photo in _list(step.get("photos")):
                if isinstance(photo, str) and photo.strip():
                    yield photo
                elif isinstance(photo, Mapping):
                    url = next(
                        (
                            value
                            for key in _PHOTO_URL_KEYS
                            if isinstance(value := photo.get(key), str) and value.strip()
                        ),
                        None,
                    )
                    if url is not None:
                        yield url

    return _unique(urls())


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _unique(values: Iterable[str | None]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v is not None))


def _id_string(value: object) -> str | None:
    if isinstance(value, Mapping):  # MongoDB extended JSON: {"$oid": "..."}
        value = value.get("$oid")
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _parse_moment(value: object) -> datetime | None:
    if isinstance(value, Mapping):  # MongoDB extended JSON: {"$date": "..."} or milliseconds
        inner = value.get("$date")
        if isinstance(inner, Mapping):
            inner = inner.get("$numberLong")
            inner = int(inner) if isinstance(inner, str) and inner.lstrip("-").isdigit() else None
        number = _number(inner)
        return _from_epoch(number / 1000) if number is not None else _parse_moment(inner)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("z", "Z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            return moment.astimezone(UTC)
        except (OverflowError, ValueError):
            return None
    number = _number(value)
    if number is None:
        return None
    if abs(number) > _EPOCH_MILLISECONDS_ABOVE:
        number /= 1000
    return _from_epoch(number)


def _from_epoch(seconds: float) -> datetime | None:
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
