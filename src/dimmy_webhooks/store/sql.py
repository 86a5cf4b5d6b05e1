"""The store's SQL, in named blocks with ``:name`` parameters (SQLite's dialect, which is also
PostgreSQL's for every block but the ones :mod:`.postgres` overrides).

Values are always bound as parameters; the only text put together is these constant fragments.
"""

from __future__ import annotations

from dimmy_webhooks.models import Lane

JOB_COLUMNS = (
    "id, kind, event_id, item_id, output, version, revision, attempts, lease_token, lane, seq, "
    "account"
)
FAIR = "lane, seq, run_at, id"
"""The claim's order: live work before polled before replayed
(:class:`~dimmy_webhooks.models.Lane`), then by position within its event, so a new event's
first items go before the rest of an earlier upload; oldest due first among equals."""
WORK_DUE = """
        SELECT j.id, j.lane, j.seq, j.run_at, j.account FROM jobs AS j INDEXED BY jobs_fair
        WHERE j.status = 'pending' AND j.kind != 'deliver' AND j.run_at <= :now{ACCOUNTS}
        ORDER BY j.lane, j.seq, j.run_at, j.id LIMIT :limit"""
"""Due expansions and fetches in the fair order, read in that order from the partial index
``jobs_fair`` so that the claim stops after ``:limit`` rows. Named (SQLite's ``INDEXED BY``;
:mod:`.postgres_sql` takes it out): without statistics SQLite otherwise prefers ``jobs_due``
(``status`` and ``run_at`` both constrained) and sorts every due job on each claim, a cost that
grows with the backlog (14 ms a claim at 40,000 pending fetches)."""
DELIVERIES_DUE = """
        SELECT j.id, j.lane, j.seq, j.run_at, j.account
        FROM jobs AS j INDEXED BY jobs_deliveries_due
        WHERE j.status = 'pending' AND j.kind = 'deliver' AND j.run_at <= :now{ACCOUNTS}
        AND NOT EXISTS (SELECT 1 FROM jobs AS busy WHERE busy.item_id = j.item_id
            AND busy.kind = 'deliver' AND busy.status = 'running' AND busy.output = j.output)
        ORDER BY j.run_at, j.id LIMIT :limit"""
"""Due deliveries, oldest first (partial index ``jobs_deliveries_due``). They are found apart
from fetches because many may wait for a destination that is down: in the fair order every
claim would step over all of them; by due time it stops at the first one not due. A delivery
waits while another of the same item to the same output runs: one in flight per item and
output, so an older revision can never arrive after a newer one."""
REPLAY_LANE = int(Lane.REPLAY)
RELEASED = "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"
ATTEMPT_COLUMNS = """job_id, item_id, revision, version, output,
            idempotency_key, attempt, started_at, latency_ms, outcome, status_code, error,
            response_excerpt, record_id, account"""
ATTEMPT_VALUES = """:job_id, :item_id, :revision, :version, :output, :key, :attempt, :started_at,
            :latency_ms, :outcome, :status_code, :error, :excerpt, :record_id, :account"""
"""A ledger row (``delivery_attempts``): its columns, and the parameters that fill them."""
_REPLAY = f"""UPDATE jobs SET status = 'pending', attempts = 0, run_at = :now, last_error = NULL,
            lane = {REPLAY_LANE}, updated_at = :now, {RELEASED}"""
"""Put jobs back in the queue as new work in the replay lane (the replays add their ``WHERE``)."""
_NEW_JOB = """
INSERT INTO jobs (kind, event_id, item_id, output, version, revision, dedupe_key, status,
                  attempts, max_attempts, run_at, lane, seq, account, created_at, updated_at)
VALUES (:kind, :event_id, :item_id, :output, :version, :revision, :dedupe_key, 'pending', 0,
        :max_attempts, :run_at, :lane, :seq, :account, :now, :now)
"""

