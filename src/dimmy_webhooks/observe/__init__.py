"""Observing the service: logs, the overview, health, Prometheus metrics and alerts.

Owns the log format and redaction (:mod:`.logs`), the overview every status page reads
(:mod:`.overview`, with the :class:`~.overview.Status` snapshot the observers are given), what
``/readyz`` answers (:mod:`.health`), ``/metrics`` (:mod:`.metrics`) and the alert notifier
(:mod:`.alerts`). Observers take the store and a status snapshot, not the whole service.

May import: the shared root modules, :mod:`dimmy_webhooks.config` and
:mod:`dimmy_webhooks.store`. Never :mod:`dimmy_webhooks.services` (it builds them).
"""
