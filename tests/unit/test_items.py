"""Normalisation of Dimmy item documents, version keys and the JSON API shape."""

from __future__ import annotations

import copy
import json
import math
import re
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dimmy_webhooks.items import (
    clean_json_bytes,
    format_timestamp,
    json_text,
    normalise,
    normalise_timestamp,
    to_api_dict,
    to_api_json,
    to_stored_item,
    version_of,
)
from dimmy_webhooks.models import NormalisedItem, StoredItem

ITEM_ID = "6592008029c8c3e4dc76256c"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")

EXAMPLE: dict[str, Any] = {
    "_id": ITEM_ID,
    "created_at": "2026-01-05T09:00:05Z",
    "updated_at": "2026-01-05T09:00:05Z",
    "owner_id": "65f0c1aa00000000000000aa",
    "scanner_account_id": "65f0c1bb00000000000000bb",
    "started_at": "2026-01-05T09:00:00Z",
    "ended_at": "2026-01-05T09:00:04Z",
    "flow_id": "65f0c1cc00000000000000cc",
    "photographing": [
        {
            "flow_step_id": "s1",
            "started_at": "...",
            "ended_at": "...",
            "photos": [{"date": "...", "url": "https://cdn.example/p.jpg"}],
        }
    ],
    "dimensioning": [
        {
            "flow_step_id": "s2",
            "mode": "box",
            "dimensions": {"width": 0.31, "height": 0.22, "depth": 0.15, "unit": "m"},
        }
    ],
    "barcode_scanning": [
        {"flow_step_id": "s3", "barcodes": [{"value": "8712345678906", "format": "EAN_13"}]}
    ],
    "weighing": [{"flow_step_id": "s4", "weight": {"value": 1.25, "unit": "kg"}}],
    "custom_inputs": [],
}


def doc(**fields: Any) -> dict[str, Any]:
    """The example item with some top-level fields replaced (``None`` values kept as null)."""
    out = copy.deepcopy(EXAMPLE)
    out.update(fields)
    return out


def dims_doc(dimensions: Any) -> dict[str, Any]:
    return doc(dimensioning=[{"dimensions": dimensions}])


def weight_doc(weight: Any) -> dict[str, Any]:
    return doc(weighing=[{"weight": weight}])


# --- the example, whole ----------------------------------------------------------------------


def test_example_item_normalised_in_default_units() -> None:
    assert normalise(EXAMPLE) == NormalisedItem(
        id=ITEM_ID,
        created_at="2026-01-05T09:00:05.000000Z",
        updated_at="2026-01-05T09:00:05.000000Z",
        started_at="2026-01-05T09:00:00.000000Z",
        ended_at="2026-01-05T09:00:04.000000Z",
        owner_id="65f0c1aa00000000000000aa",
        scanner_account_id="65f0c1bb00000000000000bb",
        flow_id="65f0c1cc00000000000000cc",
        width=31.0,
        height=22.0,
        depth=15.0,
        dimension_unit="cm",
        volume=10230.0,
        volume_unit="cm3",
        weight=1.25,
        weight_unit="kg",
        billable_weight=1.25,  # no divisor: the weight itself
        barcode="8712345678906",
        barcodes=("8712345678906",),
        photo_urls=("https://cdn.example/p.jpg",),
    )


@pytest.mark.parametrize(
    ("units", "divisor", "dim_weight", "billable"),
    [
        (("cm", "kg"), 5000, 2.046, 2.046),  # 31 x 22 x 15 cm = 10,230 cm3: over 1.25 kg
        (("cm", "kg"), 20000, 0.5115, 1.25),  # the scale's weight is the larger
        (("in", "lb"), 139, 4.49117195, 4.49117195),  # 624.27 in3 / 139 over 2.76 lb
    ],
)
def test_dimensional_and_billable_weight(
    units: tuple[str, str], divisor: float, dim_weight: float, billable: float
) -> None:
    dimension_unit, weight_unit = units
    got = normalise(
        EXAMPLE,
        dimension_unit=dimension_unit,
        weight_unit=weight_unit,
        dim_weight_divisor=divisor,
    )
    assert got.dim_weight == pytest.approx(dim_weight, rel=1e-6)
    assert got.billable_weight == pytest.approx(billable, rel=1e-6)
    assert got.weight_unit == weight_unit


