"""The store: inbox, work queue and item store behind one interface (:class:`.base.Store`)."""

from __future__ import annotations

from dimmy_webhooks.config import postgres_driver_missing
from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.models import Lease, QueueStats, ReplayMode, SaveResult
from dimmy_webhooks.store.base import Store
from dimmy_webhooks.store.sqlite import SQLiteStore


def create_store(database_url: str, *, max_attempts: int = 8) -> Store:
    """The backend for ``database_url`` (not yet opened)."""
    if database_url.startswith("sqlite:///"):
        return SQLiteStore(database_url.removeprefix("sqlite:///"), max_attempts=max_attempts)
    if database_url.startswith(("postgresql://", "postgres://")):
        if (missing := postgres_driver_missing(database_url)) is not None:
            raise ConfigError(f"DIMMY_DATABASE_URL: {missing}")
        from dimmy_webhooks.store.postgres import (
            PostgresStore,  # psycopg is imported only when used
        )

        return PostgresStore(database_url, max_attempts=max_attempts)
    raise ConfigError(
        "DIMMY_DATABASE_URL: use sqlite:///path/to/file or postgresql://user@host:port/dbname"
    )


__all__ = [
    "Lease",
    "QueueStats",
    "ReplayMode",
    "SQLiteStore",
    "SaveResult",
    "Store",
    "create_store",
]