# "upsert_item": a fetched version meets the stored one (updated_at normalised, so text order is
# time order):
#   new updated_at later than the stored one        -> replace
#   new earlier than the stored one                 -> keep the stored one (older never overwrites)
#   new present, stored missing                     -> replace (dated beats undated)
#   new missing, stored present                     -> keep the stored one
#   equal (or both missing), content differs        -> replace (the later fetch wins)
#   equal (or both missing), same content (version) -> nothing changed
_UPSERT_ITEM = """
        INSERT INTO items (id, raw, version, revision, updated_at, created_at, started_at,
            ended_at, owner_id, scanner_account_id, flow_id, width, height, depth,
            dimension_unit, volume, volume_unit, weight, weight_unit, dim_weight,
            billable_weight, barcode, barcodes, photo_urls, fetched_at, first_seen_at,
            first_source, webhook_seen_at, hold_state, hold_reason, hold_note, held_at, account)
        VALUES (:id, :raw, :version, 1, :updated_at, :created_at, :started_at, :ended_at,
            :owner_id, :scanner_account_id, :flow_id, :width, :height, :depth, :dimension_unit,
            :volume, :volume_unit, :weight, :weight_unit, :dim_weight, :billable_weight,
            :barcode, :barcodes, :photo_urls, :fetched_at, :fetched_at, :source,
            :webhook_seen_at, :hold_state, :hold_reason, NULL, :held_at, :account)
        ON CONFLICT (id) DO UPDATE SET raw = excluded.raw, version = excluded.version,
            revision = items.revision + 1,
            updated_at = excluded.updated_at, created_at = excluded.created_at,
            started_at = excluded.started_at, ended_at = excluded.ended_at,
            owner_id = excluded.owner_id, scanner_account_id = excluded.scanner_account_id,
            flow_id = excluded.flow_id, width = excluded.width, height = excluded.height,
            depth = excluded.depth, dimension_unit = excluded.dimension_unit,
            volume = excluded.volume, volume_unit = excluded.volume_unit,
            weight = excluded.weight, weight_unit = excluded.weight_unit,
            dim_weight = excluded.dim_weight, billable_weight = excluded.billable_weight,
            hold_state = excluded.hold_state, hold_reason = excluded.hold_reason,
            hold_note = NULL, held_at = excluded.held_at,
            barcode = excluded.barcode, barcodes = excluded.barcodes,
            photo_urls = excluded.photo_urls, fetched_at = excluded.fetched_at,
            webhook_seen_at = COALESCE(items.webhook_seen_at, excluded.webhook_seen_at)"""