def test_minimal_document_gives_empty_fields() -> None:
    assert normalise({"_id": "x"}) == NormalisedItem(id="x")


@pytest.mark.parametrize("bad", [{}, {"_id": None}, {"_id": 5}, {"_id": {"$oid": "abc"}}])
def test_document_without_string_id_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="_id"):
        normalise(bad)


@pytest.mark.parametrize(
    ("kwargs", "word"), [({"dimension_unit": "yd"}, "dimension"), ({"weight_unit": "st"}, "weight")]
)
def test_unknown_target_unit_is_a_value_error(kwargs: dict[str, str], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        normalise(EXAMPLE, **kwargs)


# --- dimensions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "sides", "target", "expected", "volume"),
    [
        ("m", (0.31, 0.22, 0.15), "cm", (31.0, 22.0, 15.0), 10230.0),
        ("m", (0.31, 0.22, 0.15), "mm", (310.0, 220.0, 150.0), 10230000.0),
        ("m", (0.31, 0.22, 0.15), "m", (0.31, 0.22, 0.15), 0.01023),
        ("cm", (31, 22, 15), "m", (0.31, 0.22, 0.15), 0.01023),
        ("mm", (310, 220, 150), "cm", (31.0, 22.0, 15.0), 10230.0),
        ("cm", (2.54, 5.08, 25.4), "in", (1.0, 2.0, 10.0), 20.0),
        ("in", (1, 2, 10), "cm", (2.54, 5.08, 25.4), 327.74128),
        ("inch", (1, 2, 10), "mm", (25.4, 50.8, 254.0), 327741.28),
        ("ft", (1, 2, 3), "in", (12.0, 24.0, 36.0), 10368.0),
        ("ft", (1, 1, 1), "m", (0.3048, 0.3048, 0.3048), 0.0283168466),
        ("in", (12, 24, 36), "ft", (1.0, 2.0, 3.0), 6.0),
        ("M", (1, 1, 1), "cm", (100.0, 100.0, 100.0), 1000000.0),
        (" Inches ", (1, 1, 1), "in", (1.0, 1.0, 1.0), 1.0),
    ],
)
def test_dimensions_convert_between_units(
    source: str,
    sides: tuple[float, float, float],
    target: str,
    expected: tuple[float, float, float],
    volume: float,
) -> None:
    width, height, depth = sides
    got = normalise(
        dims_doc({"width": width, "height": height, "depth": depth, "unit": source}),
        dimension_unit=target,
    )
    assert (got.width, got.height, got.depth) == expected
    assert got.volume == volume
    assert got.dimension_unit == target
    assert got.volume_unit == f"{target}3"


def test_target_unit_alias_is_stored_canonically() -> None:
    got = normalise(EXAMPLE, dimension_unit="inch")
    assert got.dimension_unit == "in"
    assert got.volume_unit == "in3"


@pytest.mark.parametrize("unit_fields", [{}, {"unit": None}])
def test_missing_dimension_unit_means_metres(unit_fields: dict[str, Any]) -> None:
    got = normalise(dims_doc({"width": 1, "height": 0.5, "depth": 0.25, **unit_fields}))
    assert (got.width, got.height, got.depth, got.volume) == (100.0, 50.0, 25.0, 125000.0)


@pytest.mark.parametrize("unit", ["furlong", "", 5, ["m"], {"name": "m"}, True])
def test_unknown_dimension_unit_gives_no_dimensions(unit: Any) -> None:
    got = normalise(dims_doc({"width": 1, "height": 1, "depth": 1, "unit": unit}))
    assert (got.width, got.height, got.depth, got.dimension_unit) == (None,) * 4
    assert (got.volume, got.volume_unit) == (None, None)


