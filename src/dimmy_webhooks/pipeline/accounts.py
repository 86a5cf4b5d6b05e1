"""Each account's part of the pipeline: its API client, its outputs, its intake rules and its
share of a worker's slots (:class:`AccountWork`), built from the accounts the configuration
names (:mod:`dimmy_webhooks.config.accounts`).

Clients are one per API key and URL: Dimmy counts rate and concurrency per key, so accounts
that share a key share one budget. What an account's problem says names the account
(:func:`of_account`), so the overview and an account's operator can tell whose it is.

May import: the configuration, the outputs, the upstream client and :mod:`.validation`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dimmy_webhooks.config import DEFAULT_ACCOUNT, Account, Accounts, Settings, of_account
from dimmy_webhooks.errors import ConfigError
from dimmy_webhooks.outputs import Output, OutputContext, load_destinations, parse_outputs
from dimmy_webhooks.pipeline.validation import Intake
from dimmy_webhooks.upstream.client import DimmyClient, client_from_settings

__all__ = [
    "AccountWork",
    "account_outputs",
    "account_work",
    "build_outputs",
    "clients_by_account",
    "has_api_key",
    "of_account",
    "shares",
]


@dataclass
class AccountWork:
    """What the jobs of one Dimmy account run with: its API client (shared by the accounts
    with the same key and URL, since Dimmy counts rate and concurrency per key), its outputs
    by name, its intake rules, and ``share``, the most jobs of it a worker runs at once.

    Keeps what outlives one job: :attr:`config_error` (a refused API key, for ``/readyz`` and
    the overview) and the pause of this account's fetching it causes; other accounts go on.
    """

    name: str
    client: DimmyClient | None
    outputs: dict[str, Output]
    intake: Intake
    share: int
    config_error: str | None = None
    paused_until: float = 0.0


def shares(concurrency: int, api_concurrency: dict[str, int]) -> dict[str, int]:
    """Each account's share of a worker's ``concurrency`` slots: twice its API concurrency
    (half wait on the API while the others store and deliver), and with several accounts never
    more than three quarters of the slots, so no account can take every one: a client's
    100,000-id backfill leaves room for another client's live scan."""
    ceiling = concurrency if len(api_concurrency) <= 1 else max(1, concurrency * 3 // 4)
    return {name: max(1, min(ceiling, 2 * n)) for name, n in api_concurrency.items()}


def build_outputs(settings: Settings) -> list[Output]:
    """The outputs ``DIMMY_OUTPUTS`` lists and the destinations of ``DIMMY_DESTINATIONS_FILE``
    (:class:`ConfigError` naming what is wrong)."""
    destinations = (
        load_destinations(settings.destinations_file)
        if settings.destinations_file is not None
        else []
    )
    secret = settings.forward_secret.get_secret_value() if settings.forward_secret else None
    return parse_outputs(
        settings.outputs, OutputContext(forward_secret=secret, destinations=destinations)
    )


def account_outputs(account: Account) -> list[Output]:
    """An account's outputs (its own ``outputs`` and destinations, or the installation's), with
    its name in what a misconfiguration says."""
    try:
        return build_outputs(account.settings)
    except ConfigError as exc:
        if account.name == DEFAULT_ACCOUNT and not account.from_file:
            raise
        raise ConfigError(f"account {account.name!r}: {exc}") from None


def _key_of(account: Account) -> tuple[str, str] | None:
    settings = account.settings
    key = settings.api_key.get_secret_value().strip() if settings.api_key is not None else ""
    return (settings.api_url, key) if key else None


def has_api_key(account: Account) -> bool:
    return _key_of(account) is not None


def clients_by_account(
    accounts: Accounts, observe: Callable[[str, str, float], None] | None = None
) -> dict[str, DimmyClient]:
    """Each account's API client, one per key and URL (accounts with the same share it); an
    account without a key has none."""
    by_key: dict[tuple[str, str], DimmyClient] = {}
    clients: dict[str, DimmyClient] = {}
    for name, account in accounts.items():
        key = _key_of(account)
        if key is None:
            continue
        if key not in by_key:
            client = client_from_settings(account.settings, observe=observe)
            assert client is not None  # it has a key
            by_key[key] = client
        clients[name] = by_key[key]
    return clients


def account_work(
    accounts: Accounts,
    clients: dict[str, DimmyClient],
    outputs: dict[str, list[Output]],
    concurrency: int,
) -> list[AccountWork]:
    """What a worker with ``concurrency`` slots runs each account's jobs with."""
    share = shares(concurrency, {name: a.settings.api_concurrency for name, a in accounts.items()})
    return [
        AccountWork(
            name,
            clients.get(name),
            {output.name: output for output in outputs[name]},
            Intake.from_settings(account.settings),
            share[name],
        )
        for name, account in accounts.items()
    ]
