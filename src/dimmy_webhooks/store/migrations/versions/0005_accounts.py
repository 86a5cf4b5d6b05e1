"""Accounts: every event, job, item and ledger row belongs to one Dimmy account.

- ``account`` on ``events``, ``jobs``, ``items`` and ``delivery_attempts``; every row stored
  before is the single-account installation's, so it becomes ``default``.
- A message id is unique within its account (two accounts' senders are two Svix apps), so the
  unique key of ``events`` moves from ``message_id`` to ``(account, message_id)``.
- Indexes for the per-account views: items by account and time, events by account and id,
  and the backlog by account.

Downgrading drops the column and the indexes; refused while rows of an account other than
``default`` exist, since one account could not tell them apart any more.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_TABLES = ("events", "jobs", "items", "delivery_attempts")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_EPOCH = sa.Float(precision=53)


def _account() -> sa.Column[str]:
    return sa.Column("account", sa.Text(), nullable=False, server_default="default")


def upgrade() -> None:
    bind = op.get_bind()
    for table in ("jobs", "items", "delivery_attempts"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(_account())
    if bind.dialect.name == "postgresql":
        op.add_column("events", _account())
        op.drop_constraint("events_message_id_key", "events", type_="unique")
    else:
        _rebuild_sqlite_events()
    op.create_index("events_account_message", "events", ["account", "message_id"], unique=True)
    op.create_index("events_account_id", "events", ["account", "id"])
    op.create_index("items_account_fetched", "items", ["account", "fetched_at"])
    op.create_index("jobs_account_status", "jobs", ["account", "status"])
    op.create_index("attempts_account_time", "delivery_attempts", ["account", "started_at"])


def _rebuild_sqlite_events() -> None:
    """SQLite cannot drop the column's own UNIQUE: copy the table into one without it."""
    op.create_table(
        "events_new",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("received_at", _EPOCH, nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=True),
        sa.Column("deliveries", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", _EPOCH, nullable=False),
        _account(),
        sqlite_autoincrement=True,
    )
    columns = (
        "id, message_id, event_type, body, headers, received_at, status, item_count, "
        "deliveries, last_error, updated_at"
    )
    op.execute(f"INSERT INTO events_new ({columns}) SELECT {columns} FROM events")
    op.drop_index("events_status_id", "events")
    op.drop_index("events_received_at", "events")
    op.drop_table("events")
    op.rename_table("events_new", "events")
    op.create_index("events_status_id", "events", ["status", "id"])
    op.create_index("events_received_at", "events", ["received_at"])


def downgrade() -> None:
    bind = op.get_bind()
    for table in _TABLES:
        others = bind.execute(
            sa.text(f"SELECT count(*) FROM {table} WHERE account != 'default'")
        ).scalar()
        if others:
            raise RuntimeError(
                f"{table} holds {others} rows of accounts other than 'default': a schema "
                "without accounts cannot keep them apart; export or delete them first"
            )
    op.drop_index("attempts_account_time", "delivery_attempts")
    op.drop_index("jobs_account_status", "jobs")
    op.drop_index("items_account_fetched", "items")
    op.drop_index("events_account_id", "events")
    op.drop_index("events_account_message", "events")
    for table in ("jobs", "items", "delivery_attempts"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("account")
    if bind.dialect.name == "postgresql":
        op.drop_column("events", "account")
        op.create_unique_constraint("events_message_id_key", "events", ["message_id"])
    else:
        with op.batch_alter_table("events") as batch:
            batch.drop_column("account")
            batch.create_unique_constraint("events_message_id_key", ["message_id"])