def test_conversions_carry_no_float_noise() -> None:
    got = normalise(dims_doc({"width": 0.1, "height": 0.7, "depth": 0.3}), dimension_unit="cm")
    assert (got.width, got.height, got.depth) == (10.0, 70.0, 30.0)
    assert got.volume == 21000.0
    assert repr(normalise(EXAMPLE).width) == "31.0"


def test_small_volume_keeps_its_significant_digits() -> None:
    got = normalise(
        dims_doc({"width": 1.5, "height": 1.5, "depth": 1.5, "unit": "cm"}), dimension_unit="m"
    )
    assert got.volume == pytest.approx(3.375e-6, rel=1e-9)


def test_last_dimensioning_step_with_numbers_wins() -> None:
    steps = [
        {"dimensions": {"width": 1, "height": 1, "depth": 1, "unit": "cm"}},
        {"dimensions": {"width": 2, "height": 3, "depth": 4, "unit": "cm"}},
        {"dimensions": {"width": 9, "height": None, "depth": 9, "unit": "cm"}},
        {"dimensions": None},
        {"mode": "manual"},
        "garbage",
    ]
    got = normalise(doc(dimensioning=steps))
    assert (got.width, got.height, got.depth, got.volume) == (2.0, 3.0, 4.0, 24.0)


def test_length_stands_in_for_missing_depth() -> None:
    got = normalise(dims_doc({"width": 1, "height": 2, "length": 3, "unit": "cm"}))
    assert got.depth == 3.0


@pytest.mark.parametrize(
    "dimensions",
    [
        {"width": True, "height": 1, "depth": 1},
        {"width": 1, "height": False, "depth": 1},
        {"width": "0.3", "height": 1, "depth": 1},
        {"width": float("nan"), "height": 1, "depth": 1},
        {"width": float("inf"), "height": 1, "depth": 1},
        {"width": 10**400, "height": 1, "depth": 1},
        {"width": [1], "height": 1, "depth": 1},
        {"width": 1, "height": 1},
        {"width": 1e308, "height": 1e308, "depth": 1e308},
        "1x1x1",
        [1, 1, 1],
        None,
    ],
)
def test_non_numeric_dimensions_are_ignored(dimensions: Any) -> None:
    got = normalise(dims_doc(dimensions))
    assert got.width is None
    assert got.volume is None
    assert got.dimension_unit is None


def test_booleans_never_become_numbers() -> None:
    got = normalise(
        doc(
            dimensioning=[{"dimensions": {"width": True, "height": True, "depth": True}}],
            weighing=[{"weight": {"value": True}}, {"weight": True}],
        )
    )
    assert got.width is None
    assert got.weight is None


@pytest.mark.parametrize("dimensioning", [None, "x", 3, {"dimensions": {}}, [None, 1, "a"], []])
def test_garbage_dimensioning_gives_no_dimensions(dimensioning: Any) -> None:
    got = normalise(doc(dimensioning=dimensioning))
    assert got.width is None
    assert got.volume is None


# --- weight ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weight", "target", "expected"),
    [
        ({"value": 1.25, "unit": "kg"}, "kg", 1.25),
        ({"value": 1.25, "unit": "kg"}, "g", 1250.0),
        ({"value": 1.25, "unit": "kg"}, "lb", 2.75577828),
        ({"value": 1250, "unit": "g"}, "kg", 1.25),
        ({"value": 1, "unit": "lb"}, "kg", 0.45359237),
        ({"value": 1, "unit": "lb"}, "g", 453.59237),
        ({"value": 16, "unit": "oz"}, "lb", 1.0),
        ({"value": 1, "unit": "oz"}, "g", 28.3495231),
        ({"value": 2, "unit": "lbs"}, "lb", 2.0),
        ({"value": 0.1, "unit": "KG"}, "g", 100.0),
        ({"value": 0.7}, "kg", 0.7),
        ({"value": 0.7, "unit": None}, "g", 700.0),
        (2.5, "kg", 2.5),
    ],
)
def test_weight_converts_between_units(weight: Any, target: str, expected: float) -> None:
    got = normalise(weight_doc(weight), weight_unit=target)
    assert got.weight == expected
    assert got.weight_unit == target


