"""PostgreSQL's dialect of the store's SQL, and the transaction the operations run on.

Every block of :data:`.sql.SQL` is taken as it is, in psycopg's parameter style, except the few
whose portable form is not right under concurrency: those are overridden here, and an override
derived from a base block fails at import if that block drifted (:func:`_derive`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import DictRow, dict_row

from dimmy_webhooks.store import ops, sql

# PostgreSQL versions of the blocks whose portable form is not right under concurrency -------


def _unindexed(block: str, index: str) -> str:
    """``block`` without SQLite's ``INDEXED BY index`` (PostgreSQL's planner has statistics)."""
    hint = f" INDEXED BY {index}"
    if hint not in block:  # sql.py changed: fail at import, loudly
        raise RuntimeError(f"postgres: {hint.strip()!r} not found in a block of sql.py")
    return block.replace(hint, "")


_WORK_DUE = _unindexed(sql.WORK_DUE, "jobs_fair")
_DELIVERIES_DUE = _unindexed(sql.DELIVERIES_DUE, "jobs_deliveries_due")
_CLAIM = f"""
    WITH work AS MATERIALIZED ({_WORK_DUE} FOR UPDATE OF j SKIP LOCKED),
    deliveries AS MATERIALIZED ({_DELIVERIES_DUE} FOR UPDATE OF j SKIP LOCKED),
    due AS (SELECT id FROM (SELECT * FROM work UNION ALL SELECT * FROM deliveries) AS candidates
            ORDER BY {sql.FAIR} LIMIT :limit)
    UPDATE jobs SET status = 'running', lease_owner = :owner, lease_token = :token,
        lease_expires_at = :expires, attempts = attempts + 1, updated_at = :now
    WHERE id IN (SELECT id FROM due)
    RETURNING {sql.JOB_COLUMNS}"""
_CLAIM_CAPPED = f"""
    WITH work AS MATERIALIZED ({_WORK_DUE} FOR UPDATE OF j SKIP LOCKED),
    deliveries AS MATERIALIZED ({_DELIVERIES_DUE} FOR UPDATE OF j SKIP LOCKED),
    ranked AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY account ORDER BY {sql.FAIR}) AS n
               FROM (SELECT * FROM work UNION ALL SELECT * FROM deliveries) AS candidates),
    due AS (SELECT id FROM ranked WHERE n <= {{CAPS}} ORDER BY {sql.FAIR} LIMIT :limit)
    UPDATE jobs SET status = 'running', lease_owner = :owner, lease_token = :token,
        lease_expires_at = :expires, attempts = attempts + 1, updated_at = :now
    WHERE id IN (SELECT id FROM due)
    RETURNING {sql.JOB_COLUMNS}"""
"""Rows another transaction holds (being claimed, reaped, finished) are skipped, not waited for;
the CTEs are materialised so each locked set is computed exactly once; candidates locked but
not chosen are free again when the claim commits."""

_REAP = f"""
    WITH expired AS MATERIALIZED (
        SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at < :now
        FOR UPDATE SKIP LOCKED)
    UPDATE jobs SET
        status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END,
        last_error = 'lease expired: the worker stopped or was killed',
        run_at = :now, updated_at = :now, {sql.RELEASED}
    WHERE id IN (SELECT id FROM expired) AND status = 'running'
    RETURNING event_id, status"""
"""Two workers reaping at once take disjoint rows and never wait on each other (a plain
``UPDATE`` would serialise them on the row locks and could deadlock on many rows)."""

_HEARTBEAT = """
    UPDATE jobs SET lease_expires_at = :expires
    WHERE id IN (SELECT id FROM jobs WHERE lease_owner = :owner AND status = 'running'
                 FOR UPDATE SKIP LOCKED)
      AND status = 'running'"""
"""A lease that a batch of this worker is finishing right now is skipped, not waited for: the
batch holds several of the owner's job rows, so waiting could deadlock (the heartbeat takes
them in scan order, the batch in the order its jobs finished). The skipped job is done or
failed by that batch, or its lease is extended by the next heartbeat, a third of a lease
later."""

_REFRESH_EVENT_PARTS = (
    "SELECT 1 FROM events WHERE id = :id FOR UPDATE",
    sql.SQL["refresh_event"].strip(),
)
_REFRESH_EVENT = ";\n".join(_REFRESH_EVENT_PARTS)
"""Lock the event row first, in its own statement, so the ``UPDATE`` that follows takes its
snapshot after any concurrent finisher of the same event committed. Otherwise two workers
finishing an event's last two jobs at once each see the other's job still running (READ
COMMITTED snapshot of the ``EXISTS``) and the event stays ``processing`` for ever. The row lock,
not an advisory lock: a batch may already hold the row's lock from an earlier write to it
(``last_error``, the delivery count), and two kinds of lock taken in different orders could
deadlock. Prepared as two statements (:data:`PREPARED_BLOCKS`), run one after the other."""


_FINISH_RECORDED = f"""
    WITH done AS ({sql.SQL["finish"].strip()}
        RETURNING id)
    INSERT INTO delivery_attempts ({sql.ATTEMPT_COLUMNS})
    SELECT {sql.ATTEMPT_VALUES} FROM done"""
"""``finish`` and ``record_attempt`` as one statement: the ledger row is written only when the
lease check passed (one row changed, else none and :class:`LeaseLost`), one round trip fewer
for every delivered item."""


def _derive(name: str, *changes: tuple[str, str]) -> str:
    """Block ``name`` of :data:`sql.SQL` with each ``(old, new)`` of ``changes`` replaced."""
    text = sql.SQL[name]
    for old, new in changes:
        if old not in text:  # sql.py changed: fail at import, loudly, rather than diverge
            raise RuntimeError(f"postgres: cannot adapt SQL block {name!r}: {old!r} not found")
        text = text.replace(old, new)
    return text


_EVENT_IDS = "ANY(CAST(:ids AS BIGINT[]))"
_LOCK_EVENTS = f"SELECT id FROM events WHERE id = {_EVENT_IDS} ORDER BY id FOR UPDATE"
_REFRESH_EVENTS = _derive(
    "refresh_event",
    ("FROM (SELECT CASE", "FROM (SELECT e.id, CASE"),
    ("event_id = :id", "event_id = e.id"),
    (
        "END AS status) AS fresh",
        f"END AS status FROM events AS e WHERE e.id = {_EVENT_IDS}) AS fresh",
    ),
    ("WHERE events.id = :id AND", "WHERE events.id = fresh.id AND"),
)
"""The end of a job batch (:func:`write_events`): the events its jobs belong to locked in id
order, then their status recomputed, in two statements for the whole batch rather than two
per event. Two statements for the reason of :data:`_REFRESH_EVENT`; ``refresh_event``'s own
rule, applied to every event of ``:ids`` at once."""


_OVERRIDES = {
    "claim": _CLAIM,
    "claim_capped": _CLAIM_CAPPED,
    "reap": _REAP,
    "heartbeat": _HEARTBEAT,
    "refresh_event": _REFRESH_EVENT,
    "finish_recorded": _FINISH_RECORDED,
    "new_leased_delivery": _unindexed(sql.SQL["new_leased_delivery"], "jobs_item"),
    "lock_events": _LOCK_EVENTS,
    "refresh_events": _REFRESH_EVENTS,
    # "newer updated_at wins" compares ISO text bytewise as SQLite does, whatever the
    # database's collation (en_US ignores punctuation in its first pass)
    **{
        name: _derive(
            name,
            (
                "excluded.updated_at > items.updated_at",
                'excluded.updated_at COLLATE "C" > items.updated_at',
            ),
        )
        for name in ("upsert_item", "upsert_polled_item")
    },
    # the charts' hours: PostgreSQL's cast rounds where SQLite's truncates
    **{
        name: _derive(
            name, (sql.HOUR.format(column=column), f"CAST(floor({column} / 3600) AS INTEGER)")
        )
        for name, column in (
            ("scans_per_hour", "first_seen_at"),
            ("latency_per_hour", "started_at"),
        )
    },
}

_TOKEN = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|::|%|:([A-Za-z_][A-Za-z0-9_]*)""")


