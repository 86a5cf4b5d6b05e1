"""Alembic environment: run by :mod:`dimmy_webhooks.store.schema`, never by a hand-written ini."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

url = context.config.get_main_option("sqlalchemy.url")
assert url is not None  # set by dimmy_webhooks.store.schema
engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
