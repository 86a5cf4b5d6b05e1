"""Who sees which account: the viewer's rule, operator tokens, and sessions bound to an account."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dimmy_webhooks.config.accounts import Account, Accounts, token_digest
from dimmy_webhooks.web.principal import ADMIN, AccountHidden, Viewer
from dimmy_webhooks.web.sessions import EPOCH_STATE, Sessions
from dimmy_webhooks.web.tokens import FailureThrottle, TokenCheck

from ..support.builders import make_settings

ADMIN_TOKEN = "admin-token-0123456789abcdefghijklmnop"
ACME = "acme-operator-token-0123456789abcdefghij"
GLOBEX = "globex-operator-token-0123456789abcdefgh"


def accounts(tmp_path: Path) -> Accounts:
    settings = make_settings(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    return Accounts(
        [
            Account("default", settings),
            Account("acme", settings, token_digest(ACME)),
            Account("globex", settings, token_digest(GLOBEX)),
        ]
    )


def test_the_admin_sees_every_account_and_chooses_any() -> None:
    assert ADMIN.admin
    assert ADMIN.owns("acme")
    assert ADMIN.owns("removed-long-ago")
    assert ADMIN.filter(None) is None
    assert ADMIN.filter("acme") == "acme"
    assert ADMIN.filter("removed-long-ago") == "removed-long-ago"  # its rows are kept
    assert ADMIN.visible(("default", "acme")) == ("default", "acme")


def test_an_operator_sees_its_account_and_no_other() -> None:
    acme = Viewer("acme")
    assert not acme.admin
    assert acme.owns("acme")
    assert not acme.owns("globex")
    assert not acme.owns("default")
    assert acme.filter(None) == "acme"
    assert acme.filter("acme") == "acme"
    for other in ("globex", "nobody"):  # configured or not: the same refusal
        with pytest.raises(AccountHidden):
            acme.filter(other)
    assert acme.visible(("default", "acme", "globex")) == ("acme",)


def test_a_token_is_the_admin_or_one_account_and_wrong_ones_are_counted(tmp_path: Path) -> None:
    known = accounts(tmp_path)
    check = TokenCheck(ADMIN_TOKEN, FailureThrottle(limit=2))
    assert check.check(ADMIN_TOKEN, "c", operators=known).viewer == ADMIN
    assert check.check(ACME, "c", operators=known).viewer == Viewer("acme")
    assert check.check(f" {GLOBEX} ".strip(), "c", operators=known).viewer == Viewer("globex")
    assert not check.check(ACME, "c").ok  # without the accounts, an operator token is wrong
    assert not check.check("", "c", operators=known).ok
    throttled = check.check("guess", "c", operators=known)
    assert throttled.retry_after is not None
    # the right tokens are heard even from a throttled client
    assert check.check(ACME, "c", operators=known).ok


def test_without_an_admin_token_an_operator_token_narrows_the_view(tmp_path: Path) -> None:
    check = TokenCheck(None)
    known = accounts(tmp_path)
    assert check.check("", "c", operators=known).viewer == ADMIN
    assert check.check(ACME, "c", operators=known).viewer == Viewer("acme")


class Epochs:
    def __init__(self) -> None:
        self.state: dict[str, str] = {}

    async def get_state(self, name: str) -> str | None:
        return self.state.get(name)

    async def set_state(self, name: str, value: str, now: float) -> None:
        self.state[name] = value


def test_a_session_is_bound_to_its_account_and_to_its_token() -> None:
    digests = {"acme": token_digest(ACME), "globex": token_digest(GLOBEX)}
    epochs = Epochs()
    sessions = Sessions(ADMIN_TOKEN, epochs, clock=lambda: 1000.0, operator_digest=digests.get)
    admin = asyncio.run(sessions.issue())
    acme = asyncio.run(sessions.issue("acme"))
    assert admin.startswith("v2.")
    assert acme.startswith("v3.")
    found_admin, found_acme = sessions.verify(admin), sessions.verify(acme)
    assert found_admin is not None
    assert found_admin.account is None
    assert found_acme is not None
    assert found_acme.account == "acme"
    # the account cannot be changed in the cookie
    forged = acme.replace(".acme.", ".globex.")
    assert sessions.verify(forged) is None
    # a new operator token (or the account removed) ends the account's sessions
    digests["acme"] = token_digest("a-new-acme-operator-token-0123456789abc")
    assert sessions.verify(acme) is None
    assert sessions.verify(admin) is not None
    del digests["acme"]
    with pytest.raises(ValueError, match="no operator token"):
        asyncio.run(sessions.issue("acme"))


def test_logging_out_ends_the_sessions_of_the_same_token_only() -> None:
    epochs = Epochs()
    digests = {"acme": token_digest(ACME)}
    sessions = Sessions(ADMIN_TOKEN, epochs, clock=lambda: 1000.0, operator_digest=digests.get)
    asyncio.run(sessions.end_all("acme"))
    assert set(epochs.state) == {f"{EPOCH_STATE}:acme"}
    asyncio.run(sessions.end_all())
    assert EPOCH_STATE in epochs.state
