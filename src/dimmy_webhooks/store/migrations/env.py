"""Alembic environment: run by :mod:`dimmy_webhooks.store.schema`, never by a hand-written ini."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

url = context.config.get_main_option("sqlalchemy.url")
assert url is not None  # set by dimmy_webhooks.store.schema
engine = create_engine(url)
try:
    with engine.connect() as connection:
        render_as_batch = connection.dialect.name == "sqlite"
        context.configure(connection=connection, render_as_batch=render_as_batch)
        with context.begin_transaction():
            context.run_migrations()
finally:
    # also when a migration refuses (0005's downgrade with other accounts' rows): the pool's
    # connection is closed now, not left open for the garbage collector
    engine.dispose()
