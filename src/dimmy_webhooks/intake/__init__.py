"""Intake: the first stage. A webhook arrives, is verified and is stored before it is answered.

Owns the HTTP server's limits (:mod:`.httpserver`: head size and time, connection cap, the
unverified-body budget), uvicorn's one configuration (:mod:`.serving`) and the receiver
(:mod:`.receiver`: Svix verification through :mod:`dimmy_webhooks.signatures`, bounds on body,
depth and ids, the durable insert).

May import: the shared root modules (``errors``, ``models``, ``items``, ``signatures``,
``failpoints``), :mod:`dimmy_webhooks.config` and :mod:`dimmy_webhooks.store`. Never the
pipeline, the outputs or the web layer: the webhook path stays short.
"""
