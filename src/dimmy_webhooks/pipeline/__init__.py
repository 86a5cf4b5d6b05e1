"""The pipeline: what happens to a stored webhook until its items are stored and handed on.

Owns the worker loop (:mod:`.worker`: leases jobs from the queue, renews and gives them back) and
the jobs it runs (:mod:`.jobs`: expand an event, fetch an item, deliver to an output, and map
each error to retry, dead or a pause), the plausibility rules that hold an item in quarantine
(:mod:`.validation`), and polling: reading ranges of ``GET /items`` (:mod:`.ranges`), the
poller's passes and sweeps (:mod:`.poller`), ``backfill`` (:mod:`.backfill`) and the
reconciliation report (:mod:`.reconciliation`).

May import: the shared root modules, :mod:`dimmy_webhooks.config`, :mod:`dimmy_webhooks.store`,
:mod:`dimmy_webhooks.upstream` and :mod:`dimmy_webhooks.outputs`. Never the web layer.
"""
