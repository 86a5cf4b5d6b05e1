"""Where forwards go: :class:`Destination` and the ``DIMMY_DESTINATIONS_FILE`` that lists them.

The file is TOML, one ``[[destination]]`` table per WMS endpoint (extra headers or basic auth,
timeout, concurrency, a rate limit, attempts, filters, field selection and renaming). Its schema
is :class:`DestinationTable`, a pydantic model; :func:`load_destinations` checks the file at
start-up and turns the first mistake into one line naming the file, the destination and the key.
"""

from __future__ import annotations

import base64
import contextlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from dimmy_webhooks.config import error_lines
from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.models import StoredItem
from dimmy_webhooks.signatures import MIN_SECRET_BYTES, parse_secrets

FIELD_NAMES = frozenset(
    [
        "id",
        "account",
        "created_at",
        "updated_at",
        "started_at",
        "ended_at",
        "owner_id",
        "scanner_account_id",
        "flow_id",
        "width",
        "height",
        "depth",
        "dimension_unit",
        "volume",
        "volume_unit",
        "weight",
        "weight_unit",
        "dim_weight",
        "billable_weight",
        "barcode",
        "barcodes",
        "photo_urls",
        "version",
        "revision",
        "fetched_at",
        "raw",
    ]
)
"""What ``fields.include`` and ``fields.rename`` may name: the keys of ``GET /api/items/{id}``."""

