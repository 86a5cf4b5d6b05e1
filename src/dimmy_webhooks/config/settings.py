"""The settings model: every ``DIMMY_*`` setting declared once (name, default, description),
read from the environment and an optional ``.env`` by :func:`load_settings`, validated, then
frozen.

``docs/configuration.md`` lists the settings and ``.env.example`` is made from them
(:mod:`.display`), both kept in step by tests. Secrets are :class:`pydantic.SecretStr`: their
``repr`` hides the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dimmy_webhooks.config.errors import error_lines
from dimmy_webhooks.config.values import (
    SMALL_BODY_BYTES,
    SMALL_BODY_RESERVE,
    host_name,
    http_url,
    least_budget,
    postgres_driver_missing,
)
from dimmy_webhooks.errors import ConfigError

DEFAULT_API_URL = "https://dimmy.api.optioryx.com"
DEFAULT_DATABASE_URL = "sqlite:///dimmy-webhooks.sqlite3"

DimensionUnit = Literal["mm", "cm", "m", "in"]
WeightUnit = Literal["g", "kg", "lb"]


class Settings(BaseSettings):
    """Every ``DIMMY_*`` setting. Build with :func:`load_settings`, not directly."""

    model_config = SettingsConfigDict(
        env_prefix="DIMMY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Signing secret(s) of the Svix endpoint (`whsec_...`); several, separated by "
        "spaces or commas, during a rotation. Required by `serve`.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="Dimmy API key (Account & Limits > New API Key), sent as `X-API-KEY`.",
    )
    api_url: str = Field(default=DEFAULT_API_URL, description="Base URL of the Dimmy REST API.")
    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="`sqlite:///path/file.sqlite3` (default, in the working directory) or "
        "`postgresql://user@host/db`.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for the JSON API and dashboard. Required to bind a "
        "non-loopback address, and then at least 32 characters (`dimmy-webhooks token` makes "
        "one).",
    )
    allowed_hosts: str = Field(
        default="",
        description="Extra host names the JSON API and dashboard answer to in `Host` "
        "(comma separated, e.g. `dimmy.example.com`). Without an admin token only loopback "
        "names are answered (DNS rebinding); with one, any unless this is set.",
    )
    host: str = Field(default="127.0.0.1", description="Address `serve` binds.")
    port: int = Field(default=5000, ge=0, le=65535, description="Port `serve` binds.")
    webhook_path: str = Field(default="/webhook", description="Path that receives webhooks.")
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest webhook body accepted; larger ones get 413 before being read whole.",
    )
    max_json_depth: int = Field(
        default=64,
        ge=4,
        le=200,
        description="Deepest nesting of arrays and objects accepted in a webhook body or an item "
        "fetched from the API; deeper ones are refused (400 at the receiver), never stored.",
    )
    body_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Time allowed to receive a whole webhook body; slower senders are cut off.",
    )
    unverified_body_bytes: int | None = Field(
        default=None,
        ge=1024,
        description="Webhook body bytes held in memory before their signature is checked, all "
        "requests together; a request that would hold more gets 503 with Retry-After (the sender "
        "retries). Requests declaring over 64 KiB may not use its last MiB. Unset: 4 x "
        "DIMMY_MAX_BODY_BYTES (at least that plus 1 MiB).",
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=2048,
        le=1024 * 1024,
        description="Largest request line and headers the HTTP server reads; a larger request "
        "gets 431 and its connection is closed.",
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Time allowed to receive a request's headers, from when the connection "
        "opens (on a kept-alive one, from the first byte after the previous answer); a slower "
        "client is disconnected.",
    )
    max_connections: int | None = Field(
        default=None,
        ge=1,
        description="Open HTTP connections at most; at the cap the longest-idle one is closed "
        "to make room, or the new one is refused. Unset: 2048, or fewer when the open-file limit "
        "(LimitNOFILE, ulimit -n) minus 256 and DIMMY_API_CONCURRENCY is lower.",
    )
    timestamp_tolerance_seconds: int = Field(
        default=300,
        ge=1,
        le=3600,
        description="Accepted distance between `svix-timestamp` and the local clock.",
    )
    api_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Timeout of one Dimmy API request."
    )
    max_item_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest item read from the Dimmy API (`GET /items/{id}`, or one item of a "
        "`GET /items` page, as JSON text); the answer is streamed and reading stops past it. An "
        "item over it is not stored: its fetch is dead with the reason (a polled one is logged "
        "as refused).",
    )
    max_page_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Largest `GET /items` page read from the Dimmy API; the answer is streamed "
        "and reading stops past it, and the poll pass fails with the reason (lower "
        "DIMMY_POLL_PAGE_SIZE, or raise this). At least DIMMY_MAX_ITEM_BYTES.",
    )
    api_concurrency: int = Field(
        default=64, ge=1, le=1024, description="Dimmy API requests in flight at most."
    )
    api_rate_limit: float = Field(
        default=100.0,
        gt=0,
        description="Dimmy API requests per second at most (before any 429 from the API); "
        "with DIMMY_API_RATE_MODE=adaptive, the rate it starts from when none was learned yet.",
    )
    api_rate_mode: Literal["fixed", "adaptive"] = Field(
        default="fixed",
        description="`fixed`: DIMMY_API_RATE_LIMIT requests per second. `adaptive`: learn the "
        "rate from the answers (raise it while they are fast, cut it on a 429 or when latency "
        "rises), between DIMMY_API_RATE_MIN and DIMMY_API_RATE_MAX, and keep the learned rate "
        "in the database for the next start.",
    )
    api_rate_min: float = Field(
        default=1.0,
        gt=0,
        description="Adaptive mode: the rate (requests per second) is never cut below this.",
    )
    api_rate_max: float = Field(
        default=1000.0,
        gt=0,
        description="Adaptive mode: the rate (requests per second) never grows above this.",
    )
    max_attempts: int = Field(
        default=8,
        ge=1,
        le=100,
        description="Attempts per fetch or delivery before the work is marked `dead`.",
    )
    retry_base_seconds: float = Field(
        default=2.0, gt=0, description="First retry delay; it doubles each attempt, with jitter."
    )
    retry_max_seconds: float = Field(
        default=900.0, gt=0, description="Longest delay between two attempts."
    )
    lease_seconds: float = Field(
        default=60.0,
        ge=1,
        description="How long a worker's claim lasts without a heartbeat; a killed worker's "
        "work is taken over after this.",
    )
    shutdown_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        description="On SIGTERM, how long running jobs may finish before the rest are released.",
    )
    worker_enabled: bool = Field(
        default=True, description="Run workers inside `serve` (same as not passing `--no-worker`)."
    )
    poll: bool = Field(
        default=False,
        description="Run the poller inside `serve` (same as `serve --poll`): read `GET /items` "
        "every `DIMMY_POLL_INTERVAL_SECONDS` and store what webhooks missed.",
    )
    poll_interval_seconds: float = Field(
        default=60.0, ge=5, description="Time between two polling passes."
    )
    poll_overlap_seconds: float = Field(
        default=600.0,
        ge=0,
        description="Each pass re-reads this much before the last pass's end (late-visible "
        "items, clock skew); repeats are dropped.",
    )
    poll_lookback_hours: float = Field(
        default=24.0, ge=0, description="How far back the very first pass reads."
    )
    poll_sweep_days: float = Field(
        default=7.0,
        ge=0,
        description="A deeper pass re-reads items created in the last this many days, to catch "
        "updates to them (`start_date` is creation time). 0: no sweep.",
    )
    poll_sweep_interval_hours: float = Field(
        default=24.0, gt=0, description="Time between two deeper passes."
    )
    poll_page_size: int = Field(
        default=100, ge=1, le=1000, description="Items asked for per `GET /items` page."
    )
    reconcile_grace_seconds: float = Field(
        default=900.0,
        ge=0,
        description="An item the poller found is counted as missed by webhooks only after this "
        "long without one (its webhook may still be on its way).",
    )
    dimension_unit: DimensionUnit = Field(
        default="cm", description="Unit of the stored width/height/depth (`mm`, `cm`, `m`, `in`)."
    )
    weight_unit: WeightUnit = Field(
        default="kg", description="Unit of the stored weight (`g`, `kg`, `lb`)."
    )
    dim_weight_divisor: float = Field(
        default=5000.0,
        gt=0,
        description="Dimensional weight = volume / this, in `DIMMY_DIMENSION_UNIT`³ per "
        "`DIMMY_WEIGHT_UNIT` (5000 cm³/kg is common; 139 in³/lb with `in` and `lb`).",
    )
    validate_min_side: float | None = Field(
        default=None,
        gt=0,
        description="Hold items with a side under this (in `DIMMY_DIMENSION_UNIT`) in quarantine. "
        "A side of 0 or less is always held.",
    )
    validate_max_side: float | None = Field(
        default=None, gt=0, description="Hold items with a side over this (`DIMMY_DIMENSION_UNIT`)."
    )
    validate_min_weight: float | None = Field(
        default=None, ge=0, description="Hold items weighing under this (`DIMMY_WEIGHT_UNIT`)."
    )
    validate_max_weight: float | None = Field(
        default=None, gt=0, description="Hold items weighing over this (`DIMMY_WEIGHT_UNIT`)."
    )
    validate_require_dimensions: bool = Field(
        default=False, description="Hold items without dimensions."
    )
    validate_require_weight: bool = Field(default=False, description="Hold items without a weight.")
    validate_require_barcode: bool = Field(
        default=False, description="Hold items without a barcode."
    )
    validate_require_photo: bool = Field(default=False, description="Hold items without a photo.")
    forward_secret: SecretStr | None = Field(
        default=None,
        description="Our signing secret (`whsec_...`) for `http:` forwards to the warehouse "
        "system (Standard Webhooks); `dimmy-webhooks token --whsec` makes one.",
    )
    destinations_file: Path | None = Field(
        default=None,
        description="A TOML file of `[[destination]]` tables: per-destination headers, timeout, "
        "concurrency, rate, filters and fields (docs/forwarding.md).",
    )
    accounts_file: Path | None = Field(
        default=None,
        description="A TOML file of `[[account]]` tables, one per Dimmy account (a 3PL's "
        "clients): name, webhook_secret, api_key and optional overrides (docs/accounts.md). "
        "The single-account settings stay the account `default`.",
    )
    outputs: str = Field(
        default="console",
        description="Where new or changed items go, comma separated: `console`, `jsonl:PATH`, "
        "`python:module:function`, `http:URL` (any number). Empty for none.",
    )
    output_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Longest one delivery to one output may take; one that takes longer fails "
        "and is retried (a blocking call it made is left to its thread).",
    )
    failpoint: str | None = Field(
        default=None,
        description="For fault tests only: `point[:n]` makes the process kill itself there "
        "(see `failpoints.py`). Leave unset.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="`text` (key=value) or `json` (one object per line)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level written to the log."
    )
    # the operator's view: dashboard sessions, /metrics, alerts --------------------------------
    session_hours: float = Field(
        default=12.0,
        gt=0,
        le=24 * 30,
        description="How long a dashboard login lasts (its session cookie expires then). "
        "Changing DIMMY_ADMIN_TOKEN ends every session at once.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for `/metrics` alone, so a Prometheus scraper needs no admin "
        "token (the admin token is accepted too). Unset: `/metrics` wants the admin token when "
        "one is set, else it is open like the rest (loopback only).",
    )
    public_url: str | None = Field(
        default=None,
        description="The dashboard's address as people open it (e.g. "
        "`https://dimmy.example.com`): alert messages link to it.",
    )
    alert_url: SecretStr | None = Field(
        default=None,
        description="Where alerts go: a Slack or Teams incoming webhook, or any URL that takes "
        "a JSON POST. One message when something needs a person (work went dead, the API key "
        "was refused, signature failures, a failing destination, webhooks being lost), one "
        "when it clears. Unset: no alerts.",
    )
    alert_format: Literal["slack", "json"] = Field(
        default="slack",
        description='`slack`: `{"text": ...}` (Slack, Teams and Mattermost incoming webhooks); '
        "`json`: an object with `condition`, `state` (`firing`/`resolved`), `summary`, `at`.",
    )
    alert_interval_seconds: float = Field(
        default=15.0, ge=1, le=3600, description="How often the alert conditions are checked."
    )
    alert_repeat_minutes: float = Field(
        default=30.0,
        gt=0,
        description="At most one message per condition per this many minutes (a condition that "
        "keeps getting worse is told again after this; a resolved message always goes out).",
    )
    alert_signature_failures: int = Field(
        default=20,
        ge=1,
        description="Webhooks refused for their signature within 5 minutes that raise an alert "
        "(a wrong or rotated secret, or someone probing the endpoint).",
    )
    alert_destination_minutes: float = Field(
        default=10.0,
        gt=0,
        description="An output whose deliveries have all failed for this long (no success "
        "since its first failure) raises an alert.",
    )

    @field_validator("api_url", "public_url")
    @classmethod
    def _url_is_http(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value).rstrip("/")

    @field_validator("alert_url")
    @classmethod
    def _alert_url_is_http(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            http_url(value.get_secret_value())
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        if (missing := postgres_driver_missing(value)) is not None:
            raise ValueError(missing)
        return value

    @field_validator("unverified_body_bytes")
    @classmethod
    def _budget_fits_a_body(cls, value: int | None, info: ValidationInfo) -> int | None:
        max_body = info.data.get("max_body_bytes")
        if value is not None and max_body is not None and value < least_budget(max_body):
            raise ValueError(
                f"must be at least {least_budget(max_body)} (DIMMY_MAX_BODY_BYTES, plus "
                f"{SMALL_BODY_RESERVE} above {SMALL_BODY_BYTES}), or a body of the largest size "
                "would never fit"
            )
        return value

    @field_validator("max_page_bytes")
    @classmethod
    def _page_fits_an_item(cls, value: int, info: ValidationInfo) -> int:
        max_item = info.data.get("max_item_bytes")
        if max_item is not None and value < max_item:
            raise ValueError(f"must be at least DIMMY_MAX_ITEM_BYTES ({max_item})")
        return value

    @field_validator("api_rate_max")
    @classmethod
    def _rates_in_order(cls, value: float, info: ValidationInfo) -> float:
        low, start = info.data.get("api_rate_min"), info.data.get("api_rate_limit")
        adaptive = info.data.get("api_rate_mode") == "adaptive"
        if adaptive and low is not None and start is not None and not low <= start <= value:
            raise ValueError(
                "adaptive mode needs DIMMY_API_RATE_MIN <= DIMMY_API_RATE_LIMIT <= "
                f"DIMMY_API_RATE_MAX (now {low:g}, {start:g}, {value:g})"
            )
        return value

    @field_validator("webhook_path")
    @classmethod
    def _path_absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or ``None`` when the database is PostgreSQL."""
        if self.database_url.startswith("sqlite:///"):
            return Path(self.database_url.removeprefix("sqlite:///"))
        return None

    @property
    def allowed_host_names(self) -> frozenset[str]:
        """``allowed_hosts`` as lower-case names (a port, if given, is ignored)."""
        return frozenset(host_name(part) for part in self.allowed_hosts.split(",") if part.strip())

    @property
    def unverified_body_budget(self) -> int:
        """:attr:`unverified_body_bytes`, or its default of 4 bodies of the largest size."""
        if self.unverified_body_bytes is not None:
            return self.unverified_body_bytes
        return max(4 * self.max_body_bytes, least_budget(self.max_body_bytes))

    def admin_token_value(self) -> str | None:
        """The admin token, or ``None`` when unset or blank."""
        return _token(self.admin_token)

    def metrics_token_value(self) -> str | None:
        """The token for ``/metrics`` alone, or ``None`` when unset or blank."""
        return _token(self.metrics_token)


def _token(secret: SecretStr | None) -> str | None:
    """A token setting's value without surrounding blanks, or ``None`` when unset or blank."""
    if secret is None:
        return None
    return secret.get_secret_value().strip() or None


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Read settings from the environment (and ``env_file`` when it exists).

    Raises :class:`ConfigError` with one line per bad setting, naming the variable.
    """
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        lines = error_lines(exc, lambda err: "DIMMY_" + "_".join(map(str, err["loc"])).upper())
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from None
