"""Several Dimmy accounts in one installation (a 3PL's clients): ``DIMMY_ACCOUNTS_FILE``.

The file is TOML, one ``[[account]]`` table per Dimmy account::

    [[account]]
    name = "acme"                      # lowercase letters, digits and '-', at most 40
    webhook_secret = "whsec_..."       # one or more, as in DIMMY_WEBHOOK_SECRET
    api_key = "..."
    api_url = "https://..."            # optional: DIMMY_API_URL
    outputs = "http:https://wms.acme.example/dimmy"   # optional: DIMMY_OUTPUTS
    operator_token_sha256 = "64 hex digits"          # or operator_token = "..." (32+ chars)
    api_rate_limit = 20                # optional: any setting of OVERRIDABLE, by its name

Each account is the installation's :class:`~.settings.Settings` with that account's values put
over them (:attr:`Account.settings`), so everything built "from the settings" (the API client,
the outputs, the validation rules, the units) is built per account from the same code. The
single-account settings (``DIMMY_WEBHOOK_SECRET``, ``DIMMY_API_KEY``) are the account named
``default``, served at ``/webhook`` as before; an installation upgraded from one account keeps
its data under that name.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dimmy_webhooks.config.errors import error_lines
from dimmy_webhooks.config.exposure import MIN_TOKEN_LENGTH
from dimmy_webhooks.config.settings import Settings
from dimmy_webhooks.errors import ConfigError

DEFAULT_ACCOUNT = "default"
"""The account of the single-account settings, and of every row stored before accounts."""
ACCOUNT_NAME = re.compile(r"[a-z0-9-]{1,40}")
"""What an account name may be: it is a URL path segment and a metrics label value."""
MAX_ACCOUNTS = 1000
"""More accounts than a file may hold (bounds metrics labels and the claim's account list)."""
MAX_FILE_BYTES = 1024 * 1024

OVERRIDABLE = frozenset(
    {
        "webhook_secret",
        "api_key",
        "api_url",
        "outputs",
        "destinations_file",
        "forward_secret",
        "api_concurrency",
        "api_rate_limit",
        "api_rate_mode",
        "api_rate_min",
        "api_rate_max",
        "api_timeout_seconds",
        "dimension_unit",
        "weight_unit",
        "dim_weight_divisor",
        "validate_min_side",
        "validate_max_side",
        "validate_min_weight",
        "validate_max_weight",
        "validate_require_dimensions",
        "validate_require_weight",
        "validate_require_barcode",
        "validate_require_photo",
        "poll",
        "poll_interval_seconds",
        "poll_lookback_hours",
    }
)
"""The settings an account may set for itself (by the setting's name without ``DIMMY_``)."""
_OWN_KEYS = frozenset({"name", "operator_token", "operator_token_sha256"})
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def token_digest(token: str) -> str:
    """The SHA-256 hex digest an operator token is compared by (``operator_token_sha256``)."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Account:
    """One Dimmy account: its name, its settings and who may see it."""

    name: str
    settings: Settings
    operator_token_sha256: str | None = None
    from_file: bool = False
    own: frozenset[str] = frozenset()
    """The settings the account's table set itself (the others are the installation's)."""

    def polls(self, service_polls: bool) -> bool:
        """Whether the account is polled when the service polls (``serve --poll``,
        ``DIMMY_POLL``): yes, unless its table says ``poll = false``."""
        return service_polls and (self.settings.poll or "poll" not in self.own)

    @property
    def webhook_path(self) -> str:
        """``/webhook/{name}``; the ``default`` account is also served at ``DIMMY_WEBHOOK_PATH``."""
        return f"{self.settings.webhook_path.rstrip('/')}/{self.name}"


class Accounts(Mapping[str, Account]):
    """The configured accounts by name, in the file's order (``default`` first when present)."""

    def __init__(self, accounts: list[Account]) -> None:
        self._by_name = {account.name: account for account in accounts}
        self._by_digest = {
            account.operator_token_sha256: account
            for account in accounts
            if account.operator_token_sha256 is not None
        }

    def __getitem__(self, name: str) -> Account:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    @property
    def several(self) -> bool:
        """More than the one ``default`` account: the views show which account a row is."""
        return self.names != (DEFAULT_ACCOUNT,)

    def by_operator_token(self, token: str) -> Account | None:
        """The account whose operator token this is, or ``None`` (compared by digest, so the
        time taken does not depend on how much of a token matches)."""
        given = token_digest(token)
        found = None
        for digest, account in self._by_digest.items():
            if hmac.compare_digest(digest, given):
                found = account
        return found


def single(settings: Settings) -> Accounts:
    """The one ``default`` account of an installation without ``DIMMY_ACCOUNTS_FILE``."""
    return Accounts([Account(DEFAULT_ACCOUNT, settings)])