def to_pyformat(sql: str) -> str:
    """``:name`` parameters as psycopg's ``%(name)s``; ``::`` casts, quoted text and ``%`` kept."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if match.group(1) is not None:
            return f"%({match.group(1)})s"
        return token.replace("%", "%%")

    return _TOKEN.sub(replace, sql)


SQL: dict[str, str] = {name: to_pyformat(text) for name, text in {**sql.SQL, **_OVERRIDES}.items()}
"""Every block of :data:`sql.SQL` in psycopg's parameter style, PostgreSQL overrides applied."""


PREPARED_BLOCKS = (
    "finish",
    "finish_recorded",
    "upsert_item",
    "new_leased_delivery",
    "record_attempt",
    "new_job",
    "refresh_event",
    "lock_events",
    "refresh_events",
)
"""The blocks a drained item runs: bound on the server and prepared on each pooled
connection, so PostgreSQL parses and plans them once per connection, not once per item, and
psycopg sends the values as parameters instead of quoting them into the text. A prepared
statement is one statement: a block of several is prepared as its parts (:data:`_PARTS`)."""

_PARTS: dict[str, tuple[str, ...]] = {
    "refresh_event": tuple(to_pyformat(part) for part in _REFRESH_EVENT_PARTS),
}
_PREPARED: dict[str, tuple[str, ...]] = {
    SQL[name]: _PARTS.get(name, (SQL[name],)) for name in PREPARED_BLOCKS
}
"""The text of each prepared block, to the statements it runs as."""


