"""The web layer: the FastAPI app that serves ``/webhook``, the JSON API, exports and the dashboard.

:func:`create_app` (:mod:`.app`) builds its parts once and assembles it; :mod:`.deps` hands
them to the routes as FastAPI dependencies; :mod:`.auth` holds every access rule (Host check,
admin and operator tokens, ``/metrics`` token, sessions' admission to the API), :mod:`.principal`
the rule of accounts (who sees which), :mod:`.tokens` the token comparison and its throttle, and
:mod:`.sessions` the login cookies; :mod:`.api` serves ``/api`` with one router per resource,
and :mod:`.dashboard` the server-rendered pages.

May import: everything below it (intake, store, observe, services). Nothing imports the web
layer except the CLI and the demo: a ``worker`` process never loads FastAPI.
"""

from dimmy_webhooks.web.app import create_app

__all__ = ["create_app"]
