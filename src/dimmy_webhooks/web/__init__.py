"""The web layer: the FastAPI app that serves ``/webhook``, the JSON API, exports and the dashboard.

:func:`create_app` (:mod:`.app`) assembles it; :mod:`.auth` holds every access rule (Host check,
admin token, sessions' admission to the API), the API routers serve ``/api``, and
:mod:`.dashboard` the server-rendered pages.

May import: everything below it (intake, store, observe, services). Nothing imports the web
layer except the CLI and the demo: a ``worker`` process never loads FastAPI.
"""

from dimmy_webhooks.web.app import create_app

__all__ = ["create_app"]