@pytest.mark.parametrize(
    "weight",
    [
        {"value": 1, "unit": "stone"},
        {"value": 1, "unit": 3},
    ],
)
def test_unknown_weight_unit_gives_no_weight(weight: Any) -> None:
    got = normalise(weight_doc(weight))
    assert (got.weight, got.weight_unit) == (None, None)


@pytest.mark.parametrize(
    "weighing",
    [
        None,
        "heavy",
        [{"weight": None}],
        [{"weight": {"value": None, "unit": "kg"}}],
        [{"weight": {"value": "1.2", "unit": "kg"}}],
        [{"weight": {"unit": "kg"}}],
        [{"weight": "1 kg"}],
        [None, 3, []],
    ],
)
def test_garbage_weighing_gives_no_weight(weighing: Any) -> None:
    got = normalise(doc(weighing=weighing))
    assert (got.weight, got.weight_unit) == (None, None)


def test_last_weighing_step_with_a_value_wins() -> None:
    steps = [
        {"weight": {"value": 1, "unit": "kg"}},
        {"weight": {"value": 2, "unit": "kg"}},
        {"weight": {"value": None, "unit": "kg"}},
        {"flow_step_id": "skipped"},
    ]
    assert normalise(doc(weighing=steps)).weight == 2.0


# --- barcodes and photos ---------------------------------------------------------------------


def test_barcodes_in_order_without_duplicates() -> None:
    steps = [
        {"barcodes": [{"value": "A"}, {"value": "B"}, {"value": None}, {"format": "QR"}]},
        {"barcodes": None},
        {"barcodes": [{"value": "B"}, "C", {"value": ""}, {"value": "   "}, 5, {"value": 7}]},
        "garbage",
    ]
    got = normalise(doc(barcode_scanning=steps))
    assert got.barcodes == ("A", "B", "C")
    assert got.barcode == "A"


@pytest.mark.parametrize("key", ["barcode", "code"])
def test_injected_main_barcode_is_preferred_and_listed_first(key: str) -> None:
    got = normalise(doc(**{key: "MAIN-1"}))
    assert got.barcode == "MAIN-1"
    assert got.barcodes == ("MAIN-1", "8712345678906")


def test_barcode_field_wins_over_code_field() -> None:
    got = normalise(doc(barcode="FROM-BARCODE", code="FROM-CODE"))
    assert got.barcode == "FROM-BARCODE"


def test_main_barcode_already_scanned_is_not_repeated() -> None:
    got = normalise(doc(code="8712345678906"))
    assert got.barcodes == ("8712345678906",)


@pytest.mark.parametrize("main", [None, "", 12345, True, ["X"]])
def test_unusable_main_barcode_falls_back_to_first_scanned(main: Any) -> None:
    got = normalise(doc(barcode=main, code=main))
    assert got.barcode == "8712345678906"


def test_no_barcodes_at_all() -> None:
    got = normalise(doc(barcode_scanning=None))
    assert (got.barcode, got.barcodes) == (None, ())


def test_photo_urls_from_every_key_in_order() -> None:
    steps = [
        {"photos": [{"url": "u1"}, {"photo_url": "u2"}, {"date": "no url"}]},
        {"photos": "not a list"},
        {"photos": [{"uri": "u3"}, {"link": "u4"}, "u5", {"url": "u1"}, {"url": 5}, None]},
        {"photos": [{"url": None, "link": "u6"}]},
    ]
    got = normalise(doc(photographing=steps))
    assert got.photo_urls == ("u1", "u2", "u3", "u4", "u5", "u6")


