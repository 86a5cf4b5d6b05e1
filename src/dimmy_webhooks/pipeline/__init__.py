"""The pipeline: what happens to a stored webhook until its items are stored and handed on.

Owns the worker loop (:mod:`.worker`: leases jobs from the queue, fetches items, delivers to
outputs, maps each error to retry, dead or quarantine), the plausibility rules that hold an
item in quarantine (:mod:`.validation`), and the poller (:mod:`.poller`: ``poll``, ``backfill``
and the reconciliation report).

May import: the shared root modules, :mod:`dimmy_webhooks.config`, :mod:`dimmy_webhooks.store`,
:mod:`dimmy_webhooks.upstream` and :mod:`dimmy_webhooks.outputs`. Never the web layer.
"""
