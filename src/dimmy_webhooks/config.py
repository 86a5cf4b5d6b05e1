"""Settings: read once from the environment and an optional ``.env``, validated, then frozen.

This module is the only reader of the environment. Every setting is declared once below (name,
default, description); ``docs/configuration.md`` lists them and ``.env.example`` is
:func:`env_example` (``dimmy-webhooks config --example``), both kept in step by tests. Secrets are
:class:`pydantic.SecretStr`: their ``repr`` hides the value.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError

DEFAULT_API_URL = "https://dimmy.api.optioryx.com"
DEFAULT_DATABASE_URL = "sqlite:///dimmy-webhooks.sqlite3"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

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
        "non-loopback address.",
    )
    host: str = Field(default="127.0.0.1", description="Address `serve` binds.")
    port: int = Field(default=5000, ge=0, le=65535, description="Port `serve` binds.")
    webhook_path: str = Field(default="/webhook", description="Path that receives webhooks.")
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest webhook body accepted; larger ones get 413 before being read whole.",
    )
    body_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Time allowed to receive a whole webhook body; slower senders are cut off.",
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
    api_concurrency: int = Field(
        default=64, ge=1, le=1024, description="Dimmy API requests in flight at most."
    )
    api_rate_limit: float = Field(
        default=100.0,
        gt=0,
        description="Dimmy API requests per second at most (before any 429 from the API).",
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
    dimension_unit: DimensionUnit = Field(
        default="cm", description="Unit of the stored width/height/depth (`mm`, `cm`, `m`, `in`)."
    )
    weight_unit: WeightUnit = Field(
        default="kg", description="Unit of the stored weight (`g`, `kg`, `lb`)."
    )
    outputs: str = Field(
        default="console",
        description="Where new or changed items go, comma separated: `console`, `jsonl:PATH`, "
        "`python:module:function`. Empty for none.",
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

    @field_validator("api_url")
    @classmethod
    def _url_has_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        if (missing := postgres_driver_missing(value)) is not None:
            raise ValueError(missing)
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

    def admin_token_value(self) -> str | None:
        """The admin token, or ``None`` when unset or blank."""
        if self.admin_token is None:
            return None
        value = self.admin_token.get_secret_value().strip()
        return value or None


SECRET_SETTINGS = frozenset({"webhook_secret", "api_key", "admin_token"})
"""Settings never printed (``config`` shows them as set or not)."""


def env_example() -> str:
    """A ``.env`` template: every setting commented out at its default, with its description."""
    lines = [
        "# dimmy-webhooks settings: copy to .env (next to where you run the service) and",
        "# uncomment what you change. The environment wins over .env. All settings, with what",
        "# they do: docs/configuration.md. `dimmy-webhooks config` prints the effective values.",
    ]
    for name, field in Settings.model_fields.items():
        default = "" if field.default is None else str(field.default)
        if isinstance(field.default, bool):
            default = default.lower()
        about = textwrap.wrap(
            field.description or "", 96, initial_indent="# ", subsequent_indent="# "
        )
        lines += ["", *about, f"# DIMMY_{name.upper()}={default}"]
    return "\n".join(lines) + "\n"


def postgres_driver_missing(database_url: str) -> str | None:
    """Why ``database_url`` cannot be used on this installation (a PostgreSQL URL without the
    ``postgres`` extra installed), or ``None``."""
    if not database_url.startswith(("postgresql://", "postgres://")):
        return None
    try:
        import psycopg  # noqa: F401 - only whether it imports
        import psycopg_pool  # noqa: F401
    except ImportError:
        return (
            "a PostgreSQL URL needs the PostgreSQL driver, which is not installed: "
            "pip install 'dimmy-webhooks[postgres]'"
        )
    return None


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Read settings from the environment (and ``env_file`` when it exists).

    Raises :class:`ConfigError` with one line per bad setting, naming the variable.
    """
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "DIMMY_" + "_".join(str(part) for part in err["loc"]).upper()
            lines.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from None


def require_loopback_or_token(settings: Settings, host: str) -> None:
    """Refuse to expose the service beyond this machine without an admin token."""
    if host not in LOOPBACK_HOSTS and settings.admin_token_value() is None:
        raise ConfigError(
            f"refusing to listen on {host}: set DIMMY_ADMIN_TOKEN first, so the JSON API and "
            "dashboard are not open to the network (or bind 127.0.0.1)"
        )
