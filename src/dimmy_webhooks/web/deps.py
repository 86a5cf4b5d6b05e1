"""What the web routes receive: the FastAPI dependencies of the API and the dashboard, once.

A route names what it needs by type (``store: StoreDep``, ``overview: OverviewDep``...) and
never reads ``app.state`` itself: :func:`~dimmy_webhooks.web.app.create_app` built these parts
once and keeps them there, :func:`services_of` and the accessors of :mod:`.auth` read them.

May import: the services, the store, the observers and :mod:`.auth`; the routers import this.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from dimmy_webhooks.config import Settings
from dimmy_webhooks.observe.overview import Overview
from dimmy_webhooks.services import Services
from dimmy_webhooks.store import Store
from dimmy_webhooks.web.auth import TokenCheck, require_admin, require_login, sessions_of, tokens_of
from dimmy_webhooks.web.sessions import Session, Sessions

__all__ = [
    "Admin",
    "Login",
    "OverviewDep",
    "ServicesDep",
    "SessionsDep",
    "SettingsDep",
    "StoreDep",
    "TokensDep",
    "services_of",
]


def services_of(request: Request) -> Services:
    """The running parts of the service (``app.state.services``)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(services_of)]


def store_of(services: ServicesDep) -> Store:
    return services.store


def settings_of(services: ServicesDep) -> Settings:
    return services.settings


async def overview_of(services: ServicesDep) -> Overview:
    """One picture of the service, for ``/``, ``/api/overview`` and ``/metrics``."""
    return await services.overview()


StoreDep = Annotated[Store, Depends(store_of)]
SettingsDep = Annotated[Settings, Depends(settings_of)]
OverviewDep = Annotated[Overview, Depends(overview_of)]
TokensDep = Annotated[TokenCheck, Depends(tokens_of)]
SessionsDep = Annotated[Sessions, Depends(sessions_of)]
Admin = Depends(require_admin)
"""The admin token (or a dashboard session): a router's ``dependencies=[Admin]``."""
Login = Annotated[Session | None, Depends(require_login)]
"""A dashboard page's session: redirects to the login page without one (``None``: no login)."""