class PostgresTx:
    """:class:`ops.Tx` over a connection inside a transaction.

    Client-side binding (:class:`psycopg.ClientCursor`) for most blocks: values are merged as
    literals, so ``(:since IS NULL OR ...)`` works with ``None`` and a block may hold several
    statements. The hot blocks of :data:`PREPARED_BLOCKS` are bound on the server and
    prepared instead.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.cursor: psycopg.ClientCursor[DictRow] = psycopg.ClientCursor(
            conn, row_factory=dict_row
        )
        self._server: psycopg.Cursor[DictRow] | None = None
        self.deferred: ops.Deferred | None = None
        """Set while a job batch runs: its event-row writes wait for the batch's end."""

    def _prepared(self) -> psycopg.Cursor[DictRow]:
        if self._server is None:
            self._server = psycopg.Cursor(self.cursor.connection, row_factory=dict_row)
        return self._server

    def _execute(self, sql: str, params: Mapping[str, Any] | None) -> psycopg.Cursor[DictRow]:
        parts = _PREPARED.get(sql)
        if parts is None:
            return self.cursor.execute(sql, params or {})
        cursor = self._prepared()
        for part in parts:  # the last one's result is the block's
            cursor.execute(part, params or {}, prepare=True)
        return cursor

    def sql(self, name: str) -> str:
        return SQL[name]

    def all(self, sql: str, params: Mapping[str, Any] | None = None) -> list[ops.Row]:
        cursor = self._execute(sql, params)
        result = cursor.pgresult
        # not `cursor.description`: that builds a Column object per field on every call
        if result is None or result.status != pq.ExecStatus.TUPLES_OK:
            return []
        rows: list[ops.Row] = list(cursor.fetchall())
        return rows

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        return self._execute(sql, params).rowcount

    def many(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None:
        parts = _PREPARED.get(sql)
        if parts is None:
            self.cursor.executemany(sql, params)
        elif len(parts) == 1:
            self._prepared().executemany(parts[0], params)
        else:  # each row runs the block's statements in turn
            for row in params:
                self._execute(sql, row)


def write_events(tx: PostgresTx, deferred: ops.Deferred) -> None:
    """The event-row writes a job batch kept for its end: every event named locked in id
    order, each ``last_error`` set, then the status of the events to refresh recomputed at
    once (their latest ``now``)."""
    ids = sorted(deferred.refresh.keys() | deferred.errors.keys())
    if not ids:
        return
    tx.run(SQL["lock_events"], {"ids": ids})
    for event_id in ids:
        if event_id in deferred.errors:
            tx.run(SQL["event_error"], {"id": event_id, "reason": deferred.errors[event_id]})
    if deferred.refresh:
        refresh = sorted(deferred.refresh)
        tx.run(SQL["refresh_events"], {"ids": refresh, "now": max(deferred.refresh.values())})
