"""The operator's dashboard: server-rendered pages at ``/`` and under ``/ui``.

:func:`install` adds the pages (:mod:`.pages`), their stylesheet and script (``/ui/static``,
written for this package: no third-party front-end code) and the login (:mod:`.sessions`) to
the app. Pages are served with :data:`~.render.PAGE_CSP` (:func:`is_page`), every other
response with the service's strict policy.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from dimmy_webhooks.config import Settings
from dimmy_webhooks.web.dashboard.pages import LoginRequired, login_required, router
from dimmy_webhooks.web.dashboard.render import PAGE_CSP
from dimmy_webhooks.web.dashboard.sessions import Sessions, api_session_admits

STATIC = Path(__file__).parent / "static"

__all__ = ["PAGE_CSP", "api_session_admits", "install", "is_page"]


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the dashboard from ``app`` (whose ``state.services`` and ``state.tokens`` are
    set): logins need ``DIMMY_ADMIN_TOKEN`` when it is set, and last ``DIMMY_SESSION_HOURS``."""
    app.state.sessions = Sessions(settings.admin_token_value(), hours=settings.session_hours)
    app.add_exception_handler(LoginRequired, login_required)
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="static")


def is_page(path: str) -> bool:
    """Whether ``path`` is one of the dashboard's HTML pages (its CSP allows https images)."""
    return path == "/" or (path.startswith("/ui/") and not path.startswith("/ui/static/"))
