"""``DIMMY_ACCOUNTS_FILE``: what a file makes, and every mistake named by file, account and key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dimmy_webhooks.config import DEFAULT_ACCOUNT, load_accounts, load_settings
from dimmy_webhooks.errors import ConfigError

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "t" * 40


def settings_with(tmp_path: Path, text: str, **overrides: object) -> object:
    path = tmp_path / "accounts.toml"
    path.write_text(text)
    return load_settings(env_file=None, accounts_file=path, **overrides)


def accounts_of(tmp_path: Path, text: str, **overrides: object):  # type: ignore[no-untyped-def]
    return load_accounts(settings_with(tmp_path, text, **overrides))  # type: ignore[arg-type]


TWO = f"""
[[account]]
name = "acme"
webhook_secret = "{SECRET}"
api_key = "key-acme"
outputs = "jsonl:/tmp/acme.jsonl"
operator_token = "{TOKEN}"
api_rate_limit = 7

[[account]]
name = "globex-2"
api_key = "key-globex"
api_url = "http://127.0.0.1:9/"
operator_token_sha256 = "{hashlib.sha256(b"g" * 40).hexdigest().upper()}"
"""


def test_each_account_is_the_settings_with_its_own_values_over_them(tmp_path: Path) -> None:
    accounts = accounts_of(tmp_path, TWO, outputs="console", api_rate_limit=50)
    assert accounts.names == ("acme", "globex-2")
    acme, globex = accounts["acme"], accounts["globex-2"]
    assert acme.settings.outputs == "jsonl:/tmp/acme.jsonl"
    assert acme.settings.api_rate_limit == 7
    assert acme.settings.api_key is not None
    assert acme.settings.api_key.get_secret_value() == "key-acme"
    assert globex.settings.outputs == "console"  # the installation's
    assert globex.settings.api_rate_limit == 50
    assert globex.settings.api_url == "http://127.0.0.1:9"  # normalised like DIMMY_API_URL
    assert globex.settings.webhook_secret is None
    assert acme.webhook_path == "/webhook/acme"
    assert accounts.several


def test_operator_tokens_find_their_account_by_token_or_digest(tmp_path: Path) -> None:
    accounts = accounts_of(tmp_path, TWO)
    found = accounts.by_operator_token(TOKEN)
    assert found is not None
    assert found.name == "acme"
    found = accounts.by_operator_token("g" * 40)
    assert found is not None
    assert found.name == "globex-2"
    assert accounts.by_operator_token("x" * 40) is None
    assert accounts.by_operator_token("") is None


def test_the_single_account_settings_are_the_account_default(tmp_path: Path) -> None:
    accounts = accounts_of(tmp_path, TWO, webhook_secret=SECRET, api_key="key-default")
    assert accounts.names == (DEFAULT_ACCOUNT, "acme", "globex-2")
    without_file = load_accounts(load_settings(env_file=None, webhook_secret=SECRET))
    assert without_file.names == (DEFAULT_ACCOUNT,)
    assert not without_file.several


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[account]]\nname = "Acme"\napi_key = "k"', "'name' must be lowercase"),
        ('[[account]]\nname = "a/b"\napi_key = "k"', "'name' must be lowercase"),
        ('[[account]]\nname = "' + "a" * 41 + '"\napi_key = "k"', "at most 40"),
        ('[[account]]\nname = "acme"', "account 'acme': 'api_key' is required"),
        ('[[account]]\nname = "acme"\napi_key = "k"\napi_kee = 1', "unknown key 'api_kee'"),
        ('[[account]]\nname = "acme"\napi_key = "k"\ndatabase_url = "x"', "unknown key"),
        (
            '[[account]]\nname = "acme"\napi_key = "k"\napi_rate_limit = -1',
            "account 'acme': api_rate_limit",
        ),
        (
            '[[account]]\nname = "acme"\napi_key = "k"\n[[account]]\nname = "acme"\napi_key = "j"',
            "'acme' is named twice",
        ),
        ('[[account]]\nname = "acme"\napi_key = "k"\noperator_token = "short"', "at least 32"),
        (
            '[[account]]\nname = "acme"\napi_key = "k"\noperator_token_sha256 = "abc"',
            "64 hex digits",
        ),
        ('[[account]]\nname = "acme"\napi_key = "k"\nunknown = [', "not valid TOML"),
        ('[[acount]]\nname = "acme"', "unknown top-level key 'acount'"),
        ("", "no [[account]] table"),
    ],
)
def test_a_mistake_is_refused_naming_the_file_account_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        accounts_of(tmp_path, text)
    assert expected in str(caught.value)
    assert "DIMMY_ACCOUNTS_FILE" in str(caught.value)


def test_default_cannot_be_named_twice_nor_tokens_shared(tmp_path: Path) -> None:
    text = '[[account]]\nname = "default"\napi_key = "k"'
    with pytest.raises(ConfigError, match="already make the account 'default'"):
        accounts_of(tmp_path, text, api_key="key-default")
    assert accounts_of(tmp_path, text).names == ("default",)  # no single-account settings
    shared = f'operator_token = "{TOKEN}"'
    two = f'[[account]]\nname = "a"\napi_key = "k"\n{shared}\n' * 1 + (
        f'[[account]]\nname = "b"\napi_key = "k"\n{shared}\n'
    )
    with pytest.raises(ConfigError, match="same operator token"):
        accounts_of(tmp_path, two)
    with pytest.raises(ConfigError, match="is the admin token"):
        accounts_of(
            tmp_path, f'[[account]]\nname = "a"\napi_key = "k"\n{shared}', admin_token=TOKEN
        )


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    settings = load_settings(env_file=None, accounts_file=tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_accounts(settings)


def test_an_account_never_takes_the_installations_webhook_secret(tmp_path: Path) -> None:
    """Without its own secret an account receives no webhooks: DIMMY_WEBHOOK_SECRET is the
    default account's, and must not open another account's URL."""
    accounts = accounts_of(tmp_path, TWO, webhook_secret=SECRET, api_key="key-default")
    assert accounts[DEFAULT_ACCOUNT].settings.webhook_secret is not None
    assert accounts["globex-2"].settings.webhook_secret is None


def test_every_account_is_polled_when_the_service_polls_unless_it_says_not(
    tmp_path: Path,
) -> None:
    text = TWO + '\n[[account]]\nname = "quiet"\napi_key = "k"\npoll = false\n'
    accounts = accounts_of(tmp_path, text)
    assert [name for name, a in accounts.items() if a.polls(True)] == ["acme", "globex-2"]
    assert not any(a.polls(False) for a in accounts.values())


def test_an_oversized_file_or_too_many_accounts_is_refused_unread(tmp_path: Path) -> None:
    huge = "# " + "x" * (1024 * 1024) + "\n"
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        accounts_of(tmp_path, huge)
    many = "".join(f'[[account]]\nname = "a{n}"\napi_key = "k"\n' for n in range(1001))
    with pytest.raises(ConfigError, match="more than 1000 accounts"):
        accounts_of(tmp_path, many)