@pytest.mark.parametrize("photographing", [None, "x", [{"photos": None}], [1, 2]])
def test_garbage_photographing_gives_no_urls(photographing: Any) -> None:
    assert normalise(doc(photographing=photographing)).photo_urls == ()


# --- ids and timestamps ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("abc", "abc"), (None, None), (12, "12"), (True, None), ([1], None), ({"$oid": "ff"}, "ff")],
)
def test_ids_are_strings_or_none(value: Any, expected: str | None) -> None:
    got = normalise(doc(owner_id=value, scanner_account_id=value, flow_id=value))
    assert (got.owner_id, got.scanner_account_id, got.flow_id) == (expected,) * 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-05T09:00:05Z", "2026-01-05T09:00:05.000000Z"),
        ("2026-01-05T09:00:05z", "2026-01-05T09:00:05.000000Z"),
        ("2026-01-05T09:00:05.5Z", "2026-01-05T09:00:05.500000Z"),
        ("2026-01-05T09:00:05.123456789Z", "2026-01-05T09:00:05.123456Z"),
        ("2026-01-05T10:00:05+01:00", "2026-01-05T09:00:05.000000Z"),
        ("2026-01-05T01:00:05-08:00", "2026-01-05T09:00:05.000000Z"),
        ("2026-01-05T09:00:05", "2026-01-05T09:00:05.000000Z"),
        ("2026-01-05 09:00:05.25+00:00", "2026-01-05T09:00:05.250000Z"),
        (" 2026-01-05T09:00:05Z ", "2026-01-05T09:00:05.000000Z"),
        ("2026-01-05", "2026-01-05T00:00:00.000000Z"),
        ("0999-12-31T23:00:00Z", "0999-12-31T23:00:00.000000Z"),
        (1767603605, "2026-01-05T09:00:05.000000Z"),
        (1767603605.5, "2026-01-05T09:00:05.500000Z"),
        (1767603605000, "2026-01-05T09:00:05.000000Z"),
        ({"$date": "2026-01-05T09:00:05Z"}, "2026-01-05T09:00:05.000000Z"),
        ({"$date": 1767603605000}, "2026-01-05T09:00:05.000000Z"),
        ({"$date": {"$numberLong": "1767603605000"}}, "2026-01-05T09:00:05.000000Z"),
        ("...", None),
        ("", None),
        ("yesterday", None),
        ("2026-13-01T00:00:00Z", None),
        ("0001-01-01T00:00:00+01:00", None),
        ("9999-12-31T23:00:00-05:00", None),
        (None, None),
        (True, None),
        (float("nan"), None),
        (10**30, None),
        ([2026], None),
        ({"$date": None}, None),
    ],
)
def test_timestamps_are_normalised(value: Any, expected: str | None) -> None:
    assert normalise_timestamp(value) == expected
    got = normalise(doc(created_at=value, updated_at=value, started_at=value, ended_at=value))
    assert (got.created_at, got.updated_at, got.started_at, got.ended_at) == (expected,) * 4


def test_normalised_timestamps_sort_as_strings_like_the_instants() -> None:
    raw = [
        "2026-01-05T09:00:05.1Z",
        "2026-01-05T09:00:05Z",
        "2026-01-05T10:00:04+01:00",
        "2026-01-05T09:00:05.000001Z",
        "2025-12-31T23:59:59.999999-00:30",
        "2026-01-05T09:00:05.09Z",
        "0999-01-01T00:00:00Z",
    ]
    normalised = [normalise_timestamp(value) for value in raw]
    stamps = [value for value in normalised if value is not None and TIMESTAMP.match(value)]
    assert len(stamps) == len(raw)
    by_instant = sorted(stamps, key=datetime.fromisoformat)
    assert sorted(stamps) == by_instant
    assert by_instant[0] == "0999-01-01T00:00:00.000000Z"
    assert by_instant[-1] == "2026-01-05T09:00:05.100000Z"


