"""The schema's Alembic migrations, one file per version in ``versions/`` (run by
:mod:`dimmy_webhooks.store.schema`); a released migration is never edited."""
