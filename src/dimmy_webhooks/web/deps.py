"""What the web routes receive: the FastAPI dependencies of the API and the dashboard, once.

A route names what it needs by type (``store: StoreDep``, ``overview: OverviewDep``...) and
never reads ``app.state`` itself: :func:`~dimmy_webhooks.web.app.create_app` built these parts
once and keeps them there, :func:`services_of` and the accessors of :mod:`.auth` read them.

Who asks is ``viewer: ViewerDep`` (:class:`~.principal.Viewer`): a route that answers anything
of an account checks :meth:`~.principal.Viewer.owns` for what it found by id, and a list takes
``account: AccountDep``, the ``?account=`` the viewer may read (404 for another account's).

May import: the services, the store, the observers and :mod:`.auth`; the routers import this.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from dimmy_webhooks.config import Settings
from dimmy_webhooks.config.accounts import ACCOUNT_NAME, Accounts
from dimmy_webhooks.observe.overview import Overview
from dimmy_webhooks.services import Services
from dimmy_webhooks.store import Store
from dimmy_webhooks.web.auth import (
    accounts_of,
    require_login,
    require_viewer,
    sessions_of,
    tokens_of,
)
from dimmy_webhooks.web.principal import AccountHidden, Viewer
from dimmy_webhooks.web.sessions import Session, Sessions
from dimmy_webhooks.web.tokens import TokenCheck

__all__ = [
    "ACCOUNT_NOT_FOUND",
    "AccountDep",
    "AccountName",
    "AccountsDep",
    "Admin",
    "Login",
    "OverviewDep",
    "ServicesDep",
    "SessionsDep",
    "SettingsDep",
    "StoreDep",
    "TokensDep",
    "ViewerDep",
    "services_of",
]
ACCOUNT_NOT_FOUND = "account not found"


def services_of(request: Request) -> Services:
    """The running parts of the service (``app.state.services``)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(services_of)]


def store_of(services: ServicesDep) -> Store:
    return services.store


def settings_of(services: ServicesDep) -> Settings:
    return services.settings


ViewerDep = Annotated[Viewer, Depends(require_viewer)]
"""Who asks the API: the admin (every account) or an account's operator."""
AccountsDep = Annotated[Accounts, Depends(accounts_of)]
AccountName = Annotated[
    str | None,
    Query(
        pattern=f"^{ACCOUNT_NAME.pattern}$",
        description="only this account's rows (an operator token: its own account, the default)",
    ),
]


def account_of(viewer: ViewerDep, account: AccountName = None) -> str | None:
    """The account a list reads (``None``: every one): ``?account=`` as the viewer may read
    it; another account's name, for an operator, is a 404."""
    try:
        return viewer.filter(account)
    except AccountHidden:
        raise HTTPException(status_code=404, detail=ACCOUNT_NOT_FOUND) from None


AccountDep = Annotated[str | None, Depends(account_of)]


async def overview_of(services: ServicesDep, viewer: ViewerDep, account: AccountDep) -> Overview:
    """One picture of the service (of ``?account=``, or of what the viewer sees), for
    ``/api/overview``."""
    return await services.overview(account=account, operator=not viewer.admin)


StoreDep = Annotated[Store, Depends(store_of)]
SettingsDep = Annotated[Settings, Depends(settings_of)]
OverviewDep = Annotated[Overview, Depends(overview_of)]
TokensDep = Annotated[TokenCheck, Depends(tokens_of)]
SessionsDep = Annotated[Sessions, Depends(sessions_of)]
Admin = Depends(require_viewer)
"""The admin token (or a dashboard session): a router's ``dependencies=[Admin]``."""
Login = Annotated[Session | None, Depends(require_login)]
"""A dashboard page's session: redirects to the login page without one (``None``: no login)."""
