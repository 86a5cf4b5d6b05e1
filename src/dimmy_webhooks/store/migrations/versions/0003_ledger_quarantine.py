"""The delivery ledger, quarantine, and dimensional weight.

- ``delivery_attempts``: one row per attempt to hand one item revision to one output: when,
  outcome, HTTP status, latency, an excerpt of the answer and the record id the receiving
  system gave, so "we never got parcel X" is answered with one query.
- ``items.hold_reason`` ... : an item version that fails the validation rules is held
  (``hold_state`` ``held``) with its reason and reaches no output until an operator releases it
  (``released``, with a note) or rejects it (``rejected``).
- ``items.dim_weight`` and ``items.billable_weight``: volume over the configured divisor, and
  the larger of it and the weight.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_EPOCH = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "delivery_attempts",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("item_id", sa.Text(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=True),
        sa.Column("version", sa.Text(), nullable=True),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", _EPOCH, nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("response_excerpt", sa.Text(), nullable=True),
        sa.Column("record_id", sa.Text(), nullable=True),
    )
    op.create_index("attempts_item", "delivery_attempts", ["item_id", "id"])
    op.create_index("attempts_output_time", "delivery_attempts", ["output", "started_at"])
    op.create_index("attempts_time", "delivery_attempts", ["started_at"])
    with op.batch_alter_table("items") as items:
        items.add_column(sa.Column("hold_state", sa.Text(), nullable=True))
        items.add_column(sa.Column("hold_reason", sa.Text(), nullable=True))
        items.add_column(sa.Column("hold_note", sa.Text(), nullable=True))
        items.add_column(sa.Column("held_at", _EPOCH, nullable=True))
        items.add_column(sa.Column("dim_weight", sa.Float(precision=53), nullable=True))
        items.add_column(sa.Column("billable_weight", sa.Float(precision=53), nullable=True))
    op.create_index("items_hold", "items", ["hold_state", "held_at"])


def downgrade() -> None:
    op.drop_index("items_hold", "items")
    with op.batch_alter_table("items") as items:
        for column in (
            "billable_weight",
            "dim_weight",
            "held_at",
            "hold_note",
            "hold_reason",
            "hold_state",
        ):
            items.drop_column(column)
    op.drop_table("delivery_attempts")