_RESERVED_HEADERS = frozenset(
    {
        # what every forward carries already
        "content-type",
        "idempotency-key",
        # framing and connection handling: the HTTP client's, never the file's
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")  # an RFC 9110 token
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")  # printable ASCII: what every server takes
_FIXED_FIELDS = frozenset({"id", "raw"})  # what identifies the item: nothing is renamed onto them


@dataclass(frozen=True, slots=True)
class Filter:
    """Which items a destination takes (all of them by default)."""

    require_dimensions: bool = False
    require_weight: bool = False
    require_barcode: bool = False
    scanner_accounts: frozenset[str] | None = None
    owners: frozenset[str] | None = None

    def refuses(self, item: StoredItem) -> str | None:
        fields = item.item
        if self.require_dimensions and fields.width is None:
            return "filtered out: no dimensions"
        if self.require_weight and fields.weight is None:
            return "filtered out: no weight"
        if self.require_barcode and fields.barcode is None:
            return "filtered out: no barcode"
        if (
            self.scanner_accounts is not None
            and fields.scanner_account_id not in self.scanner_accounts
        ):
            return "filtered out: another scanner account"
        if self.owners is not None and fields.owner_id not in self.owners:
            return "filtered out: another owner"
        return None


@dataclass(frozen=True, slots=True)
class Destination:
    """One WMS endpoint and how to talk to it (see :mod:`dimmy_webhooks.outputs.http`)."""

    url: str
    label: str | None = None
    """The ``name`` of the file's table: the output's name whatever the URL (S20)."""
    secret: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 10.0
    concurrency: int = 4
    rate: float | None = None
    max_attempts: int = 100
    pause_seconds: float = 10.0
    record_id_field: str = "id"
    include: tuple[str, ...] | None = None
    rename: Mapping[str, str] = field(default_factory=dict)
    filter: Filter = field(default_factory=Filter)

    @property
    def name(self) -> str:
        """The output's name (ledger, logs, the deliveries queued for it): its ``label``, else
        :attr:`url_name`. A label keeps the backlog when the URL changes."""
        return self.label or self.url_name

    @property
    def url_name(self) -> str:
        """``http:`` + the URL without its user-info: what ``http:URL`` in ``DIMMY_OUTPUTS``
        matches, and the name of a destination without a label."""
        parts = urlsplit(self.url)
        host = parts.netloc.rpartition("@")[2]
        return "http:" + urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


def check_url(url: str, where: str) -> str:
    """``url`` if it is an absolute http(s) URL, else :class:`ConfigError` naming ``where``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: {url!r} is not an http:// or https:// URL")
    if parts.fragment:
        raise ConfigError(f"{where}: a destination URL has no #fragment")
    return url.strip()


# -- the file's schema ---------------------------------------------------------------------------
#
# A check of our own raises PydanticCustomError("destination", text): its line reads as the key
# followed by ``text``. Any other error is the field's ``description`` after its key.

_TEXT = "must be a non-empty string"
_TABLE = "must be a table"


def _problem(text: str) -> PydanticCustomError:
    return PydanticCustomError("destination", text)


def _one_line(value: str) -> str:
    if not value.strip() or len(value) > 4096:
        raise _problem(" " + _TEXT)
    if any(c in value for c in "\r\n\x00"):
        raise _problem(" must be one line")
    return value


OUTPUT_NAME = re.compile(r"[^\s,\x00-\x1f\x7f]{1,300}")
"""What an output's ``name`` may be: no space, comma or control character (an ``http:URL``
name of old included, to keep its backlog)."""


def _output_name(value: str) -> str:
    if not OUTPUT_NAME.fullmatch(value):
        raise _problem(" is 1-300 characters without spaces or commas")
    return value


def _url(value: str) -> str:
    try:
        return check_url(value, "")
    except ConfigError as exc:
        raise _problem(str(exc)) from None


def _headers(value: dict[str, str]) -> dict[str, str]:
    seen: set[str] = set()
    for name, text in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise _problem(f".{name} is not a header name (letters, digits and -, no : or space)")
        if name.lower() in _RESERVED_HEADERS or name.lower().startswith("webhook-"):
            raise _problem(f".{name} is set by the service itself")
        if name.lower() in seen:
            raise _problem(f".{name} is given twice (header names ignore case)")
        seen.add(name.lower())
        if not _HEADER_VALUE.fullmatch(text):
            raise _problem(f".{name} must be printable ASCII (no accents, tabs or emoji)")
    return value


def _basic_auth(value: str) -> str:
    if ":" not in value:
        raise _problem(" is 'user:password'")
    return value


def _secret(value: str) -> str:
    try:
        parse_secrets(value)
    except ConfigError:  # its text names DIMMY_WEBHOOK_SECRET: this is the file's key
        raise _problem(
            " is not a signing secret: whsec_ followed by standard base64 of at least "
            f"{MIN_SECRET_BYTES} bytes (`dimmy-webhooks token --whsec` makes one)"
        ) from None
    return value


def _field_name(name: Any) -> str:
    if name not in FIELD_NAMES:
        raise _problem(f": {name!r} is not an item field; fields: {sorted(FIELD_NAMES)}")
    return str(name)


def _field_names(names: list[Any]) -> list[str]:
    if not names:
        raise _problem(" is a non-empty list of field names")
    return [_field_name(name) for name in names]


def _renames(renames: dict[str, str]) -> dict[str, str]:
    for name in renames:
        _field_name(name)
    return renames


def _number(default: float | None, low: float, high: float) -> Any:
    return Field(default, ge=low, le=high, description=f"must be a number from {low:g} to {high:g}")


Text = Annotated[str, AfterValidator(_one_line)]
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class FilterTable(BaseModel):
    """``[destination.filter]``."""

    model_config = _STRICT

    require_dimensions: bool = Field(False, description="is true or false")
    require_weight: bool = Field(False, description="is true or false")
    require_barcode: bool = Field(False, description="is true or false")
    scanner_accounts: list[str] | None = Field(None, description="is a list of ids")
    owners: list[str] | None = Field(None, description="is a list of ids")


class FieldsTable(BaseModel):
    """``[destination.fields]``."""

    model_config = _STRICT

    include: Annotated[list[Any], AfterValidator(_field_names)] | None = Field(
        None, description="is a non-empty list of field names"
    )
    rename: Annotated[dict[str, Text], AfterValidator(_renames)] = Field(
        default_factory=dict, description=_TABLE
    )

    @model_validator(mode="after")
    def _one_name_each(self) -> FieldsTable:
        """Every field the envelope carries keeps a name of its own, and ``id`` and ``raw``
        stay what they are: a rename onto another field's name would send one of them twice
        or drop it."""
        carried = FIELD_NAMES if self.include is None else frozenset(self.include)
        for source, target in self.rename.items():
            others = {self.rename.get(f, f) for f in carried if f != source}
            if target in others or (target in _FIXED_FIELDS and target != source):
                raise _problem(f".rename.{source}: {target!r} is the name of another field")
        return self


class DestinationTable(BaseModel):
    """One ``[[destination]]`` table, as written (fields in the order they are checked)."""

    model_config = _STRICT

    url: Annotated[Text, AfterValidator(_url)] = Field(description=_TEXT)
    name: Annotated[Text, AfterValidator(_output_name)] | None = Field(None, description=_TEXT)
    headers: Annotated[dict[str, Text], AfterValidator(_headers)] = Field(
        default_factory=dict, description=_TABLE
    )
    basic_auth: Annotated[Text, AfterValidator(_basic_auth)] | None = Field(None, description=_TEXT)
    secret: Annotated[Text, AfterValidator(_secret)] | None = Field(None, description=_TEXT)
    fields: FieldsTable = Field(default_factory=FieldsTable, description=_TABLE)
    timeout_seconds: float = _number(10.0, 0.1, 300)
    concurrency: float = _number(4, 1, 256)
    rate_per_second: float | None = _number(None, 0.01, 10_000)
    max_attempts: float = _number(100, 1, 10_000)
    pause_seconds: float = _number(10.0, 0.1, 300)
    record_id_field: Text = Field("id", description=_TEXT)
    filter: FilterTable = Field(default_factory=FilterTable, description=_TABLE)

    @model_validator(mode="after")
    def _one_authorization(self) -> DestinationTable:
        if self.basic_auth is not None:
            for name in self.headers:
                if name.lower() == "authorization":
                    raise _problem(f"headers.{name} is given twice (basic_auth sets it)")
        return self

    def destination(self) -> Destination:
        headers = dict(self.headers)
        if self.basic_auth is not None:
            headers["Authorization"] = (
                "Basic " + base64.b64encode(self.basic_auth.encode()).decode()
            )
        return Destination(
            url=self.url,
            label=self.name,
            secret=self.secret,
            headers=headers,
            timeout=self.timeout_seconds,
            concurrency=int(self.concurrency),
            rate=self.rate_per_second,
            max_attempts=int(self.max_attempts),
            pause_seconds=self.pause_seconds,
            record_id_field=self.record_id_field,
            include=None if self.fields.include is None else tuple(self.fields.include),
            rename=dict(self.fields.rename),
            filter=Filter(
                require_dimensions=self.filter.require_dimensions,
                require_weight=self.filter.require_weight,
                require_barcode=self.filter.require_barcode,
                scanner_accounts=_ids(self.filter.scanner_accounts),
                owners=_ids(self.filter.owners),
            ),
        )


def _ids(ids: list[str] | None) -> frozenset[str] | None:
    return None if ids is None else frozenset(ids)


# -- reading the file ----------------------------------------------------------------------------


def load_destinations(path: Path) -> list[Destination]:
    """The ``[[destination]]`` tables of a TOML file, checked: every mistake is a
    :class:`ConfigError` naming the file, the destination and the key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"DIMMY_DESTINATIONS_FILE: cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"DIMMY_DESTINATIONS_FILE: {path} is not TOML: {exc}") from None
    unknown = set(data) - {"destination"}
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {sorted(unknown)}; use [[destination]]")
    tables = data.get("destination", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{path}: write each destination as a [[destination]] table")
    destinations: list[Destination] = []
    named: dict[str, int] = {}
    for number, table in enumerate(tables, 1):
        destination = _destination(table, f"{path}: destination #{number}")
        if destination.name in named:
            raise ConfigError(
                f"{path}: destination #{number}: name {destination.name} is also destination "
                f"#{named[destination.name]}'s; give each a name of its own"
            )
        named[destination.name] = number
        destinations.append(destination)
    return destinations


def _destination(table: Any, where: str) -> Destination:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: not a table")
    try:
        return DestinationTable.model_validate(table).destination()
    except ValidationError as exc:
        unknown = _unknown_keys(exc)
        if unknown is not None and unknown[0] == ():  # the table's own keys: before the url
            raise ConfigError(f"{where}: {unknown[1]}") from None
        url = table.get("url")
        if isinstance(url, str):
            with contextlib.suppress(ConfigError):
                where = f"{where} ({Destination(check_url(url, where)).url_name})"
        if unknown is not None:
            raise ConfigError(f"{where}: {unknown[1]}") from None
        raise ConfigError(error_lines(exc, lambda err: where, _message)[0]) from None


def _unknown_keys(exc: ValidationError) -> tuple[tuple[int | str, ...], str] | None:
    """Keys the schema does not know, named together with the valid ones: where they are
    (``()``: in the destination's own table), and the line that says so."""
    errors = [err for err in exc.errors() if err["type"] == "extra_forbidden"]
    if not errors:
        return None
    parent = errors[0]["loc"][:-1]
    unknown = sorted(str(err["loc"][-1]) for err in errors if err["loc"][:-1] == parent)
    if parent == ("fields",):
        return parent, "fields takes include and rename only"
    model: type[BaseModel] = FilterTable if parent == ("filter",) else DestinationTable
    scope = "filter " if parent == ("filter",) else ""
    return parent, f"unknown {scope}key(s) {unknown}; valid: {sorted(model.model_fields)}"


def _message(err: ErrorDetails) -> str:
    loc = [str(part) for part in err["loc"] if part != "[key]"]
    if err["type"] == "missing":
        return f"{'.'.join(loc)} is missing"
    if err["type"] == "destination":  # ours: the key, then what is wrong with it
        return ".".join(loc) + err["msg"]
    key, description = _explain(DestinationTable, loc)
    return f"{'.'.join(key)} {description}"


def _explain(model: type[BaseModel], loc: list[str]) -> tuple[list[str], str]:
    """The key an error at ``loc`` is about, and what that key must be (its field's
    description); an entry of a table of strings is a key of its own."""
    info = model.model_fields.get(loc[0])
    if info is None:
        return loc, _TEXT
    inner = info.annotation
    if len(loc) > 1 and isinstance(inner, type) and issubclass(inner, BaseModel):
        key, description = _explain(inner, loc[1:])
        return [loc[0], *key], description
    description = info.description or _TEXT
    if len(loc) > 1 and description == _TABLE:
        return loc, _TEXT
    return loc[:1], description