SQL: dict[str, str] = {
    "insert_event": """
        INSERT INTO events (message_id, event_type, body, headers, received_at, status,
                            item_count, updated_at, account)
        VALUES (:message_id, :event_type, :body, :headers, :now, :status, :item_count, :now,
                :account)
        ON CONFLICT (account, message_id) DO NOTHING
        RETURNING id""",
    "event_by_message": """
        SELECT id, status FROM events WHERE account = :account AND message_id = :message_id""",
    "count_delivery": "UPDATE events SET deliveries = deliveries + 1 WHERE id = :id",
    "event_body": "SELECT body FROM events WHERE id = :id",
    "event_received": "SELECT received_at FROM events WHERE id = :id",
    "new_job": _NEW_JOB + " ON CONFLICT (dedupe_key) DO NOTHING",
    # leased at once unless an earlier revision's delivery to that output is on its way (then
    # nothing is inserted, and the caller queues this one to wait). Without the hint SQLite
    # reads every running delivery through jobs_deliveries_due to find the item's.
    "new_leased_delivery": f"""
        INSERT INTO jobs (kind, event_id, item_id, output, version, revision, dedupe_key, status,
                          attempts, max_attempts, run_at, lane, seq, lease_owner, lease_token,
                          lease_expires_at, created_at, updated_at, account)
        SELECT :kind, :event_id, :item_id, :output, :version, :revision, :dedupe_key, 'running',
               1, :max_attempts, :run_at, :lane, :seq, :owner, :token, :expires, :now, :now,
               :account
        WHERE NOT EXISTS (
            SELECT 1 FROM jobs INDEXED BY jobs_item
            WHERE item_id = :item_id AND kind = 'deliver' AND status = 'running'
                AND output = :output)
        ON CONFLICT (dedupe_key) DO NOTHING
        RETURNING {JOB_COLUMNS}""",
    "new_job_or_reset": _NEW_JOB
    + f"""
        ON CONFLICT (dedupe_key) DO UPDATE SET status = 'pending', attempts = 0, run_at = :now,
            lane = :lane, last_error = NULL, updated_at = :now, {RELEASED}
        WHERE jobs.status IN ('done', 'dead')""",
    "reap": f"""
        UPDATE jobs SET
            status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END,
            last_error = 'lease expired: the worker stopped or was killed',
            run_at = :now, updated_at = :now, {RELEASED}
        WHERE status = 'running' AND lease_expires_at < :now
        RETURNING event_id, status""",
    # the best of due work and of due deliveries, in the fair order
    "claim": f"""
        UPDATE jobs SET status = 'running', lease_owner = :owner, lease_token = :token,
            lease_expires_at = :expires, attempts = attempts + 1, updated_at = :now
        WHERE id IN (
            SELECT id FROM (SELECT * FROM ({WORK_DUE})
                            UNION ALL SELECT * FROM ({DELIVERIES_DUE}))
            ORDER BY {FAIR} LIMIT :limit)
        RETURNING {JOB_COLUMNS}""",
    # the same, each account taking at most its share ({CAPS}: its number of jobs, by name)
    "claim_capped": f"""
        UPDATE jobs SET status = 'running', lease_owner = :owner, lease_token = :token,
            lease_expires_at = :expires, attempts = attempts + 1, updated_at = :now
        WHERE id IN (
            SELECT id FROM (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY account ORDER BY {FAIR}) AS n
                FROM (SELECT * FROM ({WORK_DUE}) UNION ALL SELECT * FROM ({DELIVERIES_DUE})))
            WHERE n <= {{CAPS}}
            ORDER BY {FAIR} LIMIT :limit)
        RETURNING {JOB_COLUMNS}""",
    "held": """
        SELECT 1 AS held FROM jobs
        WHERE id = :id AND lease_token = :token AND status = 'running'""",
    "heartbeat": """
        UPDATE jobs SET lease_expires_at = :expires
        WHERE lease_owner = :owner AND status = 'running'""",
    "finish": f"""
        UPDATE jobs SET status = 'done', last_error = :note, updated_at = :now, {RELEASED}
        WHERE id = :id AND lease_token = :token AND status = 'running'""",
    "fail": f"""
        UPDATE jobs SET
            status = CASE WHEN :dead OR attempts >= max_attempts THEN 'dead' ELSE 'pending' END,
            run_at = :retry_at, last_error = :reason, updated_at = :now, {RELEASED}
        WHERE id = :id AND lease_token = :token AND status = 'running'
        RETURNING status, event_id""",
    # a job this transaction has just finished (its lease checked) ends dead instead
    "bury": """
        UPDATE jobs SET status = 'dead', last_error = :reason, updated_at = :now
        WHERE id = :id AND status = 'done'""",
    "postpone": f"""
        UPDATE jobs SET status = 'pending', attempts = attempts - 1, run_at = :retry_at,
            last_error = :reason, updated_at = :now, {RELEASED}
        WHERE id = :id AND lease_token = :token AND status = 'running'""",
    "release": f"""
        UPDATE jobs SET status = 'pending', attempts = attempts - 1, run_at = :now,
            updated_at = :now, {RELEASED}
        WHERE lease_owner = :owner AND status = 'running'""",
    # written only when the status changes: most refreshes (an item of an upload stored, the
    # event still processing) would rewrite the whole row, body included, for nothing
    "refresh_event": """
        UPDATE events SET updated_at = :now, status = fresh.status
        FROM (SELECT CASE
            WHEN EXISTS (SELECT 1 FROM jobs WHERE event_id = :id
                         AND status IN ('pending', 'running')) THEN 'processing'
            WHEN EXISTS (SELECT 1 FROM jobs WHERE event_id = :id AND status = 'dead')
                THEN 'dead'
            ELSE 'done' END AS status) AS fresh
        WHERE events.id = :id AND events.event_type != 'unknown'
            AND events.status != fresh.status""",
    "event_error": "UPDATE events SET last_error = :reason WHERE id = :id",
    "upsert_item": _UPSERT_ITEM
    + """
        WHERE items.account = excluded.account AND (excluded.updated_at > items.updated_at
           OR (items.updated_at IS NULL AND excluded.updated_at IS NOT NULL)
           OR (excluded.version != items.version
               AND (excluded.updated_at = items.updated_at
                    OR (excluded.updated_at IS NULL AND items.updated_at IS NULL))))
        RETURNING id, revision""",
    # the poller reads GET /items, which may not be the whole document GET /items/{id} gives:
    # it only adds items and strictly newer versions, never replaces one with the same
    # updated_at (else a fetch and a poll could replace each other's version for ever)
    "upsert_polled_item": _UPSERT_ITEM
    + """
        WHERE items.account = excluded.account AND (excluded.updated_at > items.updated_at
           OR (items.updated_at IS NULL AND excluded.updated_at IS NOT NULL))
        RETURNING id, revision""",
    "mark_webhook_seen": """
        UPDATE items SET webhook_seen_at = :now WHERE id = :id AND webhook_seen_at IS NULL""",
    "item": "SELECT * FROM items WHERE id = :id",
    "item_account": "SELECT account FROM items WHERE id = :id",
    "held_items": """
        SELECT * FROM items WHERE hold_state = 'held' AND (:before IS NULL OR held_at < :before)
          AND (:account IS NULL OR account = :account)
        ORDER BY held_at DESC LIMIT :limit""",
    "decide_hold": """
        UPDATE items SET hold_state = :state, hold_note = :note
        WHERE id = :id AND hold_state = 'held'
        RETURNING version, revision, account""",
    "record_attempt": f"""
        INSERT INTO delivery_attempts ({ATTEMPT_COLUMNS})
        VALUES ({ATTEMPT_VALUES})""",
    # a dialect with UPDATE inside WITH (PostgreSQL) finishes a delivery and writes its
    # ledger row in one statement; empty here: SQLite runs "finish", then "record_attempt"
    "finish_recorded": "",
    "attempts": """
        SELECT * FROM delivery_attempts
        WHERE (:item_id IS NULL OR item_id = :item_id)
          AND (:barcode IS NULL OR item_id IN (SELECT id FROM items WHERE barcode = :barcode))
          AND (:output IS NULL OR output = :output)
          AND (:outcome IS NULL OR outcome = :outcome)
          AND (:since IS NULL OR started_at >= :since)
          AND (:until IS NULL OR started_at < :until)
          AND (:before IS NULL OR id < :before)
          AND (:account IS NULL OR account = :account)
        ORDER BY id DESC LIMIT :limit""",
    "items": """
        SELECT * FROM items
        WHERE (:since IS NULL OR fetched_at >= :since)
          AND (:barcode IS NULL OR barcode = :barcode OR barcodes LIKE :barcode_pattern ESCAPE '!')
          AND (:after IS NULL OR id > :after)
          AND (:account IS NULL OR account = :account)
        ORDER BY id LIMIT :limit""",
    "events": """
        SELECT id, message_id, event_type, status, received_at, item_count, last_error,
            account
        FROM events
        WHERE (:status IS NULL OR status = :status) AND (:before IS NULL OR id < :before)
          AND (:account IS NULL OR account = :account)
        ORDER BY id DESC LIMIT :limit""",
    "event": """
        SELECT id, message_id, event_type, status, received_at, item_count, last_error,
            account
        FROM events WHERE id = :id""",
    "event_jobs": """
        SELECT kind || ':' || status AS key, count(*) AS n FROM jobs WHERE event_id = :id
        GROUP BY kind, status""",
    "event_type": "SELECT event_type FROM events WHERE id = :id",
    "reset_event_jobs": f"""
        {_REPLAY}
        WHERE event_id = :id AND kind IN ('event', 'fetch') AND status IN ('done', 'dead')""",
    "event_items": """
        SELECT DISTINCT items.id, items.version, items.revision, items.account
        FROM jobs JOIN items ON items.id = jobs.item_id
        WHERE jobs.event_id = :id""",
    "item_version": "SELECT version, revision, account FROM items WHERE id = :id",
    "requeue_dead_of_event": f"""
        {_REPLAY}
        WHERE event_id = :id AND status = 'dead'""",
    "replay_dead": f"""
        {_REPLAY}
        WHERE status = 'dead' AND updated_at >= :since
          AND (:account IS NULL OR account = :account)
        RETURNING event_id""",
    # a destination's backlog: counted by output, moved to another output or dropped (S20)
    "backlog_counts": """
        SELECT output AS key, count(*) AS n FROM jobs
        WHERE kind = 'deliver' AND status IN ('pending', 'running') GROUP BY output""",
    "backlog_of": """
        SELECT id, event_id, item_id, revision FROM jobs
        WHERE kind = 'deliver' AND output = :output AND status = 'pending' ORDER BY id""",
    "queued_under": "SELECT 1 AS queued FROM jobs WHERE dedupe_key = :dedupe_key",
    "move_delivery": f"""
        UPDATE jobs SET output = :output, dedupe_key = :dedupe_key, attempts = 0, run_at = :now,
            last_error = NULL, updated_at = :now, {RELEASED}
        WHERE id = :id AND status = 'pending'""",
    "retire_delivery": f"""
        UPDATE jobs SET status = 'done', last_error = :note, updated_at = :now, {RELEASED}
        WHERE id = :id AND status = 'pending'""",
    "event_counts": """
        SELECT status AS key, count(*) AS n FROM events
        WHERE (:account IS NULL OR account = :account) GROUP BY status""",
    "job_counts": """
        SELECT status AS key, count(*) AS n FROM jobs
        WHERE (:account IS NULL OR account = :account) GROUP BY status""",
    "item_count": """
        SELECT count(*) AS n FROM items WHERE (:account IS NULL OR account = :account)""",
    "account_counts": """
        SELECT 'events' AS what, account, count(*) AS n FROM events GROUP BY account
        UNION ALL SELECT 'items', account, count(*) FROM items GROUP BY account
        UNION ALL SELECT 'jobs', account, count(*) FROM jobs
            WHERE status IN ('pending', 'running') GROUP BY account""",
    # open work by account: on the status indexes, so it costs what the backlog does
    "open_work_by_account": """
        SELECT account AS key, count(*) AS n FROM jobs
        WHERE status IN ('pending', 'running') GROUP BY account""",
    "state": "SELECT value FROM sync_state WHERE name = :name",
    "set_state": """
        INSERT INTO sync_state (name, value, updated_at) VALUES (:name, :value, :now)
        ON CONFLICT (name) DO UPDATE SET value = excluded.value,
            updated_at = excluded.updated_at""",
    "due_work": """
        SELECT count(*) AS n FROM jobs
        WHERE status = 'running' OR (status = 'pending' AND run_at <= :now)""",
    "live_fetch_due": """
        SELECT 1 AS due FROM jobs
        WHERE status = 'pending' AND run_at <= :now AND kind = 'fetch' AND event_id IS NOT NULL
        LIMIT 1""",
    # items that reached us only through polling: first read by the poller or a backfill, never
    # named by a webhook since (not stored from one, no fetch of an event for it)
    "unwebhooked": """
        SELECT id, created_at, first_seen_at, first_source FROM items
        WHERE first_source IN ('poll', 'backfill') AND webhook_seen_at IS NULL
          AND first_seen_at < :seen_before
          AND (:account IS NULL OR account = :account)
          AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.item_id = items.id
                          AND jobs.kind = 'fetch' AND jobs.event_id IS NOT NULL)
        ORDER BY created_at, id""",
    "oldest_pending": """
        SELECT min(created_at) AS t FROM jobs WHERE status = 'pending'
          AND (:account IS NULL OR account = :account)""",
}

