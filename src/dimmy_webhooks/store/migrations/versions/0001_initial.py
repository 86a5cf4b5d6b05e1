"""Inbox, work queue and item store.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# INTEGER PRIMARY KEY on SQLite is the rowid (fast, monotonic); BIGINT identity on PostgreSQL.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_EPOCH = sa.Float(precision=53)  # Unix seconds, double precision on both backends


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.Text(), nullable=False, unique=True),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("received_at", _EPOCH, nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=True),
        sa.Column("deliveries", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", _EPOCH, nullable=False),
    )
    op.create_index("events_status_id", "events", ["status", "id"])
    op.create_index("events_received_at", "events", ["received_at"])

    op.create_table(
        "jobs",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column("item_id", sa.Text(), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("version", sa.Text(), nullable=True),
        sa.Column("dedupe_key", sa.Text(), nullable=True, unique=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("run_at", _EPOCH, nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_token", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", _EPOCH, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _EPOCH, nullable=False),
        sa.Column("updated_at", _EPOCH, nullable=False),
    )
    op.create_index("jobs_due", "jobs", ["status", "run_at"])
    op.create_index("jobs_lease", "jobs", ["status", "lease_expires_at"])
    op.create_index("jobs_event", "jobs", ["event_id", "status"])
    op.create_index("jobs_item", "jobs", ["item_id", "kind"])
    op.create_index("jobs_dead", "jobs", ["status", "updated_at"])

    op.create_table(
        "items",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Text(), nullable=True),
        sa.Column("started_at", sa.Text(), nullable=True),
        sa.Column("ended_at", sa.Text(), nullable=True),
        sa.Column("owner_id", sa.Text(), nullable=True),
        sa.Column("scanner_account_id", sa.Text(), nullable=True),
        sa.Column("flow_id", sa.Text(), nullable=True),
        sa.Column("width", sa.Float(precision=53), nullable=True),
        sa.Column("height", sa.Float(precision=53), nullable=True),
        sa.Column("depth", sa.Float(precision=53), nullable=True),
        sa.Column("dimension_unit", sa.Text(), nullable=True),
        sa.Column("volume", sa.Float(precision=53), nullable=True),
        sa.Column("volume_unit", sa.Text(), nullable=True),
        sa.Column("weight", sa.Float(precision=53), nullable=True),
        sa.Column("weight_unit", sa.Text(), nullable=True),
        sa.Column("barcode", sa.Text(), nullable=True),
        sa.Column("barcodes", sa.Text(), nullable=False, server_default="[]"),
        sa.Column("photo_urls", sa.Text(), nullable=False, server_default="[]"),
        sa.Column("fetched_at", _EPOCH, nullable=False),
        sa.Column("first_seen_at", _EPOCH, nullable=False),
    )
    op.create_index("items_barcode", "items", ["barcode"])
    op.create_index("items_fetched_at", "items", ["fetched_at"])


def downgrade() -> None:
    op.drop_table("items")
    op.drop_table("jobs")
    op.drop_table("events")