def test_format_timestamp_accepts_unix_time_and_naive_datetimes() -> None:
    assert format_timestamp(0) == "1970-01-01T00:00:00.000000Z"
    assert format_timestamp(datetime(2026, 1, 5, 9, 0, 5)) == "2026-01-05T09:00:05.000000Z"


# --- versions --------------------------------------------------------------------------------


def test_version_of_is_updated_at_and_content_hash() -> None:
    item = normalise(EXAMPLE)
    version = version_of(EXAMPLE, item)
    assert re.fullmatch(r"2026-01-05T09:00:05\.000000Z#[0-9a-f]{16}", version)
    # however the document was written (GET /items/{id} or a page of GET /items), one key
    for text in (json.dumps(EXAMPLE), json.dumps(EXAMPLE, indent=2, ensure_ascii=True)):
        assert version_of(json.loads(text), item) == version
    reordered = dict(reversed(list(EXAMPLE.items())))
    assert version_of(reordered, item) == version


def test_version_of_changes_with_content_and_marks_missing_updated_at() -> None:
    item = normalise(EXAMPLE)
    assert version_of({"a": 1}, item) != version_of({"a": 2}, item)
    undated = normalise({"_id": "x"})
    assert version_of({}, undated).startswith("-#")


# --- API shape -------------------------------------------------------------------------------


def test_to_api_dict_has_raw_normalised_fields_version_and_fetched_at() -> None:
    raw = json.dumps(EXAMPLE, indent=2)
    normalised = normalise(EXAMPLE)
    stored = StoredItem(item=normalised, raw=raw, version="v1", fetched_at=1767603605.25)
    body = to_api_dict(stored)
    assert body["id"] == ITEM_ID
    assert body["raw"] == EXAMPLE
    assert body["version"] == "v1"
    assert body["fetched_at"] == "2026-01-05T09:00:05.250000Z"
    assert body["barcodes"] == ["8712345678906"]
    assert body["photo_urls"] == ["https://cdn.example/p.jpg"]
    assert body["width"] == 31.0
    assert body["volume_unit"] == "cm3"
    json.dumps(body)  # serialisable as is
    assert to_api_dict(stored) is not body


# --- never raises ----------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["m", "cm", "mm", "in", "ft", "kg", "g", "lb", "oz", "2026-01-05T09:00:05Z"])
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.sampled_from(
    [
        "width", "height", "depth", "length", "unit", "value", "url", "photo_url", "uri",
        "link", "photos", "barcodes", "dimensions", "weight", "$date", "$oid", "$numberLong",
    ]
)  # fmt: skip
_shaped = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=25,
)
_top_keys = st.sampled_from(
    [
        "created_at", "updated_at", "started_at", "ended_at", "owner_id", "scanner_account_id",
        "flow_id", "photographing", "dimensioning", "barcode_scanning", "weighing", "barcode",
        "code", "custom_inputs",
    ]
)  # fmt: skip
_numbers = st.integers(-(10**6), 10**6) | st.floats(allow_nan=True, allow_infinity=True)