# the operator's view (dashboard, /metrics, alerts): reads only, each on an index ------------

# the filters of the items page and its exports; :has_dimensions is 1, 0 or NULL (either)
_ITEM_FILTERS = """
        WHERE (:since IS NULL OR fetched_at >= :since)
          AND (:until IS NULL OR fetched_at < :until)
          AND (:scanner IS NULL OR scanner_account_id = :scanner)
          AND (:has_dimensions IS NULL OR (:has_dimensions = 1 AND width IS NOT NULL)
               OR (:has_dimensions = 0 AND width IS NULL))
          AND (:q IS NULL OR id = :q OR barcode = :q OR barcodes LIKE :q_pattern ESCAPE '!')
          AND (:account IS NULL OR account = :account)"""

SQL.update(
    {
        "browse_items": "SELECT * FROM items"
        + _ITEM_FILTERS
        + """
          AND (:before_at IS NULL OR fetched_at < :before_at
               OR (fetched_at = :before_at AND id < :before_id))
        ORDER BY fetched_at DESC, id DESC LIMIT :limit""",
        "export_items": "SELECT * FROM items"
        + _ITEM_FILTERS
        + """
          AND (:after IS NULL OR id > :after)
        ORDER BY id LIMIT :limit""",
        "browse_events": """
        SELECT id, message_id, event_type, status, received_at, item_count, last_error,
            account
        FROM events
        WHERE (:status IS NULL OR status = :status)
          AND (:event_type IS NULL OR event_type = :event_type)
          AND (:since IS NULL OR received_at >= :since)
          AND (:until IS NULL OR received_at < :until)
          AND (:before IS NULL OR id < :before)
          AND (:account IS NULL OR account = :account)
        ORDER BY id DESC LIMIT :limit""",
        "event_headers": "SELECT headers, deliveries FROM events WHERE id = :id",
        "event_work": """
        SELECT id, kind, item_id, output, status, attempts, max_attempts, run_at, last_error,
            updated_at
        FROM jobs WHERE event_id = :id ORDER BY id LIMIT :limit""",
        "event_attempts": """
        SELECT * FROM delivery_attempts
        WHERE item_id IN (SELECT item_id FROM jobs WHERE event_id = :id AND item_id IS NOT NULL)
          AND job_id IN (SELECT id FROM jobs WHERE event_id = :id)
        ORDER BY id DESC LIMIT :limit""",
        "item_revisions": """
        SELECT revision, version, min(created_at) AS first_queued, count(*) AS deliveries
        FROM jobs WHERE item_id = :id AND kind = 'deliver' AND revision IS NOT NULL
        GROUP BY revision, version ORDER BY revision DESC LIMIT :limit""",
        "item_events": """
        SELECT DISTINCT event_id FROM jobs
        WHERE item_id = :id AND kind = 'fetch' AND event_id IS NOT NULL
        ORDER BY event_id DESC LIMIT :limit""",
        "events_since": """
        SELECT status AS key, count(*) AS n FROM events WHERE received_at >= :since
          AND (:account IS NULL OR account = :account)
        GROUP BY status""",
        "events_open": """
        SELECT status AS key, count(*) AS n FROM events
        WHERE status IN ('pending', 'processing', 'dead')
          AND (:account IS NULL OR account = :account)
        GROUP BY status""",
        "items_since": """
        SELECT count(*) AS n FROM items WHERE fetched_at >= :since
          AND (:account IS NULL OR account = :account)""",
        "held_count": """
        SELECT count(*) AS n FROM items WHERE hold_state = 'held'
          AND (:account IS NULL OR account = :account)""",
        # due_since: the run_at of the oldest job that is due now (not one waiting for a retry)
        "queue_depth": """
        SELECT kind, output, status, count(*) AS n,
            min(CASE WHEN status = 'pending' AND run_at <= :now THEN run_at END) AS due_since
        FROM jobs WHERE status IN ('pending', 'running', 'dead')
          AND (:account IS NULL OR account = :account)
        GROUP BY kind, output, status""",
        "unwebhooked_count": """
        SELECT count(*) AS n FROM items
        WHERE first_source IN ('poll', 'backfill') AND webhook_seen_at IS NULL
          AND first_seen_at < :seen_before
          AND (:account IS NULL OR account = :account)
          AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.item_id = items.id
                          AND jobs.kind = 'fetch' AND jobs.event_id IS NOT NULL)""",
        "recent_attempts": """
        SELECT outcome, started_at, status_code, error FROM delivery_attempts
        WHERE output = :output AND (:account IS NULL OR account = :account)
        ORDER BY started_at DESC LIMIT :limit""",
        # ledger rows by account, output and outcome in a range of ids (the metrics add up new
        # rows only)
        "attempt_counts": """
        SELECT account, output, outcome, count(*) AS n, max(id) AS top FROM delivery_attempts
        WHERE id > :after AND (:upto IS NULL OR id <= :upto)
        GROUP BY account, output, outcome""",
    }
)

