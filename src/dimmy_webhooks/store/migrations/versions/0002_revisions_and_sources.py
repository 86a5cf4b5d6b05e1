"""Item revisions, canonical version keys, where items came from, and stored sync state.

- ``items.revision`` counts the stored changes of an item (1 for its first version), so a
  document that changes back to an earlier content (A, B, then A again) is a new revision with
  its own deliveries; ``jobs.revision`` is the revision a delivery is for.
- ``items.version`` is recomputed over the document's canonical JSON (sorted keys, compact)
  instead of the raw bytes, so the same document read from ``GET /items/{id}`` and from
  ``GET /items`` (the poller) has one version key. Pending deliveries follow their item.
- ``items.first_source`` (``webhook``, ``poll``, ``backfill``) and ``items.webhook_seen_at``
  tell which items never arrived by webhook (the reconciliation report).
- ``sync_state`` keeps the poller's watermark and the backfills' progress.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_EPOCH = sa.Float(precision=53)


def _canonical_version(raw: str, old: str) -> str:
    """The version key as items.version_of computes it from this revision on (frozen here)."""
    updated_at = old.rpartition("#")[0] or "-"
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return old
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{updated_at}#{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}"


def upgrade() -> None:
    with op.batch_alter_table("items") as items:
        items.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))
        items.add_column(
            sa.Column("first_source", sa.Text(), nullable=False, server_default="webhook")
        )
        items.add_column(sa.Column("webhook_seen_at", _EPOCH, nullable=True))
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("revision", sa.Integer(), nullable=True))
    op.create_table(
        "sync_state",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", _EPOCH, nullable=False),
    )

    bind = op.get_bind()
    # every item stored so far came by webhook
    bind.execute(sa.text("UPDATE items SET webhook_seen_at = first_seen_at"))
    rows = bind.execute(sa.text("SELECT id, raw, version FROM items")).fetchall()
    for item_id, raw, old in rows:
        new = _canonical_version(raw, old)
        if new == old:
            continue
        bind.execute(
            sa.text("UPDATE items SET version = :new WHERE id = :id"), {"new": new, "id": item_id}
        )
        bind.execute(
            sa.text(
                "UPDATE jobs SET version = :new WHERE item_id = :id AND version = :old "
                "AND kind = 'deliver' AND status IN ('pending', 'running')"
            ),
            {"new": new, "old": old, "id": item_id},
        )
    op.create_index("items_unwebhooked", "items", ["first_source", "webhook_seen_at"])


def downgrade() -> None:
    op.drop_index("items_unwebhooked", "items")
    op.drop_table("sync_state")
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("revision")
    with op.batch_alter_table("items") as items:
        items.drop_column("webhook_seen_at")
        items.drop_column("first_source")
        items.drop_column("revision")