def load_accounts(settings: Settings) -> Accounts:
    """The accounts of ``settings``: ``default`` from the single-account settings (when they
    name a secret or a key, or when there is no accounts file), then the file's.

    Raises :class:`ConfigError` naming the file, the account and the key for anything wrong.
    """
    path = settings.accounts_file
    if path is None:
        return single(settings)
    where = f"DIMMY_ACCOUNTS_FILE {path}"
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_FILE_BYTES} bytes")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    extra = sorted(set(document) - {"account"})
    if extra:
        raise ConfigError(f"{where}: unknown top-level key {extra[0]!r}; use [[account]] tables")
    tables = document.get("account", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: 'account' must be [[account]] tables")
    if len(tables) > MAX_ACCOUNTS:
        raise ConfigError(f"{where}: more than {MAX_ACCOUNTS} accounts")
    accounts: list[Account] = []
    if settings.webhook_secret is not None or settings.api_key is not None:
        accounts.append(Account(DEFAULT_ACCOUNT, settings))
    for number, table in enumerate(tables, start=1):
        accounts.append(_account(table, settings, f"{where}: account {number}"))
    _check_unique(accounts, settings, where)
    if not accounts:
        raise ConfigError(f"{where}: no [[account]] table, and no DIMMY_WEBHOOK_SECRET or API key")
    return Accounts(accounts)


def _account(table: dict[str, Any], settings: Settings, where: str) -> Account:
    name = table.get("name")
    if not isinstance(name, str) or not ACCOUNT_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: 'name' must be lowercase letters, digits and '-', at most 40 characters"
            f" (got {name!r})"
        )
    where = f"{where.rsplit(': account', 1)[0]}: account {name!r}"
    unknown = sorted(set(table) - OVERRIDABLE - _OWN_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; an account may set name, operator_token, "
            f"operator_token_sha256 and {', '.join(sorted(OVERRIDABLE))}"
        )
    for needed in ("api_key",):
        if not isinstance(table.get(needed), str) or not table[needed].strip():
            raise ConfigError(f"{where}: '{needed}' is required")
    values = {key: value for key, value in table.items() if key in OVERRIDABLE}
    base = {key: getattr(settings, key) for key in type(settings).model_fields}
    # what proves who is calling is never the installation's: without its own secret an
    # account receives no webhooks (DIMMY_WEBHOOK_SECRET signs the account default only)
    base["webhook_secret"] = None
    try:
        own = Settings(_env_file=None, **{**base, **values})
    except ValidationError as exc:
        lines = error_lines(exc, lambda err: f"{where}: {'.'.join(map(str, err['loc']))}")
        raise ConfigError("\n  ".join(lines)) from None
    explicit = frozenset(values)
    return Account(name, own, _operator_digest(table, where), from_file=True, own=explicit)


def _operator_digest(table: dict[str, Any], where: str) -> str | None:
    token, digest = table.get("operator_token"), table.get("operator_token_sha256")
    if token is not None and digest is not None:
        raise ConfigError(f"{where}: give operator_token or operator_token_sha256, not both")
    if token is not None:
        if not isinstance(token, str) or len(token.strip()) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"{where}: operator_token must be at least {MIN_TOKEN_LENGTH} characters "
                "(`dimmy-webhooks token` makes one)"
            )
        return token_digest(token)
    if digest is not None:
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest.strip().lower()):
            raise ConfigError(f"{where}: operator_token_sha256 must be 64 hex digits")
        return digest.strip().lower()
    return None


def _check_unique(accounts: list[Account], settings: Settings, where: str) -> None:
    names: set[str] = set()
    digests: set[str] = set()
    admin = settings.admin_token_value()
    admin_digest = token_digest(admin) if admin else None
    for account in accounts:
        if account.name in names:
            extra = (
                " (DIMMY_WEBHOOK_SECRET / DIMMY_API_KEY already make the account 'default')"
                if account.name == DEFAULT_ACCOUNT
                else ""
            )
            raise ConfigError(f"{where}: account {account.name!r} is named twice{extra}")
        names.add(account.name)
        digest = account.operator_token_sha256
        if digest is None:
            continue
        if digest in digests:
            raise ConfigError(f"{where}: two accounts have the same operator token")
        if digest == admin_digest:
            raise ConfigError(
                f"{where}: account {account.name!r}: the operator token is the admin token"
            )
        digests.add(digest)


def of_account(account: str, problem: str) -> str:
    """A problem as an operator reads it: ``account NAME: ...`` for an account other than
    ``default`` (whose problems read as they always did), so the overview says whose it is and
    an account's operator is shown its own (:func:`problems_of`)."""
    return problem if account == DEFAULT_ACCOUNT else f"account {account}: {problem}"


def problems_of(problems: Iterable[str], account: str) -> list[str]:
    """Those of ``problems`` that :func:`of_account` made for ``account``."""
    if account == DEFAULT_ACCOUNT:
        return []
    prefix = of_account(account, "")
    return [problem for problem in problems if problem.startswith(prefix)]