# the dashboard's charts: each read bounded by a time window on an index and a LIMIT, of one
# account or all ----------------------------------------------------------------------------

HOUR = "CAST({column} / 3600 AS INTEGER)"
"""The hour (Unix seconds // 3600) of a time column. SQLite's cast truncates; PostgreSQL's
rounds, so :mod:`.postgres_sql` takes the floor first."""
_LATENCY = """
        WITH recent AS (
            SELECT output, {bucket} AS bucket, latency_ms FROM delivery_attempts
            WHERE started_at >= :since AND started_at < :until AND latency_ms IS NOT NULL
              AND (:account IS NULL OR account = :account)
            ORDER BY started_at DESC LIMIT :limit),
        ranked AS (
            SELECT output, bucket, latency_ms,
                ROW_NUMBER() OVER (PARTITION BY output, bucket ORDER BY latency_ms) AS rn,
                COUNT(*) OVER (PARTITION BY output, bucket) AS n
            FROM recent)
        SELECT output, bucket, max(n) AS n,
            min(CASE WHEN rn >= 0.5 * n THEN latency_ms END) AS p50,
            min(CASE WHEN rn >= 0.95 * n THEN latency_ms END) AS p95,
            max(latency_ms) AS max_ms
        FROM ranked GROUP BY output, bucket ORDER BY output, bucket"""
