"""The operator's dashboard: server-rendered pages at ``/`` and under ``/ui``.

:func:`install` adds the pages (:mod:`.pages`, the login included) and their stylesheet and
script (``/ui/static``, written for this package: no third-party front-end code) to the app;
the sessions they use are built by ``create_app`` (:mod:`dimmy_webhooks.web.sessions`). Pages
are served with :data:`~.render.PAGE_CSP` (:func:`is_page`; :func:`~.render.page_csp` adds a
plain-http API's origin, the demo's fake, to its ``img-src``), every other response with the
service's strict policy.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from dimmy_webhooks.web.auth import LoginRequired
from dimmy_webhooks.web.dashboard.pages import PageMissing, login_required, page_missing, router
from dimmy_webhooks.web.dashboard.render import PAGE_CSP, page_csp

STATIC = Path(__file__).parent / "static"

__all__ = ["PAGE_CSP", "install", "is_page", "page_csp"]


def install(app: FastAPI) -> None:
    """Serve the dashboard from ``app``, whose parts ``create_app`` built (logins need
    ``DIMMY_ADMIN_TOKEN`` when it is set, and last ``DIMMY_SESSION_HOURS``)."""
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(PageMissing, page_missing)
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="static")


def is_page(path: str) -> bool:
    """Whether ``path`` is one of the dashboard's HTML pages (its CSP allows https images)."""
    return path == "/" or (path.startswith("/ui/") and not path.startswith("/ui/static/"))
