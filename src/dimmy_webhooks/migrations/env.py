"""Alembic environment: run by :mod:`dimmy_webhooks.schema`, never by hand-written alembic.ini."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

url = context.config.get_main_option("sqlalchemy.url")
assert url is not None  # set by dimmy_webhooks.schema
engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
