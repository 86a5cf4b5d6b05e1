"""Fair claims: live work first, and no event's backlog ahead of a newer event's items.

- ``jobs.lane``: 0 for the work of a webhook as it arrives, 1 for what the poller or a backfill
  read, 2 for what an operator or a sender's resend put back (replays). Lower lanes are claimed
  first, so a backfill or a mass replay never holds up a live scan.
- ``jobs.seq``: a fetch's position within its event (a delivery takes its fetch's). Within a
  lane work is claimed by ``seq`` first, so the 3,000th id of an upload waits behind the first
  id of every event that came after it: big events drain side by side with new small ones
  instead of ahead of them.
- ``jobs_fair`` (expansions and fetches) in the claim's order, with ``run_at`` in it so that due
  work is found without reading rows; ``jobs_deliveries_due`` (deliveries) by due time, so that
  thousands of deliveries waiting for a destination that is down cost a claim nothing.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("lane", sa.SmallInteger(), nullable=False, server_default="0"))
        jobs.add_column(sa.Column("seq", sa.Integer(), nullable=False, server_default="0"))
    work, deliveries = sa.text("kind != 'deliver'"), sa.text("kind = 'deliver'")
    op.create_index(
        "jobs_fair",
        "jobs",
        ["status", "lane", "seq", "run_at", "id"],
        sqlite_where=work,
        postgresql_where=work,
    )
    op.create_index(
        "jobs_deliveries_due",
        "jobs",
        ["status", "run_at", "id"],
        sqlite_where=deliveries,
        postgresql_where=deliveries,
    )


def downgrade() -> None:
    op.drop_index("jobs_deliveries_due", "jobs")
    op.drop_index("jobs_fair", "jobs")
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("seq")
        jobs.drop_column("lane")
