"""Versioned schema migrations (Alembic), the same mechanism for SQLite and PostgreSQL.

``upgrade`` applies what is missing; ``status`` tells where a database stands; ``require_current``
refuses to run on a schema that is behind (``dimmy-webhooks migrate`` fixes that).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.exc import SQLAlchemyError

from dimmy_webhooks.errors import SchemaBehind, StoreUnavailable

_MIGRATIONS = Path(__file__).parent / "migrations"


def sqlalchemy_url(database_url: str) -> str:
    """Our ``DIMMY_DATABASE_URL`` as SQLAlchemy wants it (psycopg 3 driver for PostgreSQL)."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url.removeprefix(prefix)
    return database_url


def _config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    # ConfigParser interpolation would choke on '%' in passwords
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return config


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def status(database_url: str) -> SchemaStatus:
    """Where the database's schema stands. Raises :class:`StoreUnavailable` if unreachable."""
    head = ScriptDirectory.from_config(_config(database_url)).get_current_head()
    assert head is not None
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"cannot read the schema version: {exc.__class__.__name__}") from exc
    finally:
        engine.dispose()
    return SchemaStatus(current=current, head=head)


def upgrade(database_url: str) -> SchemaStatus:
    """Apply every missing migration; returns the new status."""
    path = _sqlite_file(database_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    # alembic logs each step at INFO through the root logger; keep our log format in charge
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        command.upgrade(_config(database_url), "head")
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"migration failed: {exc.__class__.__name__}: {exc}") from exc
    return status(database_url)


def require_current(database_url: str) -> None:
    """Raise :class:`SchemaBehind` unless every migration has been applied."""
    state = status(database_url)
    if not state.up_to_date:
        raise SchemaBehind(
            f"database schema is at {state.current or 'nothing'}, this version needs "
            f"{state.head}: run `dimmy-webhooks migrate` first"
        )


def _sqlite_file(database_url: str) -> Path | None:
    if database_url.startswith("sqlite:///"):
        return Path(database_url.removeprefix("sqlite:///"))
    return None