"""Nearest-rank percentiles of the newest ``:limit`` attempts of ``[since, until)`` (index
``attempts_time``), by output and bucket: the smallest latency whose rank reaches the share."""

SQL.update(
    {
        # items first stored per hour: first_seen_at <= fetched_at, so the fetched_at window
        # (index items_fetched_at) holds every item first seen in it
        "scans_per_hour": f"""
        SELECT {HOUR.format(column="first_seen_at")} AS hour, count(*) AS n FROM items
        WHERE fetched_at >= :since AND first_seen_at >= :since AND first_seen_at < :until
          AND (:account IS NULL OR account = :account)
        GROUP BY {HOUR.format(column="first_seen_at")} ORDER BY hour LIMIT :limit""",
        "latency_per_hour": _LATENCY.format(bucket=HOUR.format(column="started_at")),
        "latency_per_output": _LATENCY.format(bucket="0"),
        "backlog_now": """
        SELECT
            sum(CASE WHEN status = 'pending' AND run_at <= :now THEN 1 ELSE 0 END) AS due,
            sum(CASE WHEN status = 'pending' AND run_at > :now THEN 1 ELSE 0 END) AS waiting,
            sum(CASE WHEN status = 'running' THEN 1 ELSE 0 END) AS running,
            sum(CASE WHEN status = 'dead' THEN 1 ELSE 0 END) AS dead
        FROM jobs WHERE status IN ('pending', 'running', 'dead')
          AND (:account IS NULL OR account = :account)""",
    }
)
