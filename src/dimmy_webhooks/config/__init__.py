"""Settings: read once from the environment and an optional ``.env``, validated, then frozen.

This package is the only reader of the environment. :mod:`.settings` declares every setting
(the :class:`Settings` model and :func:`load_settings`); :mod:`.values` holds the value rules
others apply too (host names, the body budget, the PostgreSQL driver); :mod:`.display` the
``.env`` template and the secrets never printed; :mod:`.exposure` decides whether the service
may listen beyond loopback. Import from here:
``from dimmy_webhooks.config import Settings, load_settings``.

May import: :mod:`dimmy_webhooks.errors` only. Every other stage imports it.
"""

from dimmy_webhooks.config.accounts import (
    ACCOUNT_NAME,
    DEFAULT_ACCOUNT,
    Account,
    Accounts,
    load_accounts,
    of_account,
    problems_of,
    single,
    token_digest,
)
from dimmy_webhooks.config.display import SECRET_SETTINGS, env_example
from dimmy_webhooks.config.errors import error_lines
from dimmy_webhooks.config.exposure import (
    LOOPBACK_HOSTS,
    MIN_TOKEN_LENGTH,
    require_loopback_or_token,
    weak_token,
)
from dimmy_webhooks.config.settings import (
    DEFAULT_API_URL,
    DEFAULT_DATABASE_URL,
    DimensionUnit,
    Settings,
    WeightUnit,
    load_settings,
)
from dimmy_webhooks.config.values import (
    SMALL_BODY_BYTES,
    SMALL_BODY_RESERVE,
    host_name,
    least_budget,
    postgres_driver_missing,
)

__all__ = [
    "ACCOUNT_NAME",
    "DEFAULT_ACCOUNT",
    "DEFAULT_API_URL",
    "DEFAULT_DATABASE_URL",
    "LOOPBACK_HOSTS",
    "MIN_TOKEN_LENGTH",
    "SECRET_SETTINGS",
    "SMALL_BODY_BYTES",
    "SMALL_BODY_RESERVE",
    "Account",
    "Accounts",
    "DimensionUnit",
    "Settings",
    "WeightUnit",
    "env_example",
    "error_lines",
    "host_name",
    "least_budget",
    "load_accounts",
    "load_settings",
    "of_account",
    "postgres_driver_missing",
    "problems_of",
    "require_loopback_or_token",
    "single",
    "token_digest",
    "weak_token",
]
