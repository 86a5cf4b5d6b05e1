"""Upstream: talking to the Dimmy REST API.

Owns the client (:mod:`.client`: ``GET /items/{id}``, ``GET /items`` pages, bounded answers,
errors mapped to retry or give up, built from the ``DIMMY_API_*`` settings by
:func:`~.client.client_from_settings`) and its pacing (:mod:`.pacing`: the request budget and the
adaptive rate learned from Dimmy's answers).

May import: the shared root modules (:mod:`dimmy_webhooks.outbound` among them: the HTTP
sessions) and :mod:`dimmy_webhooks.config`. Nothing of the store.
"""
