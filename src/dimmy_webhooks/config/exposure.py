"""Whether the service may listen beyond this machine: loopback, or a strong admin token.

``serve`` checks it before binding (:func:`require_loopback_or_token`); the web layer's Host
check reads the same loopback names and token length.
"""

from __future__ import annotations

from dimmy_webhooks.config.settings import Settings
from dimmy_webhooks.errors import ConfigError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
MIN_TOKEN_LENGTH = 32
"""Characters an admin token needs before the service listens beyond loopback."""


def weak_token(token: str) -> bool:
    """Whether ``token`` is too weak to face a network: under :data:`MIN_TOKEN_LENGTH`
    characters, or a repeated few (fewer than 8 distinct ones). The admin token and
    ``DIMMY_METRICS_TOKEN`` are held to it for a public bind and, at each request, for a
    client a proxy forwarded."""
    return len(token) < MIN_TOKEN_LENGTH or len(set(token)) < 8


def require_loopback_or_token(settings: Settings, host: str) -> None:
    """Refuse to expose the service beyond this machine without a strong admin token, or
    with a weak ``DIMMY_METRICS_TOKEN``."""
    if host in LOOPBACK_HOSTS:
        return
    token = settings.admin_token_value()
    if token is None:
        raise ConfigError(
            f"refusing to listen on {host}: set DIMMY_ADMIN_TOKEN first, so the JSON API and "
            "dashboard are not open to the network (or bind 127.0.0.1); "
            "`dimmy-webhooks token` makes one"
        )
    for name, value in (
        ("DIMMY_ADMIN_TOKEN", token),
        ("DIMMY_METRICS_TOKEN", settings.metrics_token_value()),
    ):
        if value is not None and weak_token(value):
            raise ConfigError(
                f"refusing to listen on {host}: {name} is too weak to face a network "
                f"(at least {MIN_TOKEN_LENGTH} characters, not a repeated few); "
                "`dimmy-webhooks token` makes a strong one"
            )