def _steps(key: str, inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A step list shaped like Dimmy's, each step holding ``key`` most of the time."""
    step = st.fixed_dictionaries({}, optional={key: inner, "flow_step_id": st.text(max_size=4)})
    return st.lists(step | _json, max_size=4) | _json


_sides = st.fixed_dictionaries(
    {},
    optional={
        "width": _numbers | _scalars,
        "height": _numbers | _scalars,
        "depth": _numbers | _scalars,
        "length": _numbers,
        "unit": _scalars,
    },
)
_numeric_sides = st.fixed_dictionaries(
    {"width": _numbers, "height": _numbers, "depth": _numbers}, optional={"unit": _scalars}
)
_weight = st.fixed_dictionaries({}, optional={"value": _numbers | _scalars, "unit": _scalars})
_entry = st.fixed_dictionaries({}, optional={"value": _scalars, "format": _scalars})
_photo = st.fixed_dictionaries(
    {}, optional=dict.fromkeys(("url", "photo_url", "uri", "link"), _scalars)
)
_item_fields = st.fixed_dictionaries(
    {},
    optional={
        "dimensioning": _steps("dimensions", _numeric_sides | _sides | _json),
        "weighing": _steps("weight", _weight | _numbers | _json),
        "barcode_scanning": _steps("barcodes", st.lists(_entry | _scalars, max_size=4) | _json),
        "photographing": _steps("photos", st.lists(_photo | _scalars, max_size=4) | _json),
    },
)
_documents = st.builds(
    lambda item_id, shaped, known, unknown: {**unknown, **known, **shaped, "_id": item_id},
    st.text(max_size=24),
    _item_fields,
    st.dictionaries(_top_keys, _shaped | _json, max_size=8),
    st.dictionaries(st.text(max_size=8), _json, max_size=3),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    document=_documents,
    dimension_unit=st.sampled_from(["mm", "cm", "m", "in"]),
    weight_unit=st.sampled_from(["g", "kg", "lb"]),
)
def test_normalise_never_raises_and_keeps_its_invariants(
    document: dict[str, Any], dimension_unit: str, weight_unit: str
) -> None:
    got = normalise(document, dimension_unit=dimension_unit, weight_unit=weight_unit)
    assert got.id == document["_id"]
    for stamp in (got.created_at, got.updated_at, got.started_at, got.ended_at):
        assert stamp is None or TIMESTAMP.match(stamp)
    sides = (got.width, got.height, got.depth)
    assert all(side is None for side in sides) or all(
        isinstance(side, float) and math.isfinite(side) for side in sides
    )
    assert (got.dimension_unit is None) == (got.width is None)
    assert got.volume is None or math.isfinite(got.volume)
    assert (got.weight is None) == (got.weight_unit is None)
    assert len(set(got.barcodes)) == len(got.barcodes)
    assert got.barcode == (got.barcodes[0] if got.barcodes else None)
    assert all(isinstance(url, str) for url in got.photo_urls)
    for value in (got.owner_id, got.scanner_account_id, got.flow_id):
        assert value is None or isinstance(value, str)
    assert version_of(document, got) == version_of(json.loads(json.dumps(document)), got)


# -- JSON text from outside: a BOM, UTF-16, UTF-32 (S19) ----------------------------------------


@given(
    doc=st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=4),
    encoding=st.sampled_from(
        ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"]
    ),
)
def test_json_text_is_the_document_without_a_bom(doc: dict[str, str], encoding: str) -> None:
    text = json.dumps(doc, ensure_ascii=False)
    try:
        body = text.encode(encoding)
    except UnicodeEncodeError:  # a lone surrogate cannot be written in this encoding
        return
    assert json_text(body) == text
    assert clean_json_bytes(body) == text.encode()
    assert json.loads(clean_json_bytes(body).decode("utf-8")) == doc


def test_clean_json_bytes_keeps_clean_utf8_as_it_is() -> None:
    body = b'{"_id": "x", "a": "caf\xc3\xa9"}'
    assert clean_json_bytes(body) is body
    with pytest.raises(UnicodeDecodeError):
        clean_json_bytes(b"\xff\xfe{")  # UTF-16 cut in the middle of a character


def test_a_stored_item_never_keeps_a_bom() -> None:
    raw = "\ufeff" + json.dumps(EXAMPLE)
    item = to_stored_item(EXAMPLE, raw, fetched_at=0.0)
    assert item.raw == raw[1:]
    assert json.loads(to_api_json(item).decode("utf-8"))["raw"] == EXAMPLE
