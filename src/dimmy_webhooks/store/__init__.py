"""The store: the inbox, the work queue, the item store, the delivery ledger and the operator's
read models, behind one interface (:class:`.base.Store`, the union of five seams).

Where each part lives: the seams with their operations (:mod:`.inbox`, :mod:`.queue`,
:mod:`.items`, :mod:`.ledger`, :mod:`.reports`), what they share and the transaction both
backends implement (:mod:`.ops`), the SQL in named blocks (:mod:`.sql`), the backends
(:mod:`.sqlite`; :mod:`.postgres` with its dialect :mod:`.postgres_sql` and connections
:mod:`.postgres_conn`), their group commit (:mod:`.batching`), the schema and its migrations
(:mod:`.schema`, ``migrations/``) and the move from SQLite to PostgreSQL (:mod:`.export`).

Outside code imports what it needs from here, never from the modules below (the schema, the
backends and the export aside): the interface and its seams, :func:`create_store`, and the
records the seams answer with.

May import: the shared root modules (``errors``, ``models``) and :mod:`dimmy_webhooks.config`.
Never a stage that uses the store.
"""

from __future__ import annotations

from dimmy_webhooks.config import postgres_driver_missing
from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.models import Lease, QueueStats, ReplayMode, SaveResult
from dimmy_webhooks.store.base import Inbox, Items, Ledger, Queue, Reports, Store
from dimmy_webhooks.store.reports import (
    BacklogCounts,
    EventWork,
    HourCount,
    ItemFilter,
    ItemRevision,
    JobRow,
    LatencyStats,
    OperatorCounts,
    QueueDepth,
)
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
    "BacklogCounts",
    "EventWork",
    "HourCount",
    "Inbox",
    "ItemFilter",
    "ItemRevision",
    "Items",
    "JobRow",
    "LatencyStats",
    "Lease",
    "Ledger",
    "OperatorCounts",
    "Queue",
    "QueueDepth",
    "QueueStats",
    "ReplayMode",
    "Reports",
    "SQLiteStore",
    "SaveResult",
    "Store",
    "create_store",
]
