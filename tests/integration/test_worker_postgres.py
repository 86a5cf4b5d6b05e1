"""The worker's tests of ``tests/unit/test_worker.py`` on PostgreSQL: a migrated database of
the test's own on the test server instead of the SQLite file. Stopping, cancelling and
failing jobs meet the backend's own transactions here (a transaction cancelled on the caller's
side only, a pool connection given back mid-write), so the worker is held on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dimmy_webhooks.store import Store, create_store

from ..unit.test_worker import (
    blocking_handlers,
    pipeline_factory,
    raising_handlers,
    test_5xx_and_hangs_retry_within_policy_then_die,
    test_404_and_422_ids_die_once_while_siblings_succeed,
    test_429_retry_after_is_respected,
    test_500_id_event_stores_every_item_once,
    test_a_blocking_output_times_out_is_retried_and_holds_up_nothing,
    test_a_flood_of_webhooks_slows_the_worker_but_never_stops_it,
    test_a_poison_output_dies_alone,
    test_an_output_raising_system_exit_and_the_like_fails_counted_attempts,
    test_any_job_raising_a_base_exception_is_a_logged_counted_failure,
    test_dead_event_resent_by_the_sender_is_requeued,
    test_full_payload_is_stored_without_a_fetch,
    test_graceful_stop_releases_claims,
    test_newer_version_replaces_and_is_delivered_once_more,
    test_refused_api_key_pauses_without_burning_attempts,
    test_replay_redeliver_reuses_the_idempotency_key,
    test_stopping_with_a_blocked_output_takes_the_grace_period_only,
)

pytestmark = pytest.mark.postgres

__all__ = [
    "blocking_handlers",
    "pipeline_factory",
    "raising_handlers",
    "test_5xx_and_hangs_retry_within_policy_then_die",
    "test_404_and_422_ids_die_once_while_siblings_succeed",
    "test_429_retry_after_is_respected",
    "test_500_id_event_stores_every_item_once",
    "test_a_blocking_output_times_out_is_retried_and_holds_up_nothing",
    "test_a_flood_of_webhooks_slows_the_worker_but_never_stops_it",
    "test_a_poison_output_dies_alone",
    "test_an_output_raising_system_exit_and_the_like_fails_counted_attempts",
    "test_any_job_raising_a_base_exception_is_a_logged_counted_failure",
    "test_dead_event_resent_by_the_sender_is_requeued",
    "test_full_payload_is_stored_without_a_fetch",
    "test_graceful_stop_releases_claims",
    "test_newer_version_replaces_and_is_delivered_once_more",
    "test_refused_api_key_pauses_without_burning_attempts",
    "test_replay_redeliver_reuses_the_idempotency_key",
    "test_stopping_with_a_blocked_output_takes_the_grace_period_only",
]


@pytest.fixture
def pipeline_db(pg_url: str) -> str:
    return pg_url


@pytest.fixture
async def pipeline_store(pg_url: str) -> AsyncIterator[Store]:
    store = create_store(pg_url, max_attempts=8)
    await store.open()
    yield store
    await store.close()
